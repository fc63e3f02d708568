//! torchvision uint8 BICUBIC antialias resize against goldens written by
//! tools/reference/torchvision_resize_golden.py (torch 2.15.0, torchvision 0.29.2).

use iris_models::image::torch_resize::resize_bicubic_aa_rgb8;
use safetensors::SafeTensors;

/// The generator's inputs (same formulas as the Python script).
fn noise(h: usize, w: usize) -> Vec<u8> {
    (0..(h * w * 3) as u64).map(|i| ((i.wrapping_mul(1103515245).wrapping_add(12345) >> 16) & 255) as u8).collect()
}

fn smooth(h: usize, w: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                v.push(((x * 37 + y * 91 + c * 53 + (x * y) % 17) % 256) as u8);
            }
        }
    }
    v
}

#[test]
fn matches_torchvision_bit_for_bit() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torchvision_resize.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    // [(name, H, W, H', W')] as the generator wrote them
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<(String, usize, usize, usize, usize)> = serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    assert!(cases.len() >= 9, "{} cases", cases.len());
    let mut total_diff = 0usize;
    for (name, h, w, oh, ow) in cases {
        for (kind, input) in [("noise", noise(h, w)), ("smooth", smooth(h, w))] {
            let key = format!("{name}_{kind}");
            let want = golden.tensor(&key).unwrap();
            assert_eq!(want.shape(), [oh, ow, 3], "{key}");
            let got = resize_bicubic_aa_rgb8(&input, w, h, ow, oh);
            let diffs: Vec<(usize, u8, u8)> =
                got.iter().zip(want.data()).enumerate().filter(|(_, (a, b))| a != b).map(|(i, (&a, &b))| (i, a, b)).collect();
            let max = diffs.iter().map(|&(_, a, b)| a.abs_diff(b)).max().unwrap_or(0);
            println!("{key:24} {h}x{w} -> {oh}x{ow}: {} of {} samples differ, max diff {max}", diffs.len(), got.len());
            total_diff += diffs.len();
        }
    }
    assert_eq!(total_diff, 0, "samples differing from torchvision");
}

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

const CASES: [(&str, usize, usize, usize, usize); 9] = [
    ("down", 90, 160, 56, 84),
    ("down3x", 180, 320, 56, 112),
    ("up", 60, 100, 84, 140),
    ("mixed_odd", 61, 97, 56, 112),
    ("down_h_up_w", 50, 40, 28, 84),
    ("wide_to_square", 33, 200, 56, 56),
    ("tall_to_narrow", 200, 33, 112, 28),
    ("width_only", 45, 80, 45, 56),
    ("height_only", 45, 80, 84, 80),
];

#[test]
fn matches_torchvision_bit_for_bit() {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torchvision_resize.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    let mut total_diff = 0usize;
    for (name, h, w, oh, ow) in CASES {
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

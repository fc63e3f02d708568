//! `torchvision.transforms.functional.resize(uint8 tensor, size, BICUBIC, antialias=True)` as
//! qwen-vl-utils calls it on sampled video frames (spec shared/specs/qwen2-vl.md §4.1 "Resize").
//!
//! torchvision's v1 tensor path (`_functional_tensor.resize`, torchvision 0.29) casts the uint8
//! frames to float32, runs `torch.nn.functional.interpolate(mode="bicubic", antialias=True)`,
//! clamps to [0, 255], rounds half to even and casts back to uint8. The interpolation mirrors
//! ATen's `UpSampleKernel.cpp` separable antialias path for float (`HelperInterpCubic::aa_filter`
//! with a = -0.5, `_compute_weights_aa`, `interpolate_aa_single_dim`): float32 weights
//! normalised by their float sum, the horizontal (contiguous) axis first, a float32
//! intermediate (no rounding between the passes, unlike Pillow), and each output a sequential
//! sum starting from the first tap. The float operation order (see `cubic_aa`, `weighted_sum`)
//! matters only where a value lands near .5; the golden test (tests/torchvision_resize.rs)
//! counts differing samples and requires none.
//!
//! Hand-written because no crate implements this arithmetic; the `image` crate's filters differ.

/// Keys' cubic with a = -0.5 in float32, in ATen's `cubic_convolution1/2` operation order, with
/// the multiply-adds fused as the compiler contracts them in torch's x86-64 build (matching its
/// weights bit for bit, checked by extracting them with impulse inputs).
fn cubic_aa(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0)
    } else if x < 2.0 {
        A.mul_add(x, -5.0 * A).mul_add(x, 8.0 * A).mul_add(x, -4.0 * A)
    } else {
        0.0
    }
}

/// One output sample's window on one axis: first input index and float32 weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// `_compute_weights_aa<float>` for every output index. The mixed float/double arithmetic below
/// follows the C++ promotions (an `int64 + 0.5` is a double; assignments to `scalar_t` round).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    // area_pixel_compute_scale<float> with align_corners=false: float(in) / out
    let scale = in_size as f32 / out_size as f32;
    // interp_size (4) * 0.5, stretched by the scale when downsampling (the antialias part)
    let support: f32 = if scale >= 1.0 { (2.0 * scale as f64) as f32 } else { 2.0 };
    let invscale: f32 = if scale >= 1.0 { (1.0 / scale as f64) as f32 } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let xmin = (((center - support) as f64 + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support) as f64 + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let arg = (((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32;
                    cubic_aa(arg)
                })
                .collect();
            let total: f32 = weights.iter().fold(0.0, |s, &w| s + w);
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start: xmin, weights }
        })
        .collect()
}

/// `t0 * w0 + t1 * w1 + ...` in tap order, as `interpolate_aa_single_dim` accumulates, with the
/// rounding of the x86-64 AVX2 build of torch 2.15.0 (found by matching its float outputs on
/// every tap count): after the first product, the remaining taps go in blocks of four with a
/// separate multiply and add, and the last `(n - 1) % 4` taps are fused multiply-adds (the
/// compiler's unrolled body and its contracted epilogue). Other builds may differ in the last bit
/// of the float sum, which moves a uint8 result by one level only where it sits at a .5 boundary.
#[inline]
fn weighted_sum(taps: &Taps, sample: impl Fn(usize) -> f32) -> f32 {
    let w = &taps.weights;
    let mut acc = sample(taps.start) * w[0];
    let unrolled = 1 + (w.len() - 1) / 4 * 4;
    for (j, &wj) in w.iter().enumerate().take(unrolled).skip(1) {
        acc += sample(taps.start + j) * wj;
    }
    for (j, &wj) in w.iter().enumerate().skip(unrolled) {
        acc = sample(taps.start + j).mul_add(wj, acc);
    }
    acc
}

/// Resizes interleaved 8-bit RGB (`width*height*3` bytes) to `new_width x new_height` as
/// torchvision's tensor `resize(..., BICUBIC, antialias=True)` does on uint8 input.
///
/// Preconditions: all sizes >= 1 and `src.len() == width * height * 3`.
pub fn resize_bicubic_aa_rgb8(src: &[u8], width: usize, height: usize, new_width: usize, new_height: usize) -> Vec<u8> {
    const CH: usize = 3;
    debug_assert_eq!(src.len(), width * height * CH);
    if width == new_width && height == new_height {
        return src.to_vec();
    }
    // Horizontal pass over every source row: [H, W, C] u8 -> [H, W', C] f32 (skipped when W' == W).
    let horizontal: Vec<f32> = if new_width != width {
        let kx = taps(width, new_width);
        let mut out = Vec::with_capacity(height * new_width * CH);
        for row in src.chunks_exact(width * CH) {
            for t in &kx {
                for c in 0..CH {
                    out.push(weighted_sum(t, |x| row[x * CH + c] as f32));
                }
            }
        }
        out
    } else {
        src.iter().map(|&v| v as f32).collect()
    };
    let row_len = new_width * CH;
    // Vertical pass: [H, W', C] f32 -> [H', W', C] f32 (skipped when H' == H).
    let finish = |v: f32| v.clamp(0.0, 255.0).round_ties_even() as u8;
    if new_height == height {
        return horizontal.into_iter().map(finish).collect();
    }
    let ky = taps(height, new_height);
    let mut out = Vec::with_capacity(new_height * row_len);
    for t in &ky {
        for i in 0..row_len {
            out.push(finish(weighted_sum(t, |y| horizontal[y * row_len + i])));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images_are_preserved() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bicubic_aa_rgb8(&src, 5, 4, 5, 4), src);
        // normalised weights keep a flat image flat, up or down, on both axes
        let flat = vec![77u8; 33 * 20 * 3];
        for (w, h) in [(10, 7), (64, 41), (33, 3), (1, 1)] {
            assert!(resize_bicubic_aa_rgb8(&flat, 33, 20, w, h).iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one_and_windows_stay_inside() {
        for (i, o) in [(1280, 420), (720, 224), (90, 112), (7, 3), (3, 7), (1, 5)] {
            for t in taps(i, o) {
                let s: f32 = t.weights.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: {s}");
                assert!(t.start + t.weights.len() <= i && !t.weights.is_empty());
            }
        }
    }
}

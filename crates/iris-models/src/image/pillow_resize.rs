//! Bit-exact port of Pillow's BICUBIC resize for 8-bit images (`Image.resize(size, BICUBIC)`),
//! mirroring `src/libImaging/Resample.c` of Pillow 13.0.0 (the version tools/reference pins):
//! `precompute_coeffs`, `normalize_coeffs_8bpc`, the 8bpc passes and `ImagingResampleInner`.
//!
//! HF's slow `Qwen2VLImageProcessor` resizes through PIL, so pixel parity with the reference
//! needs Pillow's exact arithmetic: f64 kernels quantised to 22-bit fixed point, a uint8
//! intermediate between the horizontal and vertical passes, and its particular window rounding.
//! The `image` crate's filters differ in all three, hence this hand-written port (pure std).

/// Pillow's `PRECISION_BITS`: 8 bits of pixel, 2 of headroom for negative lobes, in 32 bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Bicubic filter support (radius) at scale 1.
const SUPPORT: f64 = 2.0;

/// Keys' cubic convolution with a = -0.5, evaluated in Pillow's operation order so the f64
/// rounding (and hence the quantised coefficients) is identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output sample's window: the first input index and its fixed-point weights.
struct Kernel {
    start: usize,
    weights: Vec<i32>,
}

/// Per-output-index kernels for one axis (`precompute_coeffs` + `normalize_coeffs_8bpc`).
fn precompute(in_size: usize, out_size: usize) -> Vec<Kernel> {
    // Pillow takes the extent from a float box `(in1 - in0)`; routing through f32 mirrors that.
    let scale = (in_size as f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    let mut w = Vec::new();
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero; the clamps make the sign of that moot.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            w.clear();
            // Pillow adds the integer index and `xmin` before subtracting the f64 center.
            w.extend((xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)));
            let sum: f64 = w.iter().sum();
            let weights = w
                .iter()
                .map(|&v| {
                    // Division (not a reciprocal multiply) and half-away-from-zero rounding, as C.
                    let v = if sum != 0.0 { v / sum } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            Kernel { start: xmin, weights }
        })
        .collect()
}

/// Pillow's `clip8`: the accumulator already carries the +0.5 rounding bias.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Accumulator seed: 0.5 in fixed point, so the final shift rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over `rows` full rows of `src` (row length `in_w * ch`).
fn horizontal(src: &[u8], ch: usize, in_w: usize, rows: usize, kernels: &[Kernel]) -> Vec<u8> {
    let out_w = kernels.len();
    let mut out = vec![0u8; rows * out_w * ch];
    for (src_row, out_row) in src.chunks_exact(in_w * ch).take(rows).zip(out.chunks_exact_mut(out_w * ch)) {
        for (k, px) in kernels.iter().zip(out_row.chunks_exact_mut(ch)) {
            let window = &src_row[k.start * ch..(k.start + k.weights.len()) * ch];
            for (c, o) in px.iter_mut().enumerate() {
                // C sums in `int`; wrapping i32 mirrors it and can never panic (and with
                // normalised weights it cannot actually overflow).
                let acc = window
                    .chunks_exact(ch)
                    .zip(&k.weights)
                    .fold(HALF, |acc, (p, &w)| acc.wrapping_add((p[c] as i32).wrapping_mul(w)));
                *o = clip8(acc);
            }
        }
    }
    out
}

/// Vertical pass; `src` holds rows starting at source row `first_row`.
fn vertical(src: &[u8], row_len: usize, first_row: usize, kernels: &[Kernel]) -> Vec<u8> {
    let mut out = vec![0u8; kernels.len() * row_len];
    let mut acc = vec![0i32; row_len];
    for (k, out_row) in kernels.iter().zip(out.chunks_exact_mut(row_len)) {
        acc.fill(HALF);
        // Row-major accumulation is cache friendly; wrapping integer addition is associative,
        // so the result equals Pillow's per-pixel summation order bit for bit.
        for (j, &w) in k.weights.iter().enumerate() {
            let row = (k.start - first_row + j) * row_len;
            for (a, &p) in acc.iter_mut().zip(&src[row..row + row_len]) {
                *a = a.wrapping_add((p as i32).wrapping_mul(w));
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Channel-generic core (interleaved `ch` samples per pixel), `ImagingResampleInner`'s logic.
fn resize_bicubic_u8(src: &[u8], ch: usize, width: usize, height: usize, new_width: usize, new_height: usize) -> Vec<u8> {
    debug_assert!(ch >= 1 && width >= 1 && height >= 1 && new_width >= 1 && new_height >= 1, "all sizes must be >= 1");
    debug_assert_eq!(src.len(), width * height * ch);
    let need_h = new_width != width;
    let need_v = new_height != height;
    if !need_h && !need_v {
        return src.to_vec();
    }
    // The pass order changes the result (uint8 rounding in between). Pillow 13 runs the
    // vertical pass first when the height shrinks by more than twice the width's shrink (signed:
    // a growing width counts as negative shrink); older Pillow always went horizontal first.
    let dh = height as i64 - new_height as i64;
    let dw = width as i64 - new_width as i64;
    let vertical_first = dh > 0 && dh > dw * 2;
    let vert = precompute(height, new_height);
    if vertical_first {
        let tmp = vertical(src, width * ch, 0, &vert);
        return if need_h { horizontal(&tmp, ch, width, new_height, &precompute(width, new_width)) } else { tmp };
    }
    if !need_h {
        return vertical(src, width * ch, 0, &vert);
    }
    // Horizontal first: Pillow resamples only the source rows some vertical kernel reads.
    let (first, last) = match (vert.first(), vert.last()) {
        (Some(f), Some(l)) => (f.start, l.start + l.weights.len()),
        _ => (0, height),
    };
    let row = width * ch;
    let tmp = horizontal(&src[first * row..last * row], ch, width, last - first, &precompute(width, new_width));
    if !need_v {
        // Unchanged height gives first == 0 and last == height: `tmp` is the whole image.
        return tmp;
    }
    vertical(&tmp, new_width * ch, first, &vert)
}

/// Resizes interleaved 8-bit RGB (`src.len() == width*height*3`) to `new_width x new_height` exactly as Pillow's BICUBIC.
///
/// Preconditions: all four sizes are >= 1 and `src` has exactly `width * height * 3` bytes.
pub fn resize_bicubic_rgb8(src: &[u8], width: usize, height: usize, new_width: usize, new_height: usize) -> Vec<u8> {
    resize_bicubic_u8(src, 3, width, height, new_width, new_height)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test pattern (the Python generator uses the same formula).
    fn pattern(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    v.push(((x * 37 + y * 91 + c * 53 + (x * y) % 17) % 256) as u8);
                }
            }
        }
        v
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
    }

    fn check_hash(w: usize, h: usize, nw: usize, nh: usize, expected: u64) {
        let out = resize_bicubic_rgb8(&pattern(w, h), w, h, nw, nh);
        assert_eq!(out.len(), nw * nh * 3);
        assert_eq!(fnv1a(&out), expected, "{w}x{h} -> {nw}x{nh}");
    }

    // Expected values generated with Pillow 13.0.0:
    // Image.frombytes("RGB", (w, h), pattern).resize((nw, nh), Image.BICUBIC).tobytes()

    #[test]
    fn downscale_both_axes() {
        check_hash(150, 100, 140, 72, 0xcf552c3447ca7332);
    }

    #[test]
    fn downscale_odd_sizes() {
        check_hash(37, 23, 20, 15, 0xd32fcae58e11d4ed);
    }

    #[test]
    fn mixed_up_width_down_height() {
        check_hash(30, 500, 28, 504, 0x3d8d898692506599);
    }

    #[test]
    fn mixed_down_width_up_height() {
        check_hash(500, 30, 504, 28, 0xebba19bc30451023);
    }

    #[test]
    fn strong_downscale_10x() {
        check_hash(640, 480, 64, 48, 0x549e12aa427bd976);
    }

    #[test]
    fn upscale_4x() {
        check_hash(40, 30, 160, 120, 0xe779ffd6b06801fa);
    }

    #[test]
    fn square_70_to_56() {
        check_hash(70, 70, 56, 56, 0xd8afe6e6f66ddb77);
    }

    #[test]
    fn width_only() {
        check_hash(123, 45, 77, 45, 0xa0368818ada10a01);
    }

    #[test]
    fn height_only() {
        check_hash(45, 123, 45, 200, 0x658d46b836c95908);
    }

    #[test]
    fn identity() {
        check_hash(31, 17, 31, 17, 0xce3255cf3cd45215);
    }

    #[test]
    fn column_1xn() {
        check_hash(1, 50, 1, 23, 0xf2a8278c119f0188);
    }

    #[test]
    fn row_to_column() {
        check_hash(40, 1, 3, 9, 0xa108f2e271141185);
    }

    // 900 -> 90 rows shrinks height far more than width: Pillow 13 runs the vertical pass first
    // (as in downscale_both_axes, mixed_down_width_up_height and the 2x3 -> 4x1 case).
    #[test]
    fn vertical_first_strong() {
        check_hash(100, 900, 90, 90, 0x5399a1e14fdefb45);
    }

    #[test]
    fn column_upscale() {
        check_hash(1, 7, 3, 20, 0x7d8ffa81ec6f3008);
    }

    #[test]
    fn tiny_bytes_5x4_to_3x2() {
        let out = resize_bicubic_rgb8(&pattern(5, 4), 5, 4, 3, 2);
        assert_eq!(out, [77, 120, 155, 114, 134, 120, 169, 101, 160, 120, 121, 106, 88, 106, 150, 125, 150, 134]);
    }

    #[test]
    fn tiny_bytes_2x3_to_4x1() {
        let out = resize_bicubic_rgb8(&pattern(2, 3), 2, 3, 4, 1);
        assert_eq!(out, [88, 148, 116, 99, 136, 127, 121, 112, 149, 132, 100, 160]);
    }

    #[test]
    fn tiny_bytes_1x1_to_2x3() {
        let out = resize_bicubic_rgb8(&pattern(1, 1), 1, 1, 2, 3);
        assert_eq!(out, [0, 53, 106, 0, 53, 106, 0, 53, 106, 0, 53, 106, 0, 53, 106, 0, 53, 106]);
    }
}

//! The AVX-512F decode GEMV for f32, f16 and bf16 weights widened to f32 (f16 by `vcvtph2ps`,
//! bf16 as the top half of an f32: both exact) against f32 activations, and the weight-stream
//! prefetch both AVX-512 kernels share. Tiles of `M` activation rows by `G` weight rows: each
//! widened weight load serves the `M` rows and each activation load the `G` weight rows. Every
//! (activation row, weight row) sum runs the same two chains over 16-value steps and is reduced
//! the same way whatever the tile, so a row's result does not depend on the tile it ran in
//! (batch size included). `super::gemv_reference` is the twin it is tested against.

use super::{Prefetch, WeightRows};
use std::arch::x86_64::*;

/// One `prefetch` request per 64-byte line of `bytes` bytes from `at`.
#[inline(always)]
pub(super) fn prefetch_lines(prefetch: Prefetch, at: *const i8, bytes: usize) {
    // SAFETY (both): SSE is part of x86-64; a prefetch of any address is harmless.
    match prefetch {
        Prefetch::Off => {}
        Prefetch::L1(ahead) => (0..bytes).step_by(64).for_each(|line| unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(ahead + line)) }),
        Prefetch::L2(ahead) => (0..bytes).step_by(64).for_each(|line| unsafe { _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(ahead + line)) }),
    }
}

/// Calls `$tile::<M, G>($args)` for the run-time `($m, $g)`: the shapes `super::tile_plan` and
/// its passes and last tiles need, up to three activation rows by one or four weight rows
/// (constants, so the accumulators stay in registers).
macro_rules! for_tile_shape {
    ($m:expr, $g:expr, $tile:ident, $($arg:expr),*) => {
        match ($m, $g) {
            (1, 1) => $tile::<1, 1>($($arg),*),
            (1, 4) => $tile::<1, 4>($($arg),*),
            (2, 1) => $tile::<2, 1>($($arg),*),
            (2, 4) => $tile::<2, 4>($($arg),*),
            (3, 1) => $tile::<3, 1>($($arg),*),
            (3, 4) => $tile::<3, 4>($($arg),*),
            shape => unreachable!("no GEMV tile of {shape:?} (activation rows, weight rows)"),
        }
    };
}
pub(super) use for_tile_shape;

/// `cells[j * m + r] = sum_i x[r * k + i] * w[(o + j) * k + i]` for the `m` activation rows and
/// the `g` weight rows from `o`, the rows taken `chunk` at a time (`super::tile_plan`), the weight
/// stream prefetched as `prefetch` says (`super::prefetch`).
///
/// # Safety
/// The CPU must have AVX-512F; `x` must hold `m * k` values, `w` rows `o..o + g` and `cells`
/// `g * m` sums (`super::gemv` checks the sizes once per call).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_tile(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, (chunk, g): (usize, usize), cells: &mut [f32], prefetch: Prefetch) {
    debug_assert!(x.len() >= m * k && w.len() >= (o + g) * k && cells.len() >= g * m);
    for (r0, rows) in super::row_chunks(m, chunk) {
        let (x, cells) = (&x[r0 * k..], &mut cells[r0..]);
        // SAFETY (all arms): `tile`'s loads read 16 values at indices below (o + g) * k.
        unsafe {
            match w {
                WeightRows::F32(s) => for_tile_shape!(rows, g, tile, x, m, w, o, k, cells, (s.as_ptr().cast(), 4, prefetch), |i| _mm512_loadu_ps(s.as_ptr().add(i))),
                WeightRows::F16(s) => for_tile_shape!(rows, g, tile, x, m, w, o, k, cells, (s.as_ptr().cast(), 2, prefetch), |i| _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))),
                WeightRows::BF16(s) => for_tile_shape!(rows, g, tile, x, m, w, o, k, cells, (s.as_ptr().cast(), 2, prefetch), |i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))))
                }),
            }
        }
    }
}

/// `dot_tile` for `M` activation rows (sums `stride` apart in `cells`), `G` weight rows and one
/// storage, `(bytes, size, prefetch)`
/// the weights' first byte, bytes per weight and prefetch: `load(i)` widens weights `i..i + 16`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const G: usize>(x: &[f32], stride: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32], (bytes, size, prefetch): (*const i8, usize, Prefetch), load: impl Fn(usize) -> __m512) {
    let mut base = [0usize; G];
    for j in 0..G {
        base[j] = (o + j) * k;
    }
    // [weight row][activation row][chain]
    let mut acc = [[[_mm512_setzero_ps(); 2]; M]; G];
    let mut i = 0;
    // SAFETY (all): loads stay below base[j] + k and r * k + k in `x`; prefetches may point
    // anywhere.
    unsafe {
        while i + 32 <= k {
            for b in base {
                prefetch_lines(prefetch, bytes.wrapping_add((b + i) * size), 32 * size);
            }
            for u in 0..2 {
                let mut xv = [_mm512_setzero_ps(); M];
                for r in 0..M {
                    xv[r] = _mm512_loadu_ps(x.as_ptr().add(r * k + i + 16 * u));
                }
                for j in 0..G {
                    let wv = load(base[j] + i + 16 * u);
                    for r in 0..M {
                        acc[j][r][u] = _mm512_fmadd_ps(xv[r], wv, acc[j][r][u]);
                    }
                }
            }
            i += 32;
        }
    }
    for j in 0..G {
        for r in 0..M {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][r][0], acc[j][r][1]));
            for t in i..k {
                s += x[r * k + t] * super::weight_at(w, base[j] + t);
            }
            cells[j * stride + r] = s;
        }
    }
}

//! The AVX-512F decode GEMV for f32, f16 and bf16 weights widened to f32 (f16 by `vcvtph2ps`,
//! bf16 as the top half of an f32: both exact) against f32 activations, and the weight-stream
//! prefetch both AVX-512 kernels share. Tiles of `M` activation rows by `G` weight rows: each
//! widened weight load serves the `M` rows and each activation load the `G` weight rows. Every
//! (activation row, weight row) sum runs the same two chains over 16-value steps and is reduced
//! the same way whatever the tile, so a row's result does not depend on the tile it ran in
//! (batch size included). `super::gemv_reference` is the twin it is tested against.

use super::{Prefetch, WeightRows};
use std::arch::x86_64::*;

/// A prefetch kind as the tile loops' const parameter: the choice is made once per call, so a
/// loop carries no branch on it. Matching `Prefetch` inside the loop cost the f16 one-row loop
/// two reloads and two branches per 32 weights. Two threads streaming a [4096, 1536] f16 matrix
/// from L3 (a scratch harness, Zen 4 VM): 67-74 GB/s before, 74-82 with the const kind, 88-92
/// once `super::block_calls` also stopped dispatching per weight row; the bare loop read 90-95.
pub(super) const PREFETCH_OFF: u8 = 0;
pub(super) const PREFETCH_L1: u8 = 1;
pub(super) const PREFETCH_L2: u8 = 2;

/// One prefetch request of `KIND` per 64-byte line of `bytes` bytes, `ahead` bytes past `at`.
#[inline(always)]
pub(super) fn prefetch_lines<const KIND: u8>(at: *const i8, ahead: usize, bytes: usize) {
    let mut line = 0;
    while KIND != PREFETCH_OFF && line < bytes {
        // SAFETY (both): SSE is part of x86-64; a prefetch of any address is harmless.
        match KIND {
            PREFETCH_L1 => unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(ahead + line)) },
            _ => unsafe { _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(ahead + line)) },
        }
        line += 64;
    }
}

/// Calls `$tile::<M, G, KIND>(ahead, $args)` for the run-time `($m, $g)` and `$prefetch`: the
/// shapes `super::tile_plan` and its passes and last tiles need, up to three activation rows by
/// one or four weight rows (constants, so the accumulators stay in registers).
macro_rules! for_tile_shape {
    ($m:expr, $g:expr, $prefetch:expr, $tile:ident, $($arg:expr),*) => {
        match $prefetch {
            Prefetch::Off => $crate::gemv::avx512::for_tile_shape!(@shape $m, $g, $tile, PREFETCH_OFF, 0, $($arg),*),
            Prefetch::L1(ahead) => $crate::gemv::avx512::for_tile_shape!(@shape $m, $g, $tile, PREFETCH_L1, ahead, $($arg),*),
            Prefetch::L2(ahead) => $crate::gemv::avx512::for_tile_shape!(@shape $m, $g, $tile, PREFETCH_L2, ahead, $($arg),*),
        }
    };
    (@shape $m:expr, $g:expr, $tile:ident, $kind:ident, $ahead:expr, $($arg:expr),*) => {
        match ($m, $g) {
            (1, 1) => $tile::<1, 1, $kind>($ahead, $($arg),*),
            (1, 4) => $tile::<1, 4, $kind>($ahead, $($arg),*),
            (2, 1) => $tile::<2, 1, $kind>($ahead, $($arg),*),
            (2, 4) => $tile::<2, 4, $kind>($ahead, $($arg),*),
            (3, 1) => $tile::<3, 1, $kind>($ahead, $($arg),*),
            (3, 4) => $tile::<3, 4, $kind>($ahead, $($arg),*),
            shape => unreachable!("no GEMV tile of {shape:?} (activation rows, weight rows)"),
        }
    };
}
pub(super) use for_tile_shape;

/// `cells[j * m + r] = sum_i x[r * k + i] * w[(o + j) * k + i]` for the `m` activation rows and
/// the `rows` weight rows from `o`, the activation rows taken `chunk` at a time by `g` weight rows
/// (`super::tile_plan`, `super::block_calls`), the weight stream prefetched as `prefetch` says
/// (`super::prefetch`).
///
/// # Safety
/// The CPU must have AVX-512F; `x` must hold `m * k` values, `w` rows `o..o + rows` and `cells`
/// `rows * m` sums (`super::gemv` checks the sizes once per call).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_block(x: &[f32], m: usize, w: WeightRows, (o, rows): (usize, usize), k: usize, plan: (usize, usize), cells: &mut [f32], prefetch: Prefetch) {
    debug_assert!(x.len() >= m * k && w.len() >= (o + rows) * k && cells.len() >= rows * m);
    for (first, count, r0, mrows) in super::block_calls(m, plan, (o, rows)) {
        let (x, cells) = (&x[r0 * k..], &mut cells[(first - o) * m + r0..]);
        let g = plan.1;
        // SAFETY (all arms): `tile`'s loads read 16 values at indices below (first + count) * k.
        unsafe {
            match w {
                WeightRows::F32(s) => for_tile_shape!(mrows, g, prefetch, tiles, count, x, m, w, first, k, cells, (s.as_ptr().cast(), 4), |i| _mm512_loadu_ps(s.as_ptr().add(i))),
                WeightRows::F16(s) => for_tile_shape!(mrows, g, prefetch, tiles, count, x, m, w, first, k, cells, (s.as_ptr().cast(), 2), |i| _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))),
                WeightRows::BF16(s) => for_tile_shape!(mrows, g, prefetch, tiles, count, x, m, w, first, k, cells, (s.as_ptr().cast(), 2), |i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))))
                }),
            }
        }
    }
}

/// `tile` over `rows` weight rows from `o`, `G` at a time and the rest one at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const M: usize, const G: usize, const KIND: u8>(ahead: usize, rows: usize, x: &[f32], stride: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32], weights: (*const i8, usize), load: impl Fn(usize) -> __m512) {
    let mut j = 0;
    // SAFETY (both): the caller's bounds cover rows o..o + rows.
    while j + G <= rows {
        unsafe { tile::<M, G, KIND>(ahead, x, stride, w, o + j, k, &mut cells[j * stride..], weights, &load) };
        j += G;
    }
    while j < rows {
        unsafe { tile::<M, 1, KIND>(ahead, x, stride, w, o + j, k, &mut cells[j * stride..], weights, &load) };
        j += 1;
    }
}

/// One tile of `dot_block`: `M` activation rows (sums `stride` apart in `cells`), `G` weight
/// rows, one storage and a prefetch of `KIND` `ahead` bytes; `(bytes, size)`: the weights' first
/// byte and bytes per weight; `load(i)` widens weights `i..i + 16`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const G: usize, const KIND: u8>(ahead: usize, x: &[f32], stride: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32], (bytes, size): (*const i8, usize), load: impl Fn(usize) -> __m512) {
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
                prefetch_lines::<KIND>(bytes.wrapping_add((b + i) * size), ahead, 32 * size);
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

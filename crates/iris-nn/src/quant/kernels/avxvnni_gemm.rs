//! AVX-VNNI tile kernel of the int8 GEMM in `quant/gemm.rs`, for CPUs with 256-bit VNNI but no
//! AVX-512 (Intel client CPUs from Alder Lake): the same panel layout, integer dots and float
//! operation order as `avx512_gemm::tile`, tested against `tile_scalar`. Such CPUs have 16
//! vector registers, not 32, so a pass covers three activation rows and one 16-column half of
//! the pair (two 8-lane vectors): 6 f32 accumulators, 6 block dots, 2 weight vectors and the
//! broadcast activation word. The panel (K / 32 KiB) stays in L2 across the passes.

use super::avx2::vpdpbusd;
use crate::quant::gemm::{PanelPair, TileRows, BLOCK, PAIR, TILE_ROWS};
use std::arch::x86_64::*;

/// Activation rows per pass.
const PASS_ROWS: usize = 3;

/// `out[r * PAIR + c]` for the tile's rows and the pair's 32 columns.
pub unsafe fn tile(panel: &PanelPair, t: &TileRows, out: &mut [f32]) {
    assert!(t.rows <= TILE_ROWS && out.len() >= t.rows * PAIR);
    for first in (0..t.rows).step_by(PASS_ROWS) {
        for half in 0..2 {
            match ((t.rows - first).min(PASS_ROWS), panel.offset) {
                (1, false) => pass::<1, false>(panel, t, first, half, out),
                (2, false) => pass::<2, false>(panel, t, first, half, out),
                (_, false) => pass::<3, false>(panel, t, first, half, out),
                (1, true) => pass::<1, true>(panel, t, first, half, out),
                (2, true) => pass::<2, true>(panel, t, first, half, out),
                (_, true) => pass::<3, true>(panel, t, first, half, out),
            }
        }
    }
}

/// Rows `first..first + R` of the tile against columns `16 * half..16 * half + 16` of the pair.
/// `OFFSET`: q8_0's panel (`PanelPair::offset`), a compile-time branch as in `avx512_gemm`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pass<const R: usize, const OFFSET: bool>(panel: &PanelPair, t: &TileRows, first: usize, half: usize, out: &mut [f32]) {
    let nb = t.k / BLOCK;
    let row0 = t.row + first;
    let end = (row0 + R) * nb;
    assert!(panel.bytes.len() == nb * BLOCK * PAIR && t.acts.qs.len() >= (row0 + R) * t.k);
    assert!(t.acts.dx.len() >= end && t.acts.dx_sum.len() >= end && t.acts.offset.len() >= end);
    let x = t.acts.qs.as_ptr().add(row0 * t.k);
    let (dx, dx_sum, offset) = (t.acts.dx.as_ptr().add(row0 * nb), t.acts.dx_sum.as_ptr().add(row0 * nb), t.acts.offset.as_ptr().add(row0 * nb));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        // this half's [8 groups][16 columns][4 bytes] of block b, groups 128 bytes apart
        let w = panel.bytes.as_ptr().add(b * BLOCK * PAIR + 64 * half);
        let mut dot = [[_mm256_setzero_si256(); 2]; R];
        if OFFSET {
            for (r, dot) in dot.iter_mut().enumerate() {
                *dot = [_mm256_set1_epi32(*offset.add(r * nb + b)); 2];
            }
        }
        for g in 0..BLOCK / 4 {
            // columns 0-7 and 8-15 of the half, four bytes each
            let w0 = _mm256_loadu_si256(w.add(128 * g) as *const _);
            let w1 = _mm256_loadu_si256(w.add(128 * g + 32) as *const _);
            for (r, [lo, hi]) in dot.iter_mut().enumerate() {
                let a = _mm256_set1_epi32((x.add(r * t.k + b * BLOCK + 4 * g) as *const i32).read_unaligned());
                *lo = vpdpbusd(*lo, w0, a);
                *hi = vpdpbusd(*hi, w1, a);
            }
        }
        let cols = b * PAIR + 16 * half;
        for r in 0..R {
            let d = _mm256_set1_ps(*dx.add(r * nb + b));
            for v in 0..2 {
                let scale = _mm256_loadu_ps(panel.scale.as_ptr().add(cols + 8 * v));
                acc[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r][v]), _mm256_mul_ps(scale, d), acc[r][v]);
                if !OFFSET {
                    let min = _mm256_loadu_ps(panel.min.as_ptr().add(cols + 8 * v));
                    acc[r][v] = _mm256_fnmadd_ps(min, _mm256_set1_ps(*dx_sum.add(r * nb + b)), acc[r][v]);
                }
            }
        }
    }
    for (r, [lo, hi]) in acc.into_iter().enumerate() {
        let dst = out.as_mut_ptr().add((first + r) * PAIR + 16 * half);
        _mm256_storeu_ps(dst, lo);
        _mm256_storeu_ps(dst.add(8), hi);
    }
}

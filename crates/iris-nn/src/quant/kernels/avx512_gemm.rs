//! AVX512-VNNI tile kernel of the int8 GEMM in `quant/gemm.rs`: up to four activation rows
//! against a 32-column panel pair. Per 32-value block every row/half keeps an i32 accumulator fed
//! by eight `vpdpbusd` (four bytes of one activation row broadcast against four bytes of 16
//! columns), then folds it into f32 with the block's scales (q8_0's dots start at the
//! activations' offset instead of subtracting a min term). Tested against `tile_scalar`.

use crate::quant::gemm::{PanelPair, TileRows, BLOCK, PAIR, TILE_ROWS};
use std::arch::x86_64::*;

/// `out[r * PAIR + c]` for the tile's rows and the pair's 32 columns.
pub unsafe fn tile(panel: &PanelPair, t: &TileRows, out: &mut [f32]) {
    match (t.rows, panel.offset) {
        (1, false) => tile_rows::<1, false>(panel, t, out),
        (2, false) => tile_rows::<2, false>(panel, t, out),
        (3, false) => tile_rows::<3, false>(panel, t, out),
        (4, false) => tile_rows::<4, false>(panel, t, out),
        (1, true) => tile_rows::<1, true>(panel, t, out),
        (2, true) => tile_rows::<2, true>(panel, t, out),
        (3, true) => tile_rows::<3, true>(panel, t, out),
        (4, true) => tile_rows::<4, true>(panel, t, out),
        (rows, _) => unreachable!("{rows} rows in a tile (at most {TILE_ROWS})"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
/// `OFFSET`: q8_0's panel (the block dots start at the activations' `offset`, no min term).
unsafe fn tile_rows<const R: usize, const OFFSET: bool>(panel: &PanelPair, t: &TileRows, out: &mut [f32]) {
    let nb = t.k / BLOCK;
    assert!(out.len() >= R * PAIR && panel.bytes.len() == nb * BLOCK * PAIR && t.acts.qs.len() >= (t.row + R) * t.k);
    let x: [*const i8; R] = std::array::from_fn(|r| t.acts.qs.as_ptr().add((t.row + r) * t.k));
    let dx: [&[f32]; R] = std::array::from_fn(|r| &t.acts.dx[(t.row + r) * nb..][..nb]);
    let dx_sum: [&[f32]; R] = std::array::from_fn(|r| &t.acts.dx_sum[(t.row + r) * nb..][..nb]);
    let offset: [&[i32]; R] = std::array::from_fn(|r| &t.acts.offset[(t.row + r) * nb..][..nb]);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..nb {
        let w = panel.bytes.as_ptr().add(b * BLOCK * PAIR);
        let mut dot: [[__m512i; 2]; R] = std::array::from_fn(|r| {
            let start = if OFFSET { _mm512_set1_epi32(*offset[r].get_unchecked(b)) } else { _mm512_setzero_si512() };
            [start; 2]
        });
        for g in 0..BLOCK / 4 {
            // [16 columns][4 bytes] for each half of the pair
            let w0 = _mm512_loadu_si512(w.add(128 * g) as *const _);
            let w1 = _mm512_loadu_si512(w.add(128 * g + 64) as *const _);
            for r in 0..R {
                let a = _mm512_set1_epi32((x[r].add(b * BLOCK + 4 * g) as *const i32).read_unaligned());
                dot[r][0] = _mm512_dpbusd_epi32(dot[r][0], w0, a);
                dot[r][1] = _mm512_dpbusd_epi32(dot[r][1], w1, a);
            }
        }
        let scale = [_mm512_loadu_ps(panel.scale.as_ptr().add(b * PAIR)), _mm512_loadu_ps(panel.scale.as_ptr().add(b * PAIR + 16))];
        let min = [_mm512_loadu_ps(panel.min.as_ptr().add(b * PAIR)), _mm512_loadu_ps(panel.min.as_ptr().add(b * PAIR + 16))];
        for r in 0..R {
            let d = _mm512_set1_ps(*dx[r].get_unchecked(b));
            let ds = _mm512_set1_ps(*dx_sum[r].get_unchecked(b));
            for h in 0..2 {
                acc[r][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][h]), _mm512_mul_ps(scale[h], d), acc[r][h]);
                if !OFFSET {
                    acc[r][h] = _mm512_fnmadd_ps(min[h], ds, acc[r][h]);
                }
            }
        }
    }
    for (r, [lo, hi]) in acc.into_iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * PAIR), lo);
        _mm512_storeu_ps(out.as_mut_ptr().add(r * PAIR + 16), hi);
    }
}

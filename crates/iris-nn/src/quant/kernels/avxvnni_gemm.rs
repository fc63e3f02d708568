//! AVX-VNNI tile kernel of the int8 GEMM in `quant/gemm.rs`, for CPUs with 256-bit VNNI but no
//! AVX-512 (Intel client CPUs from Alder Lake): the same panel layout, integer dots and float
//! operation order as `avx512_gemm::tile`, tested against `tile_scalar`. Such CPUs have 16
//! vector registers, not 32, so a pass covers three activation rows and one 16-column half of
//! the pair (two 8-lane vectors): 6 f32 accumulators, 6 block dots, 2 weight vectors and the
//! broadcast activation word. The panel (K / 32 KiB) stays in L2 across the passes. Also the
//! AVX2 twins of `avx512_gemm`'s activation quantizer and q8_0 panel gathers, and q4_K panel
//! gathers for both.

use super::avx2::vpdpbusd;
use super::{q4k_block, Q4KBlock};
use candle_core::quantized::k_quants::QK_K;
use crate::quant::gemm::{PanelPair, QuantizedRowOut, TileRows, BLOCK, PAIR, TILE_ROWS};
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

/// `avx512_gemm::quantize_row` in 8-lane AVX2: one activation row -> int8 quants per 32-value
/// block, the block scales `amax / 127`, `dx * sum(quants)` and `-128 * sum(quants)`, in one pass
/// (the general quantizer's separate vectors, copies and scalar sums cost more). Every step is
/// `quantize_blocks_portable`'s, tested bit for bit against it.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row(src: &[f32], row: QuantizedRowOut) {
    let blocks = src.len() / BLOCK;
    assert!(src.len() == blocks * BLOCK && row.q.len() == src.len() && row.dx.len() == blocks && row.dx_sum.len() == blocks && row.offset.len() == blocks);
    let (half, one, limit) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0), _mm256_set1_ps(127.0));
    let (sign_bit, abs_mask) = (_mm256_set1_ps(-0.0), _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
    // dwords (four quants each) of the two packs below back in row order
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..blocks {
        let x = src.as_ptr().add(b * BLOCK);
        let v: [__m256; 4] = [0, 1, 2, 3].map(|i| _mm256_loadu_ps(x.add(8 * i)));
        // vmaxps returns its second operand when the first is NaN, so NaN lanes keep the max so far
        let mut m = _mm256_setzero_ps();
        for x in v {
            m = _mm256_max_ps(_mm256_and_ps(x, abs_mask), m);
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        let scale = amax / 127.0;
        let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let quants = v.map(|x| {
            let y = _mm256_mul_ps(x, inv);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(_mm256_sub_ps(y, t), abs_mask), half);
            // copysign(1, y)
            let step = _mm256_or_ps(_mm256_and_ps(y, sign_bit), one);
            let r = _mm256_add_ps(t, _mm256_and_ps(away, step));
            // NaN -> 0, then clamp to [-127, 127]
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(r, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit)))
        });
        // i32 -> i8 (in range, so the saturating packs change nothing); the packs work per
        // 128-bit lane, `order` undoes the interleave
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(quants[0], quants[1]), _mm256_packs_epi32(quants[2], quants[3]));
        _mm256_storeu_si256(row.q.as_mut_ptr().add(b * BLOCK) as *mut _, _mm256_permutevar8x32_epi32(bytes, order));
        let s = _mm256_add_epi32(_mm256_add_epi32(quants[0], quants[1]), _mm256_add_epi32(quants[2], quants[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
        row.dx[b] = scale;
        row.dx_sum[b] = scale * sum as f32;
        row.offset[b] = -128 * sum;
    }
}

/// `avx512_gemm::pack_q8_0_block` with 8-lane gathers: block `b` of q8_0 weight rows
/// `first..first + 32` in the panel layout, biased to unsigned bytes. Same bytes as the general
/// `PanelPair::pack_with` (tested).
#[target_feature(enable = "avx2")]
pub unsafe fn pack_q8_0_block(qs: &[i8], k: usize, first: usize, b: usize, out: &mut [u8]) {
    assert!(out.len() == BLOCK * PAIR && (first + PAIR) * k <= qs.len() && (b + 1) * BLOCK <= k && 8 * k <= i32::MAX as usize);
    // byte offsets of 8 consecutive rows from the first of them
    let rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(k as i32));
    let bias = _mm256_set1_epi32(0x8080_8080u32 as i32);
    for quarter in 0..PAIR / 8 {
        let base = qs.as_ptr().add((first + 8 * quarter) * k + b * BLOCK);
        for g in 0..BLOCK / 4 {
            // [g][32 columns][4 bytes]: columns 8 * quarter.. of group g
            let words = _mm256_i32gather_epi32::<1>(base.add(4 * g) as *const i32, rows);
            _mm256_storeu_si256(out.as_mut_ptr().add(g * 4 * PAIR + 32 * quarter) as *mut _, _mm256_xor_si256(words, bias));
        }
    }
}

/// The nibbles of super-block `s` of q4_K weight rows `first..first + 32` in the panel layout
/// (`out`: the panel's blocks `8s..8s + 8`): four bytes of 8 rows in one gather, the low and high
/// nibbles (sub-blocks `2h` and `2h + 1`) split from the same words. AVX2 only (AVX-512 CPUs
/// take `avx512_gemm::pack_q4k_super_block`). Same bytes as the general `PanelPair::pack_with` (tested), whose 4-byte moves per
/// row were ~10% of a q4_K GEMM's time here (`gemm_bench`: q4k 10% slower than q8_0, which
/// gathers). The scales and mins stay with the caller.
#[target_feature(enable = "avx2")]
pub unsafe fn pack_q4k_nibbles(blocks: &[Q4KBlock], per_row: usize, first: usize, s: usize, out: &mut [u8]) {
    assert!(out.len() == QK_K * PAIR && s < per_row);
    let nibble = _mm256_set1_epi32(0x0F0F_0F0F);
    for quarter in 0..PAIR / 8 {
        // the 8 rows' nibble bytes, as offsets from the first row's (rows ascend in storage)
        let qs: [*const u8; 8] = std::array::from_fn(|c| q4k_block(blocks, per_row, first + 8 * quarter + c, s).qs.as_ptr());
        let offsets: [i32; 8] = std::array::from_fn(|c| i32::try_from(qs[c].offset_from(qs[0])).expect("eight weight rows within 2 GiB"));
        let offsets = _mm256_loadu_si256(offsets.as_ptr() as *const _);
        for h in 0..4 {
            for g in 0..BLOCK / 4 {
                let words = _mm256_i32gather_epi32::<1>(qs[0].add(32 * h + 4 * g) as *const i32, offsets);
                let halves = [_mm256_and_si256(words, nibble), _mm256_and_si256(_mm256_srli_epi32::<4>(words), nibble)];
                for (j, v) in [2 * h, 2 * h + 1].into_iter().zip(halves) {
                    _mm256_storeu_si256(out.as_mut_ptr().add(j * BLOCK * PAIR + g * 4 * PAIR + 32 * quarter) as *mut _, v);
                }
            }
        }
    }
}

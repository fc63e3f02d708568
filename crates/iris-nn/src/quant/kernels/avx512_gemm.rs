//! AVX512-VNNI tile kernel of the int8 GEMM in `quant/gemm.rs`: up to four activation rows
//! against a 32-column panel pair. Per 32-value block every row/half keeps an i32 accumulator fed
//! by eight `vpdpbusd` (four bytes of one activation row broadcast against four bytes of 16
//! columns), then folds it into f32 with the block's scales (q8_0's dots start at the
//! activations' offset instead of subtracting a min term). Tested against `tile_scalar`.
//! `quantize_row` is the activation side: `quantize_blocks_portable`'s arithmetic 32 values at a
//! time, tested bit for bit against the general row quantizer.

use crate::quant::gemm::{PanelPair, QuantizedRowOut, TileRows, BLOCK, PAIR, TILE_ROWS};
use crate::quant::kernels::{q4k_block, Q4KBlock};
use candle_core::quantized::k_quants::QK_K;
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
        (5, false) => tile_rows::<5, false>(panel, t, out),
        (6, false) => tile_rows::<6, false>(panel, t, out),
        (5, true) => tile_rows::<5, true>(panel, t, out),
        (6, true) => tile_rows::<6, true>(panel, t, out),
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

/// One activation row -> int8 quants per 32-value block, the block scales `amax / 127`, `dx *
/// sum(quants)` and `-128 * sum(quants)`. Every step is `quantize_blocks_portable`'s: the max
/// skips NaN, `v * (1 / scale)` rounds half away from zero (truncate, then step away where the
/// cut-off part is >= 0.5), NaN quantizes to 0.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_row(src: &[f32], row: QuantizedRowOut) {
    let blocks = src.len() / BLOCK;
    assert!(src.len() == blocks * BLOCK && row.q.len() == src.len() && row.dx.len() == blocks && row.dx_sum.len() == blocks && row.offset.len() == blocks);
    let (half, one, limit) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0), _mm512_set1_ps(127.0));
    let sign_bit = _mm512_set1_epi32(i32::MIN);
    for b in 0..blocks {
        let x = src.as_ptr().add(b * BLOCK);
        let v = [_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16))];
        // vmaxps returns its second operand when the first is NaN, so NaN lanes keep the max so far
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[1]), _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps())));
        let scale = amax / 127.0;
        let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let mut quants = [_mm512_setzero_si512(); 2];
        for (i, x) in v.into_iter().enumerate() {
            let y = _mm512_mul_ps(x, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(y, t)), half);
            // copysign(1, y)
            let step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(y), sign_bit), _mm512_castps_si512(one)));
            let r = _mm512_mask_add_ps(t, away, t, step);
            // NaN -> 0 (masked out), then clamp to [-127, 127]
            let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r);
            let r = _mm512_max_ps(_mm512_min_ps(r, limit), _mm512_sub_ps(_mm512_setzero_ps(), limit));
            quants[i] = _mm512_cvttps_epi32(r);
            _mm_storeu_si128(row.q.as_mut_ptr().add(b * BLOCK + 16 * i) as *mut _, _mm512_cvtepi32_epi8(quants[i]));
        }
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(quants[0], quants[1]));
        row.dx[b] = scale;
        row.dx_sum[b] = scale * sum as f32;
        row.offset[b] = -128 * sum;
    }
}

/// Block `b` of q8_0 weight rows `first..first + 32` (`qs [N, K]`) in the panel layout of
/// `PanelPair` (`out`: that block's `[8 groups][2 halves][16 columns][4 bytes]`), biased to
/// unsigned bytes: each half one `transpose_words`. Same bytes as the general
/// `PanelPair::pack_with` (tested). It replaced one 16-row gather per group: AMD's gathers are
/// slow, and on the Zen 5 VM packing was 10% of a 307-token prefill's profile (the packer alone:
/// 1.54 -> 0.50 ms over a [1280, 5120] weight, one thread).
#[target_feature(enable = "avx512f")]
pub unsafe fn pack_q8_0_block(qs: &[i8], k: usize, first: usize, b: usize, out: &mut [u8]) {
    assert!(out.len() == BLOCK * PAIR && (first + PAIR) * k <= qs.len() && (b + 1) * BLOCK <= k);
    let bias = _mm512_set1_epi32(0x8080_8080u32 as i32);
    for half in 0..2 {
        let rows: [*const u8; 16] = std::array::from_fn(|r| qs.as_ptr().add((first + 16 * half + r) * k + b * BLOCK) as *const u8);
        for (g, words) in transpose_words(&rows).into_iter().enumerate() {
            _mm512_storeu_si512(out.as_mut_ptr().add(g * 4 * PAIR + 64 * half) as *mut _, _mm512_xor_si512(words, bias));
        }
    }
}

/// Super-block `s` of q4_K weight rows `first..first + 32` in the panel layout: `bytes` the
/// panel's blocks `8s..8s + 8` (per 32 nibble bytes of a row, sub-blocks `2h` and `2h + 1` in
/// the low and high nibbles, one `transpose_words` per 16 rows), `scale`/`min` their `[8][32]`
/// `d * sc[j]` and `dmin * m[j]` (the 20-byte block headers transposed the same way, 16 columns
/// per multiply). Same bytes and bits as the general `PanelPair::pack_with` (tested), which it
/// replaced on AVX-512 with the AVX2 nibble gathers of `avxvnni_gemm::pack_q4k_nibbles` and a
/// scalar loop over the scales: 0.90 + ~1.0 ms -> 0.35 ms + the vector scales per [8960, 1536]
/// weight on the Zen 5 VM, one thread, where AMD's gathers are slow.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn pack_q4k_super_block(blocks: &[Q4KBlock], per_row: usize, first: usize, s: usize, bytes: &mut [u8], scale: &mut [f32], min: &mut [f32]) {
    const SUB: usize = QK_K / BLOCK;
    assert!(bytes.len() == QK_K * PAIR && scale.len() == SUB * PAIR && min.len() == SUB * PAIR && s < per_row);
    let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
    let byte = _mm512_set1_epi32(0xFF);
    for half in 0..2 {
        let block: [*const Q4KBlock; 16] = std::array::from_fn(|r| q4k_block(blocks, per_row, first + 16 * half + r, s) as *const Q4KBlock);
        for h in 0..4 {
            let rows = block.map(|b| (*b).qs.as_ptr().add(32 * h));
            for (g, words) in transpose_words(&rows).into_iter().enumerate() {
                let halves = [_mm512_and_si512(words, nibble), _mm512_and_si512(_mm512_srli_epi32::<4>(words), nibble)];
                for (j, v) in [2 * h, 2 * h + 1].into_iter().zip(halves) {
                    _mm512_storeu_si512(bytes.as_mut_ptr().add(j * BLOCK * PAIR + g * 4 * PAIR + 64 * half) as *mut _, v);
                }
            }
        }
        // the headers' words (`repr(C)`, 148-byte blocks): [dm], [sc 0-3], [sc 4-7], [m 0-3], [m 4-7]
        let header = transpose_words(&block.map(|b| b as *const u8));
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(header[0]));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(header[0])));
        for j in 0..SUB {
            // byte j % 4 of the word holding sc[j] (m[j])
            let nth = |w: __m512i| _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, _mm512_set1_epi32(8 * (j % 4) as i32)), byte));
            _mm512_storeu_ps(scale.as_mut_ptr().add(j * PAIR + 16 * half), _mm512_mul_ps(d, nth(header[1 + j / 4])));
            _mm512_storeu_ps(min.as_mut_ptr().add(j * PAIR + 16 * half), _mm512_mul_ps(dmin, nth(header[3 + j / 4])));
        }
    }
}

/// The 32 bytes at each of 16 `rows` as eight vectors `[16 rows]` of one 4-byte word each
/// (vector `g`: bytes `4g..4g + 4` of every row), transposed in registers: the rows in pairs
/// per vector, then three rounds of `vpermt2d` (rows 2 -> 4 -> 8 -> 16 per vector while the
/// words per row halve).
///
/// # Safety
/// Each pointer is valid for 32 bytes; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_words(rows: &[*const u8; 16]) -> [__m512i; 8] {
    let idx = |i: &[i32; 16]| _mm512_loadu_si512(i.as_ptr() as *const _);
    let [rows_lo, rows_hi, pairs_lo, pairs_hi, single_lo, single_hi] = TRANSPOSE_INDEX.each_ref().map(idx);
    let row = |r: usize| _mm256_loadu_si256(rows[r] as *const _);
    // [rows 2p, 2p + 1][8 words]
    let two: [__m512i; 8] = std::array::from_fn(|p| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * p)), row(2 * p + 1)));
    // [4 words][rows 4q..4q + 4]: words 0-3 in `four[q]`, 4-7 in `four[4 + q]`
    let four: [__m512i; 8] = std::array::from_fn(|i| _mm512_permutex2var_epi32(two[2 * (i % 4)], if i < 4 { rows_lo } else { rows_hi }, two[2 * (i % 4) + 1]));
    // [2 words][rows 8s..8s + 8]: `eight[4 * s + pair of words]`
    let eight: [__m512i; 8] = std::array::from_fn(|i| {
        let (s, pair) = (i / 4, i % 4);
        let (a, b) = (four[4 * (pair / 2) + 2 * s], four[4 * (pair / 2) + 2 * s + 1]);
        _mm512_permutex2var_epi32(a, if pair % 2 == 0 { pairs_lo } else { pairs_hi }, b)
    });
    // [16 rows] of word g
    std::array::from_fn(|g| _mm512_permutex2var_epi32(eight[g / 2], if g % 2 == 0 { single_lo } else { single_hi }, eight[4 + g / 2]))
}

/// `vpermt2d` indexes of `transpose_words` (an index `16 + j` takes word `j` of the
/// second operand). Round 1, from [2 rows][8 words] pairs of vectors: [words 0-3 | 4-7][4 rows].
/// Round 2, from two [4 words][4 rows]: [words 0-1 | 2-3 of those four][8 rows]. Round 3, from
/// two [2 words][8 rows]: [the first | second word][16 rows].
const TRANSPOSE_INDEX: [[i32; 16]; 6] = {
    let mut t = [[0i32; 16]; 6];
    let mut j = 0;
    while j < 16 {
        let (g, r) = (j / 4, j % 4);
        // word g of row r from [2 rows][8 words] pairs: rows 0-1 in the first
        t[0][j] = ((r / 2) * 16 + (r % 2) * 8 + g) as i32;
        t[1][j] = ((r / 2) * 16 + (r % 2) * 8 + 4 + g) as i32;
        let (g, r) = (j / 8, j % 8);
        // from [4 words][4 rows]: rows 0-3 in the first
        t[2][j] = ((r / 4) * 16 + g * 4 + r % 4) as i32;
        t[3][j] = ((r / 4) * 16 + (2 + g) * 4 + r % 4) as i32;
        // from [2 words][8 rows]: rows 0-7 in the first
        t[4][j] = ((j / 8) * 16 + j % 8) as i32;
        t[5][j] = ((j / 8) * 16 + 8 + j % 8) as i32;
        j += 1;
    }
    t
};

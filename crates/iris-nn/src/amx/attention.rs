//! Attention (full, or causal for prefill) on AMX tiles for f32 inputs whose products may be
//! bf16 (models with quantized or 16-bit linears, `attention::Products::Bf16`; bf16 inputs are widened to
//! f32 first and round back exactly). Per head and chunk of up to 256 query rows, the keys are
//! walked in blocks of 512 with an online softmax, as flash attention does: the block's scores
//! `Q K^T` on tiles in f32, each row's running maximum and sum of exps updated, the output so
//! far rescaled where a row's maximum rose, and the block's `P V` added on tiles. Q, K and V
//! are rounded to bf16; scores, exps and their sums stay f32; the unnormalised exps are rounded
//! to bf16 for `P V` and the rows divided by the sums at the end (as PyTorch's CPU flash
//! attention does for bf16). `attention::attention_slow` on the rounded inputs is its twin in
//! the tests.
//!
//! Why: the f32 flash attention (`flash_attention`) runs at ~226 GFLOP/s on the Xeon VM of
//! BENCHMARKS.md, ~20% of a q8_0 448² vision encode; tile products run at 1.2-1.8 TFLOP/s.
//! Key blocks: with whole rows of scores a task held only 32 of CogVLM2's 9217-key rows, so
//! each 32 rows streamed the head's 4.7 MB of K and V panels from L3 (703-730 GFLOP/s on
//! `[16, 9217, 112]`); a block's scores, exps and K/V slices fit L2 with 256 rows
//! (945-1080 GFLOP/s, BENCHMARKS.md).

use super::pack::{self, K_STEP, PANEL};
use super::{Aligned, TaskBlock, WeightRows, MICRO};
use crate::softmax::CausalRows;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::softmax::avx512::{exp_to_bf16_from, row_max};

/// Elsewhere AMX attention never runs (`super::available()` is false); these keep it compiling.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_to_bf16_from(_row: &[f32], _visible: usize, _scale: f32, _max: f32, _dst: &mut [u16]) -> f32 {
    unreachable!("AMX is x86-64 only")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn row_max(_row: &[f32], _visible: usize) -> f32 {
    unreachable!("AMX is x86-64 only")
}

/// Most query rows per task: each K and V panel a task reads from L3 serves this many rows.
const MAX_CHUNK_ROWS: usize = 256;
/// Keys per block of the online softmax. A task's scores, exps, K and V slices for one block
/// (256 rows: 512 + 256 + 128 + 128 KiB) stay in L2.
const KEY_BLOCK: usize = 512;

/// Heads, query rows, head dim, KV heads, keys.
pub(crate) type AttentionDims = (usize, usize, usize, usize, usize);

/// `q [H, T, D]`, `k`/`v` `[KVH, S, D]` (f32, `H % KVH == 0`) into `out [H, T, D]`. With
/// `causal = Some(offset)` query `t` sits at position `offset + t` and sees keys
/// `0..=offset + t` (each query chunk's products stop at the last key it sees); with `None`
/// every query sees every key. Only call where `super::available()`.
pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], (h, t, d, kvh, s): AttentionDims, causal: Option<usize>, scale: f32, out: &mut [f32]) {
    assert!(q.len() == h * t * d && k.len() == kvh * s * d && v.len() == k.len() && out.len() == q.len() && kvh > 0 && h % kvh == 0);
    assert!(super::available(), "AMX attention called without AMX");
    let (d_pad, s_pad, o_cols) = (d.next_multiple_of(K_STEP), s.next_multiple_of(K_STEP), d.next_multiple_of(PANEL));
    // per KV head: K as the weight of the score product ([n = S, k = D]) and V^T as the weight
    // of the output product ([n = D, k = S]), both packed once for all query chunks
    let (k_len, v_len) = (s_pad / PANEL * d_pad / 2 * PANEL, o_cols / PANEL * s_pad / 2 * PANEL);
    let mut k_panels = Aligned::<u32>::reused(kvh * k_len);
    let mut v_panels = Aligned::<u32>::reused(kvh * v_len);
    k_panels.as_mut_slice().par_chunks_mut(k_len).zip(v_panels.as_mut_slice().par_chunks_mut(v_len)).enumerate().for_each(|(i, (kp, vp))| {
        let (kh, vh) = (&k[i * s * d..(i + 1) * s * d], &v[i * s * d..(i + 1) * s * d]);
        let mut scratch = Aligned::<f32>::reused(16 * d_pad);
        for (j, panel) in kp.chunks_exact_mut(d_pad / 2 * PANEL).enumerate() {
            // SAFETY: `available()` checked AVX-512 F/BF16.
            unsafe { pack::panel_avx512(&WeightRows::F32(kh), s, d, j * PANEL, scratch.as_mut_slice(), pack::uninit_view(panel)) };
        }
        // SAFETY: as above.
        unsafe { pack::transposed_panels_avx512(vh, s, d, vp) };
    });
    // query rows per task: whole 2 x 2-tile blocks, at most 256
    let rows = MAX_CHUNK_ROWS.min(t.next_multiple_of(MICRO));
    let chunks = t.div_ceil(rows);
    let dst = crate::tiled_output::ColumnTiles::new(out, h * t, d);
    let (k_panels, v_panels) = (k_panels.as_slice(), v_panels.as_slice());
    let (k_panel_len, v_panel_len) = (d_pad / 2 * PANEL, s_pad / 2 * PANEL);
    (0..h * chunks).into_par_iter().for_each(|task| {
        let (hi, t0) = (task / chunks, task % chunks * rows);
        let (len, kv) = (rows.min(t - t0), hi / (h / kvh));
        let rows_pad = len.next_multiple_of(MICRO);
        // Q rows [rows_pad, d_pad] in bf16, zero padded
        let mut a = Aligned::<u16>::reused(rows_pad * d_pad);
        let qh = &q[(hi * t + t0) * d..][..len * d];
        for (dst, src) in a.as_mut_slice().chunks_exact_mut(d_pad).zip(qh.chunks_exact(d).chain(std::iter::repeat(&[][..]))) {
            // SAFETY: `available()` checked AVX-512 F/BF16/VL.
            unsafe { pack::round_row_avx512(src, pack::uninit_view(dst)) };
        }
        // the keys this chunk sees: all, or up to its last query's position
        let seen = causal.map_or(s, |offset| (offset + t0 + len).min(s));
        let mask = causal.map(|offset| CausalRows { first_position: offset + t0, rows_per_query_block: rows_pad });
        // per row: the running maximum score, the sum of exps against it, and the factor that
        // moves the output accumulated so far onto the new maximum
        let (mut maxima, mut sums, mut rescale) = ([f32::NEG_INFINITY; MAX_CHUNK_ROWS], [0f32; MAX_CHUNK_ROWS], [1f32; MAX_CHUNK_ROWS]);
        // output [rows_pad, o_cols], summed over the key blocks
        let mut o = Aligned::<f32>::reused(rows_pad * o_cols);
        o.as_mut_slice().fill(0.0);
        let mut scores = Aligned::<f32>::reused(rows_pad * KEY_BLOCK);
        let mut p = Aligned::<u16>::reused(rows_pad * KEY_BLOCK);
        for k0 in (0..seen).step_by(KEY_BLOCK) {
            let width = KEY_BLOCK.min(seen - k0);
            let width_pad = width.next_multiple_of(PANEL);
            // scores [rows_pad, width_pad] in f32 against keys k0..k0 + width_pad (K panels are
            // zero past S)
            let (scores, p) = (&mut scores.as_mut_slice()[..rows_pad * width_pad], &mut p.as_mut_slice()[..rows_pad * width_pad]);
            let k_block = &k_panels[kv * k_len + k0 / PANEL * k_panel_len..][..width_pad / PANEL * k_panel_len];
            let block = TaskBlock { a: a.as_slice(), k_pad: d_pad, r0: 0, rows_pad, panels: k_block, panel_len: k_panel_len, acc: scores, ldc: width_pad, accumulate: false };
            // SAFETY: `available()` checked AMX and the tile permission.
            unsafe { block.run() };
            // exps [rows_pad, width_pad] in bf16 against each row's running maximum; masked
            // keys, keys past the block and rows past the chunk zero
            for (r, (dst, row)) in p.chunks_exact_mut(width_pad).zip(scores.chunks_exact(width_pad)).enumerate() {
                let visible = if r < len { mask.map_or(seen, |m| m.visible(r, seen)).saturating_sub(k0).min(width) } else { 0 };
                // SAFETY (both calls): `available()` checked AVX-512 F/BF16/VL.
                let block_max = unsafe { row_max(row, visible) };
                if block_max == f32::NEG_INFINITY {
                    // nothing visible (or only -inf scores; `row_max` skips NaN): the row's
                    // state stays as it was
                    dst.fill(0);
                    rescale[r] = 1.0;
                    continue;
                }
                let max = maxima[r].max(block_max);
                rescale[r] = if max == maxima[r] { 1.0 } else { ((maxima[r] - max) * scale).exp() };
                sums[r] = sums[r] * rescale[r] + unsafe { exp_to_bf16_from(row, visible, scale, max, dst) };
                maxima[r] = max;
            }
            // the output so far onto the new maxima (rows whose maximum rose), then this block's
            // P V added to it: pair row k0 / 2 of each V^T panel
            for (acc, &factor) in o.as_mut_slice().chunks_exact_mut(o_cols).zip(&rescale[..len]) {
                if factor != 1.0 {
                    acc.iter_mut().for_each(|x| *x *= factor);
                }
            }
            let v_block = &v_panels[kv * v_len + k0 / 2 * PANEL..][..v_len - k0 / 2 * PANEL];
            let block = TaskBlock { a: p, k_pad: width_pad, r0: 0, rows_pad, panels: v_block, panel_len: v_panel_len, acc: o.as_mut_slice(), ldc: o_cols, accumulate: true };
            // SAFETY: as above.
            unsafe { block.run() };
        }
        for (row, sum) in o.as_mut_slice().chunks_exact_mut(o_cols).zip(&sums[..len]) {
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        // SAFETY: this task alone owns rows hi * t + t0.. of the [H * T, D] output.
        unsafe { dst.write(hi * t + t0, len, 0, d, o.as_slice(), o_cols) };
    });
}

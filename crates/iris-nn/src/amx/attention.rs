//! Attention (full, or causal for prefill) on AMX tiles for f32 inputs whose products may be
//! bf16 (models with quantized or 16-bit linears, `attention::Products::Bf16`; bf16 inputs are widened to
//! f32 first and round back exactly): per head, scores `Q K^T` and
//! the weighted sum `P V` as two tile products with the `[T, S]` scores of a query chunk in f32
//! between them. Q, K and V are rounded to bf16, the scores, exps and their sums stay f32, the
//! unnormalised exps are rounded to bf16 for `P V` and its rows divided by the sums (as
//! PyTorch's CPU flash attention does for bf16).
//! `attention::attention_slow` on the rounded inputs is its twin in the tests.
//!
//! Why: the f32 flash attention (`flash_attention`) runs at ~226 GFLOP/s on the Xeon VM of
//! BENCHMARKS.md, ~20% of a q8_0 448² vision encode; tile products run at 1.2-1.8 TFLOP/s.

use super::pack::{self, K_STEP, PANEL};
use super::{Aligned, TaskBlock, WeightRows, MICRO};
use crate::softmax::CausalRows;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::softmax::avx512::exp_to_bf16;

/// Elsewhere AMX attention never runs (`super::available()` is false); this keeps it compiling.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_to_bf16(_row: &[f32], _visible: usize, _scale: f32, _dst: &mut [u16]) -> f32 {
    unreachable!("AMX is x86-64 only")
}

/// Score bytes of one query chunk: bounds a task's f32 scores (256 rows of 1024 keys, 32 rows
/// of CogVLM2's 9217).
const SCORE_CHUNK_BYTES: usize = 1 << 20;
/// Most query rows per task.
const MAX_CHUNK_ROWS: usize = 256;

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
            unsafe { pack::panel_avx512(&WeightRows::F32(kh), s, d, j * PANEL, scratch.as_mut_slice(), panel) };
        }
        // SAFETY: as above.
        unsafe { pack::transposed_panels_avx512(vh, s, d, vp) };
    });
    // query rows per task: whole 2 x 2-tile blocks, 32 to 256 of them
    let rows = (SCORE_CHUNK_BYTES / (s_pad * 4) / MICRO * MICRO).clamp(MICRO, MAX_CHUNK_ROWS).min(t.next_multiple_of(MICRO));
    let chunks = t.div_ceil(rows);
    let dst = crate::tiled_output::ColumnTiles::new(out, h * t, d);
    let (k_panels, v_panels) = (k_panels.as_slice(), v_panels.as_slice());
    (0..h * chunks).into_par_iter().for_each(|task| {
        let (hi, t0) = (task / chunks, task % chunks * rows);
        let (len, kv) = (rows.min(t - t0), hi / (h / kvh));
        let rows_pad = len.next_multiple_of(MICRO);
        // Q rows [rows_pad, d_pad] in bf16, zero padded
        let mut a = Aligned::<u16>::reused(rows_pad * d_pad);
        let qh = &q[(hi * t + t0) * d..][..len * d];
        for (dst, src) in a.as_mut_slice().chunks_exact_mut(d_pad).zip(qh.chunks_exact(d).chain(std::iter::repeat(&[][..]))) {
            // SAFETY: `available()` checked AVX-512 F/BF16/VL.
            unsafe { pack::round_row_avx512(src, dst) };
        }
        // the keys this chunk sees: all, or up to its last query's position
        let seen = causal.map_or(s, |offset| (offset + t0 + len).min(s));
        let seen_pad = seen.next_multiple_of(K_STEP);
        let mask = causal.map(|offset| CausalRows { first_position: offset + t0, rows_per_query_block: rows_pad });
        // scores [rows_pad, seen_pad] in f32
        let mut scores = Aligned::<f32>::reused(rows_pad * seen_pad);
        let k_panel_len = d_pad / 2 * PANEL;
        let block = TaskBlock { a: a.as_slice(), k_pad: d_pad, r0: 0, rows_pad, panels: &k_panels[kv * k_len..][..seen_pad / PANEL * k_panel_len], panel_len: k_panel_len, acc: scores.as_mut_slice(), ldc: seen_pad };
        // SAFETY: `available()` checked AMX and the tile permission.
        unsafe { block.run() };
        // exps [rows_pad, seen_pad] in bf16, unnormalised; masked keys, keys past S and rows
        // past the chunk zero
        let mut p = Aligned::<u16>::reused(rows_pad * seen_pad);
        let mut inv_sums = [0f32; MAX_CHUNK_ROWS];
        for (r, (dst, row)) in p.as_mut_slice().chunks_exact_mut(seen_pad).zip(scores.as_slice().chunks_exact(seen_pad)).enumerate() {
            if r < len {
                let visible = mask.map_or(seen, |m| m.visible(r, seen));
                // SAFETY: as above.
                inv_sums[r] = 1.0 / unsafe { exp_to_bf16(&row[..seen], visible, scale, dst) };
            } else {
                dst.fill(0);
            }
        }
        drop(scores);
        // output [rows_pad, o_cols], summing over the keys seen only
        let mut o = Aligned::<f32>::reused(rows_pad * o_cols);
        let block = TaskBlock { a: p.as_slice(), k_pad: seen_pad, r0: 0, rows_pad, panels: &v_panels[kv * v_len..][..v_len], panel_len: s_pad / 2 * PANEL, acc: o.as_mut_slice(), ldc: o_cols };
        // SAFETY: as above.
        unsafe { block.run() };
        for (row, inv) in o.as_mut_slice().chunks_exact_mut(o_cols).zip(&inv_sums[..len]) {
            row.iter_mut().for_each(|x| *x *= inv);
        }
        // SAFETY: this task alone owns rows hi * t + t0.. of the [H * T, D] output.
        unsafe { dst.write(hi * t + t0, len, 0, d, o.as_slice(), o_cols) };
    });
}

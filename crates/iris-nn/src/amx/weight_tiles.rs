//! The AMX GEMM for products of few rows (a prefill chunk): the weight as the tiles' A operand
//! and the activations as their B panels, `C^T = W X^T`, the `[n, m]` result written back
//! transposed. Why: as the B operand (`super::activation_tiles_gemm`) every weight value passes
//! through a 16 x 16 transpose while packing, ~25% of a 307-row product on the Xeon VM of
//! BENCHMARKS.md; as the A operand a weight row is only decoded to bf16 in place, and the
//! transposes move to the activations (`m x k`) and the output (`m x n`), fewer values when `m`
//! is well below `k` and `n`. Same numbers as `activation_tiles_gemm` (bf16 operands, f32 sums
//! in the same k order): equal bit for bit for finite normal inputs (tested); the two round a
//! denormal activation differently (this path flushes it to zero).

use super::pack::{self, K_STEP, PANEL};
use super::{Aligned, TaskBlock, WeightRows, MICRO};
use crate::tiled_output::ColumnTiles;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many rows products take this layout. Text prefill, alternating with the other
/// layout (q8_0 Qwen2-VL-2B): 399 tokens 900-904 against 989-1020 ms, 499 tokens 1302-1337
/// against 1255-1258 ms (each task's activation panels and accumulators outgrow L2).
pub(super) const MAX_ROWS: usize = 448;

/// `out = x W^T` (`x [m, k]`, `W [n, k]`) through `dst`; the caller has checked the operands
/// and that AMX is `available()` (so AVX-512 F/BF16/VL too).
pub(super) fn gemm(x: &[f32], m: usize, w: &WeightRows, n: usize, k: usize, dst: ColumnTiles) {
    let (k_pad, m_pad) = (k.next_multiple_of(K_STEP), m.next_multiple_of(PANEL));
    // activations as B panels: [m_pad / PANEL][k_pad / 2][PANEL] pairs, zero past m and k
    let panel_len = k_pad / 2 * PANEL;
    let pack_activations = |panels: &mut [MaybeUninit<u32>]| {
        panels.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
            let mut scratch = Aligned::<f32>::reused(16 * k_pad);
            // SAFETY: `available()` checked AVX-512 F/BF16; `x` is [m, k].
            unsafe { pack::panel_avx512(&WeightRows::F32(x), m, k, p * PANEL, scratch.as_mut_slice(), panel) };
        })
    };
    // SAFETY: `panel_avx512` writes every value of each panel (the buffer is whole panels).
    let panels = unsafe { Aligned::<u32>::written_by(m_pad / PANEL * panel_len, pack_activations) };
    // weight rows per task: four tasks per thread, 32 to 256 rows. Every task streams all the
    // activation panels (5.7 MB for a 307-row K = 8960 product) into its L2, so fewer, larger
    // tasks fetch them less often: a first version with 32-row tasks there (its weight rows
    // capped at 1 MiB a task) took 9.0 ms for the 307-row lm down, against 6.5-7.0.
    let per_task = n.div_ceil(4 * rayon::current_num_threads()).next_multiple_of(MICRO).clamp(MICRO, 256);
    let panels = panels.as_slice();
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let (f0, rows) = (t * per_task, per_task.min(n - t * per_task));
        let rows_pad = rows.next_multiple_of(MICRO);
        // this task's weight rows as bf16 rows, k_pad apart; zero rows past n
        let mut scratch = Aligned::<f32>::reused(k_pad);
        let decode_rows = |a: &mut [MaybeUninit<u16>]| {
            for (r, row) in a.chunks_exact_mut(k_pad).enumerate() {
                if r < rows {
                    // SAFETY: as above; the weight is [n, k] (checked by the caller).
                    unsafe { pack::weight_row_avx512(w, n, k, f0 + r, scratch.as_mut_slice(), row) };
                } else {
                    row.fill(MaybeUninit::new(0));
                }
            }
        };
        // SAFETY: `weight_row_avx512` writes every value of a row, and the other rows are zeroed.
        let a = unsafe { Aligned::<u16>::written_by(rows_pad * k_pad, decode_rows) };
        // [rows_pad][m_pad]: feature rows by token columns
        let mut acc = Aligned::<f32>::reused(rows_pad * m_pad);
        let block = TaskBlock { a: a.as_slice(), k_pad, r0: 0, rows_pad, panels, panel_len, acc: acc.as_mut_slice(), ldc: m_pad, accumulate: false };
        // SAFETY: `available()` checked AMX and the tile permission.
        unsafe { block.run() };
        // SAFETY: this task alone owns columns f0..f0 + rows of the output.
        unsafe { write_transposed(dst, f0, rows, acc.as_slice(), m_pad) };
    });
}

/// Output columns `f0..f0 + rows` (all `m` rows) from `acc`, `[rows][stride]` feature rows by
/// token columns: whole 16 x 16 blocks through a register transpose, the edges one by one.
///
/// # Safety
/// AVX-512F; no other task writes these columns.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn write_transposed(dst: ColumnTiles, f0: usize, rows: usize, acc: &[f32], stride: usize) {
    let (m, n) = dst.dims();
    assert!(f0 + rows <= n && acc.len() >= rows * stride && stride >= m);
    let (whole_t, whole_r) = (m / 16 * 16, rows / 16 * 16);
    // SAFETY (all blocks): reads stay inside `acc` ([rows][stride], tokens < m <= stride);
    // writes go to rows < m, columns f0..f0 + rows of the output, this task's own.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        for t0 in (0..whole_t).step_by(16) {
            use std::arch::x86_64::*;
            for r0 in (0..whole_r).step_by(16) {
                // v[i]: feature r0 + i over tokens t0..t0 + 16 -> v[j]: token t0 + j over the features
                let mut v: [__m512i; 16] = std::array::from_fn(|i| _mm512_loadu_si512(acc.as_ptr().add((r0 + i) * stride + t0) as *const _));
                pack::transpose_16x16(&mut v);
                for (j, row) in v.iter().enumerate() {
                    _mm512_storeu_si512(dst.at(t0 + j, f0 + r0) as *mut _, *row);
                }
            }
        }
        // the edges: features past the whole blocks of the first whole_t tokens, then every
        // feature of the other tokens
        for t in 0..m {
            let first = if cfg!(target_arch = "x86_64") && t < whole_t { whole_r } else { 0 };
            for r in first..rows {
                dst.at(t, f0 + r).write(acc[r * stride + t]);
            }
        }
    }
}

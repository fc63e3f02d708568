//! Many-row products with bf16 weights (prefill, the vision tower) on CPUs with AVX512-BF16:
//! `[m, K] x W^T`, `W` bf16 `[N, K]`, f32 out. Written by hand because the general path widened
//! the whole weight to f32 on every call and ran candle 0.11's f32 GEMM, bound by FMA throughput
//! (16 multiply-adds per instruction); `vdpbf16ps` does 32 (`simd_peak` on Zen 5: 235 against
//! 117 GFLOP/s per thread).
//!
//! Activations are rounded to bf16 (to nearest, ties to even), as PyTorch's bf16 matmul and
//! llama.cpp's bf16 dot product do; the products are exact in f32 and are summed in f32.
//!
//! Each task repacks 32 weight columns ("a panel") so that one 64-byte load holds, for 16
//! columns, the two weights of one k pair (`vdpbf16ps` multiplies lane pairs):
//! `[ceil(K / 2)][32 columns][2 bf16]`, a pair stored as one u32 with the even k in the low half
//! (an odd K's last pair has a zero high half, in the activations too). Products of several
//! independent matrices (attention heads) share one parallel loop over (matrix, panel). A tile
//! of up to `TILE_ROWS` activation rows broadcasts each row's k pair against both 16-column
//! halves. `tile_scalar` is the plain twin of the AVX-512 tile.

use crate::tiled_output::ColumnTiles;
use half::bf16;
use rayon::prelude::*;

/// Output columns per task (two 16-lane vectors).
pub(crate) const PANEL: usize = 32;
/// Activation rows per tile: 16 accumulators, two weight vectors and a broadcast fit the 32
/// vector registers.
pub(crate) const TILE_ROWS: usize = 8;

/// Which tile kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    Scalar,
    Avx512Bf16,
}

impl Bf16Kernel {
    /// The kernels this CPU can run, the plain twin first.
    pub fn available() -> Vec<Self> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16") {
            kernels.push(Self::Avx512Bf16);
        }
        kernels
    }
}

/// Whether many-row bf16 products take this GEMM: on AVX512-BF16 CPUs, unless the environment
/// sets `IRIS_NO_BF16_GEMM` (then they take the f32 GEMM, which widens the weight as it packs
/// it, for A/B runs). Without the instruction the scalar twin would be far slower than that.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| Bf16Kernel::available().contains(&Bf16Kernel::Avx512Bf16) && std::env::var_os("IRIS_NO_BF16_GEMM").is_none())
}

/// The bf16 bits of `v` rounded to nearest, ties to even; NaN stays a (quiet) NaN.
pub(crate) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    // a select rather than a branch, so the loop over a row vectorises
    if v.is_nan() {
        ((b >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// `[rows, K]` f32 activations as `[rows, ceil(K / 2)]` bf16 pairs: each row's bf16 values in
/// order (a pair is two consecutive u16 in memory, the even k first), an odd K's row padded
/// with a zero.
pub(crate) fn activation_pairs(x: &[f32], k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; x.len() / k * pairs];
    out.par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(dst, src)| {
        // SAFETY: u16 is no more aligned than u32 and any bits are valid for both; the view
        // covers exactly the row's `2 * pairs` u16
        let halves = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u16, 2 * pairs) };
        // one value per iteration with no branch, so this loop vectorises
        for (h, &v) in halves.iter_mut().zip(src) {
            *h = bf16_bits(v);
        }
        if cfg!(target_endian = "big") {
            // the first u16 of each pair landed in the high half
            dst.iter_mut().for_each(|p| *p = p.rotate_left(16));
        }
    });
    out
}

/// Pairs per block of the panel transpose: 16 u32 (one cache line) of each column's row.
const PACK_BLOCK: usize = 16;

/// Columns `first..first + PANEL` of `w` (`[n, k]`) as `[ceil(k / 2)][PANEL]` pairs; columns
/// past `n` are zero. Transposed in blocks of `PACK_BLOCK` pairs so reads are whole cache lines
/// and writes stay in a 2 KiB block (column by column over the whole panel, every write missed
/// L1 once the panel outgrew it).
pub(crate) fn pack_panel(w: &[bf16], n: usize, k: usize, first: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut panel = vec![0u32; pairs * PANEL];
    let cols = PANEL.min(n - first);
    for i0 in (0..pairs).step_by(PACK_BLOCK) {
        let len = PACK_BLOCK.min(pairs - i0);
        for c in 0..cols {
            // this block's values of the column's row (an odd k's last pair has one)
            let row = &w[(first + c) * k..][..k];
            let values = &row[2 * i0..(2 * (i0 + len)).min(k)];
            let whole = values.chunks_exact(2);
            let odd_end = whole.remainder().first().map(|v| v.to_bits() as u32);
            for (j, pair) in whole.enumerate() {
                panel[(i0 + j) * PANEL + c] = pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
            }
            if let Some(lo) = odd_end {
                panel[(i0 + len - 1) * PANEL + c] = lo;
            }
        }
    }
    panel
}

/// The low (even k) and high (odd k) values of a bf16 pair, widened exactly.
fn unpair(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xFFFF_0000))
}

/// Plain twin of the AVX-512 tile: `out[r * PANEL + c]` for activation rows `row..row + rows`
/// (each `pairs` pairs long) and the panel's 32 columns, adding each pair's odd product and then
/// its even one, as `vdpbf16ps` is specified to.
pub(crate) fn tile_scalar(panel: &[u32], acts: &[u32], pairs: usize, row: usize, rows: usize, out: &mut [f32]) {
    for r in 0..rows {
        let x = &acts[(row + r) * pairs..][..pairs];
        for c in 0..PANEL {
            let mut acc = 0f32;
            for (i, &xp) in x.iter().enumerate() {
                let ((x0, x1), (w0, w1)) = (unpair(xp), unpair(panel[i * PANEL + c]));
                acc += x1 * w1;
                acc += x0 * w0;
            }
            out[r * PANEL + c] = acc;
        }
    }
}

/// `out[r * n + o] = sum_i bf16(x[r * k + i]) * w[o * k + i]` for `m` rows of `x`.
pub fn gemm(x: &[f32], m: usize, w: &[bf16], n: usize, k: usize, out: &mut [f32]) {
    gemm_batched(x, w, 1, m, n, k, out)
}

/// `batch` independent products `[m, k] x [n, k]^T -> [m, n]` stacked along the first axis of
/// `x` (`[batch, m, k]`), `w` (`[batch, n, k]`) and `out` (`[batch, m, n]`).
pub fn gemm_batched(x: &[f32], w: &[bf16], batch: usize, m: usize, n: usize, k: usize, out: &mut [f32]) {
    let kernel = *Bf16Kernel::available().last().expect("the scalar twin is always available");
    gemm_with(x, w, batch, m, n, k, out, kernel)
}

/// `gemm_batched` with a chosen tile kernel (tests run every one the CPU has).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(x: &[f32], w: &[bf16], batch: usize, m: usize, n: usize, k: usize, out: &mut [f32], kernel: Bf16Kernel) {
    assert!(x.len() == batch * m * k && w.len() == batch * n * k && out.len() == batch * m * n, "bf16 GEMM wants {batch} x [{m}, {k}] x [{n}, {k}]^T");
    if k == 0 {
        // empty sums (and no rows to split the activations into)
        out.fill(0.0);
        return;
    }
    let pairs = k.div_ceil(2);
    let acts = activation_pairs(x, k);
    // [batch, m, n] seen as [batch * m, n]: a task owns its matrix's rows of its columns
    let dst = ColumnTiles::new(out, batch * m, n);
    let panels = n.div_ceil(PANEL);
    (0..batch * panels).into_par_iter().for_each(|task| {
        let (b, first) = (task / panels, task % panels * PANEL);
        let cols = PANEL.min(n - first);
        let panel = pack_panel(&w[b * n * k..][..n * k], n, k, first);
        let acts = &acts[b * m * pairs..][..m * pairs];
        let mut tile = [0f32; TILE_ROWS * PANEL];
        for row in (0..m).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(m - row);
            match kernel {
                // SAFETY: Avx512Bf16 comes from `Bf16Kernel::available`, which checked the features.
                #[cfg(target_arch = "x86_64")]
                Bf16Kernel::Avx512Bf16 => unsafe { avx512::tile(&panel, acts, pairs, row, rows, &mut tile) },
                _ => tile_scalar(&panel, acts, pairs, row, rows, &mut tile),
            }
            // SAFETY: these columns of matrix `b`'s rows belong to this task alone; `out` outlives
            // the loop.
            unsafe { dst.write(b * m + row, rows, first, cols, &tile, PANEL) };
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    pub unsafe fn tile(panel: &[u32], acts: &[u32], pairs: usize, row: usize, rows: usize, out: &mut [f32]) {
        match rows {
            1 => tile_rows::<1>(panel, acts, pairs, row, out),
            2 => tile_rows::<2>(panel, acts, pairs, row, out),
            3 => tile_rows::<3>(panel, acts, pairs, row, out),
            4 => tile_rows::<4>(panel, acts, pairs, row, out),
            5 => tile_rows::<5>(panel, acts, pairs, row, out),
            6 => tile_rows::<6>(panel, acts, pairs, row, out),
            7 => tile_rows::<7>(panel, acts, pairs, row, out),
            8 => tile_rows::<8>(panel, acts, pairs, row, out),
            rows => unreachable!("{rows} rows in a tile (at most {TILE_ROWS})"),
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rows<const R: usize>(panel: &[u32], acts: &[u32], pairs: usize, row: usize, out: &mut [f32]) {
        assert!(panel.len() == pairs * PANEL && acts.len() >= (row + R) * pairs && out.len() >= R * PANEL);
        let x: [*const u32; R] = std::array::from_fn(|r| acts.as_ptr().add((row + r) * pairs));
        let w = panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for i in 0..pairs {
            // [16 columns][2 bf16] for each half of the panel
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(i * PANEL) as *const _));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(i * PANEL + 16) as *const _));
            for r in 0..R {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x[r].add(i) as i32));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, w0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, w1);
            }
        }
        for (r, [lo, hi]) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * PANEL), lo);
            _mm512_storeu_ps(out.as_mut_ptr().add(r * PANEL + 16), hi);
        }
    }
}

#[cfg(test)]
mod tests;

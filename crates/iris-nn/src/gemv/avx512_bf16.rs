//! The decode GEMV for bf16 weights on CPUs with AVX512-BF16: `vdpbf16ps` multiplies the weight
//! row's bf16 values as stored against the activations rounded to bf16 once per call (to
//! nearest, ties to even), as PyTorch's bf16 matmul, llama.cpp's bf16 dot product and Iris's own
//! many-row bf16 GEMM (`bf16_gemm`) do; the products are exact in f32 and summed in f32.
//!
//! Why not the widening kernel (`super::avx512`, which keeps f32 activations): it spends a load,
//! a zero-extension and a shift to turn 16 weights into f32 for one FMA, ~6 cycles per 64-byte
//! line on Zen 4 with the data in L2, and that cost shows from DRAM too: Qwen2-VL-2B bf16 decode
//! 7.3-9.5 tok/s against 10.0-13.7 with this kernel, alternated (BENCHMARKS.md, which also has
//! the logit error against f32 of both). `gemv_reference` is the twin both are tested against.

use super::avx512::{prefetch_lines, PREFETCH_L1, PREFETCH_L2, PREFETCH_OFF};
use super::{Prefetch, MAX_ROWS};
use crate::bf16_gemm::bf16_bits;
use half::bf16;
use std::arch::x86_64::*;

/// Whether bf16 GEMVs take this kernel: on CPUs with AVX512-BF16 (and BW, for the masked tail
/// loads), unless the environment sets `IRIS_NO_BF16_GEMV` (then the widening kernel runs, for
/// A/B runs).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let cpu = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512bf16");
        cpu && std::env::var_os("IRIS_NO_BF16_GEMV").is_none()
    })
}

/// The activations' bf16 bits, `[m, K]`.
pub struct Bf16Activations(Vec<u16>);

impl Bf16Activations {
    /// Rounds `x`; a finite value beyond bf16's largest (|x| > 3.39e38) becomes an infinity, as
    /// PyTorch's cast makes it.
    pub fn round(x: &[f32]) -> Self {
        Self(x.iter().map(|&v| bf16_bits(v)).collect())
    }
}

/// `cells[j * m + r] = sum_i x[r][i] * w[(o + j) * k + i]` for the `m` activation rows and the
/// `rows` weight rows from `o` (tiles as `super::avx512::dot_block` takes them), the weights
/// prefetched as `prefetch` says (`gemv/prefetch.rs`). As in the widening kernel,
/// each weight load serves the tile's activation rows and each activation load its weight rows,
/// and every sum runs the same two chains (of 32-value steps, the masked last step in the first)
/// whatever the tile, so a row's result does not depend on the tile it ran in.
///
/// # Safety
/// The CPU must have AVX-512F, BW and BF16 (`available`).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_block(x: &Bf16Activations, m: usize, w: &[bf16], (o, rows): (usize, usize), k: usize, plan: (usize, usize), cells: &mut [f32], prefetch: Prefetch) {
    assert!((1..=MAX_ROWS).contains(&m) && x.0.len() == m * k && w.len() >= (o + rows) * k && cells.len() >= rows * m);
    for (first, count, r0, mrows) in super::block_calls(m, plan, (o, rows)) {
        let (x, cells) = (&x.0[r0 * k..], &mut cells[(first - o) * m + r0..]);
        // SAFETY: the assert above bounds every load `tile` makes.
        unsafe { super::avx512::for_tile_shape!(mrows, plan.1, prefetch, tiles, count, x, m, w, first, k, cells) }
    }
}

/// `tile` over `rows` weight rows from `o`, `G` at a time and the rest one at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const M: usize, const G: usize, const KIND: u8>(ahead: usize, rows: usize, x: &[u16], stride: usize, w: &[bf16], o: usize, k: usize, cells: &mut [f32]) {
    let mut j = 0;
    // SAFETY (both): the caller's bounds cover rows o..o + rows.
    while j + G <= rows {
        unsafe { tile::<M, G, KIND>(ahead, x, stride, w, o + j, k, &mut cells[j * stride..]) };
        j += G;
    }
    while j < rows {
        unsafe { tile::<M, 1, KIND>(ahead, x, stride, w, o + j, k, &mut cells[j * stride..]) };
        j += 1;
    }
}

/// One tile of `dot_block`: `M` activation rows (sums `stride` apart in `cells`), `G` weight
/// rows and a prefetch of `KIND` `ahead` bytes (`super::avx512::prefetch_lines`). Each 32-value
/// step loads 32 weights (64 bytes) of each weight row once and 32 activations of each
/// activation row once; the last partial step loads under a mask (masked-off lanes read nothing
/// and are zero).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const G: usize, const KIND: u8>(ahead: usize, x: &[u16], stride: usize, w: &[bf16], o: usize, k: usize, cells: &mut [f32]) {
    let mut weights = [std::ptr::null::<u16>(); G];
    for j in 0..G {
        weights[j] = w.as_ptr().wrapping_add((o + j) * k) as *const u16;
    }
    let values = x.as_ptr();
    let as_bh = |v: __m512i| -> __m512bh { std::mem::transmute(v) };
    // [weight row][activation row][chain]
    let mut acc = [[[_mm512_setzero_ps(); 2]; M]; G];
    let mut i = 0;
    while i + 64 <= k {
        for row in weights {
            prefetch_lines::<KIND>(row.add(i) as *const i8, ahead, 128);
        }
        for u in 0..2 {
            let mut xv = [as_bh(_mm512_setzero_si512()); M];
            for r in 0..M {
                xv[r] = as_bh(_mm512_loadu_si512(values.add(r * k + i + 32 * u) as *const _));
            }
            for j in 0..G {
                let wv = as_bh(_mm512_loadu_si512(weights[j].add(i + 32 * u) as *const _));
                for r in 0..M {
                    acc[j][r][u] = _mm512_dpbf16_ps(acc[j][r][u], wv, xv[r]);
                }
            }
        }
        i += 64;
    }
    while i < k {
        let len = (k - i).min(32);
        let mask: __mmask32 = if len == 32 { !0 } else { (1u32 << len) - 1 };
        let mut xv = [as_bh(_mm512_setzero_si512()); M];
        for r in 0..M {
            xv[r] = as_bh(_mm512_maskz_loadu_epi16(mask, values.add(r * k + i) as *const i16));
        }
        for j in 0..G {
            let wv = as_bh(_mm512_maskz_loadu_epi16(mask, weights[j].add(i) as *const i16));
            for r in 0..M {
                acc[j][r][0] = _mm512_dpbf16_ps(acc[j][r][0], wv, xv[r]);
            }
        }
        i += len;
    }
    for j in 0..G {
        for r in 0..M {
            cells[j * stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[j][r][0], acc[j][r][1]));
        }
    }
}

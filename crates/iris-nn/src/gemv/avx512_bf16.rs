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

use super::{avx512::prefetch_lines, Prefetch, MAX_ROWS};
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

/// `cell[r] = sum_i x[r][i] * w[o * k + i]` for the `m` rows of `x`, the weights prefetched as
/// `prefetch` says (`gemv/prefetch.rs`: 2 KiB into L2).
///
/// # Safety
/// The CPU must have AVX-512F, BW and BF16 (`available`).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn dot_rows(x: &Bf16Activations, m: usize, w: &[bf16], o: usize, k: usize, cell: &mut [f32], prefetch: Prefetch) {
    assert!((1..=MAX_ROWS).contains(&m) && x.0.len() == m * k && w.len() >= (o + 1) * k && cell.len() >= m);
    // SAFETY: the asserts above bound every load `rows` makes.
    unsafe {
        match m {
            // one row: two steps of 32 per iteration, two independent chains (one `vdpbf16ps`
            // chain is latency-bound)
            1 => rows::<1, 2>(x, w, o, k, cell, prefetch),
            2 => rows::<2, 1>(x, w, o, k, cell, prefetch),
            3 => rows::<3, 1>(x, w, o, k, cell, prefetch),
            4 => rows::<4, 1>(x, w, o, k, cell, prefetch),
            5 => rows::<5, 1>(x, w, o, k, cell, prefetch),
            6 => rows::<6, 1>(x, w, o, k, cell, prefetch),
            7 => rows::<7, 1>(x, w, o, k, cell, prefetch),
            _ => rows::<8, 1>(x, w, o, k, cell, prefetch),
        }
    }
}

/// `M` activation rows against weight row `o`, `U` 32-value steps per iteration. Each step
/// loads 32 weights (64 bytes) once and runs one `vdpbf16ps` per activation row; the last
/// partial step loads under a mask (masked-off lanes read nothing and are zero).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn rows<const M: usize, const U: usize>(x: &Bf16Activations, w: &[bf16], o: usize, k: usize, cell: &mut [f32], prefetch: Prefetch) {
    let weights = w.as_ptr().add(o * k) as *const u16;
    let values = x.0.as_ptr();
    // [M][U] accumulators
    let mut acc = [[_mm512_setzero_ps(); U]; M];
    let as_bh = |v: __m512i| -> __m512bh { std::mem::transmute(v) };
    let mut i = 0;
    while i + 32 * U <= k {
        prefetch_lines(prefetch, weights.add(i) as *const i8, 64 * U);
        for u in 0..U {
            let wv = as_bh(_mm512_loadu_si512(weights.add(i + 32 * u) as *const _));
            for r in 0..M {
                let at = r * k + i + 32 * u;
                acc[r][u] = _mm512_dpbf16_ps(acc[r][u], wv, as_bh(_mm512_loadu_si512(values.add(at) as *const _)));
            }
        }
        i += 32 * U;
    }
    while i < k {
        let len = (k - i).min(32);
        let mask: __mmask32 = if len == 32 { !0 } else { (1u32 << len) - 1 };
        let wv = as_bh(_mm512_maskz_loadu_epi16(mask, weights.add(i) as *const i16));
        for r in 0..M {
            let at = r * k + i;
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], wv, as_bh(_mm512_maskz_loadu_epi16(mask, values.add(at) as *const i16)));
        }
        i += len;
    }
    for r in 0..M {
        let sum = acc[r].into_iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, a));
        cell[r] = _mm512_reduce_add_ps(sum);
    }
}

/// `dot_rows` for one activation row and the four weight rows `o..o + 4` (`super::GROUP_ROWS`):
/// each load of `x` serves the four rows. Each row's sum is accumulated (two chains, as `rows`
/// with one activation row) and reduced as `dot_rows` does it, so the results are the same bits.
///
/// # Safety
/// The CPU must have AVX-512F, BW and BF16 (`available`).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn dot_four_rows(x: &Bf16Activations, w: &[bf16], o: usize, k: usize, cells: &mut [f32], prefetch: Prefetch) {
    const ROWS: usize = super::GROUP_ROWS;
    assert!(x.0.len() == k && w.len() >= (o + ROWS) * k && cells.len() == ROWS);
    let weights: [*const u16; ROWS] = std::array::from_fn(|r| w.as_ptr().wrapping_add((o + r) * k) as *const u16);
    let values = x.0.as_ptr();
    let as_bh = |v: __m512i| -> __m512bh { std::mem::transmute(v) };
    // [row][chain]
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    let mut i = 0;
    // SAFETY (all): the assert bounds every load to its row's k values and k in `x`.
    unsafe {
        while i + 64 <= k {
            for row in weights {
                prefetch_lines(prefetch, row.add(i) as *const i8, 128);
            }
            for u in 0..2 {
                let xv = as_bh(_mm512_loadu_si512(values.add(i + 32 * u) as *const _));
                for r in 0..ROWS {
                    acc[r][u] = _mm512_dpbf16_ps(acc[r][u], as_bh(_mm512_loadu_si512(weights[r].add(i + 32 * u) as *const _)), xv);
                }
            }
            i += 64;
        }
        while i < k {
            let len = (k - i).min(32);
            let mask: __mmask32 = if len == 32 { !0 } else { (1u32 << len) - 1 };
            let xv = as_bh(_mm512_maskz_loadu_epi16(mask, values.add(i) as *const i16));
            for r in 0..ROWS {
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], as_bh(_mm512_maskz_loadu_epi16(mask, weights[r].add(i) as *const i16)), xv);
            }
            i += len;
        }
    }
    for r in 0..ROWS {
        let sum = acc[r].into_iter().fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, a));
        cells[r] = _mm512_reduce_add_ps(sum);
    }
}

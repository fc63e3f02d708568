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

/// `cells[j * m + r] = sum_i x[r][i] * w[(o + j) * k + i]` for the `m` activation rows and the
/// `g` weight rows from `o` (a shape `super::avx512::for_tile_shape` lists), the weights
/// prefetched as `prefetch` says (`gemv/prefetch.rs`). As in the widening kernel,
/// each weight load serves the `m` rows and each activation load the `g` weight rows, and every
/// sum runs the same two chains (of 32-value steps, the masked last step in the first) whatever
/// the tile, so a row's result does not depend on the tile it ran in.
///
/// # Safety
/// The CPU must have AVX-512F, BW and BF16 (`available`).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_tile(x: &Bf16Activations, m: usize, w: &[bf16], o: usize, k: usize, (chunk, g): (usize, usize), cells: &mut [f32], prefetch: Prefetch) {
    assert!((1..=MAX_ROWS).contains(&m) && x.0.len() == m * k && w.len() >= (o + g) * k && cells.len() >= g * m);
    for (r0, rows) in super::row_chunks(m, chunk) {
        let (x, cells) = (&x.0[r0 * k..], &mut cells[r0..]);
        // SAFETY: the assert above bounds every load `tile` makes.
        unsafe { super::avx512::for_tile_shape!(rows, g, tile, x, m, w, o, k, cells, prefetch) }
    }
}

/// `dot_tile` for `M` activation rows (sums `stride` apart in `cells`) and `G` weight rows. Each
/// 32-value step loads 32 weights (64 bytes) of each weight row once and 32 activations of each
/// activation row once; the last partial step loads under a mask (masked-off lanes read nothing
/// and are zero).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize, const G: usize>(x: &[u16], stride: usize, w: &[bf16], o: usize, k: usize, cells: &mut [f32], prefetch: Prefetch) {
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
            prefetch_lines(prefetch, row.add(i) as *const i8, 128);
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

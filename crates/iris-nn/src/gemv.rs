//! Matrix-vector products for decode (`[m, K] x W^T`, `W` stored `[N, K]`, m <= 8) that stream
//! 32/16-bit weights at memory bandwidth. Written by hand because measurements on the target CPU
//! (2-core Zen 5) showed candle 0.11's CPU matmul at 10 GB/s for f32, 6 GB/s for f16 and 0.9 GB/s
//! for bf16 GEMV (it widens the whole bf16 operand to f32 per call). Each weight row is read once
//! for all m input rows; accumulation is in f32. AVX-512F CPUs take a 16-lane kernel with a
//! software prefetch, others an AVX2 one, aarch64 a NEON one (the portable loop's one running sum
//! per row cannot be vectorised: float addition is not reassociated). bf16 weights on
//! AVX512-BF16 CPUs take `avx512_bf16` instead, which rounds the activations to bf16 as the
//! prefill GEMM does. `gemv_reference` is the plain twin they are tested against.

use half::{bf16, f16};
use rayon::prelude::*;

/// Most input rows handled by the fused path.
pub const MAX_ROWS: usize = 8;
/// Output rows per parallel task.
const BLOCK: usize = 32;

#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// `out[r * n + o] = sum_k x[r * k + i] * w[o * k + i]` for `m` rows of `x`.
pub fn gemv(x: &[f32], m: usize, w: WeightRows, n: usize, k: usize, out: &mut [f32]) {
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k && out.len() == m * n);
    #[cfg(target_arch = "x86_64")]
    if let WeightRows::BF16(weights) = w {
        if avx512_bf16::available() {
            let x = avx512_bf16::Bf16Activations::round(x);
            // SAFETY: `available` checked the features.
            return for_each_output(m, n, out, |o, cell| unsafe { avx512_bf16::dot_rows(&x, m, weights, o, k, cell) });
        }
    }
    for_each_output(m, n, out, |o, cell| dot_rows(x, m, w, o, k, cell));
}

/// Runs `dot(o, cell)` for every output row `o` (`cell`: its `m` sums), in parallel blocks of
/// `BLOCK` rows, and writes the sums to `out` `[m, N]`.
fn for_each_output(m: usize, n: usize, out: &mut [f32], dot: impl Fn(usize, &mut [f32]) + Sync) {
    // [N, m] scratch so each task writes one contiguous block
    let mut by_output = vec![0f32; n * m];
    by_output.par_chunks_mut(BLOCK * m).enumerate().for_each(|(blk, dst)| {
        for (j, cell) in dst.chunks_mut(m).enumerate() {
            dot(blk * BLOCK + j, cell);
        }
    });
    // [N, m] -> [m, N]
    for o in 0..n {
        for r in 0..m {
            out[r * n + o] = by_output[o * m + r];
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            unsafe { avx512::dot_rows(x, m, w, o, k, cell) };
            return;
        }
        if has_avx2() {
            // SAFETY: the features were just detected.
            unsafe { avx2::dot_rows(x, m, w, o, k, cell) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::dot_rows(x, m, w, o, k, cell) };
        return;
    }
    #[allow(unreachable_code)]
    dot_rows_scalar(x, m, w, o, k, cell);
}

fn weight_at(w: WeightRows, idx: usize) -> f32 {
    match w {
        WeightRows::F32(s) => s[idx],
        WeightRows::F16(s) => s[idx].to_f32(),
        WeightRows::BF16(s) => s[idx].to_f32(),
    }
}

fn dot_rows_scalar(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
    for (r, c) in cell.iter_mut().enumerate().take(m) {
        *c = (0..k).map(|i| x[r * k + i] * weight_at(w, o * k + i)).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{WeightRows, MAX_ROWS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: WeightRows, idx: usize) -> __m256 {
        match w {
            WeightRows::F32(s) => _mm256_loadu_ps(s.as_ptr().add(idx)),
            WeightRows::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(idx) as *const __m128i)),
            // bf16 is the top half of an f32
            WeightRows::BF16(s) => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().add(idx) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
        let base = o * k;
        let mut acc = [_mm256_setzero_ps(); MAX_ROWS];
        let mut i = 0;
        if m == 1 {
            // four independent chains: one chain is bound by FMA latency, not bandwidth
            let mut a = [_mm256_setzero_ps(); 4];
            while i + 32 <= k {
                for (u, au) in a.iter_mut().enumerate() {
                    let wv = load8(w, base + i + 8 * u);
                    *au = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * u)), wv, *au);
                }
                i += 32;
            }
            acc[0] = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        }
        while i + 8 <= k {
            let wv = load8(w, base + i);
            for (r, a) in acc.iter_mut().enumerate().take(m) {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(r * k + i)), wv, *a);
            }
            i += 8;
        }
        for r in 0..m {
            let mut s = hsum(acc[r]);
            for j in i..k {
                s += x[r * k + j] * super::weight_at(w, base + j);
            }
            cell[r] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{WeightRows, MAX_ROWS};
    use std::arch::x86_64::*;

    /// How far ahead of the weight stream the loop prefetches: a task's rows are one contiguous
    /// run, so this reaches into the next rows (addresses formed with `wrapping_add`; past the
    /// end of the matrix a prefetch touches nothing). Qwen2-VL-2B bf16/f16 text decode on the
    /// Xeon VM, alternating runs: none 7.6-8.3 tok/s, 1 KiB 8.2-8.9, 2 KiB 8.8-9.8, 4 KiB
    /// 7.9-8.4, 8 KiB 7.3. Into L2 instead (`prefetch_to_l2`, which the quantized kernels use),
    /// 4 KiB ahead, three alternating pairs each: bf16 +1%, f16 -3%, f32 -4%; so into L1.
    const PREFETCH_AHEAD: usize = 2048;

    /// Whether this (widening) kernel prefetches: not on AMD. On the Zen 4 VM, f16 Qwen2-VL-2B
    /// decode alternated over nine rounds read 9.5-12.1 tok/s without the prefetch against
    /// 8.8-9.9 with it 2 KiB ahead (1 KiB 8.4-8.8; 8 and 16 KiB 8.5-9.4); the Xeon VM's
    /// figures above went the other way. The `vdpbf16ps` kernel keeps its prefetch there.
    fn prefetches() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| !crate::flash_attention::cpu_is_amd())
    }

    /// Weight rows widened 16 at a time (f16 by `vcvtph2ps`, bf16 as the top half of an f32:
    /// both exact), two chains per input row, the stream prefetched `PREFETCH_AHEAD` bytes ahead
    /// where `prefetches` says (on the Xeon VM 16-bit decode read ~24-25 of the ~28 GB/s the VM
    /// streamed without it, ~27-30 with it).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
        // SAFETY (all arms): `rows_with`'s loads read 16 values at indices below o * k + k.
        unsafe {
            match w {
                WeightRows::F32(s) => rows_with(x, m, w, o, k, cell, (s.as_ptr().cast(), 4), |i| _mm512_loadu_ps(s.as_ptr().add(i))),
                WeightRows::F16(s) => rows_with(x, m, w, o, k, cell, (s.as_ptr().cast(), 2), |i| _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))),
                WeightRows::BF16(s) => rows_with(x, m, w, o, k, cell, (s.as_ptr().cast(), 2), |i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().add(i) as *const __m256i))))
                }),
            }
        }
    }

    /// `dot_rows` for one storage, `(bytes, size)` its first byte and bytes per weight: `load(i)`
    /// widens weights `i..i + 16`.
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_with(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32], (bytes, size): (*const i8, usize), load: impl Fn(usize) -> __m512) {
        let base = o * k;
        let start = bytes.wrapping_add(base * size);
        let prefetch = prefetches();
        let mut acc = [[_mm512_setzero_ps(); 2]; MAX_ROWS];
        let mut i = 0;
        // SAFETY (all): loads stay below base + k; prefetches may point anywhere.
        unsafe {
            while i + 32 <= k {
                // one prefetch per 64-byte line of this step
                if prefetch {
                    for line in (0..32 * size).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(i * size + line + PREFETCH_AHEAD));
                    }
                }
                for u in 0..2 {
                    let wv = load(base + i + 16 * u);
                    for r in 0..m {
                        let xv = _mm512_loadu_ps(x.as_ptr().add(r * k + i + 16 * u));
                        acc[r][u] = _mm512_fmadd_ps(xv, wv, acc[r][u]);
                    }
                }
                i += 32;
            }
        }
        for r in 0..m {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
            for j in i..k {
                s += x[r * k + j] * super::weight_at(w, base + j);
            }
            cell[r] = s;
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{WeightRows, MAX_ROWS};
    use std::arch::aarch64::*;

    /// Four f16 weights to f32 (`fcvtl`, exact, base Armv8 NEON). Inline asm because Rust's NEON
    /// f16 vector types are not stable yet.
    #[inline(always)]
    unsafe fn widen_f16(bits: uint16x4_t) -> float32x4_t {
        let out: float32x4_t;
        // SAFETY: a register-only conversion.
        unsafe { std::arch::asm!("fcvtl {o:v}.4s, {i:v}.4h", i = in(vreg) bits, o = out(vreg) out, options(pure, nomem, nostack)) };
        out
    }

    /// Weight rows widened 4 at a time (f16 by `fcvtl`, bf16 as the top half of an f32: both
    /// exact), two chains per input row. Untimed (no Arm machine at hand; BENCHMARKS.md).
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
        // SAFETY (all arms): `rows_with`'s loads read 4 values at indices below o * k + k.
        unsafe {
            match w {
                WeightRows::F32(s) => rows_with(x, m, w, o, k, cell, |i| vld1q_f32(s.as_ptr().add(i))),
                WeightRows::F16(s) => rows_with(x, m, w, o, k, cell, |i| widen_f16(vld1_u16(s.as_ptr().add(i) as *const u16))),
                WeightRows::BF16(s) => rows_with(x, m, w, o, k, cell, |i| vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(s.as_ptr().add(i) as *const u16)))),
            }
        }
    }

    /// `dot_rows` for one storage: `load(i)` widens weights `i..i + 4`.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows_with(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32], load: impl Fn(usize) -> float32x4_t) {
        let base = o * k;
        let mut acc = [[vdupq_n_f32(0.0); 2]; MAX_ROWS];
        let mut i = 0;
        // SAFETY (all): loads stay below base + k and below r * k + k in `x`.
        unsafe {
            while i + 8 <= k {
                for u in 0..2 {
                    let wv = load(base + i + 4 * u);
                    for r in 0..m {
                        acc[r][u] = vfmaq_f32(acc[r][u], vld1q_f32(x.as_ptr().add(r * k + i + 4 * u)), wv);
                    }
                }
                i += 8;
            }
        }
        for r in 0..m {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
            for j in i..k {
                s += x[r * k + j] * super::weight_at(w, base + j);
            }
            cell[r] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "gemv/avx512_bf16.rs"]
mod avx512_bf16;

/// Plain triple loop in f64, for tests.
pub fn gemv_reference(x: &[f32], m: usize, w: WeightRows, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for o in 0..n {
            out[r * n + o] = (0..k).map(|i| x[r * k + i] as f64 * weight_at(w, o * k + i) as f64).sum::<f64>() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gemv_matches_reference_for_every_dtype_and_odd_sizes() {
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        // every row count of the bf16 kernel's dispatch, K with and without a partial last step
        for (m, n, k) in [(1, 37, 29), (3, 70, 128), (8, 5, 1000), (2, 1, 7), (1, 40, 1536), (4, 33, 96), (5, 3, 65), (6, 2, 200), (7, 3, 33)] {
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w32: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            // what the AVX512-BF16 kernel multiplies: the activations rounded to bf16
            let x_bf16: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            for w in [WeightRows::F32(&w32), WeightRows::F16(&w16), WeightRows::BF16(&wb)] {
                let want = gemv_reference(&x, m, w, n, k);
                let want_bf16 = gemv_reference(&x_bf16, m, w, n, k);
                #[cfg(target_arch = "x86_64")]
                let rounds = matches!(w, WeightRows::BF16(_)) && avx512_bf16::available();
                #[cfg(not(target_arch = "x86_64"))]
                let rounds = false;
                let mut out = vec![0f32; m * n];
                gemv(&x, m, w, n, k, &mut out);
                let d = out.iter().zip(if rounds { &want_bf16 } else { &want }).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                println!("gemv m={m} n={n} k={k} {}{}: max|diff| = {d:e}", match w { WeightRows::F32(_) => "f32", WeightRows::F16(_) => "f16", WeightRows::BF16(_) => "bf16" }, if rounds { " (bf16 activations)" } else { "" });
                assert!(d < 1e-4, "{d}");
                // every SIMD variant this CPU has, not only the one dispatch picks
                #[cfg(target_arch = "x86_64")]
                for o in 0..n {
                    let mut cell = vec![0f32; m];
                    let close = |cell: &[f32], want: &[f32]| cell.iter().enumerate().all(|(r, a)| (a - want[r * n + o]).abs() < 1e-4);
                    if has_avx2() {
                        unsafe { avx2::dot_rows(&x, m, w, o, k, &mut cell) };
                        assert!(close(&cell, &want), "avx2 row {o}");
                    }
                    if std::is_x86_feature_detected!("avx512f") {
                        unsafe { avx512::dot_rows(&x, m, w, o, k, &mut cell) };
                        assert!(close(&cell, &want), "avx512 row {o}");
                    }
                    if let (WeightRows::BF16(wb), true) = (w, avx512_bf16::available()) {
                        unsafe { avx512_bf16::dot_rows(&avx512_bf16::Bf16Activations::round(&x), m, wb, o, k, &mut cell) };
                        assert!(close(&cell, &want_bf16), "avx512_bf16 row {o}");
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod bf16_activation_tests {
    use super::*;

    /// Infinite and NaN activations give what the f32 kernels give; f32's largest value is past
    /// bf16's and becomes an infinity, as PyTorch's cast to bf16 makes it.
    #[test]
    fn bf16_kernel_keeps_infinities_and_nan() {
        if !avx512_bf16::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let k = 40;
        let w: Vec<bf16> = (0..2 * k).map(|i| bf16::from_f32(if i < k { 0.5 } else { -0.25 })).collect();
        for (special, want) in [(f32::INFINITY, [f32::INFINITY, f32::NEG_INFINITY]), (f32::NEG_INFINITY, [f32::NEG_INFINITY, f32::INFINITY]), (f32::MAX, [f32::INFINITY, f32::NEG_INFINITY])] {
            let mut x = vec![1.0f32; k];
            x[k - 1] = special;
            let mut out = vec![0f32; 2];
            gemv(&x, 1, WeightRows::BF16(&w), 2, k, &mut out);
            println!("x[last] = {special:e}: {out:?}");
            assert_eq!(out, want);
        }
        let mut x = vec![1.0f32; k];
        x[3] = f32::NAN;
        let mut out = vec![0f32; 2];
        gemv(&x, 1, WeightRows::BF16(&w), 2, k, &mut out);
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    }
}

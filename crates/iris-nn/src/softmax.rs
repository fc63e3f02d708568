//! Attention's `softmax(scores * scale)` over the last axis, with the causal mask applied by
//! index instead of by an added `-inf` tensor, written into the scores' own buffer.
//!
//! Why not candle's `softmax_last_dim`: it calls scalar `expf` once per score, which at vision
//! lengths is most of attention's time (a 9217-token CogVLM2 ViT layer exponentiates 1.36 G
//! scores), and the scale and the mask each cost another full pass and buffer. Here one pass
//! finds the row maximum and one computes `exp` 16 lanes at a time on AVX-512F, eight on
//! AVX2+FMA (a Cephes-style polynomial within ~2 ulp of `expf`) and normalises. Mirrors
//! `torch.softmax(x * scale + mask, -1)` in f32; `softmax_slow` is that formula in candle ops,
//! and the tests compare the two.

use crate::error::Result;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

/// Which keys each score row may see: row `r` is query `r % rows_per_query_block` of a block
/// whose first query sits at absolute position `first_position`; it sees keys
/// `0..=first_position + r % rows_per_query_block`.
#[derive(Debug, Clone, Copy)]
pub struct CausalRows {
    pub first_position: usize,
    pub rows_per_query_block: usize,
}

impl CausalRows {
    /// Keys row `row` sees among `keys`.
    pub(crate) fn visible(&self, row: usize, keys: usize) -> usize {
        (self.first_position + row % self.rows_per_query_block + 1).min(keys)
    }
}

/// `softmax(scores * scale)` over the last axis, masked keys exactly 0. Overwrites `scores`
/// when it is a contiguous CPU f32 tensor (a fresh `q k^T`: nothing else may hold it).
pub fn scaled_softmax(scores: Tensor, scale: f64, causal: Option<CausalRows>) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.is_contiguous() && scores.dtype() == DType::F32 && scores.rank() > 0 {
        scores.inplace_op1(&ScaledSoftmax { scale: scale as f32, causal })?;
        return Ok(scores);
    }
    softmax_slow(&scores, scale, causal)
}

/// The reference formula: scale, add a `-inf` mask tensor, softmax.
pub fn softmax_slow(scores: &Tensor, scale: f64, causal: Option<CausalRows>) -> Result<Tensor> {
    let x = (scores.to_dtype(DType::F32)? * scale)?;
    let x = match causal {
        Some(c) => {
            let keys = x.dim(candle_core::D::Minus1)?;
            let rows = x.elem_count() / keys.max(1);
            let mask: Vec<f32> = (0..rows).flat_map(|r| (0..keys).map(move |j| if j < c.visible(r, keys) { 0.0 } else { f32::NEG_INFINITY })).collect();
            (x + Tensor::from_vec(mask, scores.shape(), scores.device())?)?
        }
        None => x,
    };
    Ok(candle_nn::ops::softmax_last_dim(&x)?.to_dtype(scores.dtype())?)
}

struct ScaledSoftmax {
    scale: f32,
    causal: Option<CausalRows>,
}

impl InplaceOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("scaled-softmax: expected f32 scores") };
        let keys = layout.dims().last().copied().unwrap_or(1).max(1);
        let start = layout.start_offset();
        let scores = &mut data[start..start + layout.shape().elem_count()];
        let avx2 = avx2_fma_detected();
        let one_row = |(r, row): (usize, &mut [f32])| softmax_scores_row(row, r, self.scale, self.causal, avx2);
        // a decode step's few short rows are not worth waking the pool for
        if scores.len() < 1 << 15 {
            scores.chunks_mut(keys).enumerate().for_each(one_row);
        } else {
            scores.par_chunks_mut(keys).enumerate().for_each(one_row);
        }
        Ok(())
    }
}

/// Whether the rows take the 16-lane exponential (cached: this runs once per score row).
#[cfg(target_arch = "x86_64")]
fn avx512f_detected() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

pub(crate) fn avx2_fma_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Score row `r` in place: the softmax over the keys it sees, the masked keys 0. `avx2`: what
/// `avx2_fma_detected` returned.
pub(crate) fn softmax_scores_row(row: &mut [f32], r: usize, scale: f32, causal: Option<CausalRows>, avx2: bool) {
    let visible = causal.map_or(row.len(), |c| c.visible(r, row.len()));
    let (seen, masked) = row.split_at_mut(visible);
    softmax_row_in_place(seen, scale, avx2);
    masked.fill(0.0);
}

/// One row in place: `exp((x - max) * scale) / sum`. `scale > 0` keeps the argmax.
fn softmax_row_in_place(row: &mut [f32], scale: f32, avx2: bool) {
    let max = row_max(row);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `avx512f_detected` / `avx2` say AVX-512F, or AVX2 and FMA, were detected at run time.
    let sum = if avx512f_detected() {
        unsafe { avx512::exp_shifted_in_place(row, max, scale) }
    } else if avx2 {
        unsafe { avx2::exp_shifted_in_place(row, max, scale) }
    } else {
        exp_shifted_in_place(row, max, scale)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sum = {
        let _ = avx2;
        exp_shifted_in_place(row, max, scale)
    };
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The largest value of `row` (NaNs ignored, as `f32::max` does; -inf for an empty or all-NaN
/// row), in 16 lanes: a plain `fold(f32::max)` does not vectorise, and was ~2.5% of a 448²
/// vision encode once attention ran on AMX tiles.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            // a select the compiler turns into `maxps` (which also keeps `l` when `v` is NaN)
            *l = if v > *l { v } else { *l };
        }
    }
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    lanes.into_iter().fold(tail, f32::max)
}

/// Replaces each `v` by `exp((v - max) * scale)` and returns their sum (scalar `expf`).
fn exp_shifted_in_place(row: &mut [f32], max: f32, scale: f32) -> f32 {
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = ((*v - max) * scale).exp();
        sum += *v;
    }
    sum
}

/// The 8-lane kernels (softmax rows on AVX2 CPUs, `flash_attention/avx2.rs`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp(x)` for 8 lanes with `x <= 0`: `x = n ln2 + r`, `|r| <= ln2/2`, `exp(r)` by a
    /// degree-6 polynomial (Cephes `expf` coefficients), `2^n` built in the exponent bits. Lanes
    /// below -87.3 (where `expf` turns subnormal) return 0, as do `-inf` lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp_nonpositive(x: __m256) -> __m256 {
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.3));
        // the clamp first: `max` returns its second operand for NaN, so a NaN lane stays NaN
        let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        // ln2 split in two for an exact-enough reduction
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2n))
    }

    /// Replaces each `v` by `exp((v - max) * scale)` and returns their sum.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_in_place(row: &mut [f32], max: f32, scale: f32) -> f32 {
        let (vmax, vscale) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            let x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vmax), vscale);
            let e = exp_nonpositive(x);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        for v in chunks.into_remainder() {
            *v = ((*v - max) * scale).exp();
            sum += *v;
        }
        sum
    }
}

/// The 16-lane twins of `avx2`'s functions, for kernels compiled with AVX-512F
/// (`flash_attention.rs`, the sigmoids of `inplace.rs`, softmax rows on AVX-512F CPUs).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `exp(x)` for 16 lanes with `x <= 0`, as `avx2::exp_nonpositive` (Cephes `expf`
    /// polynomial after `x = n ln2 + r`); lanes below -87.3 and `-inf` lanes give 0.
    #[inline(always)]
    pub(crate) unsafe fn exp_nonpositive(x: __m512) -> __m512 {
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
        // the clamp first: `max` returns its second operand for NaN, so a NaN lane stays NaN
        let x = _mm512_max_ps(_mm512_set1_ps(-87.3), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        // ln2 split in two for an exact-enough reduction
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let pow2n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127))));
        _mm512_maskz_mul_ps(!underflow, y, pow2n)
    }

    /// `avx2::exp_shifted_in_place` 16 lanes at a time (half the instructions; the softmax of
    /// AMX attention's score rows was ~5% of a 448² question's time to first token).
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_shifted_in_place(row: &mut [f32], max: f32, scale: f32) -> f32 {
        let (vmax, vscale) = (_mm512_set1_ps(max), _mm512_set1_ps(scale));
        let mut acc = _mm512_setzero_ps();
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` holds 16 values.
            unsafe {
                let e = exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), vmax), vscale));
                _mm512_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for v in chunks.into_remainder() {
            *v = ((*v - max) * scale).exp();
            sum += *v;
        }
        sum
    }

    /// `2^t` for 16 lanes with `t <= 0`, to ~2e-7 relative: `t = n + r`, `|r| <= 1/2`, `2^r` by
    /// its degree-6 Taylor polynomial (remainder below 1.2e-7), scaled by `2^n` with `vscalefps`.
    /// Lanes below -150 (and `-inf`) give 0 or a denormal, which bf16 rounding flushes to 0.
    /// Eleven instructions against `exp_nonpositive`'s seventeen: for softmax rows rounded to bf16.
    #[inline(always)]
    pub(crate) unsafe fn exp2_nonpositive(t: __m512) -> __m512 {
        // the clamp first: `max` returns its second operand for NaN, so a NaN lane stays NaN
        let t = _mm512_max_ps(_mm512_set1_ps(-150.0), t);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let r = _mm512_sub_ps(t, n);
        // ln(2)^i / i!, i = 6 down to 1
        let mut p = _mm512_set1_ps(1.540_353e-4);
        for c in [1.333_355_8e-3, 9.618_129e-3, 5.550_411e-2, 2.402_265e-1, 6.931_472e-1, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// One score row of AMX attention into bf16 weights in two 16-lane passes (max; exp, sum
    /// and round): `dst[..visible]` gets `exp((row - max) * scale)` rounded to bf16
    /// (`vcvtneps2bf16`, nearest even), `dst[visible..]` zero, and the f32 sum of the unrounded
    /// exps comes back; the caller divides the weighted sum by it. PyTorch's CPU flash attention
    /// rounds the same unnormalised exps for its bf16 `P V`. Twin: `exp_shifted_in_place` then
    /// `bf16_bits` (test below). Why: separate max, exp, normalise and round passes (two of them
    /// compiled for plain x86-64, 4 lanes) were ~40% of AMX attention on 448² vision shapes.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16 and VL.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub(crate) unsafe fn exp_to_bf16(row: &[f32], visible: usize, scale: f32, dst: &mut [u16]) -> f32 {
        // SAFETY: per the caller's contract.
        unsafe { exp_to_bf16_from(row, visible, scale, row_max(row, visible), dst) }
    }

    /// The largest of `row[..visible]` (NaN ignored; `-inf` when `visible` is 0), with four
    /// running maxima, as one chain waits out each `vmaxps` latency.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn row_max(row: &[f32], visible: usize) -> f32 {
        assert!(visible <= row.len());
        let (whole, rest) = (visible / 16 * 16, visible % 16);
        let tail = ((1u32 << rest) - 1) as __mmask16;
        let p = row.as_ptr();
        // SAFETY: full loads stay below `whole`, the masked one touches only lanes below `visible`.
        unsafe {
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            // `max(v, m)` keeps `m` when `v` is NaN, as `row_max` of the scalar softmax does
            let (mut m0, mut m1, mut m2, mut m3) = (_mm512_mask_loadu_ps(neg_inf, tail, p.add(whole)), neg_inf, neg_inf, neg_inf);
            let mut i = 0;
            while i + 64 <= whole {
                m0 = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), m0);
                m1 = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 16)), m1);
                m2 = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 32)), m2);
                m3 = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 48)), m3);
                i += 64;
            }
            for i in (i..whole).step_by(16) {
                m0 = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), m0);
            }
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)))
        }
    }

    /// The exp pass of `exp_to_bf16` against a given `max` (at least `row[..visible]`'s, so
    /// every exp is at most 1): the key-blocked AMX attention passes the running maximum of the
    /// blocks so far.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16 and VL.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub(crate) unsafe fn exp_to_bf16_from(row: &[f32], visible: usize, scale: f32, max: f32, dst: &mut [u16]) -> f32 {
        assert!(visible <= row.len() && row.len() <= dst.len());
        if visible == 0 {
            dst.fill(0);
            return 0.0;
        }
        let (whole, rest) = (visible / 16 * 16, visible % 16);
        let tail = ((1u32 << rest) - 1) as __mmask16;
        let (p, q) = (row.as_ptr(), dst.as_mut_ptr());
        let mut sum = _mm512_setzero_ps();
        // SAFETY (all blocks): full loads and stores stay below `whole`, the masked ones touch
        // only lanes below `visible`, and `dst` holds at least `row.len()` values.
        unsafe {
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            // exp((x - max) * scale) = 2^(x c - max c) with c = scale log2(e)
            let c = scale * std::f32::consts::LOG2_E;
            let (vc, vmaxc) = (_mm512_set1_ps(c), _mm512_set1_ps(max * c));
            let exp = |x: __m512| exp2_nonpositive(_mm512_fmsub_ps(x, vc, vmaxc));
            for i in (0..whole).step_by(16) {
                let e = exp(_mm512_loadu_ps(p.add(i)));
                sum = _mm512_add_ps(sum, e);
                _mm256_storeu_si256(q.add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e)));
            }
            if rest > 0 {
                // the tail's masked lanes are -inf: exp gives 0
                let e = exp(_mm512_mask_loadu_ps(neg_inf, tail, p.add(whole)));
                sum = _mm512_add_ps(sum, e);
                let mut lanes = [0u16; 16];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e)));
                dst[whole..visible].copy_from_slice(&lanes[..rest]);
            }
        }
        dst[visible..].fill(0);
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_exponentials_match_the_scalar_one() {
        // 16- and 8-lane kernels against scalar expf on one row with a tail
        let row: Vec<f32> = (0..203).map(|i| ((i * 53) % 197) as f32 * -0.5).collect();
        let max = row_max(&row);
        let mut plain = row.clone();
        let want = exp_shifted_in_place(&mut plain, max, 0.7);
        let mut kernels: Vec<(&str, Vec<f32>, f32)> = Vec::new();
        if avx2_fma_detected() {
            let mut r = row.clone();
            // SAFETY: checked just above.
            let sum = unsafe { avx2::exp_shifted_in_place(&mut r, max, 0.7) };
            kernels.push(("avx2", r, sum));
        }
        if avx512f_detected() {
            let mut r = row.clone();
            // SAFETY: checked just above.
            let sum = unsafe { avx512::exp_shifted_in_place(&mut r, max, 0.7) };
            kernels.push(("avx512", r, sum));
        }
        for (name, got, sum) in kernels {
            let worst = got.iter().zip(&plain).map(|(g, w)| (g - w).abs() / w.abs().max(1e-30)).fold(0f32, f32::max);
            println!("{name}: max relative error {worst:.2e}, sum {sum} against {want}");
            assert!(worst < 1e-6 && (sum - want).abs() <= 1e-6 * want, "{name}: {worst:e}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bf16_exp_rows_match_the_plain_exp() {
        if !(avx512f_detected() && std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512vl")) {
            println!("skipped: no AVX-512 F/BF16/VL on this CPU");
            return;
        }
        let row: Vec<f32> = (0..203).map(|i| ((i * 53) % 197) as f32 * 0.37 - 30.0).collect();
        // whole rows, tails, a single key, and masked keys (visible < len)
        for (len, visible) in [(203, 203), (203, 150), (16, 16), (17, 1), (48, 33), (5, 0)] {
            let mut want = row[..visible].to_vec();
            let max = row_max(&want);
            let want_sum = exp_shifted_in_place(&mut want, max, 0.3);
            let mut got = vec![7u16; len + 9];
            // SAFETY: checked above.
            let sum = unsafe { avx512::exp_to_bf16(&row[..len], visible, 0.3, &mut got) };
            let mut worst = 0u16;
            for (i, &g) in got.iter().enumerate() {
                let w = want.get(i).map_or(0, |&v| crate::bf16_gemm::bf16_bits(v));
                // both exps are within ~3e-7 of exact: at most one bf16 step apart
                worst = worst.max(g.abs_diff(w));
            }
            println!("exp to bf16, {visible} of {len} keys: worst {worst} bf16 steps, sum {sum} against {want_sum}");
            assert!(worst <= 1 && (sum - want_sum).abs() <= 2e-6 * want_sum.max(1.0), "{visible} of {len}: {worst}, {sum}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_exp2_is_within_3e7_of_exp2() {
        if !avx512f_detected() {
            println!("skipped: no AVX-512F on this CPU");
            return;
        }
        let mut worst = 0f64;
        let mut t = -125.0f32;
        while t <= 0.0 {
            let lanes: [f32; 16] = std::array::from_fn(|i| (t + i as f32 * 7.9e-4).min(0.0));
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F was detected above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp2_nonpositive(_mm512_loadu_ps(lanes.as_ptr())));
            }
            for (l, o) in lanes.iter().zip(out) {
                let exact = (*l as f64).exp2();
                worst = worst.max((o as f64 - exact).abs() / exact);
            }
            t += 0.0123;
        }
        println!("vector exp2 on [-125, 0]: worst relative error {worst:.2e}");
        assert!(worst < 3e-7, "{worst:e}");
        // -inf and far-negative lanes vanish, NaN stays NaN
        let mut out = [1f32; 16];
        // SAFETY: as above.
        unsafe {
            use std::arch::x86_64::*;
            let x = _mm512_setr_ps(f32::NEG_INFINITY, -1e30, -160.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp2_nonpositive(x));
        }
        assert!(out[..3].iter().all(|&v| v < 1e-44) && out[3].is_nan() && out[4] == 1.0, "{out:?}");
    }

    #[test]
    fn row_max_equals_the_plain_fold() {
        let mut row: Vec<f32> = (0..103).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        for len in [0, 1, 15, 16, 17, 103] {
            assert_eq!(row_max(&row[..len]), row[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max), "{len} values");
        }
        row[20] = f32::NAN;
        row[90] = 1000.0;
        assert_eq!(row_max(&row), 1000.0);
        assert_eq!(row_max(&[f32::NAN; 20]), f32::NEG_INFINITY);
    }

    #[test]
    fn fused_softmax_matches_the_reference_formula() {
        let dev = Device::Cpu;
        // row lengths around the 8-lane width, wide score ranges (exp underflow), causal blocks
        for (rows, keys, causal) in [(3, 5, None), (4, 8, None), (6, 37, None), (6, 37, Some((30, 3))), (8, 100, Some((92, 4))), (2, 1, Some((0, 2)))] {
            let scores = (Tensor::randn(0f32, 30.0, (rows, keys), &dev).unwrap()).contiguous().unwrap();
            let causal = causal.map(|(first_position, rows_per_query_block)| CausalRows { first_position, rows_per_query_block });
            let slow = softmax_slow(&scores, 0.3, causal).unwrap();
            let fast = scaled_softmax(scores.copy().unwrap(), 0.3, causal).unwrap();
            let d = max_abs_diff(&fast, &slow).unwrap();
            println!("softmax {rows}x{keys} causal={causal:?}: max|diff| = {d:e}");
            // probabilities <= 1: 1e-6 is a few ulp at 1.0 (the sums run in another order)
            assert!(d <= 1e-6, "{d}");
            // masked keys are exactly zero, every row sums to 1
            let (f, s) = (fast.to_vec2::<f32>().unwrap(), slow.to_vec2::<f32>().unwrap());
            for (fr, sr) in f.iter().zip(&s) {
                for (a, b) in fr.iter().zip(sr) {
                    assert!(*b != 0.0 || *a == 0.0 || *a < 1e-37, "a masked key got weight {a}");
                }
                assert!((fr.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp_of_expf() {
        if !avx2_fma_detected() {
            println!("skipped: no AVX2+FMA on this CPU");
            return;
        }
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let mut lanes = [x; 8];
            for (i, l) in lanes.iter_mut().enumerate() {
                *l = (x + i as f32 * 1.37e-3).min(0.0);
            }
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp_nonpositive(_mm256_loadu_ps(lanes.as_ptr())));
            }
            for (l, o) in lanes.iter().zip(out) {
                worst = worst.max(o.to_bits().abs_diff(l.exp().to_bits()));
            }
            x += 0.0123;
        }
        println!("vector exp on [-87, 0]: worst {worst} ulp from expf");
        assert!(worst <= 2, "{worst} ulp");
    }
}

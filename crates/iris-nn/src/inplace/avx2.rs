//! The AVX2/FMA twins of `inplace/avx512.rs`, 8 lanes at a time, for CPUs without AVX-512F:
//! the same sigmoid (`exp(-|a|)` from the softmax's polynomial, then `1 / (1 + e)` or
//! `e / (1 + e)` by sign) and the same erf (Abramowitz & Stegun 7.1.26), so the same
//! tolerances against candle's scalar formulas. `fused_activation_bench` on the 2-core Zen 2 VM
//! (q8_0 weights, product then bias and activation, three rounds), scalar -> these: Qwen2-VL's
//! vision fc1 with quick-GELU 90.0-93.4 -> 74.8-79.2 ms, CogVLM2's with erf GELU (8.9 G values
//! per 1344² image) 3.97-4.17 -> 3.26-3.29 s a layer.

use crate::softmax::avx2::exp_nonpositive;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn abs(a: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), a)
}

#[inline(always)]
unsafe fn sigmoid(a: __m256) -> __m256 {
    let e = exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), abs(a)));
    let denominator = _mm256_add_ps(e, _mm256_set1_ps(1.0));
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_setzero_ps());
    _mm256_div_ps(_mm256_blendv_ps(_mm256_set1_ps(1.0), e, negative), denominator)
}

/// `vector` over each 8 values of `x` in place, `scalar` over the tail.
#[inline(always)]
unsafe fn map_lanes(x: &mut [f32], vector: impl Fn(__m256) -> __m256, scalar: fn(f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 values.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), vector(_mm256_loadu_ps(c.as_ptr()))) };
    }
    chunks.into_remainder().iter_mut().for_each(|v| *v = scalar(*v));
}

/// `x * sigmoid(1.702 x)` in place.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quick_gelu(x: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled here.
    unsafe { map_lanes(x, |v| _mm256_mul_ps(v, sigmoid(_mm256_mul_ps(v, _mm256_set1_ps(1.702)))), super::quick_gelu_scalar) }
}

/// `0.5 x (1 + erf(x / sqrt 2))` in place, as `avx512::gelu_erf`: with `a = |x| / sqrt 2`,
/// `t = 1 / (1 + 0.3275911 a)`, `q = t P(t) exp(-a^2)` is `1 - erf(a)`, so `1 + erf(x)` is
/// `2 - q` for `x >= 0` and `q` for `x < 0`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_erf(x: &mut [f32]) {
    let erf_gelu = |v: __m256| {
        let a = _mm256_mul_ps(abs(v), _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let t = _mm256_div_ps(_mm256_set1_ps(1.0), _mm256_fmadd_ps(a, _mm256_set1_ps(0.327_591_1), _mm256_set1_ps(1.0)));
        let mut p = _mm256_set1_ps(1.061_405_4);
        for coefficient in [-1.453_152, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(coefficient));
        }
        let minus_a2 = _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a);
        // SAFETY: AVX2 and FMA are enabled here.
        let q = _mm256_mul_ps(_mm256_mul_ps(p, t), unsafe { exp_nonpositive(minus_a2) });
        let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
        let one_plus_erf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0), q), q, negative);
        _mm256_mul_ps(_mm256_mul_ps(one_plus_erf, _mm256_set1_ps(0.5)), v)
    };
    // SAFETY: AVX2 and FMA are enabled here.
    unsafe { map_lanes(x, erf_gelu, super::gelu_erf_scalar) }
}

/// `g = g * sigmoid(g) * u` in place.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    let whole = g.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= whole <= len` for both slices.
        unsafe {
            let v = _mm256_loadu_ps(g.as_ptr().add(i));
            let w = _mm256_loadu_ps(u.as_ptr().add(i));
            _mm256_storeu_ps(g.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(v, sigmoid(v)), w));
        }
    }
    for (g, &u) in g[whole..].iter_mut().zip(&u[whole..]) {
        *g = super::silu_mul_scalar(*g, u);
    }
}

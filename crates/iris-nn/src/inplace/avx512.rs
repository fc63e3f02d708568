//! The AVX-512F kernels of `inplace.rs`'s f32 activations, 16 lanes at a time. Sigmoids:
//! `exp(-|a|)` from the softmax's polynomial (its argument is never positive), then
//! `1 / (1 + e)` for `a >= 0` and `e / (1 + e)` for `a < 0`, so no lane overflows.

use crate::softmax::avx512::exp_nonpositive;
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn sigmoid(a: __m512) -> __m512 {
    let e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(a)));
    let denominator = _mm512_add_ps(e, _mm512_set1_ps(1.0));
    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_setzero_ps());
    _mm512_div_ps(_mm512_mask_blend_ps(negative, _mm512_set1_ps(1.0), e), denominator)
}

/// `vector` over each 16 values of `x` in place, `scalar` over the tail.
#[inline(always)]
unsafe fn map_lanes(x: &mut [f32], vector: impl Fn(__m512) -> __m512, scalar: fn(f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` holds 16 values.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), vector(_mm512_loadu_ps(c.as_ptr()))) };
    }
    chunks.into_remainder().iter_mut().for_each(|v| *v = scalar(*v));
}

/// `x * sigmoid(1.702 x)` in place.
#[target_feature(enable = "avx512f")]
pub unsafe fn quick_gelu(x: &mut [f32]) {
    // SAFETY: AVX-512F is enabled here.
    unsafe { map_lanes(x, |v| _mm512_mul_ps(v, sigmoid(_mm512_mul_ps(v, _mm512_set1_ps(1.702)))), super::quick_gelu_scalar) }
}

/// `0.5 x (1 + erf(x / sqrt 2))` in place. erf by Abramowitz & Stegun 7.1.26 (absolute
/// error <= 1.5e-7; PyTorch's vectorised `erf` uses the same formula): with `a = |x| / sqrt 2`,
/// `t = 1 / (1 + 0.3275911 a)`, `q = t P(t) exp(-a^2)` is `1 - erf(a)`, so `1 + erf(x)` is
/// `2 - q` for `x >= 0` and `q` (without cancellation) for `x < 0`.
#[target_feature(enable = "avx512f")]
pub unsafe fn gelu_erf(x: &mut [f32]) {
    let erf_gelu = |v: __m512| {
        let a = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let t = _mm512_div_ps(_mm512_set1_ps(1.0), _mm512_fmadd_ps(a, _mm512_set1_ps(0.327_591_1), _mm512_set1_ps(1.0)));
        let mut p = _mm512_set1_ps(1.061_405_4);
        for coefficient in [-1.453_152, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(coefficient));
        }
        let minus_a2 = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a);
        // SAFETY: AVX-512F is enabled here.
        let q = _mm512_mul_ps(_mm512_mul_ps(p, t), unsafe { exp_nonpositive(minus_a2) });
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
        let one_plus_erf = _mm512_mask_blend_ps(negative, _mm512_sub_ps(_mm512_set1_ps(2.0), q), q);
        _mm512_mul_ps(_mm512_mul_ps(one_plus_erf, _mm512_set1_ps(0.5)), v)
    };
    // SAFETY: AVX-512F is enabled here.
    unsafe { map_lanes(x, erf_gelu, super::gelu_erf_scalar) }
}

/// `g = g * sigmoid(g) * u` in place.
#[target_feature(enable = "avx512f")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    let whole = g.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= whole <= len` for both slices.
        unsafe {
            let v = _mm512_loadu_ps(g.as_ptr().add(i));
            let w = _mm512_loadu_ps(u.as_ptr().add(i));
            _mm512_storeu_ps(g.as_mut_ptr().add(i), _mm512_mul_ps(_mm512_mul_ps(v, sigmoid(v)), w));
        }
    }
    for (g, &u) in g[whole..].iter_mut().zip(&u[whole..]) {
        *g = super::silu_mul_scalar(*g, u);
    }
}

//! Operand packing for the AMX GEMM: f32 activation rows rounded to bf16 rows (the A tiles'
//! layout is plain row-major bf16), and weight columns rounded to bf16 and interleaved into the
//! B tiles' pair layout. AVX-512 versions with plain twins (`*_scalar`), tested equal.
//!
//! Packing runs once per weight per product, so it has to stream: a 448² vision encode packs
//! ~630 M weights.

use super::WeightRows;
#[cfg(test)]
use crate::bf16_gemm::bf16_bits;
use std::mem::MaybeUninit;

/// Columns per weight panel (two B tiles side by side).
pub(super) const PANEL: usize = 32;
/// k values per tile step.
pub(super) const K_STEP: usize = 32;

/// `src` (`k` f32) rounded to bf16 into `dst` (`k_pad >= k` values, the rest zero). Plain twin
/// of `round_row_avx512`.
#[cfg(test)]
pub(super) fn round_row_scalar(src: &[f32], dst: &mut [u16]) {
    let (head, pad) = dst.split_at_mut(src.len());
    for (d, &v) in head.iter_mut().zip(src) {
        *d = bf16_bits(v);
    }
    pad.fill(0);
}

/// `values` as slots the packers may write (they write only values, so the slice stays
/// initialised).
pub(super) fn uninit_view<T: Copy>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and every write through the view is a value.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut MaybeUninit<T>, values.len()) }
}

/// Column `col`'s weights as f32 into `row` (`k_pad` values, zero past `k`); zero past `n`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn weight_column(w: &WeightRows, n: usize, k: usize, col: usize, row: &mut [f32]) {
    if col >= n {
        row.fill(0.0);
        return;
    }
    match w {
        WeightRows::Quantized(q) => q.dequantize_row_into(col, &mut row[..k]),
        WeightRows::Bf16(v) => {
            for (d, s) in row.iter_mut().zip(&v[col * k..(col + 1) * k]) {
                *d = s.to_f32();
            }
        }
        WeightRows::F16(v) => {
            for (d, s) in row.iter_mut().zip(&v[col * k..(col + 1) * k]) {
                *d = s.to_f32();
            }
        }
        WeightRows::F32(v) => row[..k].copy_from_slice(&v[col * k..(col + 1) * k]),
    }
    row[k..].fill(0.0);
}

/// Columns `first..first + PANEL` of the weight as `[k_pad / 2][PANEL]` u32 bf16 pairs (the even
/// k in the low half), `row` a `k_pad` scratch row. Plain twin of `panel_avx512`.
#[cfg(test)]
pub(super) fn panel_scalar(w: &WeightRows, n: usize, k: usize, first: usize, row: &mut [f32], panel: &mut [u32]) {
    for c in 0..PANEL {
        weight_column(w, n, k, first + c, row);
        for (p, pair) in row.chunks_exact(2).enumerate() {
            panel[p * PANEL + c] = bf16_bits(pair[0]) as u32 | (bf16_bits(pair[1]) as u32) << 16;
        }
    }
}

/// `v [S, D]` (f32) as the B panels of the weight `V^T` (`[n = D, k = S]`): panel `j` holds
/// dims `32j..32j + 32` as `[s_pad / 2][PANEL]` pairs of consecutive keys, zero past S and D
/// (`out.len()` is `d.div_ceil(PANEL) * s_pad / 2 * PANEL`). Plain twin of
/// `transposed_panels_avx512`.
#[cfg(test)]
pub(super) fn transposed_panels_scalar(v: &[f32], s: usize, d: usize, out: &mut [u32]) {
    let s_pad = out.len() / d.div_ceil(PANEL) / PANEL * 2;
    let value = |key: usize, dim: usize| if key < s && dim < d { bf16_bits(v[key * d + dim]) as u32 } else { 0 };
    for (j, panel) in out.chunks_exact_mut(s_pad / 2 * PANEL).enumerate() {
        for (pair, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (c, slot) in row.iter_mut().enumerate() {
                let dim = j * PANEL + c;
                *slot = value(2 * pair, dim) | value(2 * pair + 1, dim) << 16;
            }
        }
    }
}

/// Weight row `row` as bf16 into `dst` (`k_pad` values, zero past `k`), `scratch` a `k_pad` f32
/// row. Plain twin of `weight_row_avx512`.
#[cfg(test)]
pub(super) fn weight_row_scalar(w: &WeightRows, n: usize, k: usize, row: usize, scratch: &mut [f32], dst: &mut [u16]) {
    weight_column(w, n, k, row, scratch);
    round_row_scalar(&scratch[..k], dst);
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{panel_avx512, round_row_avx512, transposed_panels_avx512, weight_row_avx512};
/// Also the f32 GEMM's (`crate::f32_gemm`) panel transpose.
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::transpose_16x16;

/// Elsewhere the AMX paths never run (`super::available()` is false); these keep them compiling.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn round_row_avx512(_src: &[f32], _dst: &mut [MaybeUninit<u16>]) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn weight_row_avx512(_w: &WeightRows, _n: usize, _k: usize, _row: usize, _scratch: &mut [f32], _dst: &mut [MaybeUninit<u16>]) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn transposed_panels_avx512(_v: &[f32], _s: usize, _d: usize, _out: &mut [u32]) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn panel_avx512(_w: &WeightRows, _n: usize, _k: usize, _first: usize, _scratch: &mut [f32], _panel: &mut [MaybeUninit<u32>]) {
    unreachable!("AMX is x86-64 only")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{weight_column, WeightRows, K_STEP, PANEL};
    use crate::bf16_gemm::bf16_bits;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `round_row_scalar` with `vcvtneps2bf16` (round to nearest even, as `bf16_bits`, for
    /// normal values; the instruction flushes denormals to zero, as the tiles treat bf16
    /// denormals anyway). Writes every value of `dst`, which need not be initialised (init rows
    /// pass `uninit_view`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16 and VL.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub unsafe fn round_row_avx512(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        let (len, dst) = (dst.len(), dst.as_mut_ptr() as *mut u16);
        assert!(len >= src.len());
        let whole = src.len() / 16 * 16;
        // SAFETY: every access is inside `src` or the `len` values at `dst` (16-value steps
        // below `whole`, single values after).
        unsafe {
            for i in (0..whole).step_by(16) {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(dst.add(i) as *mut __m256i, b);
            }
            for (i, &v) in src.iter().enumerate().skip(whole) {
                dst.add(i).write(bf16_bits(v));
            }
            std::ptr::write_bytes(dst.add(src.len()), 0, len - src.len());
        }
    }

    /// `weight_row_scalar` with q8_0 and f16 converted in registers (32 values, one 64-byte
    /// store per block) and bf16 copied as it is; other formats through `scratch`. Writes every
    /// value of `dst`, which need not be initialised.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16, VL and F16C; the weight holds `n * k` values
    /// (`[n, k]`), `row < n`, `scratch.len() == dst.len()`, a multiple of `K_STEP` of at least `k`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl,f16c")]
    pub unsafe fn weight_row_avx512(w: &WeightRows, n: usize, k: usize, row: usize, scratch: &mut [f32], dst: &mut [MaybeUninit<u16>]) {
        let k_pad = dst.len();
        assert!(row < n && k <= k_pad && k_pad.is_multiple_of(K_STEP) && scratch.len() == k_pad);
        let out = dst.as_mut_ptr() as *mut u16;
        match (w, w.q8_0()) {
            (WeightRows::Bf16(v), _) => {
                let src = &v[row * k..(row + 1) * k];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = MaybeUninit::new(s.to_bits());
                }
                dst[k..].fill(MaybeUninit::new(0));
            }
            (WeightRows::F16(v), _) if k == k_pad => {
                for b in 0..k / K_STEP {
                    // SAFETY: values 32b..32b + 32 of row `row` are inside the [n, k] weight;
                    // the store writes values 32b..32b + 32 < k_pad of `dst`.
                    unsafe { _mm512_storeu_si512(out.add(K_STEP * b) as *mut _, f16_block_bf16(v.as_ptr().add(row * k + K_STEP * b))) };
                }
            }
            (_, Some((qs, d))) if k == k_pad => {
                let blocks = k / K_STEP;
                for b in 0..blocks {
                    // SAFETY: block b of row `row` is inside the [n, k] quants; the store
                    // writes values 32b..32b + 32 < k_pad of `dst`.
                    unsafe { _mm512_storeu_si512(out.add(K_STEP * b) as *mut _, q8_0_block_bf16(qs.as_ptr().add(row * k + K_STEP * b), d[row * blocks + b])) };
                }
            }
            _ => {
                weight_column(w, n, k, row, scratch);
                // SAFETY: the CPU has AVX-512 F/BF16/VL (this function's contract).
                unsafe { round_row_avx512(&scratch[..k], dst) };
            }
        }
    }

    /// `transposed_panels_scalar` 16 dims at a time: two keys' rows (masked past D) rounded
    /// and zero-extended, the second shifted into the high halves. (The scalar loop was ~8% of
    /// AMX attention on 448² vision shapes.)
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16 and VL; `v.len()` is `s * d`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub unsafe fn transposed_panels_avx512(v: &[f32], s: usize, d: usize, out: &mut [u32]) {
        assert!(v.len() == s * d && d > 0);
        let s_pad = out.len() / d.div_ceil(PANEL) / PANEL * 2;
        assert!(s_pad >= s && out.len() == d.div_ceil(PANEL) * s_pad / 2 * PANEL);
        for (j, panel) in out.chunks_exact_mut(s_pad / 2 * PANEL).enumerate() {
            for half in 0..2 {
                let c0 = j * PANEL + 16 * half;
                let mask = ((1u32 << d.saturating_sub(c0).min(16)) - 1) as __mmask16;
                // SAFETY: loads only touch unmasked lanes (dims c0.. < d of key rows < s);
                // stores write 16 values of a 32-value panel row.
                unsafe {
                    let key = |i: usize| {
                        let x = if i < s && mask != 0 { _mm512_maskz_loadu_ps(mask, v.as_ptr().add(i * d + c0)) } else { _mm512_setzero_ps() };
                        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)))
                    };
                    for pair in 0..s_pad / 2 {
                        let both = _mm512_or_si512(key(2 * pair), _mm512_slli_epi32::<16>(key(2 * pair + 1)));
                        _mm512_storeu_si512(panel.as_mut_ptr().add(pair * PANEL + 16 * half) as *mut _, both);
                    }
                }
            }
        }
    }

    /// `panel_scalar` 16 columns at a time: each column's 32 values of a k step rounded into one
    /// vector of 16 pairs, the 16 vectors transposed in registers, and each transposed vector
    /// stored as one 64-byte row of the panel. bf16 weights are loaded as they are, f16 and q8_0 ones
    /// converted in registers; other formats (and partial column groups) go through `scratch`,
    /// `[16][k_pad]` f32 rows from `weight_column`. (Scattering each column's pairs to their 16
    /// rows ran at ~3 cycles a weight: packing took longer than the product.) Writes every
    /// value of `panel`, which need not be initialised.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BF16 and F16C; the weight holds `n * k` values (`[n, k]`);
    /// `scratch.len()` is `16 * k_pad`, `k_pad` a multiple of `K_STEP` and at least `k`, and
    /// `panel.len()` is `k_pad / 2 * PANEL`.
    #[target_feature(enable = "avx512f,avx512bf16,f16c")]
    pub unsafe fn panel_avx512(w: &WeightRows, n: usize, k: usize, first: usize, scratch: &mut [f32], panel: &mut [MaybeUninit<u32>]) {
        let k_pad = scratch.len() / 16;
        assert!(k_pad.is_multiple_of(K_STEP) && k_pad >= k && scratch.len() == 16 * k_pad && panel.len() == k_pad / 2 * PANEL);
        let steps = k_pad / K_STEP;
        for half in 0..2 {
            let c0 = first + 16 * half;
            let whole = c0 + 16 <= n && k == k_pad;
            // SAFETY (all blocks): the loads read columns c0..c0 + 16 < n of a weight with k
            // values per column, or the scratch rows; the stores write rows 16s..16s + 16 < k_pad / 2
            // of the panel at columns 16 * half..+16.
            unsafe {
                let store = |s: usize, mut v: [__m512i; 16], panel: &mut [MaybeUninit<u32>]| {
                    transpose_16x16(&mut v);
                    for (p, row) in v.iter().enumerate() {
                        _mm512_storeu_si512(panel.as_mut_ptr().add((16 * s + p) * PANEL + 16 * half) as *mut _, *row);
                    }
                };
                match (w, w.q8_0()) {
                    (WeightRows::Bf16(v), _) if whole => {
                        for s in 0..steps {
                            let cols = std::array::from_fn(|c| _mm512_loadu_si512(v.as_ptr().add((c0 + c) * k + K_STEP * s) as *const _));
                            store(s, cols, panel);
                        }
                    }
                    (WeightRows::F16(v), _) if whole => {
                        for s in 0..steps {
                            let cols = std::array::from_fn(|c| f16_block_bf16(v.as_ptr().add((c0 + c) * k + K_STEP * s)));
                            store(s, cols, panel);
                        }
                    }
                    (_, Some((qs, d))) if whole => {
                        for s in 0..steps {
                            // one q8_0 block per k step
                            let cols = std::array::from_fn(|c| q8_0_block_bf16(qs.as_ptr().add((c0 + c) * k + K_STEP * s), d[(c0 + c) * steps + s]));
                            store(s, cols, panel);
                        }
                    }
                    _ => {
                        for (c, row) in scratch.chunks_exact_mut(k_pad).enumerate() {
                            weight_column(w, n, k, c0 + c, row);
                        }
                        for s in 0..steps {
                            let cols = std::array::from_fn(|c| {
                                let at = scratch.as_ptr().add(c * k_pad + K_STEP * s);
                                // bf16 j of the result is value j of (lo, hi)
                                std::mem::transmute::<_, __m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at)))
                            });
                            store(s, cols, panel);
                        }
                    }
                }
            }
        }
    }

    /// One q8_0 block (32 int8 at `qs`, scale `d`) decoded and rounded to 32 bf16 in k order
    /// (bf16 j of the result is value j of (lo, hi)), for both packers.
    ///
    /// # Safety
    /// AVX-512 F/BF16 and F16C; `qs` points at 32 readable int8.
    #[inline(always)]
    unsafe fn q8_0_block_bf16(qs: *const i8, d: half::f16) -> __m512i {
        // SAFETY: per the contract.
        unsafe {
            let q = _mm256_loadu_si256(qs as *const __m256i);
            // (`f16::to_f32` is a call here; F16C converts in a register)
            let scale = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d.to_bits() as i32)));
            let lo = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))));
            let hi = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q))));
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
        }
    }

    /// 32 f16 at `v` widened (exactly) and rounded to 32 bf16 in k order, for both packers.
    ///
    /// # Safety
    /// AVX-512 F/BF16; `v` points at 32 readable f16.
    #[inline(always)]
    unsafe fn f16_block_bf16(v: *const half::f16) -> __m512i {
        // SAFETY: per the contract.
        unsafe {
            let lo = _mm512_cvtph_ps(_mm256_loadu_si256(v as *const __m256i));
            let hi = _mm512_cvtph_ps(_mm256_loadu_si256(v.add(16) as *const __m256i));
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
        }
    }

    /// Transposes 16 x 16 u32 lanes: lane `c` of `v[p]` becomes lane `p` of `v[c]`. Three rounds:
    /// 32-bit and 64-bit interleaves inside 128-bit lanes, then two rounds of 128-bit lane
    /// shuffles.
    #[inline(always)]
    pub(crate) unsafe fn transpose_16x16(v: &mut [__m512i; 16]) {
        // t[2i], t[2i + 1]: rows 2i, 2i + 1 interleaved (lanes 0-1 and 2-3 of each 128 bits)
        let t: [__m512i; 16] = std::array::from_fn(|j| {
            let (a, b) = (v[j & !1], v[j | 1]);
            if j % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
        });
        // u[4g + j]: rows 4g..4g + 4 of columns j, j + 4, j + 8, j + 12 (one per 128-bit lane)
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
        });
        for j in 0..4 {
            // x: lanes 0 and 2 of u[j], u[4 + j]; y: lanes 1 and 3 (likewise x2, y2 for 8 + j, 12 + j)
            let x = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let y = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
            let x2 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let y2 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
            v[j] = _mm512_shuffle_i32x4::<0x88>(x, x2);
            v[j + 8] = _mm512_shuffle_i32x4::<0xDD>(x, x2);
            v[j + 4] = _mm512_shuffle_i32x4::<0x88>(y, y2);
            v[j + 12] = _mm512_shuffle_i32x4::<0xDD>(y, y2);
        }
    }
}

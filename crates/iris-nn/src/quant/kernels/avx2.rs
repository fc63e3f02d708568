//! AVX2 twins of the integer kernels in `kernels/mod.rs` (`maddubs` on 32 bytes) and the 4-row
//! q4_K decode kernel over interleaved rows; tested against the scalar twin. With `VNNI` they
//! take AVX-VNNI's 256-bit `vpdpbusd`/`vpdpwssd` (Intel Alder Lake and later client CPUs, which
//! lack AVX-512; Zen 5) where plain AVX2 needs two or three instructions; the integer sums are
//! the same, so both give bit-identical results.

use super::{prefetch_ahead_of, prefetch_to_l2, q4k_row, Q4KBlock, QuantizedRow, MAX_ROWS};
use candle_core::quantized::k_quants::{QK8_0, QK_K};
use half::f16;
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// 32 unsigned x 32 signed bytes -> 8 i32 lanes, each the sum of four products. Without VNNI
/// `maddubs` forms i16 pair sums first, which saturate only past 2 * 255 * 127: callers keep the
/// unsigned operand <= 128 and the signed one in [-127, 127], so both paths are exact.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_u8_i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        vpdpbusd(_mm256_setzero_si256(), u, s)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
}

/// AVX-VNNI `acc + u8 x i8 quad sums`, as one VEX-encoded `vpdpbusd`. Inline asm, as
/// `avx512::dpwssd`, so the AVX2 kernels need no extra target feature to be generic over `VNNI`
/// (the caller checks the CPU has AVX-VNNI before choosing `VNNI`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn vpdpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!("{{vex}} vpdpbusd {acc}, {u}, {s}", acc = inout(ymm_reg) acc, u = in(ymm_reg) u, s = in(ymm_reg) s, options(pure, nomem, nostack));
    acc
}

/// AVX-VNNI `acc + i16 pair products`, as one VEX-encoded `vpdpwssd` (`madd` + `add` without).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn vpdpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!("{{vex}} vpdpwssd {acc}, {a}, {b}", acc = inout(ymm_reg) acc, a = in(ymm_reg) a, b = in(ymm_reg) b, options(pure, nomem, nostack));
    acc
}

/// q8_0 x q8_0: eight blocks at a time share one F16C conversion of their weight scales and
/// one multiply by each row's activation scales; each block then picks its lane with a
/// permute. The remaining `per_row % 8` blocks take the per-block path. With `ahead` each
/// 64-byte line asks for the line that many bytes further on (`DecodePrefetch`).
pub unsafe fn dot_row_q8_0<const VNNI: bool>(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32], ahead: Option<usize>) {
    super::for_row_count!(rows.len(), dot_row_q8_0_rows::<_, VNNI>, qs, d, k, o, rows, cell, ahead)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q8_0_rows<const M: usize, const VNNI: bool>(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32], ahead: Option<usize>) {
    let per_row = k / QK8_0;
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let wq = qs.as_ptr().add(o * k);
    let wd = &d[o * per_row..(o + 1) * per_row];
    let mut acc = [_mm256_setzero_ps(); M];
    let block_dot = |b: usize, w: __m256i, r: usize| {
        let x = _mm256_loadu_si256(rows[r].qs.as_ptr().add(b * QK8_0) as *const __m256i);
        // maddubs takes one unsigned operand: |w| times x with w's sign moved onto x
        _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)))
    };
    let full = per_row / 8 * 8;
    for b0 in (0..full).step_by(8) {
        let w_scales = _mm256_cvtph_ps(_mm_loadu_si128(wd.as_ptr().add(b0) as *const __m128i));
        let mut scales = [_mm256_setzero_ps(); M];
        for r in 0..M {
            scales[r] = _mm256_mul_ps(w_scales, _mm256_loadu_ps(rows[r].d.as_ptr().add(b0)));
        }
        for j in 0..8 {
            let b = b0 + j;
            let w = _mm256_loadu_si256(wq.add(b * QK8_0) as *const __m256i);
            if let (0, Some(ahead)) = (j % 2, ahead) {
                // one prefetch per 64-byte line (two blocks)
                prefetch_to_l2(wq.wrapping_add(b * QK8_0 + ahead));
            }
            let lane = _mm256_set1_epi32(j as i32);
            for r in 0..M {
                acc[r] = _mm256_fmadd_ps(block_dot(b, w, r), _mm256_permutevar8x32_ps(scales[r], lane), acc[r]);
            }
        }
    }
    for (b, dw) in wd.iter().enumerate().skip(full) {
        let w = _mm256_loadu_si256(wq.add(b * QK8_0) as *const __m256i);
        let dw = dw.to_f32();
        for r in 0..M {
            acc[r] = _mm256_fmadd_ps(block_dot(b, w, r), _mm256_set1_ps(dw * rows[r].d[b]), acc[r]);
        }
    }
    for r in 0..M {
        cell[r] = hsum(acc[r]);
    }
}

/// One 64-value group `g` of a q4_K super-block, decoded once for any number of activation
/// rows: the low and high nibbles (values 64g..64g+32 and 64g+32..64g+64) and their 6-bit
/// scales broadcast as i16.
struct Q4kGroup {
    lo: __m256i,
    hi: __m256i,
    sc_lo: __m256i,
    sc_hi: __m256i,
}

/// The block's eight 6-bit sub-block scales as i16, repeated in both 128-bit halves, so
/// `q4k_group` can broadcast one with a single byte shuffle.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_scales(blk: &Q4KBlock) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(blk.sc.as_ptr() as *const __m128i)))
}

/// Shuffle mask selecting i16 lane `j` of each 128-bit half into every lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn i16_lane(j: usize) -> __m256i {
    _mm256_set1_epi16((((2 * j + 1) << 8) | (2 * j)) as i16)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_group(blk: &Q4KBlock, scales: __m256i, g: usize) -> Q4kGroup {
    let nibble = _mm256_set1_epi8(0x0F);
    let q = _mm256_loadu_si256(blk.qs.as_ptr().add(32 * g) as *const __m256i);
    Q4kGroup {
        lo: _mm256_and_si256(q, nibble),
        hi: _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble),
        sc_lo: _mm256_shuffle_epi8(scales, i16_lane(2 * g)),
        sc_hi: _mm256_shuffle_epi8(scales, i16_lane(2 * g + 1)),
    }
}

/// The activations matching group `g` (kernel activation order, `q4k_lane_order`) of the
/// super-block starting at `a`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_activations(a: *const i8, g: usize) -> (__m256i, __m256i) {
    let (off_lo, off_hi) = (128 * (g / 2) + 32 * (g % 2), 128 * (g / 2) + 64 + 32 * (g % 2));
    (_mm256_loadu_si256(a.add(off_lo) as *const __m256i), _mm256_loadu_si256(a.add(off_hi) as *const __m256i))
}

/// `isum` plus the scale-weighted integer dot product of a group with its activations, as 8
/// i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_group_dot<const VNNI: bool>(isum: __m256i, w: &Q4kGroup, (a_lo, a_hi): (__m256i, __m256i)) -> __m256i {
    let (pairs_lo, pairs_hi) = (_mm256_maddubs_epi16(w.lo, a_lo), _mm256_maddubs_epi16(w.hi, a_hi));
    if VNNI {
        vpdpwssd(vpdpwssd(isum, pairs_lo, w.sc_lo), pairs_hi, w.sc_hi)
    } else {
        _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_madd_epi16(pairs_lo, w.sc_lo), _mm256_madd_epi16(pairs_hi, w.sc_hi)))
    }
}

/// Adds one super-block to `acc`: `d*dx*isum - dmin*dx*(m_j * sum_j)` over the 8 sub-blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_accumulate(acc: __m256, isum: __m256i, blk: &Q4KBlock, dx: f32, sub_sums: *const i16) -> __m256 {
    // [d, dmin] as f16 -> f32 lanes 0 and 1 with one F16C conversion
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(blk.dm.as_ptr() as *const i32)));
    let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dx), acc);
    // eight (min, sub-block sum) i16 pairs -> four i32 lanes (upper four zero); <= 2 * 63 * 4064
    let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(blk.m.as_ptr() as *const __m128i));
    let min_terms = _mm256_cvtepi32_ps(_mm256_zextsi128_si256(_mm_madd_epi16(mins, _mm_loadu_si128(sub_sums as *const __m128i))));
    _mm256_fnmadd_ps(min_terms, _mm256_set1_ps(dmin * dx), acc)
}

/// q4_K: the 6-bit sub-block scales are applied in the integer domain (`madd` with the
/// scale broadcast as i16 instead of ones), so each 256-value super-block needs one int->float
/// conversion per row instead of eight; mins use the integer sub-block sums. Bounds: a pair
/// sum is <= 2*15*127, times a scale <= 63 and summed over 256 values < 2^25, no overflow.
pub unsafe fn dot_row_q4k<const VNNI: bool>(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    super::for_row_count!(rows.len(), dot_row_q4k_rows::<_, VNNI>, blocks, k, o, rows, cell)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_q4k_rows<const M: usize, const VNNI: bool>(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let per_row = k / QK_K;
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let mut acc = [_mm256_setzero_ps(); M];
    for (s, blk) in q4k_row(blocks, per_row, o) {
        let mut isum = [_mm256_setzero_si256(); M];
        let scales = q4k_scales(blk);
        for g in 0..4 {
            let w = q4k_group(blk, scales, g);
            for r in 0..M {
                let a = q4k_activations(rows[r].qs.as_ptr().add(s * QK_K), g);
                isum[r] = q4k_group_dot::<VNNI>(isum[r], &w, a);
            }
        }
        for r in 0..M {
            acc[r] = q4k_accumulate(acc[r], isum[r], blk, rows[r].d[s], rows[r].sub_sums.as_ptr().add(8 * s));
        }
    }
    for r in 0..M {
        cell[r] = hsum(acc[r]);
    }
}

/// `dot_row_q4k` for weight rows `o..o+4` (a full interleaved group, `o % 4 == 0`) and one
/// activation row: the rows' blocks are adjacent in memory and the four accumulation chains
/// independent. Each block runs whole before the next (sixteen 256-bit registers): taking the
/// four blocks' 64-value groups in turn kept four sums, four scale vectors and four
/// accumulators live and spilled to the stack. Block by block, one thread in cache (`gemv_bench
/// core`, AVX2 VM, alternated) went from 9.09-9.43 to 8.82-8.95 ns per 256 weights, and
/// Qwen2-VL-2B q4k text decode from 24.57 / 23.95 / 24.21 to 25.24 / 24.49 / 25.51 tok/s. With
/// `ahead` each group asks for the lines that many bytes past it (`DecodePrefetch`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_4_rows_q4k<const VNNI: bool>(blocks: &[Q4KBlock], k: usize, o: usize, row: &QuantizedRow, out: &mut [f32], ahead: Option<usize>) {
    let per_row = k / QK_K;
    let mut acc = [_mm256_setzero_ps(); 4];
    for s in 0..per_row {
        let group = &blocks[o * per_row + 4 * s..][..4];
        if let Some(ahead) = ahead {
            prefetch_ahead_of(group, ahead);
        }
        let a = row.qs.as_ptr().add(s * QK_K);
        for i in 0..4 {
            let scales = q4k_scales(&group[i]);
            let mut isum = _mm256_setzero_si256();
            for g in 0..4 {
                isum = q4k_group_dot::<VNNI>(isum, &q4k_group(&group[i], scales, g), q4k_activations(a, g));
            }
            acc[i] = q4k_accumulate(acc[i], isum, &group[i], row.d[s], row.sub_sums.as_ptr().add(8 * s));
        }
    }
    for i in 0..4 {
        out[i] = hsum(acc[i]);
    }
}

/// The q8_0 arm of `dequantize_row_portable` eight values per instruction: `scale * q`, the
/// int8 -> f32 conversion exact and one rounding in the product, as the twin. LLVM left the
/// twin's loop scalar (a `vcvtsi2ss` and a `vmovss` per value): 9.5% of a q8_0 prefill's
/// profile on the Zen 2 VM, where the f32 GEMM decodes every weight panel by panel.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dequantize_q8_0(qs: &[i8], d: &[f16], out: &mut [f32]) {
    assert!(qs.len() == out.len() && d.len() * QK8_0 == out.len());
    for ((dst, q), scale) in out.chunks_exact_mut(QK8_0).zip(qs.chunks_exact(QK8_0)).zip(d) {
        let scale = _mm256_set1_ps(scale.to_f32());
        for i in 0..QK8_0 / 8 {
            // 8 int8 -> [8] i32 -> [8] f32
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().add(8 * i) as *const __m128i)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(8 * i), _mm256_mul_ps(scale, v));
        }
    }
}

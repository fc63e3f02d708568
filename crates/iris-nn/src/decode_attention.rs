//! Attention for a decode step: a few query rows per KV head against a long cache, computed by
//! streaming each head's K and V rows once, straight from the cache buffer.
//!
//! Why: the general path (`attention::attention`) runs two small batched matmuls per layer and
//! first copies V out of the cache (the cache view is strided while it has spare capacity). At
//! CogVLM2's 2341-token image prompt that took ~3.1 ms per layer, 4x the time to read the
//! layer's 19 MB of K and V; the whole step spent ~0.1 s in attention. Here each KV head (one
//! rayon task) computes its `G * T` query rows' scores key by key, the fused softmax of
//! `softmax.rs`, and the probability-weighted sum of V rows. Same formula as `attention_slow`
//! (its twin in the tests); only the summation order differs. Caches stored as f16 or bf16
//! (`KvCache::stored_as`) are widened one row at a time, so a step reads half the bytes.

use crate::error::Result;
use crate::softmax::{softmax_scores_row, CausalRows};
use candle_core::{CpuStorage, DType, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Query rows per KV head (`G * T`) up to which a step takes this path: decode steps (T = 1) and
/// short verify steps. Longer steps have enough rows for the matmul path to win.
pub const MAX_ROWS_PER_KV_HEAD: usize = 32;

/// One KV head's `[S, D]` rows in the cache's storage dtype.
#[derive(Clone, Copy)]
enum HeadRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> HeadRows<'a> {
    /// Head `i`'s rows of a cache buffer whose heads start `head_stride` apart from `start`.
    fn of(storage: &'a CpuStorage, start: usize, head_stride: usize, i: usize, len: usize) -> Option<Self> {
        let range = start + i * head_stride..start + i * head_stride + len;
        Some(match storage {
            CpuStorage::F32(x) => Self::F32(&x[range]),
            CpuStorage::F16(x) => Self::F16(&x[range]),
            CpuStorage::BF16(x) => Self::Bf16(&x[range]),
            _ => return None,
        })
    }

    /// Row `j` (`D` values) as f32: borrowed from an f32 cache, else widened into `scratch`.
    #[inline(always)]
    fn row<'b>(&'b self, j: usize, scratch: &'b mut [f32], f16c: bool) -> &'b [f32] {
        let d = scratch.len();
        match self {
            Self::F32(x) => &x[j * d..(j + 1) * d],
            Self::F16(x) => {
                widen_f16(&x[j * d..(j + 1) * d], scratch, f16c);
                scratch
            }
            Self::Bf16(x) => {
                for (o, v) in scratch.iter_mut().zip(&x[j * d..(j + 1) * d]) {
                    *o = f32::from_bits((v.to_bits() as u32) << 16);
                }
                scratch
            }
        }
    }
}

/// `src` as f32 in `dst`; 8 at a time with `vcvtph2ps` where the caller runs with F16C (`f16c`).
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn widen_f16(src: &[f16], dst: &mut [f32], f16c: bool) {
    #[cfg(target_arch = "x86_64")]
    if f16c {
        use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        let whole = src.len().min(dst.len()) / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: F16C was detected at run time (the caller's flag); 8 halves are read and
            // 8 floats written, both in bounds (i + 8 <= whole).
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i))) };
        }
        for (o, v) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *o = v.to_f32();
        }
        return;
    }
    for (o, v) in dst.iter_mut().zip(src) {
        *o = v.to_f32();
    }
}

/// `q [H, T, D]` (f32) against cache views `k`/`v` `[KVH, S, D]` (f32, f16 or bf16, both the
/// same; rows of `D` contiguous, any head stride) on CPU -> `Some([H, T, D])` in f32; `None` when
/// the inputs do not fit this path.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, k_dim) = k.dims3()?;
    if kvh == 0 || h % kvh != 0 || s == 0 || k_dim != d {
        return Ok(None);
    }
    if t == 0 || d == 0 {
        return Ok(None);
    }
    let groups = h / kvh;
    let cpu = q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu();
    let cache_dtype = matches!(k.dtype(), DType::F32 | DType::F16 | DType::BF16) && v.dtype() == k.dtype();
    if groups * t > MAX_ROWS_PER_KV_HEAD || !cpu || q.dtype() != DType::F32 || !cache_dtype || v.dims3()? != (kvh, s, d) {
        return Ok(None);
    }
    let rows_contiguous = |x: &Tensor| x.stride()[2] == 1 && x.stride()[1] == d;
    if !rows_contiguous(k) || !rows_contiguous(v) {
        return Ok(None);
    }
    // [H, T, D] = [KVH, G*T, D]: each KV head's query rows are adjacent
    let qv: Vec<f32> = q.contiguous()?.flatten_all()?.to_vec1()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(kd), Storage::Cpu(vd)) = (&*ks, &*vs) else { return Ok(None) };
    let heads: Option<Vec<(HeadRows, HeadRows)>> = (0..kvh)
        .map(|i| Some((HeadRows::of(kd, kl.start_offset(), kl.stride()[0], i, s * d)?, HeadRows::of(vd, vl.start_offset(), vl.stride()[0], i, s * d)?)))
        .collect();
    let Some(heads) = heads else { return Ok(None) };
    let rows = groups * t;
    let mut out = vec![0f32; h * t * d];
    let simd = simd_detected();
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    let avx512 = simd && avx512_detected();
    out.par_chunks_mut(rows * d).zip(heads).enumerate().for_each(|(i, (o, (kh, vh)))| {
        let qh = &qv[i * rows * d..(i + 1) * rows * d];
        let shape = HeadShape { rows, t, d, s };
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: AVX-512F, AVX2, FMA and F16C were detected at run time.
            unsafe { head_attention_avx512(qh, kh, vh, o, shape, causal, scale as f32) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected at run time.
            unsafe { head_attention_simd(qh, kh, vh, o, shape, causal, scale as f32) };
            return;
        }
        head_attention::<Portable>(qh, kh, vh, o, shape, causal, scale as f32, false);
    });
    drop((ks, vs));
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?))
}

/// AVX2 + FMA (the softmax's and the 8-lane loops') and F16C (widening f16 rows).
fn simd_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::softmax::avx2_fma_detected() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[derive(Clone, Copy)]
struct HeadShape {
    /// query rows `G * T`, row `r` being query `r % t`
    rows: usize,
    t: usize,
    d: usize,
    /// keys
    s: usize,
}

/// `head_attention` compiled for AVX2, FMA and F16C (8-lane `dot`/`axpy`, `vcvtph2ps`; the
/// crate's baseline is SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn head_attention_simd(q: &[f32], k: HeadRows, v: HeadRows, out: &mut [f32], sh: HeadShape, causal: Option<usize>, scale: f32) {
    head_attention::<Portable>(q, k, v, out, sh, causal, scale, true)
}

/// Keys per block of `head_attention_avx512`: the block's rows (32 KiB of f32 at D = 128) stay
/// in L1 while every query row uses them.
#[cfg(target_arch = "x86_64")]
const KEY_BLOCK: usize = 64;

/// One KV head with AVX-512F, register-blocked: up to four query rows share each loaded (and
/// widened) key or value vector. Scores: one 16-lane FMA chain per row and key, reduced once.
/// Values: the rows' output accumulators stay in registers over a block of keys, 32 columns at a
/// time, instead of a load and store of the output per key and row. Against the portable loop
/// (`attention_bench decode`, CogVLM2's 2341-token cache, one core, in cache): 1.5 -> 0.83 ms a
/// layer. Head dims that are not a multiple of 32 (or over 256) take the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn head_attention_avx512(q: &[f32], k: HeadRows, v: HeadRows, out: &mut [f32], sh: HeadShape, causal: Option<usize>, scale: f32) {
    let HeadShape { rows, t, d, s } = sh;
    if d % 32 != 0 || d > 256 {
        return head_attention::<Portable>(q, k, v, out, sh, causal, scale, true);
    }
    let mask = causal.map(|offset| CausalRows { first_position: offset, rows_per_query_block: t });
    // scores [rows, S]
    let mut scores = vec![0f32; rows * s];
    match k {
        HeadRows::F32(x) => all_scores(q, x, &mut scores, rows, d, s),
        HeadRows::F16(x) => all_scores(q, x, &mut scores, rows, d, s),
        HeadRows::Bf16(x) => all_scores(q, x, &mut scores, rows, d, s),
    }
    for (r, row) in scores.chunks_exact_mut(s).enumerate() {
        softmax_scores_row(row, r, scale, mask, true);
    }
    // out [rows, D] = probs [rows, S] x V [S, D]
    out.fill(0.0);
    match v {
        HeadRows::F32(x) => all_values(&scores, x, out, rows, d, s),
        HeadRows::F16(x) => all_values(&scores, x, out, rows, d, s),
        HeadRows::Bf16(x) => all_values(&scores, x, out, rows, d, s),
    }
}

/// A cache element that AVX-512F loads 16 at a time as f32.
#[cfg(target_arch = "x86_64")]
trait Lanes16: Copy {
    /// 16 values from `p` as f32 (`p` valid for 16 reads).
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
impl Lanes16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
    }
}

/// Scores of every row against every key, key blocks outermost, rows in register groups of four.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn all_scores<T: Lanes16>(q: &[f32], keys: &[T], scores: &mut [f32], rows: usize, d: usize, s: usize) {
    for j0 in (0..s).step_by(KEY_BLOCK) {
        for r0 in (0..rows).step_by(4) {
            let at = Block { r0, j0, n: KEY_BLOCK.min(s - j0), d, s };
            match rows - r0 {
                1 => scores_block::<T, 1>(q, keys, scores, at),
                2 => scores_block::<T, 2>(q, keys, scores, at),
                3 => scores_block::<T, 3>(q, keys, scores, at),
                _ => scores_block::<T, 4>(q, keys, scores, at),
            }
        }
    }
}

/// `out += probs x values`, blocked as `all_scores`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn all_values<T: Lanes16>(probs: &[f32], values: &[T], out: &mut [f32], rows: usize, d: usize, s: usize) {
    for j0 in (0..s).step_by(KEY_BLOCK) {
        for r0 in (0..rows).step_by(4) {
            let at = Block { r0, j0, n: KEY_BLOCK.min(s - j0), d, s };
            match rows - r0 {
                1 => values_block::<T, 1>(probs, values, out, at),
                2 => values_block::<T, 2>(probs, values, out, at),
                3 => values_block::<T, 3>(probs, values, out, at),
                _ => values_block::<T, 4>(probs, values, out, at),
            }
        }
    }
}

/// Where a register block sits: query rows `r0..r0+R`, keys `j0..j0+n` of `s`, head dim `d`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Block {
    r0: usize,
    j0: usize,
    n: usize,
    d: usize,
    s: usize,
}

/// `scores[r0+r][j0+j] = q[r0+r] . keys[j0+j]` for `R` rows and the block's keys.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_block<T: Lanes16, const R: usize>(q: &[f32], keys: &[T], scores: &mut [f32], at: Block) {
    use std::arch::x86_64::*;
    let Block { r0, j0, n, d, s } = at;
    assert!(q.len() >= (r0 + R) * d && keys.len() >= (j0 + n) * d && scores.len() >= (r0 + R - 1) * s + j0 + n);
    let q = q.as_ptr().add(r0 * d);
    for j in j0..j0 + n {
        let key = keys.as_ptr().add(j * d);
        let mut acc = [_mm512_setzero_ps(); R];
        for c in (0..d).step_by(16) {
            let kv = T::load16(key.add(c));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(r * d + c)), kv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            *scores.get_unchecked_mut((r0 + r) * s + j) = _mm512_reduce_add_ps(*a);
        }
    }
}

/// `out[r0+r] += sum_j probs[r0+r][j] * values[j]` over the block's keys, for `R` rows, 32
/// columns at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn values_block<T: Lanes16, const R: usize>(probs: &[f32], values: &[T], out: &mut [f32], at: Block) {
    use std::arch::x86_64::*;
    let Block { r0, j0, n, d, s } = at;
    assert!(out.len() >= (r0 + R) * d && values.len() >= (j0 + n) * d && probs.len() >= (r0 + R - 1) * s + j0 + n);
    for c in (0..d).step_by(32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for j in j0..j0 + n {
            let value = values.as_ptr().add(j * d + c);
            let (v0, v1) = (T::load16(value), T::load16(value.add(16)));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*probs.get_unchecked((r0 + r) * s + j));
                // masked keys (probability 0) are left out as in the portable loop, so an
                // infinite value stored for a later token (f16 overflow) cannot give 0 * inf
                let seen = _mm512_cmpneq_ps_mask(p, _mm512_setzero_ps());
                a[0] = _mm512_mask3_fmadd_ps(p, v0, a[0], seen);
                a[1] = _mm512_mask3_fmadd_ps(p, v1, a[1], seen);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.as_mut_ptr().add((r0 + r) * d + c);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[0]));
            _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_loadu_ps(o.add(16)), a[1]));
        }
    }
}

/// One KV head: `q [rows, D]`, `k`/`v` `[S, D]` -> `out [rows, D]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head_attention<Ops: RowOps>(q: &[f32], k: HeadRows, v: HeadRows, out: &mut [f32], sh: HeadShape, causal: Option<usize>, scale: f32, simd: bool) {
    let HeadShape { rows, t, d, s } = sh;
    let mask = causal.map(|offset| CausalRows { first_position: offset, rows_per_query_block: t });
    let mut scratch = vec![0f32; d];
    // scores [rows, S]: each key row is read (and widened) once for all query rows
    let mut scores = vec![0f32; rows * s];
    for j in 0..s {
        let key = k.row(j, &mut scratch, simd);
        for r in 0..rows {
            scores[r * s + j] = Ops::dot(&q[r * d..(r + 1) * d], key);
        }
    }
    for (r, row) in scores.chunks_exact_mut(s).enumerate() {
        softmax_scores_row(row, r, scale, mask, simd);
    }
    // out [rows, D] = probs [rows, S] x V [S, D]: each value row is read once
    out.fill(0.0);
    for j in 0..s {
        if (0..rows).all(|r| scores[r * s + j] == 0.0) {
            continue;
        }
        let value = v.row(j, &mut scratch, simd);
        for r in 0..rows {
            let p = scores[r * s + j];
            if p != 0.0 {
                Ops::axpy(p, value, &mut out[r * d..(r + 1) * d]);
            }
        }
    }
}

/// The two row operations of `head_attention`. Both sum in a different order from a plain loop
/// (lanes, then a tree over the lanes); `attention_slow` is the twin.
trait RowOps {
    /// `sum(a * b)`
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += a * x`
    fn axpy(a: f32, x: &[f32], y: &mut [f32]);
}

/// Plain Rust in eight lanes, which the compiler vectorises for the caller's target features.
struct Portable;

impl RowOps for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ac.zip(bc) {
            for i in 0..8 {
                lanes[i] += x[i] * y[i];
            }
        }
        // a tree, not a left-to-right sum: a serial chain of 8 dependent adds per dot was the
        // decode step's bottleneck
        for width in [4, 2, 1] {
            for i in 0..width {
                lanes[i] += lanes[i + width];
            }
        }
        lanes[0] + tail
    }

    #[inline(always)]
    fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::attention_slow;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn decode_attention_matches_the_slow_twin_on_strided_cache_views() {
        let dev = Device::Cpu;
        // (heads, kv heads, query rows, cached keys, head dim, causal offset)
        // f16/bf16: caches stored narrower (`KvCache::stored_as`); the twin widens the same
        // rounded values, so only the summation order differs there too. On AVX-512 the head
        // dims 128 and 64 take the register-blocked kernel with row groups of 4+2 (6 rows), 4,
        // 4+3 (7) and 2 (t = 2), over whole and partial key blocks; d = 20 and 16 take the
        // portable loop (d = 20 leaves a partial group of 8 for the F16C widening).
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let cases = [(12, 2, 1, 307, 128, Some(306)), (32, 8, 1, 50, 128, Some(49)), (28, 4, 1, 129, 64, Some(128)), (2, 2, 2, 70, 64, Some(68)), (4, 4, 3, 9, 20, Some(6)), (6, 2, 2, 5, 16, None)];
            for (h, kvh, t, s, d, causal) in cases {
                let q = Tensor::randn(0f32, 1.0, (h, t, d), &dev).unwrap();
                // the cache holds spare capacity: the views are strided along the head axis
                let cap = s + 7;
                let cache = || Tensor::randn(0f32, 1.0, (kvh, cap, d), &dev).unwrap().to_dtype(dtype).unwrap().narrow(1, 0, s).unwrap();
                let (k, v) = (cache(), cache());
                assert!(!k.is_contiguous() || kvh == 1);
                let fast = decode_attention(&q, &k, &v, causal, 0.125).unwrap().expect("takes the decode path");
                assert_eq!(fast.dtype(), DType::F32);
                let slow = attention_slow(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), causal, 0.125).unwrap();
                let diff = max_abs_diff(&fast, &slow).unwrap();
                println!("decode attention {dtype:?} cache h={h} kvh={kvh} t={t} s={s} d={d} causal={causal:?}: max|diff| = {diff:e}");
                assert!(diff < 1e-5, "{diff}");
            }
        }
    }

    #[test]
    fn a_masked_key_with_an_infinite_value_is_left_out() {
        let dev = Device::Cpu;
        // two query rows (a verify step) at positions 3 and 4: row 0 must not see key 4, whose
        // value overflowed f16 when stored; d = 32 takes the AVX-512 kernel where there is one
        let d = 32;
        let q = Tensor::randn(0f32, 1.0, (1, 2, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 5, d), &dev).unwrap().to_dtype(DType::F16).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 4, d), &dev).unwrap();
        let v = Tensor::cat(&[v, Tensor::full(1e6f32, (1, 1, d), &dev).unwrap()], 1).unwrap().to_dtype(DType::F16).unwrap();
        let both = decode_attention(&q, &k, &v, Some(3), 0.125).unwrap().unwrap();
        let row0 = both.narrow(1, 0, 1).unwrap();
        let alone = decode_attention(&q.narrow(1, 0, 1).unwrap(), &k.narrow(1, 0, 4).unwrap(), &v.narrow(1, 0, 4).unwrap(), Some(3), 0.125).unwrap().unwrap();
        let diff = max_abs_diff(&row0, &alone).unwrap();
        println!("row 0 with a masked infinite value vs without the key: max|diff| = {diff:e}");
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn a_narrow_cache_on_the_general_path_is_widened() {
        let dev = Device::Cpu;
        // 40 query rows per KV head: too many for the decode path
        let q = Tensor::randn(0f32, 1.0, (4, 20, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 30, 16), &dev).unwrap().to_dtype(DType::F16).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 30, 16), &dev).unwrap().to_dtype(DType::F16).unwrap();
        let got = crate::attention::attention(&q, &k, &v, Some(10), 0.25, crate::attention::DEFAULT_SCORE_BYTES).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let want = attention_slow(&q, &k, &v, Some(10), 0.25).unwrap();
        let diff = max_abs_diff(&got, &want).unwrap();
        println!("f16 cache, 40 rows per KV head: max|diff| = {diff:e}");
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn other_inputs_are_left_to_the_general_path() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 40, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (4, 40, 8), &dev).unwrap();
        assert!(decode_attention(&q, &k, &k, Some(0), 0.5).unwrap().is_none(), "too many query rows");
        let (qb, kb) = (q.narrow(1, 0, 1).unwrap().to_dtype(DType::BF16).unwrap(), k.to_dtype(DType::BF16).unwrap());
        assert!(decode_attention(&qb, &kb, &kb, Some(39), 0.5).unwrap().is_none(), "bf16");
    }
}

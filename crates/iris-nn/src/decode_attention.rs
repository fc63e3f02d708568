//! Attention for a decode step: a few query rows per KV head against a long cache, computed by
//! streaming each head's K and V rows once, straight from the cache buffer.
//!
//! Why: the general path (`attention::attention`) runs two small batched matmuls per layer and
//! first copies V out of the cache (the cache view is strided while it has spare capacity). At
//! CogVLM2's 2341-token image prompt that took ~3.1 ms per layer, 4x the time to read the
//! layer's 19 MB of K and V; the whole step spent ~0.1 s in attention. Here each KV head (one
//! rayon task) computes its `G * T` query rows' scores key by key, the fused softmax of
//! `softmax.rs`, and the probability-weighted sum of V rows. Same formula as `attention_slow`
//! (its twin in the tests); only the summation order differs.

use crate::error::Result;
use crate::softmax::{softmax_scores_row, CausalRows};
use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per KV head (`G * T`) up to which a step takes this path: decode steps (T = 1) and
/// short verify steps. Longer steps have enough rows for the matmul path to win.
pub const MAX_ROWS_PER_KV_HEAD: usize = 32;

/// `q [H, T, D]` against cache views `k`/`v` `[KVH, S, D]` (rows of `D` contiguous, any head
/// stride), f32 on CPU -> `Some([H, T, D])`; `None` when the inputs do not fit this path.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, k_dim) = k.dims3()?;
    if kvh == 0 || h % kvh != 0 || s == 0 || k_dim != d {
        return Ok(None);
    }
    let groups = h / kvh;
    let f32_cpu = |x: &Tensor| x.device().is_cpu() && x.dtype() == DType::F32;
    if groups * t > MAX_ROWS_PER_KV_HEAD || !f32_cpu(q) || !f32_cpu(k) || !f32_cpu(v) || v.dims3()? != (kvh, s, d) {
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
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) = (&*ks, &*vs) else { return Ok(None) };
    // head `i`'s `[S, D]` rows in a cache buffer
    let head = |start: usize, head_stride: usize, i: usize| -> std::ops::Range<usize> {
        let first = start + i * head_stride;
        first..first + s * d
    };
    let rows = groups * t;
    let mut out = vec![0f32; h * t * d];
    let avx2 = crate::softmax::avx2_fma_detected();
    out.par_chunks_mut(rows * d).enumerate().for_each(|(i, o)| {
        let kh = &kd[head(kl.start_offset(), kl.stride()[0], i)];
        let vh = &vd[head(vl.start_offset(), vl.stride()[0], i)];
        let qh = &qv[i * rows * d..(i + 1) * rows * d];
        let shape = HeadShape { rows, t, d, s };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2 and FMA were detected at run time.
            unsafe { head_attention_avx2(qh, kh, vh, o, shape, causal, scale as f32) };
            return;
        }
        head_attention(qh, kh, vh, o, shape, causal, scale as f32, avx2);
    });
    drop((ks, vs));
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?))
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

/// `head_attention` compiled for AVX2 (8-lane `dot`/`axpy`; the crate's baseline is SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_attention_avx2(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], sh: HeadShape, causal: Option<usize>, scale: f32) {
    head_attention(q, k, v, out, sh, causal, scale, true)
}

/// One KV head: `q [rows, D]`, `k`/`v` `[S, D]` -> `out [rows, D]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head_attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], sh: HeadShape, causal: Option<usize>, scale: f32, avx2: bool) {
    let HeadShape { rows, t, d, s } = sh;
    let mask = causal.map(|offset| CausalRows { first_position: offset, rows_per_query_block: t });
    // scores [rows, S]: each key row is read once for all query rows
    let mut scores = vec![0f32; rows * s];
    for (j, key) in k.chunks_exact(d).enumerate() {
        for r in 0..rows {
            scores[r * s + j] = dot(&q[r * d..(r + 1) * d], key);
        }
    }
    for (r, row) in scores.chunks_exact_mut(s).enumerate() {
        softmax_scores_row(row, r, scale, mask, avx2);
    }
    // out [rows, D] = probs [rows, S] x V [S, D]: each value row is read once
    out.fill(0.0);
    for (j, value) in v.chunks_exact(d).enumerate() {
        for r in 0..rows {
            let p = scores[r * s + j];
            if p != 0.0 {
                axpy(p, value, &mut out[r * d..(r + 1) * d]);
            }
        }
    }
}

/// `sum(a * b)` in eight independent lanes (so it vectorises), then the lanes summed.
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
    lanes.iter().sum::<f32>() + tail
}

/// `y += a * x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
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
        for (h, kvh, t, s, d, causal) in [(12, 2, 1, 307, 128, Some(306)), (32, 8, 1, 50, 128, Some(49)), (4, 4, 3, 9, 20, Some(6)), (6, 2, 2, 5, 16, None)] {
            let q = Tensor::randn(0f32, 1.0, (h, t, d), &dev).unwrap();
            // the cache holds spare capacity: the views are strided along the head axis
            let cap = s + 7;
            let k = Tensor::randn(0f32, 1.0, (kvh, cap, d), &dev).unwrap().narrow(1, 0, s).unwrap();
            let v = Tensor::randn(0f32, 1.0, (kvh, cap, d), &dev).unwrap().narrow(1, 0, s).unwrap();
            assert!(!k.is_contiguous() || kvh == 1);
            let fast = decode_attention(&q, &k, &v, causal, 0.125).unwrap().expect("takes the decode path");
            let slow = attention_slow(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), causal, 0.125).unwrap();
            let diff = max_abs_diff(&fast, &slow).unwrap();
            println!("decode attention h={h} kvh={kvh} t={t} s={s} d={d} causal={causal:?}: max|diff| = {diff:e}");
            assert!(diff < 1e-5, "{diff}");
        }
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

//! Fused full attention for many query rows on AVX-512F CPUs (the vision towers): scores,
//! softmax and the probability-weighted sum of V computed one block of keys at a time with the
//! online softmax of FlashAttention (Dao et al., 2022), so the `[T, S]` score matrix never
//! exists. Each task owns 48 query rows in register tiles of six; a tile's scores for 64 keys
//! (24 registers) come from K transposed once per head, and its output rows take the block's V
//! rows in register chunks.
//!
//! Why: the blocked path (`attention::blocked_attention`) ran two matmuls with a short inner
//! dimension (`D` = 80 in Qwen2-VL's tower) through candle's GEMM plus a softmax pass over a
//! 4 MiB score block per head, ~85 GFLOP/s here (`attention_bench`). Same formula as
//! `attention_slow` (its twin in the tests); the sums run in another order.
//! `IRIS_NO_FLASH_ATTENTION=1` turns it off, for A/B runs.

use crate::error::Result;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per register tile.
const TILE_ROWS: usize = 6;
/// Query rows per task: its tiles take each block of keys in turn while the block is in L1/L2,
/// so K and V stream from L3 once per 48 rows rather than once per 6 (CogVLM2's 9217-token
/// heads hold 8 MB of K and V).
const QUERY_BLOCK: usize = 8 * TILE_ROWS;
/// Keys per block: four 16-lane vectors.
const KEY_BLOCK: usize = 64;
/// Largest head dim taken (a tile's output rows stay in L1).
const MAX_HEAD_DIM: usize = 256;

/// Whether this CPU runs the fused kernel (and it is not switched off).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::env::var_os("IRIS_NO_FLASH_ATTENTION").is_none() && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The contiguous f32 values of a CPU tensor, if it has them.
fn contiguous_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(x)), Some((start, end))) => Some(&x[start..end]),
        _ => None,
    }
}

/// `q [H, T, D]`, `k`/`v` `[KVH, S, D]` (f32, contiguous, `H % KVH == 0`), every query seeing
/// every key -> `Some([H, T, D])`; `None` where this path does not apply (another dtype or
/// layout, `D` not a multiple of 16 or over 256, no AVX-512F).
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, k_dim) = k.dims3()?;
    let fits = kvh > 0 && h % kvh == 0 && s > 0 && t > 0 && k_dim == d && v.dims3()? == (kvh, s, d) && d % 16 == 0 && d <= MAX_HEAD_DIM;
    if !fits || [q, k, v].iter().any(|x| x.dtype() != DType::F32 || !x.device().is_cpu()) || !available() {
        return Ok(None);
    }
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(qv), Some(kv), Some(vv)) = (contiguous_f32(&qs, ql), contiguous_f32(&ks, kl), contiguous_f32(&vs, vl)) else { return Ok(None) };
    let groups = h / kvh;
    // K^T per KV head, keys padded with zeros to whole blocks: [KVH, S, D] -> [KVH, D, S_pad]
    let s_pad = s.next_multiple_of(KEY_BLOCK);
    let mut kt = vec![0f32; kvh * d * s_pad];
    kt.par_chunks_mut(d * s_pad).enumerate().for_each(|(i, dst)| {
        for (j, key) in kv[i * s * d..(i + 1) * s * d].chunks_exact(d).enumerate() {
            for (c, &x) in key.iter().enumerate() {
                dst[c * s_pad + j] = x;
            }
        }
    });
    let mut out = vec![0f32; h * t * d];
    let shape = Shape { d, s, s_pad, scale: scale as f32 };
    out.par_chunks_mut(t * d).enumerate().for_each(|(hi, oh)| {
        let kvi = hi / groups;
        let (kth, vh) = (&kt[kvi * d * s_pad..(kvi + 1) * d * s_pad], &vv[kvi * s * d..(kvi + 1) * s * d]);
        let qh = &qv[hi * t * d..(hi + 1) * t * d];
        oh.par_chunks_mut(QUERY_BLOCK * d).enumerate().for_each(|(bi, o)| {
            let qb = &qh[bi * QUERY_BLOCK * d..][..o.len()];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` checked AVX-512F and FMA at run time.
            unsafe {
                avx512::query_block(qb, kth, vh, o, shape)
            };
        });
    });
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?))
}

/// One head's sizes: head dim, keys, keys padded to whole blocks, softmax scale.
#[derive(Clone, Copy)]
struct Shape {
    d: usize,
    s: usize,
    s_pad: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Shape, KEY_BLOCK, QUERY_BLOCK, TILE_ROWS};
    use crate::softmax::avx512::exp_nonpositive;
    use std::arch::x86_64::*;

    /// Running softmax state of a tile's rows: max score so far and sum of exp below it (`o`
    /// holds the unnormalised weighted sum).
    #[derive(Clone, Copy)]
    struct RowState {
        max: f32,
        sum: f32,
    }

    /// Up to `QUERY_BLOCK` query rows `q [T', D]` against one head (`kt [D, S_pad]`, `v [S, D]`)
    /// -> `o [T', D]`: key blocks outermost, each taken by every tile in turn.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn query_block(q: &[f32], kt: &[f32], v: &[f32], o: &mut [f32], sh: Shape) {
        let Shape { d, s, s_pad, .. } = sh;
        let rows = o.len() / d;
        assert!(q.len() == rows * d && rows <= QUERY_BLOCK && kt.len() == d * s_pad && v.len() == s * d && s_pad.is_multiple_of(KEY_BLOCK));
        let mut state = [RowState { max: f32::NEG_INFINITY, sum: 0.0 }; QUERY_BLOCK];
        o.fill(0.0);
        for j0 in (0..s).step_by(KEY_BLOCK) {
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let (qt, ot, st) = (&q[r0 * d..], &mut o[r0 * d..], &mut state[r0..]);
                match (rows - r0).min(TILE_ROWS) {
                    1 => tile_step::<1>(qt, kt, v, ot, st, j0, sh),
                    2 => tile_step::<2>(qt, kt, v, ot, st, j0, sh),
                    3 => tile_step::<3>(qt, kt, v, ot, st, j0, sh),
                    4 => tile_step::<4>(qt, kt, v, ot, st, j0, sh),
                    5 => tile_step::<5>(qt, kt, v, ot, st, j0, sh),
                    _ => tile_step::<TILE_ROWS>(qt, kt, v, ot, st, j0, sh),
                }
            }
        }
        for (row, st) in o.chunks_exact_mut(d).zip(&state) {
            let inv = _mm512_set1_ps(1.0 / st.sum);
            for x in row.chunks_exact_mut(16) {
                _mm512_storeu_ps(x.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), inv));
            }
        }
    }

    /// The first `R` rows of `q`/`o`/`state` take the keys `j0..j0+64` (those below S).
    #[inline(always)]
    unsafe fn tile_step<const R: usize>(q: &[f32], kt: &[f32], v: &[f32], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape) {
        let Shape { d, s, s_pad, scale } = sh;
        assert!(q.len() >= R * d && o.len() >= R * d && state.len() >= R && j0 + KEY_BLOCK <= s_pad);
        // scores [R, 64]: one 16-key vector of K^T per column group, one broadcast q value per row
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for c in 0..d {
            let row = kt.as_ptr().add(c * s_pad + j0);
            let keys = [0, 1, 2, 3].map(|i| _mm512_loadu_ps(row.add(16 * i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = _mm512_set1_ps(*q.get_unchecked(r * d + c));
                for i in 0..4 {
                    a[i] = _mm512_fmadd_ps(qb, keys[i], a[i]);
                }
            }
        }
        // padding keys past S get -inf (probability 0)
        let valid = s - j0;
        let lane_mask = |i: usize| -> __mmask16 {
            let n = valid.saturating_sub(16 * i).min(16);
            if n == 16 {
                0xFFFF
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        };
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut probs = [[0f32; KEY_BLOCK]; R];
        for r in 0..R {
            let scaled = [0, 1, 2, 3].map(|i| _mm512_mask_mul_ps(neg_inf, lane_mask(i), acc[r][i], _mm512_set1_ps(scale)));
            let block_max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(scaled[0], scaled[1]), _mm512_max_ps(scaled[2], scaled[3])));
            let st = &mut state[r];
            let new_max = st.max.max(block_max);
            let shift = _mm512_set1_ps(new_max);
            let mut total = _mm512_setzero_ps();
            for (i, x) in scaled.iter().enumerate() {
                let p = exp_nonpositive(_mm512_sub_ps(*x, shift));
                _mm512_storeu_ps(probs[r].as_mut_ptr().add(16 * i), p);
                total = _mm512_add_ps(total, p);
            }
            // rescale what was summed under the old max
            let alpha = (st.max - new_max).exp();
            st.sum = st.sum * alpha + _mm512_reduce_add_ps(total);
            st.max = new_max;
            if alpha != 1.0 {
                let a = _mm512_set1_ps(alpha);
                for x in o[r * d..(r + 1) * d].chunks_exact_mut(16) {
                    _mm512_storeu_ps(x.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), a));
                }
            }
        }
        // o [R, D] += probs [R, n] x V [n, D], 64 columns (or the rest) at a time
        let n = valid.min(KEY_BLOCK);
        for c0 in (0..d).step_by(64) {
            match (d - c0).min(64) / 16 {
                1 => weighted_values::<R, 1>(&probs, v, o, j0, n, c0, d),
                2 => weighted_values::<R, 2>(&probs, v, o, j0, n, c0, d),
                3 => weighted_values::<R, 3>(&probs, v, o, j0, n, c0, d),
                _ => weighted_values::<R, 4>(&probs, v, o, j0, n, c0, d),
            }
        }
    }

    /// `o[r][c0..c0+16V] += sum_j probs[r][j] * v[j0+j][c0..c0+16V]` with the rows' columns in
    /// registers across the block's `n` keys.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weighted_values<const R: usize, const V: usize>(probs: &[[f32; KEY_BLOCK]; R], v: &[f32], o: &mut [f32], j0: usize, n: usize, c0: usize, d: usize) {
        let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| std::array::from_fn(|i| _mm512_loadu_ps(o.as_ptr().add(r * d + c0 + 16 * i))));
        for j in 0..n {
            let row = v.as_ptr().add((j0 + j) * d + c0);
            let values: [__m512; V] = std::array::from_fn(|i| _mm512_loadu_ps(row.add(16 * i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*probs[r].get_unchecked(j));
                for i in 0..V {
                    a[i] = _mm512_fmadd_ps(p, values[i], a[i]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (i, x) in a.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(r * d + c0 + 16 * i), *x);
            }
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
    fn fused_attention_matches_the_slow_twin() {
        println!("fused attention available: {}", available());
        let dev = Device::Cpu;
        // (heads, kv heads, query rows, keys, head dim): partial tiles (T % 6), partial key
        // blocks (S % 64), head dims of 1 to 8 vectors (Qwen2-VL's tower 80, CogVLM2's 112),
        // grouped heads, wide score ranges (exp underflow)
        for (h, kvh, t, s, d, spread) in [(2, 2, 7, 7, 16, 1.0), (4, 2, 13, 70, 80, 1.0), (3, 3, 64, 64, 112, 3.0), (2, 1, 1, 130, 128, 1.0), (2, 2, 20, 200, 64, 6.0), (1, 1, 6, 1, 32, 1.0)] {
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, spread, (a, b, d), &dev).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let Some(fast) = flash_attention(&q, &k, &v, scale).unwrap() else {
                assert!(!available(), "the fused path should take h={h} kvh={kvh} t={t} s={s} d={d}");
                continue;
            };
            let slow = attention_slow(&q, &k, &v, None, scale).unwrap();
            let diff = max_abs_diff(&fast, &slow).unwrap();
            println!("fused attention h={h} kvh={kvh} t={t} s={s} d={d} spread={spread}: max|diff| = {diff:e}");
            assert!(diff < 2e-5 * spread, "{diff}");
        }
    }

    #[test]
    fn other_inputs_are_left_to_the_blocked_path() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 8, 20), &dev).unwrap();
        assert!(flash_attention(&q, &q, &q, 0.5).unwrap().is_none(), "head dim 20 is not a multiple of 16");
        let q = Tensor::randn(0f32, 1.0, (2, 8, 32), &dev).unwrap();
        let qb = q.to_dtype(DType::BF16).unwrap();
        assert!(flash_attention(&qb, &qb, &qb, 0.5).unwrap().is_none(), "bf16");
        let strided = Tensor::randn(0f32, 1.0, (2, 32, 8), &dev).unwrap().transpose(1, 2).unwrap();
        assert!(flash_attention(&strided, &strided, &strided, 0.5).unwrap().is_none(), "not contiguous");
    }
}

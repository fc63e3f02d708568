//! Scaled dot-product attention for CPU inference: grouped-query heads without copying K/V, an
//! optional causal offset (prefill after cached tokens), query chunking so the score matrix stays
//! bounded (a 9217-token ViT or a 16k-token prompt never materialises all heads' T x S scores),
//! softmax in f32 as the reference does (fused with the scale and the causal mask, `softmax.rs`).
//! bf16 inputs on AVX512-BF16 CPUs take the bf16 GEMM for both products (bf16 operands, f32
//! sums, probabilities rounded to bf16: PyTorch's bf16 attention).
//! `attention_slow` is the plain formula it is tested against.

use crate::error::Result;
use crate::kv_cache::LayerKv;
use crate::softmax::{scaled_softmax, CausalRows};
use candle_core::{DType, Tensor, D};

/// Upper bound on the f32 score block computed at once. 16 MiB holds four heads of a 1024-patch
/// ViT layer's scores (64 MiB in all): 40 MB less peak memory for a 448² image, same speed.
pub const DEFAULT_SCORE_BYTES: usize = 16 << 20;

/// What precision the two products of `attention_with` may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// The inputs' dtype (f32 inputs: f32 products).
    AsInputs,
    /// bf16 operands with f32 sums and an f32 softmax even for f32 inputs, where a CPU runs them
    /// faster (AMX; AMD's AVX512-BF16); elsewhere as `AsInputs`. For models whose linears already
    /// round their activations (`Products::for_linears`).
    Bf16,
}

impl Products {
    /// The policy for a model part whose linears are stored as `linears` (None: dense in the
    /// compute dtype): bf16 products where the linears' many-row products round their
    /// activations as much or more: quantized ones (int8 blocks on VNNI CPUs, bf16 on AMX),
    /// bf16 ones (the bf16 GEMM and AMX round to bf16), and f16 ones on AMX CPUs. f16 linears
    /// elsewhere are widened exactly for an f32 GEMM, and f32 linears keep f32 activations, so
    /// their attention does too (on AMD the tiny fixtures' f16 model went from 128/128 steps and
    /// a 9e-7 logit error to 127/128 and 1.4e-2 under bf16 products). The policy changes the
    /// attention on AMX CPUs and on AMD's AVX512-BF16 ones.
    pub fn for_linears(linears: Option<crate::quant::WeightFormat>) -> Self {
        use crate::quant::WeightFormat;
        match linears {
            None | Some(WeightFormat::F32) => Products::AsInputs,
            Some(WeightFormat::F16) if !crate::amx::available() => Products::AsInputs,
            Some(_) => Products::Bf16,
        }
    }
}

/// Query rows from which `Products::Bf16` attention takes the AMX kernel or the fused bf16 one
/// (decode steps keep `decode_attention`).
const MIN_QUERY_ROWS: usize = 16;

/// `attention` with the products' precision chosen by the caller: attention of f32 queries
/// over f32, f16 or bf16 keys and values (a narrower KV cache) with `Products::Bf16` takes the
/// AMX kernel (`amx::attention`) where the CPU has AMX and there are at least
/// `MIN_QUERY_ROWS` query rows; without AMX, such attention (full or causal, from as many rows)
/// takes the fused bf16 kernel where it beats f32 products
/// (`flash_attention::bf16_faster_than_f32`: AMD's AVX512-BF16). bf16 queries take these
/// kernels whatever `products` says: their products are bf16 on every path (the AMX kernel
/// widens them to f32 and rounds them back exactly, and rounds the probabilities to bf16 as
/// `flash_attention_bf16` does).
pub fn attention_with(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64, max_score_bytes: usize, products: Products) -> Result<Tensor> {
    let bf16_products = products == Products::Bf16 || q.dtype() == DType::BF16;
    if bf16_products && q.dim(1)? >= MIN_QUERY_ROWS && crate::amx::available() {
        if let Some(o) = amx_attention(&q.to_dtype(DType::F32)?, k, v, causal, scale)? {
            return Ok(o.to_dtype(q.dtype())?);
        }
    }
    if bf16_products && q.dim(1)? >= MIN_QUERY_ROWS && crate::flash_attention::bf16_faster_than_f32() {
        // a cache's visible rows (a strided view, f16 when the cache is stored so) are repacked
        // by the kernel's own rounding to bf16
        if let Some(o) = crate::flash_attention::flash_attention_bf16(q, k, v, causal, scale)? {
            return Ok(o);
        }
    }
    attention(q, k, v, causal, scale, max_score_bytes)
}

/// Attention of f32 CPU queries on AMX tiles; `None` for other inputs.
fn amx_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, k_dim) = k.dims3()?;
    let fits = kvh > 0 && h % kvh == 0 && s > 0 && t > 0 && d > 0 && k_dim == d && v.dims3()? == (kvh, s, d);
    let cpu = [q, k, v].iter().all(|x| x.device().is_cpu()) && q.dtype() == DType::F32;
    if !(fits && cpu) {
        return Ok(None);
    }
    // a narrower cache's visible rows widened once (the kernel rounds them to bf16 anyway)
    let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let mut out = vec![0f32; h * t * d];
    crate::ops::with_f32_values(q, |qs| {
        crate::ops::with_f32_values(&k, |ks| {
            crate::ops::with_f32_values(&v, |vs| crate::amx::attention::attention(qs, ks, vs, (h, t, d, kvh, s), causal, scale as f32, &mut out))
        })
    })???;
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?))
}

/// `q [H, T, D]`, `k`/`v` `[KVH, S, D]` with `H % KVH == 0` -> `[H, T, D]`.
/// With `causal = Some(offset)`, query `t` sits at absolute position `offset + t` and sees keys
/// `0..=offset + t`; with `None` every query sees every key.
///
/// Scores are computed in blocks of at most `max_score_bytes`: as many query rows of one KV head
/// group as fit, and several KV heads at once when a whole head's rows fit. Blocking by head
/// first keeps each block's matmuls large: a 9217-token ViT layer with 16 heads gets 455-row
/// blocks from 16 MiB instead of 28-row blocks across all heads (with the fused softmax,
/// 5.2-5.5 s a layer against 13.1-13.4 s here: `examples/attention_bench.rs`).
/// Decode-sized steps (a few query rows per KV head, f32 on CPU) take `decode_attention`; f32
/// attention on AVX-512F and AVX2 CPUs (full, or causal from 16 query rows: prefill) takes the
/// fused `flash_attention`, and full bf16 attention on AVX512-BF16 CPUs `flash_attention_bf16`.
/// `k`/`v` may be stored in another dtype than `q` (a narrower KV cache); the output is `q`'s.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64, max_score_bytes: usize) -> Result<Tensor> {
    if let Some(o) = crate::decode_attention::decode_attention(q, k, v, causal, scale)? {
        return Ok(o);
    }
    // f32 queries (a narrower cache's rows widened once), from 16 query rows when causal
    if causal.is_none() || q.dim(1)? >= MIN_QUERY_ROWS {
        if let Some(o) = crate::flash_attention::flash_attention(q, k, v, causal, scale)? {
            return Ok(o);
        }
    }
    if causal.is_none() {
        // bf16 inputs keep bf16 products (the blocked path's semantics), fused
        if q.dtype() == DType::BF16 {
            if let Some(o) = crate::flash_attention::flash_attention_bf16(q, k, v, None, scale)? {
                return Ok(o);
            }
        }
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        // a cache stored narrower than the compute dtype (`KvCache::stored_as`): widen the visible
        // rows once for this step's many query rows
        return blocked_attention(q, &k.to_dtype(q.dtype())?, &v.to_dtype(q.dtype())?, causal, scale, max_score_bytes);
    }
    blocked_attention(q, k, v, causal, scale, max_score_bytes)
}

fn blocked_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64, max_score_bytes: usize) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, _) = k.dims3()?;
    let groups = h / kvh;
    // [H, T, D] -> [KVH, G, T, D]
    let q = q.reshape((kvh, groups, t, d))?;
    let head_row_bytes = groups * s * 4;
    let rows = (max_score_bytes / head_row_bytes.max(1)).clamp(1, t.max(1));
    let heads_per_block = if rows == t { (max_score_bytes / (head_row_bytes * t).max(1)).clamp(1, kvh) } else { 1 };
    let bf16_products = q.dtype() == DType::BF16 && q.device().is_cpu() && crate::bf16_gemm::available();
    let mut head_blocks = Vec::with_capacity(kvh.div_ceil(heads_per_block));
    for h0 in (0..kvh).step_by(heads_per_block) {
        let hb = heads_per_block.min(kvh - h0);
        let mut outs = Vec::with_capacity(t.div_ceil(rows));
        for t0 in (0..t).step_by(rows) {
            let len = rows.min(t - t0);
            // keys visible to the last query of this chunk
            let visible = causal.map_or(s, |offset| (offset + t0 + len).min(s));
            let k_c = k.narrow(0, h0, hb)?.narrow(1, 0, visible)?;
            let v_c = v.narrow(0, h0, hb)?.narrow(1, 0, visible)?.contiguous()?;
            // [hb, G, len, D] -> [hb, G*len, D]
            let q_c = q.narrow(0, h0, hb)?.narrow(2, t0, len)?.contiguous()?.reshape((hb, groups * len, d))?;
            // [hb, G*len, D] x [hb, D, S'] -> [hb, G*len, S']
            let scores = if bf16_products { bf16_heads_matmul_t(&q_c, &k_c)? } else { q_c.matmul(&k_c.t()?)?.to_dtype(DType::F32)? };
            let mask = causal.map(|offset| CausalRows { first_position: offset + t0, rows_per_query_block: len });
            let probs = scaled_softmax(scores, scale, mask)?;
            // [hb, G*len, S'] x [hb, S', D] -> [hb, G*len, D]
            let o = if bf16_products {
                // V^T as the weight: [hb, S', D] -> [hb, D, S']
                bf16_heads_matmul_t(&probs, &v_c.transpose(1, 2)?)?.to_dtype(v.dtype())?
            } else {
                probs.to_dtype(v.dtype())?.matmul(&v_c)?
            };
            // [hb, G*len, D] -> [hb, G, len, D]
            outs.push(o.reshape((hb, groups, len, d))?);
        }
        head_blocks.push(if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 2)? });
    }
    let o = if head_blocks.len() == 1 { head_blocks.pop().unwrap() } else { Tensor::cat(&head_blocks, 0)? };
    // [KVH, G, T, D] -> [H, T, D]
    Ok(o.reshape((h, t, d))?)
}

/// `a [B, M, K] x w [B, N, K]^T -> [B, M, N]` in f32 through the bf16 GEMM (both operands
/// rounded to bf16).
fn bf16_heads_matmul_t(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, m, k) = a.dims3()?;
    let n = w.dim(1)?;
    let w: Vec<half::bf16> = w.to_dtype(DType::BF16)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * m * n];
    crate::ops::with_f32_values(&a.to_dtype(DType::F32)?, |xs| crate::bf16_gemm::gemm_batched(xs, &w, b, m, n, k, &mut out))?;
    Ok(Tensor::from_vec(out, (b, m, n), a.device())?)
}

/// Attention for a batch of sequences whose tokens are stacked on one axis: `q [H, ΣT, D]`,
/// `k`/`v` `[KVH, ΣT, D]`, sequence `i` owning the next `lens[i]` rows. Each sequence appends its
/// K/V to its own cache layer and attends causally over it alone -> `[H, ΣT, D]`.
pub fn batched_cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], kvs: &mut [&mut LayerKv], scale: f64, products: Products) -> Result<Tensor> {
    let mut outs = Vec::with_capacity(lens.len());
    let mut row = 0;
    for (&len, kv) in lens.iter().zip(kvs.iter_mut()) {
        let offset = kv.len();
        let (k_all, v_all) = kv.append(&k.narrow(1, row, len)?, &v.narrow(1, row, len)?)?;
        outs.push(attention_with(&q.narrow(1, row, len)?.contiguous()?, &k_all, &v_all, Some(offset), scale, DEFAULT_SCORE_BYTES, products)?);
        row += len;
    }
    Ok(if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 1)? })
}

/// Additive mask `[T, S]`: 0 where key `s <= first_pos + t`, -inf elsewhere.
fn causal_mask(t: usize, s: usize, first_pos: usize, device: &candle_core::Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= first_pos + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(data, (t, s), device)?)
}

/// Reference twin: repeat K/V per head, full score matrix, explicit mask.
pub fn attention_slow(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Tensor> {
    let (h, t, _) = q.dims3()?;
    let (kvh, s, d) = k.dims3()?;
    let groups = h / kvh;
    let qf = q.to_dtype(DType::F32)?;
    // [KVH, S, D] -> [KVH, G, S, D] -> [H, S, D]
    let repeat = |x: &Tensor| -> Result<Tensor> {
        Ok(x.to_dtype(DType::F32)?.unsqueeze(1)?.expand((kvh, groups, s, d))?.reshape((h, s, d))?)
    };
    let (kf, vf) = (repeat(k)?, repeat(v)?);
    let mut scores = (qf.matmul(&kf.t()?)? * scale)?;
    if let Some(offset) = causal {
        scores = scores.broadcast_add(&causal_mask(t, s, offset, q.device())?)?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    Ok(probs.matmul(&vf)?.to_dtype(q.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn chunked_gqa_attention_matches_slow_twin() {
        let dev = Device::Cpu;
        // bf16 inputs: the bf16 GEMM where the CPU has it, candle's bf16 matmul elsewhere; the
        // twin computes in f32 from the same rounded inputs, the output is rounded to bf16
        println!("bf16 attention takes the bf16 GEMM: {}", crate::bf16_gemm::available());
        for (h, kvh, t, s, causal) in [(4, 2, 7, 7, Some(0)), (6, 2, 3, 10, Some(7)), (4, 4, 33, 33, None), (4, 2, 40, 41, Some(1))] {
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, 1.0, (a, b, 16), &dev).unwrap().to_dtype(DType::BF16).unwrap());
            let slow = attention_slow(&q, &k, &v, causal, 0.25).unwrap();
            let fast = attention(&q, &k, &v, causal, 0.25, DEFAULT_SCORE_BYTES).unwrap();
            assert_eq!(fast.dtype(), DType::BF16);
            let d = max_abs_diff(&fast, &slow).unwrap();
            println!("bf16 attention h={h} kvh={kvh} t={t} s={s} causal={causal:?}: max|diff| = {d:e}");
            assert!(d < 2e-2, "{d}");
        }
        for (h, kvh, t, s, causal) in [(4, 2, 7, 7, Some(0)), (6, 2, 3, 10, Some(7)), (4, 4, 9, 9, None), (8, 1, 1, 5, Some(4)), (6, 3, 5, 12, Some(7)), (4, 4, 20, 20, None)] {
            let q = Tensor::randn(0f32, 1.0, (h, t, 16), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (kvh, s, 16), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (kvh, s, 16), &dev).unwrap();
            let slow = attention_slow(&q, &k, &v, causal, 0.25).unwrap();
            // budgets for: everything at once, one query row per block, two rows of one head,
            // two whole heads per block
            let head_row = (h / kvh) * s * 4;
            for budget in [DEFAULT_SCORE_BYTES, 1, 2 * head_row, 2 * head_row * t] {
                let fast = blocked_attention(&q, &k, &v, causal, 0.25, budget).unwrap();
                let d = max_abs_diff(&fast, &slow).unwrap();
                println!("attention h={h} kvh={kvh} t={t} s={s} causal={causal:?} budget={budget}: max|diff| = {d:e}");
                assert!(d < 1e-5, "{d}");
            }
            // and through the dispatch (the decode path for these few rows)
            let d = max_abs_diff(&attention(&q, &k, &v, causal, 0.25, DEFAULT_SCORE_BYTES).unwrap(), &slow).unwrap();
            assert!(d < 1e-5, "{d}");
        }
    }

    /// `Products::Bf16` on f32 inputs: full and causal attention take the fused bf16 kernel
    /// exactly where `bf16_faster_than_f32` says (AMX CPUs take their own kernel first), also
    /// over an f16 cache's strided view, and stay within bf16 rounding of the f32 twin; fewer
    /// than `MIN_QUERY_ROWS` rows keep f32 products off AMX.
    #[test]
    fn bf16_products_policy_for_f32_inputs() {
        let dev = Device::Cpu;
        let bf16_fused = crate::flash_attention::bf16_faster_than_f32();
        println!("f32 inputs with bf16 products take the fused bf16 kernel: {bf16_fused} (AMX: {})", crate::amx::available());
        let (h, kvh, t, d) = (4, 2, 70, 32);
        let [q, k, v] = [h, kvh, kvh].map(|heads| Tensor::randn(0f32, 1.0, (heads, t, d), &dev).unwrap());
        let slow = attention_slow(&q, &k, &v, None, 0.2).unwrap();
        let with_bf16 = attention_with(&q, &k, &v, None, 0.2, DEFAULT_SCORE_BYTES, Products::Bf16).unwrap();
        assert_eq!(with_bf16.dtype(), DType::F32);
        let diff = max_abs_diff(&with_bf16, &slow).unwrap();
        println!("full attention, bf16 products on f32 inputs: max|diff| against f32 = {diff:e}");
        assert!(diff < 3e-2, "{diff}");
        if bf16_fused && !crate::amx::available() {
            let fused = crate::flash_attention::flash_attention_bf16(&q, &k, &v, None, 0.2).unwrap().unwrap();
            assert_eq!(max_abs_diff(&with_bf16, &fused).unwrap(), 0.0);
        }
        // causal prefill after 40 cached keys, over a cache stored in f16 with spare capacity
        let cache_rows = |x: &Tensor| Tensor::cat(&[x, &x.narrow(1, 0, 10).unwrap()], 1).unwrap().to_dtype(DType::F16).unwrap();
        let (kc, vc) = (cache_rows(&k), cache_rows(&v));
        let (kv_view, vv_view) = (kc.narrow(1, 0, t).unwrap(), vc.narrow(1, 0, t).unwrap());
        let q_tail = q.narrow(1, 40, t - 40).unwrap().contiguous().unwrap();
        let slow = attention_slow(&q_tail, &kv_view.to_dtype(DType::F32).unwrap(), &vv_view.to_dtype(DType::F32).unwrap(), Some(40), 0.2).unwrap();
        let causal = attention_with(&q_tail, &kv_view, &vv_view, Some(40), 0.2, DEFAULT_SCORE_BYTES, Products::Bf16).unwrap();
        let diff = max_abs_diff(&causal, &slow).unwrap();
        println!("causal attention over an f16 cache view, bf16 products: max|diff| against f32 = {diff:e}");
        assert!(diff < 3e-2, "{diff}");
        if bf16_fused && !crate::amx::available() {
            let fused = crate::flash_attention::flash_attention_bf16(&q_tail, &kv_view.to_dtype(DType::F32).unwrap(), &vv_view.to_dtype(DType::F32).unwrap(), Some(40), 0.2).unwrap().unwrap();
            assert_eq!(max_abs_diff(&causal, &fused).unwrap(), 0.0);
        }
        if !crate::amx::available() {
            // a decode-sized step keeps f32 products
            let one = q.narrow(1, t - 1, 1).unwrap().contiguous().unwrap();
            let step = attention_with(&one, &k, &v, Some(t - 1), 0.2, DEFAULT_SCORE_BYTES, Products::Bf16).unwrap();
            let f32_products = attention(&one, &k, &v, Some(t - 1), 0.2, DEFAULT_SCORE_BYTES).unwrap();
            assert_eq!(max_abs_diff(&step, &f32_products).unwrap(), 0.0);
        }
    }
}

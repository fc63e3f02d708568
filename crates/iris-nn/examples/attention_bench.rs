//! Times `iris_nn::attention::attention` on vision-tower shapes (full attention, f32) for several
//! score-block budgets: how much the query chunking costs against one big block; then with bf16
//! inputs (the bf16 GEMM's products on AVX512-BF16 CPUs) at the default budget, and f32 inputs
//! through the fused bf16 kernel (`flash_attention_bf16`) and, on AMX CPUs, the AMX kernel
//! (`attention_with(.., Products::Bf16)`).
//! usage: cargo run --release -p iris-nn --example attention_bench [heads tokens head_dim]
//!        cargo run --release -p iris-nn --example attention_bench decode [heads kv_heads cached head_dim]
//!        (the decode case once per KV cache storage dtype: f32, f16, bf16)

use candle_core::{DType, Device, Tensor};
use iris_nn::attention::attention;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if std::env::args().nth(1).as_deref() == Some("decode") {
        return decode(&args);
    }
    let (h, n, d) = match args[..] {
        [h, n, d] => (h, n, d),
        // CogVLM2's EVA2-CLIP-E at 1344x1344: 16 heads, 9217 tokens, head_dim 112
        _ => (16, 9217, 112),
    };
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (h, n, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (h, n, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (h, n, d), &dev)?;
    let flop = 4.0 * (h * n * n * d) as f64;
    println!("attention [{h}, {n}, {d}] (non-causal, f32): {:.1} GFLOP", flop / 1e9);
    for budget_mib in [4usize, 16, 64] {
        let t = Instant::now();
        let o = attention(&q, &k, &v, None, 1.0 / (d as f64).sqrt(), budget_mib << 20)?;
        let s = t.elapsed().as_secs_f64();
        // blocks are one head's query rows (all heads' rows when one head fits), as `attention` cuts them
        let rows = ((budget_mib << 20) / (n * 4)).clamp(1, n);
        println!("score budget {budget_mib:>3} MiB ({rows:>4} query rows of one head per block): {s:.2} s, {:.0} GFLOP/s (checksum {:.3})", flop / s / 1e9, o.sum_all()?.to_scalar::<f32>()?);
    }
    let t = Instant::now();
    match iris_nn::flash_attention::flash_attention_bf16(&q, &k, &v, None, 1.0 / (d as f64).sqrt())? {
        Some(o) => {
            let s = t.elapsed().as_secs_f64();
            println!("f32 inputs, fused bf16 products: {s:.2} s, {:.0} GFLOP/s (checksum {:.3})", flop / s / 1e9, o.sum_all()?.to_scalar::<f32>()?);
        }
        None => println!("f32 inputs, fused bf16 products: not available on this CPU"),
    }
    if iris_nn::amx::available() {
        // REPEAT=N times the AMX kernel N times (for profiles) and reports the mean
        let repeat: usize = std::env::var("REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(1).max(1);
        let t = Instant::now();
        let mut o = iris_nn::attention::attention_with(&q, &k, &v, None, 1.0 / (d as f64).sqrt(), iris_nn::attention::DEFAULT_SCORE_BYTES, iris_nn::attention::Products::Bf16)?;
        for _ in 1..repeat {
            o = iris_nn::attention::attention_with(&q, &k, &v, None, 1.0 / (d as f64).sqrt(), iris_nn::attention::DEFAULT_SCORE_BYTES, iris_nn::attention::Products::Bf16)?;
        }
        let s = t.elapsed().as_secs_f64() / repeat as f64;
        println!("f32 inputs, bf16 products on AMX tiles: {s:.2} s, {:.0} GFLOP/s (checksum {:.3})", flop / s / 1e9, o.sum_all()?.to_scalar::<f32>()?);
    }
    let [qb, kb, vb] = [&q, &k, &v].map(|t| t.to_dtype(candle_core::DType::BF16));
    let (qb, kb, vb) = (qb?, kb?, vb?);
    let t = Instant::now();
    let o = attention(&qb, &kb, &vb, None, 1.0 / (d as f64).sqrt(), iris_nn::attention::DEFAULT_SCORE_BYTES)?;
    let s = t.elapsed().as_secs_f64();
    println!("bf16 inputs, default budget (fused: {}, else bf16 GEMM: {}): {s:.2} s, {:.0} GFLOP/s (checksum {:.3})", iris_nn::flash_attention::bf16_available(), iris_nn::bf16_gemm::available(), flop / s / 1e9, o.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?);
    Ok(())
}

/// One decode step's attention (one query per head over a long cache), as a decoder layer runs
/// it: default CogVLM2's language model after a 1344² image prompt (32 heads, 8 KV heads, 2341
/// cached tokens, head_dim 128), over 32 layers' distinct caches (more than the L3 holds, as a
/// step reads them), for each cache storage dtype.
fn decode(args: &[usize]) -> Result<(), Box<dyn std::error::Error>> {
    let (h, kvh, s, d) = match args[..] {
        [h, kvh, s, d] => (h, kvh, s, d),
        _ => (32, 8, 2341, 128),
    };
    let dev = Device::Cpu;
    let layers: usize = std::env::var("LAYERS").ok().and_then(|l| l.parse().ok()).unwrap_or(32);
    let q = Tensor::randn(0f32, 1.0, (h, 1, d), &dev)?;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let cache = || -> Result<Vec<Tensor>, candle_core::Error> { (0..layers).map(|_| Tensor::randn(0f32, 1.0, (kvh, s, d), &dev)?.to_dtype(dtype)).collect() };
        let (ks, vs) = (cache()?, cache()?);
        let rounds = (256 / layers).max(8);
        let t = Instant::now();
        for _ in 0..rounds {
            for (k, v) in ks.iter().zip(&vs) {
                attention(&q, k, v, Some(s - 1), 1.0 / (d as f64).sqrt(), iris_nn::attention::DEFAULT_SCORE_BYTES)?;
            }
        }
        let per = t.elapsed().as_secs_f64() / (rounds * layers) as f64;
        let bytes = 2 * kvh * s * d * dtype.size_in_bytes();
        println!("decode attention q [{h}, 1, {d}] over {dtype:?} k/v [{kvh}, {s}, {d}] x {layers} layers: {:.3} ms per layer (K+V {:.1} MB, {:.1} GB/s)", per * 1e3, bytes as f64 / 1e6, bytes as f64 / per / 1e9);
    }
    Ok(())
}

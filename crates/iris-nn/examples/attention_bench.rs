//! Times `iris_nn::attention::attention` on vision-tower shapes (full attention, f32) for several
//! score-block budgets: how much the query chunking costs against one big block.
//! usage: cargo run --release -p iris-nn --example attention_bench [heads tokens head_dim]

use candle_core::{Device, Tensor};
use iris_nn::attention::attention;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
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
    Ok(())
}

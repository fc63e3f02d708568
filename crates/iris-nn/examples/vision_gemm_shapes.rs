//! The vision towers' products on q8_0 weights at their real shapes: CogVLM2 at 1344² (9217
//! rows; fc1 and fc2 also on 1024 rows) and Qwen2-VL-2B at 448² (1024 rows). Times
//! `QuantizedMatrix::matmul_t` (the AMX GEMM on AMX CPUs) under mimalloc, as `iris` runs it: the
//! system allocator hands every large output fresh pages, which made CogVLM2's products 30-40%
//! slower in this harness on the Xeon VM. Prints the best of `RUNS` (default 3) and every run,
//! in GFLOP/s (2 * m * N * K per product).
//! `cargo run --release -p iris-nn --example vision_gemm_shapes [label filter]`

use candle_core::{Device, Tensor};
use iris_nn::{QuantizedMatrix, WeightFormat};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dev = Device::Cpu;
    let filter = std::env::args().nth(1).unwrap_or_default();
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // (label, rows, out, in)
    let shapes = [
        ("cog qkv", 9217, 5376, 1792),
        ("cog dense", 9217, 1792, 1792),
        ("cog fc1", 9217, 15360, 1792),
        ("cog fc2", 9217, 1792, 15360),
        ("cog fc1 m1024", 1024, 15360, 1792),
        ("cog fc2 m1024", 1024, 1792, 15360),
        ("qwen qkv", 1024, 3840, 1280),
        ("qwen fc1", 1024, 5120, 1280),
        ("qwen fc2", 1024, 1280, 5120),
    ];
    for (label, m, n, k) in shapes.into_iter().filter(|s| s.0.contains(filter.as_str())) {
        let w = QuantizedMatrix::quantize_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap(), WeightFormat::Q8_0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let flops = 2.0 * (m * n * k) as f64;
        let times: Vec<f64> = iris_nn::on_compute_pool(|| {
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    drop(w.matmul_t(&x).unwrap());
                    t.elapsed().as_secs_f64()
                })
                .collect()
        });
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let all: Vec<f64> = times.iter().map(|t| (t * 1e3).round()).collect();
        println!("{label:14} [{m}, {k}] x [{n}, {k}]^T: best {:.1} ms, {:.0} GFLOP/s (runs, ms: {all:?})", best * 1e3, flops / best / 1e9);
    }
}

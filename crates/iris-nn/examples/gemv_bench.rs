//! Decode-kernel benchmark: the bandwidth a plain 2-thread streaming sum reaches on this machine,
//! next to `Linear::forward` on one token (the GEMV path) for f32/f16/bf16 weights at Qwen2-VL-2B
//! sizes (an MLP projection and the 151936-row lm_head), and q8_0/q4k `QuantizedMatrix` products.
//! `cargo run --release -p iris-nn --example gemv_bench [quant|dram|core]` (`quant`: only the
//! quantized products; `dram`: only their from-DRAM rounds; `core`: the quantized kernels' own
//! speed, see `core_rounds`)

use candle_core::{DType, Device, Tensor};
use iris_nn::{QuantizedMatrix, WeightFormat};
use std::time::Instant;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("core") {
        return core_rounds();
    }
    let bandwidth = iris_nn::bandwidth::read_bandwidth_gb_per_s(1 << 30, 3).expect("mapping the 1 GiB probe buffer");
    println!("streaming sum (1 GiB, rayon): {bandwidth:.1} GB/s");
    let dev = Device::Cpu;
    let mode = std::env::args().nth(1);
    let dram_only = mode.as_deref() == Some("dram");
    let dense: &[DType] = if mode.is_some() { &[] } else { &[DType::F32, DType::F16, DType::BF16] };
    for &dt in dense {
        for (n, k) in [(8960usize, 1536usize), (151936, 1536)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap().to_dtype(dt).unwrap();
            let lin = iris_nn::Linear::new(w, None);
            let x = Tensor::randn(0f32, 1.0, (1, k), &dev).unwrap().to_dtype(dt).unwrap();
            lin.forward(&x).unwrap();
            let iters = 20;
            let t = Instant::now();
            for _ in 0..iters {
                lin.forward(&x).unwrap();
            }
            let s = t.elapsed().as_secs_f64() / iters as f64;
            println!("{dt:?} [1, {k}] x [{n}, {k}]^T: {:.2} ms, {:.1} GB/s", s * 1e3, (n * k * dt.size_in_bytes()) as f64 / s / 1e9);
        }
    }
    println!("quantized kernel: {:?}", iris_nn::quant::kernels::Kernel::best());
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        // (256, 1536): a k/v projection, small enough that per-call overhead shows
        let in_cache: &[(usize, usize)] = if dram_only { &[] } else { &[(8960, 1536), (1536, 8960), (151936, 1536), (256, 1536)] };
        for &(n, k) in in_cache {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q = QuantizedMatrix::quantize_tensor(&w, format).unwrap();
            drop(w);
            for m in [1usize, 4] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                q.matmul_t(&x).unwrap();
                let iters = 20;
                let t = Instant::now();
                for _ in 0..iters {
                    q.matmul_t(&x).unwrap();
                }
                let s = t.elapsed().as_secs_f64() / iters as f64;
                println!("{format} [{m}, {k}] x [{n}, {k}]^T: {:.3} ms, {:.1} GB/s", s * 1e3, q.size_in_bytes() as f64 / s / 1e9);
            }
        }
        // The cases above fit in L3 (except the head); decode streams every layer from DRAM once,
        // so also rotate over eight distinct MLP-sized matrices (> L3) as a model's layers do.
        let (n, k) = (8960usize, 1536usize);
        let layers: Vec<QuantizedMatrix> = (0..8)
            .map(|_| QuantizedMatrix::quantize_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap(), format).unwrap())
            .collect();
        let x = Tensor::randn(0f32, 1.0, (1, k), &dev).unwrap();
        let rounds = 10;
        let t = Instant::now();
        for _ in 0..rounds {
            for q in &layers {
                q.matmul_t(&x).unwrap();
            }
        }
        let s = t.elapsed().as_secs_f64() / (rounds * layers.len()) as f64;
        println!("{format} [1, {k}] x 8 x [{n}, {k}]^T from DRAM: {:.2} ms each, {:.1} GB/s", s * 1e3, layers[0].size_in_bytes() as f64 / s / 1e9);
    }
}

/// The integer kernels' compute speed, which bounds decode once memory is fast enough: one
/// thread (a one-worker pool), weights small enough to stay in a Zen 4 core's 1 MiB L2, every
/// call inside one compute step (`on_compute_pool`) as a model step makes them. On a VM whose
/// memory bandwidth swings it varies less than the rounds above, though the slope still moved
/// by up to ±15% between runs on the Zen 4 VM. The per-call work (quantizing the activations,
/// splitting the rows) is included: two sizes per shape separate it from the per-block cost.
fn core_rounds() {
    let dev = Device::Cpu;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
    println!("quantized kernel: {:?}, one thread", iris_nn::quant::kernels::Kernel::best());
    let k = 1536;
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        for m in [1usize, 4] {
            // (rows, per-call time): the per-block cost is the slope between the two sizes
            let mut times = Vec::new();
            let mut bytes_per_block = 0.0;
            for n in [128usize, 512] {
                let q = QuantizedMatrix::quantize_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap(), format).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let iters = 4000;
                let s = pool.install(|| {
                    iris_nn::threads::on_compute_pool(|| {
                        for _ in 0..50 {
                            q.matmul_t(&x).unwrap();
                        }
                        let t = Instant::now();
                        for _ in 0..iters {
                            q.matmul_t(&x).unwrap();
                        }
                        t.elapsed().as_secs_f64() / iters as f64
                    })
                });
                times.push((n, s));
                bytes_per_block = (q.size_in_bytes() * 256) as f64 / (n * k) as f64;
            }
            let ((n0, t0), (n1, t1)) = (times[0], times[1]);
            let per_block = (t1 - t0) / ((n1 - n0) * k / 256) as f64;
            let per_call = t0 - per_block * (n0 * k / 256) as f64;
            println!(
                "{format} m={m} [*, {k}]: {:.2} ns per 256 weights ({:.1} GB/s of weights), {:.2} us a call besides",
                per_block * 1e9,
                bytes_per_block / per_block / 1e9,
                per_call * 1e6
            );
        }
    }
}

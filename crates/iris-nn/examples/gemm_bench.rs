//! Prefill/vision product benchmark: `QuantizedMatrix::matmul_t` on many rows (the int8 GEMM on
//! AVX512-VNNI and AVX-VNNI CPUs, the f32 GEMM on decoded weights elsewhere;
//! `IRIS_QUANT_KERNEL` picks one) next to candle's f32 matmul with the weight already
//! dequantized, at Qwen2-VL-2B sizes: the vision MLP on 1024 patches, the language MLP on a
//! 307-token prompt and on 9-64 rows (batched decode), and the f32 GEMM on the decoded
//! quantized weight at every row count (where `matmul_t`'s switch from passes goes); and for
//! bf16 weights the bf16 GEMM (AVX512-BF16) next to the general path it replaces (widen the
//! weight to f32, then candle's f32 matmul). On AMX CPUs the q8_0/q4k rows and the "bf16 AMX
//! GEMM" row take the AMX GEMM (`IRIS_NO_AMX=1` for the AVX-512 paths); f32 and bf16 weights
//! also take Iris's f32 GEMM (`f32_gemm`) with each ISA this CPU runs. Prints GFLOP/s
//! (2 * m * N * K per product). `IRIS_NO_F32_GEMM=1` sends the quantized path without VNNI
//! back to candle's GEMM on f32 tiles.
//! `cargo run --release -p iris-nn --example gemm_bench [large]` (`large`: see `large_inputs`)

use candle_core::{DType, Device, Tensor};
use iris_nn::{QuantizedMatrix, WeightFormat};
use std::time::Instant;

fn best_of<F: FnMut()>(runs: usize, mut f: F) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let dev = Device::Cpu;
    println!("quantized kernel: {:?}", iris_nn::quant::kernels::Kernel::best());
    // (label, m, N, K)
    let shapes = [
        ("vision fc1", 1024, 5120, 1280),
        ("vision fc2", 1024, 1280, 5120),
        ("lm gate", 307, 8960, 1536),
        ("lm down", 307, 1536, 8960),
        ("lm gate", 128, 8960, 1536),
        ("lm gate", 64, 8960, 1536),
        ("lm gate", 48, 8960, 1536),
        ("lm gate", 40, 8960, 1536),
        ("lm gate", 32, 8960, 1536),
        ("lm gate", 16, 8960, 1536),
        ("lm gate", 9, 8960, 1536),
    ];
    if std::env::args().nth(1).as_deref() == Some("large") {
        return large_inputs();
    }
    for (label, m, n, k) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let flops = 2.0 * (m * n * k) as f64;
        let dense = best_of(3, || {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        println!("{label} [{m}, {k}] x [{n}, {k}]^T f32 matmul: {:.1} ms, {:.0} GFLOP/s", dense * 1e3, flops / dense / 1e9);
        for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
            let q = QuantizedMatrix::quantize_tensor(&w, format).unwrap();
            let t = best_of(3, || {
                q.matmul_t(&x).unwrap();
            });
            println!("{label} [{m}, {k}] x [{n}, {k}]^T {format} matmul_t: {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
            // the f32 GEMM on the decoded weight whatever the row count (`matmul_t` takes it
            // from `gemm_min_rows` rows on CPUs without VNNI or AMX)
            for isa in iris_nn::f32_gemm::Isa::supported() {
                use iris_nn::f32_gemm::{gemm_vec_with, F32Weight};
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let t = best_of(3, || drop(gemm_vec_with(isa, &xs, m, F32Weight::Quantized(&q), n, k)));
                println!("{label} [{m}, {k}] x [{n}, {k}]^T {format} f32 GEMM ({isa:?}): {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
            }
        }
        let wb = w.to_dtype(DType::BF16).unwrap();
        let widened = best_of(3, || {
            x.matmul(&wb.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
        });
        println!("{label} [{m}, {k}] x [{n}, {k}]^T bf16 widened + f32 matmul: {:.1} ms, {:.0} GFLOP/s", widened * 1e3, flops / widened / 1e9);
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ws: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let wbs: Vec<half::bf16> = wb.flatten_all().unwrap().to_vec1().unwrap();
        for isa in iris_nn::f32_gemm::Isa::supported() {
            use iris_nn::f32_gemm::{gemm_vec_with, F32Weight};
            let t = best_of(3, || drop(gemm_vec_with(isa, &xs, m, F32Weight::F32(&ws), n, k)));
            println!("{label} [{m}, {k}] x [{n}, {k}]^T f32 GEMM ({isa:?}): {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
            let t = best_of(3, || drop(gemm_vec_with(isa, &xs, m, F32Weight::BF16(&wbs), n, k)));
            println!("{label} [{m}, {k}] x [{n}, {k}]^T f32 GEMM ({isa:?}), bf16 weights: {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
        }
        if iris_nn::bf16_gemm::available() {
            let mut out = vec![0f32; m * n];
            let t = best_of(3, || iris_nn::bf16_gemm::gemm(&xs, m, &wbs, n, k, &mut out));
            println!("{label} [{m}, {k}] x [{n}, {k}]^T bf16 GEMM: {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
        }
        if iris_nn::amx::available() {
            let t = best_of(3, || drop(iris_nn::ops::dense_forward(&x, &wb).unwrap().expect("the AMX path takes bf16 weights")));
            println!("{label} [{m}, {k}] x [{n}, {k}]^T bf16 AMX GEMM: {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
        }
    }
}

/// `gemm_bench large`: the f32 GEMM (f32 weights) with each ISA this CPU runs on CogVLM2's
/// vision MLP at 9216 rows (a 1344² image) next to the same products on 1024 rows, where a
/// task's rows and output block fit the caches.
fn large_inputs() {
    for (m, n, k) in [(1024, 15360, 1792), (9216, 15360, 1792), (1024, 1792, 15360), (9216, 1792, 15360)] {
        let xs: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let ws: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let flops = 2.0 * (m * n * k) as f64;
        for isa in iris_nn::f32_gemm::Isa::supported() {
            use iris_nn::f32_gemm::{gemm_vec_with, F32Weight};
            let t = best_of(2, || drop(gemm_vec_with(isa, &xs, m, F32Weight::F32(&ws), n, k)));
            println!("[{m}, {k}] x [{n}, {k}]^T f32 GEMM ({isa:?}): {:.1} ms, {:.0} GFLOP/s", t * 1e3, flops / t / 1e9);
        }
    }
}

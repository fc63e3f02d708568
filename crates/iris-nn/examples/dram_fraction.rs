//! Decode kernels against the memory bandwidth of the same moment: rounds of a streaming read
//! (`iris_nn::bandwidth`) followed by one-row products over 16 distinct MLP-sized matrices (q8_0,
//! q4_K; 8 for bf16), far more than the L3 holds, as a model's layers are read during decode.
//! The bandwidth of a shared machine moves within minutes, so only figures from the same round
//! can be compared. `RAYON_NUM_THREADS=1` gives one core's figures.
//! `cargo run --release -p iris-nn --example dram_fraction`

use candle_core::{DType, Device, Tensor};
use iris_nn::bandwidth::{read_bandwidth_gb_per_s, PROBE_BYTES};
use iris_nn::{QuantizedMatrix, WeightFormat};
use std::time::Instant;

/// Passes over each set of matrices per round.
const PASSES: usize = 4;

/// Seconds per product, over `PASSES` passes of `product` on each of `count` matrices.
fn per_product(count: usize, mut product: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for _ in 0..PASSES {
        (0..count).for_each(&mut product);
    }
    t.elapsed().as_secs_f64() / (PASSES * count) as f64
}

fn main() {
    let dev = Device::Cpu;
    let (n, k) = (8960usize, 1536usize);
    let random = || Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
    let quantized = |f| -> Vec<QuantizedMatrix> { (0..16).map(|_| QuantizedMatrix::quantize_tensor(&random(), f).unwrap()).collect() };
    let (q8, q4) = (quantized(WeightFormat::Q8_0), quantized(WeightFormat::Q4K));
    let bf: Vec<iris_nn::Linear> = (0..8).map(|_| iris_nn::Linear::new(random().to_dtype(DType::BF16).unwrap(), None)).collect();
    let x = Tensor::randn(0f32, 1.0, (1, k), &dev).unwrap();
    for round in 0..6 {
        let bw = read_bandwidth_gb_per_s(PROBE_BYTES, 2).expect("mapping the probe buffer");
        let mut line = format!("round {round}: streaming read {bw:.1}");
        for (name, layers) in [("q8_0", &q8), ("q4k", &q4)] {
            let s = per_product(layers.len(), |i| drop(layers[i].matmul_t(&x).unwrap()));
            line += &format!(" | {name} {:.1}", layers[0].size_in_bytes() as f64 / s / 1e9);
        }
        let s = per_product(bf.len(), |i| drop(bf[i].forward(&x).unwrap()));
        line += &format!(" | bf16 {:.1} GB/s", (n * k * 2) as f64 / s / 1e9);
        println!("{line}");
    }
}

//! A vision MLP's first product with its bias and activation: `Linear::forward_activated`
//! (on AMX CPUs, the bias and activation applied to each output block as it is written) against
//! `forward` then the activation as separate passes, on q8_0 weights at CogVLM2's 1344² and
//! Qwen2-VL's 448² shapes. Alternates the two, three rounds.
//! `cargo run --release -p iris-nn --example fused_activation_bench`

use candle_core::{Device, Tensor};
use iris_nn::inplace::Activation;
use iris_nn::{Linear, QuantizedMatrix, WeightFormat};
use std::time::Instant;

fn seconds(f: impl FnOnce() -> Tensor) -> f64 {
    let t = Instant::now();
    drop(f());
    t.elapsed().as_secs_f64()
}

fn main() {
    let dev = Device::Cpu;
    // (label, rows, out, in, activation)
    let shapes = [("CogVLM2 vision fc1", 9217, 15360, 1792, Activation::GeluErf), ("Qwen2-VL vision fc1", 1024, 5120, 1280, Activation::QuickGelu)];
    for (label, m, n, k, activation) in shapes {
        let w = QuantizedMatrix::quantize_tensor(&Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap(), WeightFormat::Q8_0).unwrap();
        let lin = Linear::quantized(w, Some(Tensor::randn(0f32, 1.0, n, &dev).unwrap()));
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        for round in 0..3 {
            let (separate, fused) = iris_nn::on_compute_pool(|| {
                let separate = seconds(|| activation.apply(lin.forward(&x).unwrap()).unwrap());
                let fused = seconds(|| lin.forward_activated(&x, activation).unwrap());
                (separate, fused)
            });
            println!("{label} [{m}, {k}] x [{n}, {k}]^T + bias + {activation:?}, round {round}: separate {:.1} ms, fused {:.1} ms", separate * 1e3, fused * 1e3);
        }
    }
}

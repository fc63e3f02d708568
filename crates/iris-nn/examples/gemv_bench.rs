//! Decode-kernel benchmark: the bandwidth a plain 2-thread streaming sum reaches on this machine,
//! next to `Linear::forward` on one token (the GEMV path) for f32/f16/bf16 weights at Qwen2-VL-2B
//! sizes (an MLP projection and the 151936-row lm_head), and q8_0/q4k `QuantizedMatrix` products.
//! `cargo run --release -p iris-nn --example gemv_bench [quant|dram|core|paired [STORAGE [ROWS]]]`
//! (`quant`: only the quantized products; `dram`: only their from-DRAM rounds; `core`: the
//! quantized kernels' own speed for `CORE_ROWS=1,4` activation rows, see `core_rounds`; `paired`:
//! the 32/16-bit kernels' prefetch settings against each other, STORAGE f32, f16 or bf16, see
//! `paired_rounds`)

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use iris_nn::gemv::{Prefetch, WeightRows, WeightStorage};
use iris_nn::{QuantizedMatrix, WeightFormat};
use std::time::Instant;

// the engine's allocator: it backs large weight buffers with huge pages, which changes how far
// ahead a prefetch pays (`paired_rounds`)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("core") => return core_rounds(),
        Some("paired") => return paired_rounds(),
        _ => {}
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
        // one activation row (decode) and four (batched decode)
        for m in [1usize, 4] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let rounds = 10;
            let t = Instant::now();
            for _ in 0..rounds {
                for q in &layers {
                    q.matmul_t(&x).unwrap();
                }
            }
            let s = t.elapsed().as_secs_f64() / (rounds * layers.len()) as f64;
            let gb_per_s = layers[0].size_in_bytes() as f64 / s / 1e9;
            println!("{format} [{m}, {k}] x 8 x [{n}, {k}]^T from DRAM: {:.2} ms each, {gb_per_s:.1} GB/s", s * 1e3);
        }
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
    // the activation row counts, `CORE_ROWS=1,4` by default (batched decode takes up to 8)
    let row_counts: Vec<usize> = std::env::var("CORE_ROWS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .map(|m| m.trim().parse().expect("CORE_ROWS: comma-separated row counts"))
        .collect();
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        for &m in &row_counts {
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

/// One weight matrix of `paired_rounds` in one storage.
enum Weights {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Weights {
    fn rows(&self) -> WeightRows<'_> {
        match self {
            Weights::F32(w) => WeightRows::F32(w),
            Weights::F16(w) => WeightRows::F16(w),
            Weights::BF16(w) => WeightRows::BF16(w),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Weights::F32(w) => 4 * w.len(),
            Weights::F16(w) => 2 * w.len(),
            Weights::BF16(w) => 2 * w.len(),
        }
    }
}

/// The decode GEMV's prefetch settings against each other, for each 32/16-bit storage. A pass
/// multiplies one token (or ROWS tokens: batched decode) by every matrix one Qwen2-VL-2B decode
/// step reads (28 layers' q, k, v, o, gate, up and down projections and the 151936-row head:
/// 3.1 GB at 16 bits, 6.2 at 32) under one setting, inside one compute step as the model runs
/// them; the settings take turns pass by pass (starting one later each pass), so a drift in the
/// machine's bandwidth reaches all of them alike. On the Zen 4 VM, whose bandwidth swung by 2x between runs, this repeated where
/// run-against-run comparisons of whole decodes did not. Prints each setting's median GB/s, its
/// median ratio to the default (the first line) within a pass and the passes in which it beat
/// the default, after one pass not counted.
fn paired_rounds() {
    let (hidden, mlp, kv, vocab, layers) = (1536usize, 8960usize, 256usize, 151936usize, 28);
    let mut shapes = Vec::new();
    for _ in 0..layers {
        // q, k, v, o, gate, up: [n, hidden]; down: [hidden, mlp]
        shapes.extend([(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (mlp, hidden), (mlp, hidden), (hidden, mlp)]);
    }
    shapes.push((vocab, hidden));
    let settings = [None, Some(Prefetch::Off), Some(Prefetch::L1(2048)), Some(Prefetch::L2(2048)), Some(Prefetch::L2(4096)), Some(Prefetch::L2(8192)), Some(Prefetch::L2(16384)), Some(Prefetch::L2(32768)), Some(Prefetch::L2(65536))];
    let passes = 16;
    // `paired f16` (bf16, f32): that storage only; `paired f16 4`: four activation rows (batched
    // decode), one by default
    let only = std::env::args().nth(2).map(|s| s.to_lowercase());
    let m: usize = std::env::args().nth(3).map_or(1, |v| v.parse().expect("paired STORAGE ROWS: rows 1 to 8"));
    for storage in [WeightStorage::F16, WeightStorage::BF16, WeightStorage::F32] {
        if only.as_ref().is_some_and(|o| *o != format!("{storage:?}").to_lowercase()) {
            continue;
        }
        let mut seed = 7u32;
        let mut value = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let weights: Vec<Weights> = shapes
            .iter()
            .map(|&(n, k)| match storage {
                WeightStorage::F32 => Weights::F32((0..n * k).map(|_| value()).collect()),
                WeightStorage::F16 => Weights::F16((0..n * k).map(|_| f16::from_f32(value())).collect()),
                WeightStorage::BF16 => Weights::BF16((0..n * k).map(|_| bf16::from_f32(value())).collect()),
            })
            .collect();
        let bytes: usize = weights.iter().map(Weights::bytes).sum();
        let xs: Vec<Vec<f32>> = shapes.iter().map(|&(_, k)| (0..m * k).map(|_| value()).collect()).collect();
        let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(n, _)| vec![0f32; m * n]).collect();
        // [setting][pass] GB/s
        let mut rates = vec![Vec::new(); settings.len()];
        for pass in 0..=passes {
            // each pass starts one setting later, so none always follows the same one
            for s in (0..settings.len()).map(|j| (pass + j) % settings.len()) {
                iris_nn::gemv::set_prefetch_override(storage, settings[s]);
                let t = Instant::now();
                iris_nn::threads::on_compute_pool(|| {
                    for (i, &(n, k)) in shapes.iter().enumerate() {
                        iris_nn::gemv::gemv(&xs[i], m, weights[i].rows(), n, k, &mut outs[i]);
                    }
                });
                if pass > 0 {
                    rates[s].push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
        }
        iris_nn::gemv::set_prefetch_override(storage, None);
        println!("{storage:?} weights, {m} activation row(s), {:.2} GB a pass, {passes} passes:", bytes as f64 / 1e9);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (s, setting) in settings.iter().enumerate() {
            let wins = (0..passes).filter(|&p| rates[s][p] > rates[0][p]).count();
            // against the default in the same pass: the machine's bandwidth can jump between
            // two levels, and a median over passes then depends on how many each drew
            let ratio = median((0..passes).map(|p| rates[s][p] / rates[0][p]).collect());
            let name = match setting {
                None => format!("default ({:?})", iris_nn::gemv::prefetch_for(storage, m)),
                Some(p) => format!("{p:?}"),
            };
            println!("  {name:<22} median {:5.1} GB/s, {:5.3}x the default's in the same pass (median), beat it in {wins}/{passes}", median(rates[s].clone()), ratio);
        }
    }
}

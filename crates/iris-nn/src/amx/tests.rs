//! The AMX GEMM against its plain twin, and the AVX-512 packers against theirs. Tests that need
//! AMX say so and pass trivially on CPUs without it (CI machines may lack it).

use super::*;
use crate::quant::WeightFormat;

/// Test inputs in [-1, 1) (the f32 GEMM's tests use them too).
pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
    // a small LCG: deterministic, mixed signs and magnitudes
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

#[test]
fn avx512_packers_equal_their_twins() {
    if !available() {
        println!("SKIPPED: no AMX on this CPU (the AVX-512 packers are only used with AMX)");
        return;
    }
    let n = 45;
    let bf16_values = |k: usize| -> Vec<bf16> { values(n * k, 3).into_iter().map(bf16::from_f32).collect() };
    let (w101, w128) = (bf16_values(101), bf16_values(128));
    let f16_values = |k: usize| -> Vec<f16> { values(n * k, 4).into_iter().map(f16::from_f32).collect() };
    let (h101, h128) = (f16_values(101), f16_values(128));
    let q8 = QuantizedMatrix::quantize(&values(n * 128, 5), n, 128, WeightFormat::Q8_0).unwrap();
    let q4 = QuantizedMatrix::quantize(&values(n * 256, 5), n, 256, WeightFormat::Q4K).unwrap();
    // whole 16-column groups take the in-register paths (bf16 and f16 with k = k_pad, q8_0);
    // partial groups, an odd k and q4_K the scratch rows. f16 values below 2^-14 check that
    // the conversion keeps f16 subnormals.
    let h_tiny: Vec<f16> = (0..n * 128).map(|i| f16::from_bits((i % 1024) as u16 | ((i % 2) as u16) << 15)).collect();
    let cases = [
        (WeightRows::Bf16(&w101), 101),
        (WeightRows::Bf16(&w128), 128),
        (WeightRows::F16(&h101), 101),
        (WeightRows::F16(&h128), 128),
        (WeightRows::F16(&h_tiny), 128),
        (WeightRows::Quantized(&q8), 128),
        (WeightRows::Quantized(&q4), 256),
    ];
    for (weight, k) in cases {
        let k: usize = k;
        let k_pad = k.next_multiple_of(K_STEP);
        for first in [0, 32] {
            let (mut row, mut scratch) = (vec![0f32; k_pad], vec![0f32; 16 * k_pad]);
            let (mut fast, mut plain) = (vec![7u32; k_pad / 2 * PANEL], vec![9u32; k_pad / 2 * PANEL]);
            pack::panel_scalar(&weight, n, k, first, &mut row, &mut plain);
            // SAFETY: `available()` checked AVX-512 F/BF16.
            unsafe { pack::panel_avx512(&weight, n, k, first, &mut scratch, pack::uninit_view(&mut fast)) };
            assert_eq!(fast, plain, "panel at column {first}, k {k}");
        }
    }
    // weight rows as bf16 rows: q8_0 and f16 (k = k_pad) in registers, bf16 copied, others
    // through the scratch row
    let f32_values = values(n * 101, 21);
    let row_cases = [
        (WeightRows::Bf16(&w101), 101),
        (WeightRows::F16(&h101), 101),
        (WeightRows::F16(&h128), 128),
        (WeightRows::F16(&h_tiny), 128),
        (WeightRows::Quantized(&q8), 128),
        (WeightRows::Quantized(&q4), 256),
        (WeightRows::F32(&f32_values), 101),
    ];
    for (weight, k) in row_cases {
        let k: usize = k;
        let k_pad = k.next_multiple_of(K_STEP);
        for row in [0, 17, n - 1] {
            let (mut s1, mut s2) = (vec![0f32; k_pad], vec![0f32; k_pad]);
            let (mut fast, mut plain) = (vec![7u16; k_pad], vec![9u16; k_pad]);
            pack::weight_row_scalar(&weight, n, k, row, &mut s1, &mut plain);
            // SAFETY: as above.
            unsafe { pack::weight_row_avx512(&weight, n, k, row, &mut s2, pack::uninit_view(&mut fast)) };
            assert_eq!(fast, plain, "weight row {row}, k {k}");
        }
    }
    // V^T panels: odd key counts, head dims below, at and past one panel
    for (s, d) in [(1usize, 1usize), (37, 80), (64, 32), (33, 112)] {
        let v = values(s * d, 11);
        let len = d.div_ceil(PANEL) * s.next_multiple_of(K_STEP) / 2 * PANEL;
        let (mut fast, mut plain) = (vec![7u32; len], vec![9u32; len]);
        pack::transposed_panels_scalar(&v, s, d, &mut plain);
        // SAFETY: as above.
        unsafe { pack::transposed_panels_avx512(&v, s, d, &mut fast) };
        assert_eq!(fast, plain, "V^T panels of [{s}, {d}]");
    }
    let x = values(1000, 7);
    for len in [0, 15, 16, 999, 1000] {
        let (mut fast, mut plain) = (vec![1u16; 1024], vec![2u16; 1024]);
        pack::round_row_scalar(&x[..len], &mut plain);
        // SAFETY: as above.
        unsafe { pack::round_row_avx512(&x[..len], pack::uninit_view(&mut fast)) };
        assert_eq!(fast, plain, "row of {len}");
        // into values not initialised yet: every one written
        let mut uninit = vec![std::mem::MaybeUninit::<u16>::uninit(); 1024];
        // SAFETY: as above.
        unsafe { pack::round_row_avx512(&x[..len], &mut uninit) };
        // SAFETY: the call wrote all 1024 values.
        let written: Vec<u16> = uninit.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_eq!(written, plain, "row of {len} into uninitialised values");
    }
}

/// Max |fast - reference| over the scale of the sums, `sum |x| |w|` per output.
/// Both tile layouts: checked against the twin each, and equal to each other (same products,
/// same k order; the inputs here hold no denormals, which the layouts round differently).
fn gemm_error(x: &[f32], m: usize, w: &WeightRows, dense: &[f32], n: usize, k: usize) -> f32 {
    let (mut fast, mut swapped, mut plain) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
    activation_tiles_gemm(x, m, w, n, k, ColumnTiles::new(&mut fast, m, n), None);
    weight_tiles::gemm(x, m, w, n, k, ColumnTiles::new(&mut swapped, m, n));
    assert_eq!(fast, swapped, "the two tile layouts differ for [{m}, {k}] x [{n}, {k}]^T");
    gemm_reference(x, m, w, n, k, &mut plain);
    let mut worst = 0f32;
    for r in 0..m {
        for c in 0..n {
            let scale: f32 = (0..k).map(|i| (x[r * k + i] * dense[c * k + i]).abs()).sum();
            worst = worst.max((fast[r * n + c] - plain[r * n + c]).abs() / scale.max(1e-30));
        }
    }
    worst
}

#[test]
fn amx_gemm_matches_the_plain_twin() {
    if !available() {
        println!("SKIPPED: no AMX on this CPU");
        return;
    }
    // shapes crossing every block edge: rows past ROW_BLOCK and not a multiple of MICRO,
    // columns past COL_BLOCK and not a multiple of PANEL, K past K_BLOCK and (bf16) not a
    // multiple of K_STEP
    for (m, n, k) in [(1, 1, 32), (37, 45, 64), (300, 290, 544), (33, 270, 1176)] {
        let x = values(m * k, 11);
        let w: Vec<bf16> = values(n * k, 13).into_iter().map(bf16::from_f32).collect();
        let dense: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let err = gemm_error(&x, m, &WeightRows::Bf16(&w), &dense, n, k);
        println!("bf16 [{m}, {k}] x [{n}, {k}]^T: max error {err:.2e} of sum |x w|");
        assert!(err < 1e-5, "bf16 weights: {err:e}");
        let w: Vec<f16> = values(n * k, 13).into_iter().map(f16::from_f32).collect();
        let dense: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let err = gemm_error(&x, m, &WeightRows::F16(&w), &dense, n, k);
        println!("f16 [{m}, {k}] x [{n}, {k}]^T: max error {err:.2e} of sum |x w|");
        assert!(err < 1e-5, "f16 weights: {err:e}");
    }
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        let (m, n, k) = (70, 40, 512);
        let x = values(m * k, 17);
        let q = QuantizedMatrix::quantize(&values(n * k, 19), n, k, format).unwrap();
        let dense: Vec<f32> = (0..n).flat_map(|c| {
            let mut row = vec![0f32; k];
            q.dequantize_row_into(c, &mut row);
            row
        }).collect();
        let err = gemm_error(&x, m, &WeightRows::Quantized(&q), &dense, n, k);
        println!("{format} [{m}, {k}] x [{n}, {k}]^T: max error {err:.2e} of sum |x w|");
        assert!(err < 1e-5, "{format}: {err:e}");
    }
}

#[test]
fn amx_gemm_is_close_to_the_f32_product() {
    if !available() {
        println!("SKIPPED: no AMX on this CPU");
        return;
    }
    // bf16 rounding of both operands: each product within ~2^-8 relative
    let (m, n, k) = (64, 96, 640);
    let x = values(m * k, 23);
    let w: Vec<bf16> = values(n * k, 29).into_iter().map(bf16::from_f32).collect();
    let mut out = vec![0f32; m * n];
    gemm(&x, m, &WeightRows::Bf16(&w), n, k, &mut out);
    let mut worst = 0f32;
    for r in 0..m {
        for c in 0..n {
            let (exact, scale) = (0..k).fold((0f64, 0f64), |(s, a), i| {
                let p = x[r * k + i] as f64 * w[c * k + i].to_f64();
                (s + p, a + p.abs())
            });
            worst = worst.max(((out[r * n + c] as f64 - exact).abs() / scale) as f32);
        }
    }
    println!("max error against f64 with f32 activations: {worst:.2e} of sum |x w|");
    assert!(worst < 4e-3, "{worst:e}");
}

#[test]
fn amx_attention_matches_the_slow_formula_on_rounded_inputs() {
    use candle_core::{Device, Tensor};
    if !available() {
        println!("SKIPPED: no AMX on this CPU");
        return;
    }
    // (H, KVH, T, S, D): head dims past and below a tile step, keys and queries off the 32 grid,
    // grouped KV heads, and enough keys for 32-row query chunks
    // causal: a prompt from the start (offset 0) and a chunk after cached tokens (T < S); the
    // last two span several 256-row query chunks and 512-key blocks, the causal one with
    // visibility ending inside a block
    let cases = [(2, 2, 5, 7, 16, None), (4, 2, 70, 45, 80, None), (2, 1, 300, 300, 64, None), (1, 1, 40, 9000, 112, None), (6, 2, 300, 300, 128, Some(0)), (4, 2, 50, 120, 64, Some(70)), (2, 1, 600, 1300, 112, Some(700)), (2, 2, 300, 1100, 80, None)];
    for (h, kvh, t, s, d, causal) in cases {
        let round = |x: Vec<f32>| -> Vec<f32> { x.into_iter().map(|v| bf16::from_f32(v).to_f32()).collect() };
        let q = round(values(h * t * d, 31).into_iter().map(|v| 3.0 * v).collect());
        let (k, v) = (round(values(kvh * s * d, 37)), round(values(kvh * s * d, 41)));
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![f32::NAN; h * t * d];
        attention::attention(&q, &k, &v, (h, t, d, kvh, s), causal, scale, &mut out);
        let dev = Device::Cpu;
        let tensor = |x: &[f32], heads: usize, rows: usize| Tensor::from_slice(x, (heads, rows, d), &dev).unwrap();
        let slow = crate::attention::attention_slow(&tensor(&q, h, t), &tensor(&k, kvh, s), &tensor(&v, kvh, s), causal, scale as f64).unwrap();
        let slow: Vec<f32> = slow.flatten_all().unwrap().to_vec1().unwrap();
        let err = out.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // probabilities rounded to bf16 (2^-9 relative) against |v| <= 1
        println!("AMX attention H {h} KVH {kvh} T {t} S {s} D {d} causal {causal:?}: max |diff| {err:.2e}");
        assert!(err < 4e-3, "{err:e}");
    }
}

#[test]
fn buffers_written_by_their_filler_hold_what_it_wrote() {
    // new (larger than the pool keeps, so never zeroed first), then small ones the pool hands
    // back; odd lengths leave a partial last cache line
    for len in [(POOL_MAX_BYTES / 2) + 12_345, 1_001, 999] {
        // SAFETY: the closure writes all `len` values.
        let buf = unsafe { Aligned::<u16>::written_by(len, |v| v.iter_mut().enumerate().for_each(|(i, x)| *x = MaybeUninit::new(i as u16))) };
        assert_eq!(buf.as_slice().len(), len);
        assert!(buf.as_slice().iter().enumerate().all(|(i, &x)| x == i as u16), "a buffer of {len}");
        assert_eq!(buf.lines.as_ptr() as usize % 64, 0, "cache-line aligned");
    }
}

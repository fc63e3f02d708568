//! The bf16 GEMM against its scalar twin and against an f64 product of the unrounded inputs.

use super::*;

fn lcg(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }
}

/// `[m, n]`: the f64 product of `x` and `w` and the sum of `|x| |w|` (the scale of the
/// rounding error any f32 or bf16 evaluation may make).
fn reference(x: &[f32], m: usize, w: &[bf16], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut exact = vec![0f64; m * n];
    let mut magnitude = vec![0f64; m * n];
    for r in 0..m {
        for o in 0..n {
            for i in 0..k {
                let p = x[r * k + i] as f64 * w[o * k + i].to_f64();
                exact[r * n + o] += p;
                magnitude[r * n + o] += p.abs();
            }
        }
    }
    (exact, magnitude)
}

/// Largest `|got - want| / magnitude` over the outputs.
fn worst_relative(got: &[f32], want: &[f64], magnitude: &[f64]) -> f64 {
    got.iter().zip(want).zip(magnitude).map(|((&g, &e), &s)| (g as f64 - e).abs() / s.max(f64::MIN_POSITIVE)).fold(0.0, f64::max)
}

#[test]
fn bf16_rounding_is_round_to_nearest_even() {
    let mut rnd = lcg(7);
    let mut values: Vec<f32> = (0..10_000).map(|_| rnd() * 1e3).collect();
    // exact ties: bf16 1.0 + half an ulp (rounds down to even) and + 1.5 ulp (rounds up)
    values.extend([f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000), f32::INFINITY, -f32::INFINITY, 0.0, -0.0, f32::MAX]);
    for v in values {
        assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits(), "{v:e} ({:#x})", v.to_bits());
    }
    assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
}

#[test]
fn every_kernel_matches_the_scalar_twin_and_the_f64_product() {
    let mut rnd = lcg(11);
    println!("bf16 GEMM kernels tested here: {:?}", Bf16Kernel::available());
    // rows: a partial tile, exactly one, one plus a row; columns: partial panels; k: one pair up,
    // and odd (a last pair with one value)
    for (m, n, k) in [(1, 5, 2), (5, 37, 30), (8, 32, 128), (9, 70, 1000), (17, 64, 1280), (3, 33, 1), (10, 40, 77)] {
        let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rnd())).collect();
        let (exact, magnitude) = reference(&x, m, &w, n, k);
        let mut twin = vec![0f32; m * n];
        gemm_with(&x, &w, 1, m, n, k, &mut twin, Bf16Kernel::Scalar);
        // the activations' rounding to bf16 moves each product by at most 2^-9 of itself; f32
        // accumulation adds at most k * 2^-24 of the magnitude
        let against_f64 = worst_relative(&twin, &exact, &magnitude);
        println!("m={m} n={n} k={k}: scalar twin vs f64 of unrounded inputs: max relative error {against_f64:.2e}");
        assert!(against_f64 <= 2f64.powi(-9) + k as f64 * 2f64.powi(-24), "{against_f64}");
        for kernel in Bf16Kernel::available() {
            let mut out = vec![0f32; m * n];
            gemm_with(&x, &w, 1, m, n, k, &mut out, kernel);
            let d = out.iter().zip(&twin).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let rel = worst_relative(&out, &twin.iter().map(|&v| v as f64).collect::<Vec<_>>(), &magnitude);
            println!("  {kernel:?} vs scalar twin: max|diff| = {d:e}, relative {rel:.2e}");
            // the same exact products summed in the same order; allow accumulation rounding in
            // case a CPU fuses a pair's two additions
            assert!(rel <= k as f64 * 2f64.powi(-24), "{kernel:?}: {rel}");
        }
    }
}

#[test]
fn inputs_already_in_bf16_are_multiplied_exactly() {
    let mut rnd = lcg(3);
    let (m, n, k) = (12, 40, 512);
    // activations that bf16 holds exactly: only the f32 sums round
    let x: Vec<f32> = (0..m * k).map(|_| bf16::from_f32(rnd()).to_f32()).collect();
    let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rnd())).collect();
    let (exact, magnitude) = reference(&x, m, &w, n, k);
    let mut out = vec![0f32; m * n];
    gemm(&x, m, &w, n, k, &mut out);
    let rel = worst_relative(&out, &exact, &magnitude);
    println!("bf16-exact inputs: max relative error {rel:.2e}");
    assert!(rel <= k as f64 * 2f64.powi(-24), "{rel}");
}

#[test]
fn batched_products_equal_one_product_per_matrix() {
    let mut rnd = lcg(5);
    let (batch, m, n, k) = (3, 11, 45, 81);
    let x: Vec<f32> = (0..batch * m * k).map(|_| rnd()).collect();
    let w: Vec<bf16> = (0..batch * n * k).map(|_| bf16::from_f32(rnd())).collect();
    let mut batched = vec![0f32; batch * m * n];
    gemm_batched(&x, &w, batch, m, n, k, &mut batched);
    for b in 0..batch {
        let mut one = vec![0f32; m * n];
        gemm(&x[b * m * k..][..m * k], m, &w[b * n * k..][..n * k], n, k, &mut one);
        assert_eq!(&batched[b * m * n..][..m * n], &one[..], "matrix {b}");
    }
}

#[test]
fn an_empty_inner_dimension_gives_zeros() {
    let mut out = vec![1f32; 6];
    gemm(&[], 2, &[], 3, 0, &mut out);
    assert_eq!(out, vec![0f32; 6]);
}

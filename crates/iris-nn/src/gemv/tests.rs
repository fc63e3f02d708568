//! Tests of the decode GEMV (`super`): every kernel against `gemv_reference`, tiles and blocks
//! against single rows bit for bit, and non-finite activations in the bf16 kernel.

use super::*;

#[test]
fn fast_gemv_matches_reference_for_every_dtype_and_odd_sizes() {
    let mut seed = 1u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    // every row count of the bf16 kernel's dispatch, K with and without a partial last step
    // and one activation row large enough for four-row groups (`GROUP_ROWS`), 35 KB
    for (m, n, k) in [(1, 37, 29), (3, 70, 128), (8, 5, 1000), (2, 1, 7), (1, 40, 1536), (4, 33, 96), (5, 3, 65), (6, 2, 200), (7, 3, 33), (1, 35, 8960)] {
        let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w32: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        // what the AVX512-BF16 kernel multiplies: the activations rounded to bf16
        let x_bf16: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        for w in [WeightRows::F32(&w32), WeightRows::F16(&w16), WeightRows::BF16(&wb)] {
            let want = gemv_reference(&x, m, w, n, k);
            let want_bf16 = gemv_reference(&x_bf16, m, w, n, k);
            #[cfg(target_arch = "x86_64")]
            let rounds = matches!(w, WeightRows::BF16(_)) && avx512_bf16::available() && avx512_available();
            #[cfg(not(target_arch = "x86_64"))]
            let rounds = false;
            let mut out = vec![0f32; m * n];
            gemv(&x, m, w, n, k, &mut out);
            let d = out.iter().zip(if rounds { &want_bf16 } else { &want }).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("gemv m={m} n={n} k={k} {}{}: max|diff| = {d:e}", match w { WeightRows::F32(_) => "f32", WeightRows::F16(_) => "f16", WeightRows::BF16(_) => "bf16" }, if rounds { " (bf16 activations)" } else { "" });
            assert!(d < 1e-4, "{d}");
            // every SIMD variant this CPU has, not only the one dispatch picks
            #[cfg(target_arch = "x86_64")]
            for o in 0..n {
                let mut cell = vec![0f32; m];
                let close = |cell: &[f32], want: &[f32]| cell.iter().enumerate().all(|(r, a)| (a - want[r * n + o]).abs() < 1e-4);
                if has_avx2() {
                    unsafe { avx2::dot_rows(&x, m, w, o, k, &mut cell) };
                    assert!(close(&cell, &want), "avx2 row {o}");
                }
                if std::is_x86_feature_detected!("avx512f") {
                    unsafe { avx512::dot_block(&x, m, w, (o, 1), k, (3, 1), &mut cell, prefetch_for(w.storage(), m)) };
                    assert!(close(&cell, &want), "avx512 row {o}");
                }
                if let (WeightRows::BF16(wb), true) = (w, avx512_bf16::available()) {
                    unsafe { avx512_bf16::dot_block(&avx512_bf16::Bf16Activations::round(&x), m, wb, (o, 1), k, (3, 1), &mut cell, prefetch_for(WeightStorage::BF16, m)) };
                    assert!(close(&cell, &want_bf16), "avx512_bf16 row {o}");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tile_tests {
    use super::*;

    /// Every tile shape of both AVX-512 kernels, through `gemv` (1 to 8 activation rows, K past
    /// `GROUP_ABOVE_X_BYTES` for one row, a partial last tile) and called directly, gives the
    /// bits that one activation row against one weight row gives: a row's result does not
    /// depend on the batch it decodes in.
    #[test]
    fn tiles_match_single_rows_bit_for_bit() {
        if !avx512_available() {
            println!("skipped: this CPU has no AVX-512F (or IRIS_GEMV_KERNEL=avx2 is set)");
            return;
        }
        // past the threshold for one row of f32 activations (4 bytes each) and of bf16 ones (2)
        let k = GROUP_ABOVE_X_BYTES / 2 + 45;
        let n = 2 * BLOCK + 6;
        let x: Vec<f32> = (0..MAX_ROWS * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let w32: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.011).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        // (activation rows per pass, weight rows): every shape `avx512::for_tile_shape` has
        let shapes = [(1, 1), (1, 4), (2, 1), (2, 4), (3, 1), (3, 4)];
        for w in [WeightRows::F32(&w32), WeightRows::F16(&w16), WeightRows::BF16(&wb)] {
            let prefetch = prefetch_for(w.storage(), 1);
            let bf16_kernel = matches!(w, WeightRows::BF16(_)) && avx512_bf16::available();
            // [r][o]: activation row r against weight row o alone, in the kernel `gemv` takes
            let single = |wide: bool| -> Vec<Vec<f32>> {
                (0..MAX_ROWS)
                    .map(|r| {
                        let xr = &x[r * k..(r + 1) * k];
                        let rounded = avx512_bf16::Bf16Activations::round(xr);
                        (0..n)
                            .map(|o| {
                                let mut cell = [0f32];
                                match (w, wide) {
                                    (WeightRows::BF16(wb), false) => unsafe { avx512_bf16::dot_block(&rounded, 1, wb, (o, 1), k, (1, 1), &mut cell, prefetch) },
                                    _ => unsafe { avx512::dot_block(xr, 1, w, (o, 1), k, (1, 1), &mut cell, prefetch) },
                                }
                                cell[0]
                            })
                            .collect()
                    })
                    .collect()
            };
            let alone = single(!bf16_kernel);
            for m in 1..=MAX_ROWS {
                let mut out = vec![0f32; m * n];
                gemv(&x[..m * k], m, w, n, k, &mut out);
                for r in 0..m {
                    assert_eq!(out[r * n..(r + 1) * n], alone[r], "{:?}: gemv with {m} rows, row {r}", w.storage());
                }
            }
            // every shape directly, in each kernel that can take this storage
            for wide in [true, false] {
                if !wide && !bf16_kernel {
                    continue;
                }
                let alone = single(wide);
                for ((chunk, g), m) in shapes.into_iter().flat_map(|shape| (1..=MAX_ROWS).map(move |m| (shape, m))) {
                    let rounded = avx512_bf16::Bf16Activations::round(&x[..m * k]);
                    // one tile, a block of whole tiles and leftover rows from an unaligned row, and
                    // all rows in one block
                    for (o, rows) in [(0, g), (3, 2 * g + 1), (0, n)] {
                        let mut cells = vec![0f32; rows * m];
                        match (w, wide) {
                            (WeightRows::BF16(wb), false) => unsafe { avx512_bf16::dot_block(&rounded, m, wb, (o, rows), k, (chunk, g), &mut cells, prefetch) },
                            _ => unsafe { avx512::dot_block(&x[..m * k], m, w, (o, rows), k, (chunk, g), &mut cells, prefetch) },
                        }
                        for (j, r) in (0..rows).flat_map(|j| (0..m).map(move |r| (j, r))) {
                            assert_eq!(cells[j * m + r], alone[r][o + j], "{:?} wide {wide}: {m} rows, {chunk} a pass x {g}, block {rows} at {o}, row {r}", w.storage());
                        }
                    }
                }
            }
            // the bf16 kernel multiplies the activations rounded to bf16
            let x0: Vec<f32> = x[..k].iter().map(|&v| if bf16_kernel { bf16::from_f32(v).to_f32() } else { v }).collect();
            let want = gemv_reference(&x0, 1, w, n, k);
            let d = alone[0].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{:?} k = {k}: every tile equals single rows; max |diff| of row 0 to the reference {d:e}", w.storage());
            assert!(d < 1e-3, "{d}");
        }
    }

    /// The AVX2 kernel (CPUs without AVX-512F) gives each activation row the bits it gives that
    /// row alone, for 1 to 8 rows, and stays within the reference's rounding.
    #[test]
    fn avx2_rows_match_single_rows_bit_for_bit() {
        if !has_avx2() {
            println!("skipped: this CPU has no AVX2/FMA/F16C");
            return;
        }
        // 32-value steps, 8-value steps and a scalar tail
        let (k, n) = (32 * 7 + 8 * 2 + 5, 2 * BLOCK + 6);
        let x: Vec<f32> = (0..MAX_ROWS * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let w32: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.011).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        for w in [WeightRows::F32(&w32), WeightRows::F16(&w16), WeightRows::BF16(&wb)] {
            let want = gemv_reference(&x, MAX_ROWS, w, n, k);
            let mut worst = 0f32;
            // [o][r]: each weight row against each activation row alone
            let mut single = vec![vec![0f32; MAX_ROWS]; n];
            for o in 0..n {
                let alone: Vec<f32> = (0..MAX_ROWS)
                    .map(|r| {
                        let mut cell = [0f32];
                        // SAFETY: `has_avx2` checked the features; the sizes hold one row.
                        unsafe { avx2::dot_rows(&x[r * k..(r + 1) * k], 1, w, o, k, &mut cell) };
                        cell[0]
                    })
                    .collect();
                for m in 1..=MAX_ROWS {
                    let mut cell = vec![0f32; m];
                    // SAFETY: as above, with m rows.
                    unsafe { avx2::dot_rows(&x[..m * k], m, w, o, k, &mut cell) };
                    assert_eq!(cell, alone[..m], "{:?}: {m} rows, weight row {o}", w.storage());
                }
                worst = (0..MAX_ROWS).map(|r| (alone[r] - want[r * n + o]).abs()).fold(worst, f32::max);
                single[o] = alone;
            }
            // blocks in one call: all weight rows, and a few from an unaligned row
            for m in 1..=MAX_ROWS {
                for (o, rows) in [(0, n), (3, 5)] {
                    let mut cells = vec![0f32; rows * m];
                    // SAFETY: as above, with m rows and weight rows o..o + rows.
                    unsafe { avx2::dot_rows(&x[..m * k], m, w, o, k, &mut cells) };
                    for j in 0..rows {
                        assert_eq!(cells[j * m..(j + 1) * m], single[o + j][..m], "{:?}: block of {rows} at {o}, {m} rows", w.storage());
                    }
                }
                // as `gemv` runs it without AVX-512: parallel blocks, a short last one, each
                // block's [rows, m] sums transposed into its columns of [m, N]
                let mut out = vec![0f32; m * n];
                for_each_block(m, n, BLOCK, &mut out, |o, _, cells| dot_rows(&x[..m * k], m, w, o, k, cells));
                for (o, r) in (0..n).flat_map(|o| (0..m).map(move |r| (o, r))) {
                    assert_eq!(out[r * n + o], single[o][r], "{:?}: for_each_block, {m} rows, weight row {o}", w.storage());
                }
            }
            println!("{:?}: avx2 rows equal single rows; max |diff| to the reference {worst:e}", w.storage());
            assert!(worst < 1e-4, "{worst}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod bf16_activation_tests {
    use super::*;

    /// Infinite and NaN activations give what the f32 kernels give; f32's largest value is past
    /// bf16's and becomes an infinity, as PyTorch's cast to bf16 makes it.
    #[test]
    fn bf16_kernel_keeps_infinities_and_nan() {
        if !avx512_bf16::available() || !avx512_available() {
            println!("skipped: this CPU has no AVX512-BF16 (or IRIS_GEMV_KERNEL=avx2 is set)");
            return;
        }
        let k = 40;
        let w: Vec<bf16> = (0..2 * k).map(|i| bf16::from_f32(if i < k { 0.5 } else { -0.25 })).collect();
        for (special, want) in [(f32::INFINITY, [f32::INFINITY, f32::NEG_INFINITY]), (f32::NEG_INFINITY, [f32::NEG_INFINITY, f32::INFINITY]), (f32::MAX, [f32::INFINITY, f32::NEG_INFINITY])] {
            let mut x = vec![1.0f32; k];
            x[k - 1] = special;
            let mut out = vec![0f32; 2];
            gemv(&x, 1, WeightRows::BF16(&w), 2, k, &mut out);
            println!("x[last] = {special:e}: {out:?}");
            assert_eq!(out, want);
        }
        let mut x = vec![1.0f32; k];
        x[3] = f32::NAN;
        let mut out = vec![0f32; 2];
        gemv(&x, 1, WeightRows::BF16(&w), 2, k, &mut out);
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    }
}

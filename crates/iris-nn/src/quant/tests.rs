//! Quantized storage and kernels against their twins: candle's ggml decoders, the scalar integer
//! kernel, and an f64 product with the dequantized weight.

use super::kernels::{abs_max, dequantize_row, dequantize_row_portable, dequantize_row_range, gemv_with, quantize_blocks, quantize_blocks_portable, Kernel, MAX_ROWS};
use super::{DEQUANT_TILE_ROWS, INTEGER_KERNEL_MAX_ROWS};
use super::*;
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn candle_decode(values: &[f32], format: WeightFormat) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    match format {
        WeightFormat::Q8_0 => {
            let mut b = vec![BlockQ8_0::zeros(); values.len() / 32];
            BlockQ8_0::from_float(values, &mut b);
            BlockQ8_0::to_float(&b, &mut out);
        }
        WeightFormat::Q4K => {
            let mut b = vec![BlockQ4K::zeros(); values.len() / 256];
            BlockQ4K::from_float(values, &mut b);
            BlockQ4K::to_float(&b, &mut out);
        }
        _ => unreachable!(),
    }
    out
}

#[test]
fn our_layout_decodes_exactly_like_ggml() {
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        let (n, k) = (5, 512);
        let w = pseudo_random(n * k, 1);
        let q = QuantizedMatrix::quantize(&w, n, k, format).unwrap();
        let ours: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let theirs = candle_decode(&w, format);
        let max_err = w.iter().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{format}: decode matches ggml, max |w - deq| = {max_err:e}");
        assert_eq!(ours, theirs, "{format}");
        assert!(max_err < if format == WeightFormat::Q4K { 0.1 } else { 0.01 });
    }
}

/// `x W^T` in f64 with the dequantized weight: the exact product the kernels approximate.
fn reference(q: &QuantizedMatrix, x: &[f32], m: usize) -> Vec<f32> {
    let (n, k) = q.dims();
    let w: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for o in 0..n {
            out[r * n + o] = (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum::<f64>() as f32;
        }
    }
    out
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

#[test]
fn kernels_on_this_cpu_are_reported() {
    let all = [Kernel::Scalar, Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni, Kernel::Neon];
    let skipped: Vec<_> = all.iter().filter(|k| !Kernel::available().contains(k)).collect();
    // not an assertion: tells the log which fast paths this machine could not exercise
    println!("quantized kernels tested here: {:?}; skipped (CPU lacks them): {skipped:?}", Kernel::available());
}

#[test]
fn simd_kernels_match_the_scalar_twin_and_the_f64_product() {
    // K = 96 (3 blocks) runs only q8_0's per-block tail, 416 (13) both the AVX2 8-block path and
    // the tail, 672 (21) AVX-512's 16-block group, a leftover pair and the odd block; 1536 is
    // model-like
    let cases = [
        (WeightFormat::Q8_0, 37, 96),
        (WeightFormat::Q8_0, 37, 416),
        (WeightFormat::Q8_0, 37, 672),
        (WeightFormat::Q8_0, 70, 1536),
        (WeightFormat::Q4K, 37, 256),
        (WeightFormat::Q4K, 70, 1536),
    ];
    // activations of one sign too (as after an activation function): the AVX-512 q8_0 kernel's
    // offset products and its excess cancel in f32, most where every x has the same sign
    for (format, n, k, one_sign) in cases.into_iter().flat_map(|(f, n, k)| [(f, n, k, false), (f, n, k, true)]) {
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 2), n, k, format).unwrap();
        for m in [1, 3, MAX_ROWS] {
            let x: Vec<f32> = pseudo_random(m * k, 3 + m as u64).into_iter().map(|v| if one_sign { v.abs() } else { v }).collect();
            let fast: Vec<f32> = q.matmul_t(&Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut slow = vec![0f32; m * n];
            gemv_with(&q.blocks, n, k, &x, m, &mut slow, Kernel::Scalar);
            let mut by_kernel = Vec::new();
            for kernel in Kernel::available() {
                let mut simd = vec![0f32; m * n];
                gemv_with(&q.blocks, n, k, &x, m, &mut simd, kernel);
                let twin = max_rel(&simd, &slow);
                println!("{format} [{n}, {k}] m={m} one_sign={one_sign}: {kernel:?} rel diff vs scalar twin {twin:e}");
                assert!(twin < 1e-5, "{format} m={m}: {kernel:?} differs from its twin by {twin}");
                by_kernel.push((kernel, simd));
            }
            // AVX-VNNI only fuses the AVX2 kernels' integer steps: the same sums, the same bits
            let of = |want: Kernel| by_kernel.iter().find(|(k, _)| *k == want).map(|(_, out)| out.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            if let (Some(avx2), Some(vnni)) = (of(Kernel::Avx2), of(Kernel::AvxVnni)) {
                assert!(avx2 == vnni, "{format} [{n}, {k}] m={m}: AvxVnni differs from Avx2");
            }
            let exact = reference(&q, &x, m);
            let vs_exact = max_rel(&fast, &exact);
            println!("{format} [{n}, {k}] m={m}: best kernel ({:?}) rel diff vs f64 product {vs_exact:e}", Kernel::best());
            // int8 activations: ~1/254 relative error per value, averaging out over K
            assert!(vs_exact < 1.5e-2, "{format} m={m}: {vs_exact}");
        }
    }
}

#[test]
fn inputs_over_eight_rows_run_in_passes_of_eight() {
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        // as many rows as still take the passes on this CPU
        let m = super::gemm_min_rows(format) - 1;
        let (n, k) = (70, 512);
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 6), n, k, format).unwrap();
        let x = pseudo_random(m * k, 7);
        let whole: Vec<f32> = q.matmul_t(&Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut passes = Vec::new();
        for r0 in (0..m).step_by(MAX_ROWS) {
            let rows = MAX_ROWS.min(m - r0);
            let part = q.matmul_t(&Tensor::from_slice(&x[r0 * k..(r0 + rows) * k], (rows, k), &Device::Cpu).unwrap()).unwrap();
            passes.extend(part.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(whole, passes, "{format}: {m} rows must equal passes of 8");
        let err = max_rel(&whole, &reference(&q, &x, m));
        println!("{format} m={m}: integer passes rel diff vs f64 product {err:e}");
        assert!(err < 1.5e-2, "{format}: {err}");
    }
}

#[test]
fn large_inputs_without_vnni_use_f32_tiles() {
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        // a full weight tile and a partial one
        let (n, k, m) = (DEQUANT_TILE_ROWS + 88, 512, INTEGER_KERNEL_MAX_ROWS + 1);
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 4), n, k, format).unwrap();
        let x = pseudo_random(m * k, 5);
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
        let got: Vec<f32> = q.matmul_t_f32_tiles(&xt).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let err = max_rel(&got, &reference(&q, &x, m));
        println!("{format} m={m}: f32 tiles rel diff vs f64 product {err:e}");
        assert!(err < 1e-5, "{format}: {err}");
    }
}

#[test]
fn int8_gemm_matches_its_scalar_twin_and_the_f64_product() {
    // 70 columns: two full panel pairs and a partial one; 13 rows: three full tiles and one row
    let (n, m) = (70, 13);
    for (format, k) in [(WeightFormat::Q8_0, 96), (WeightFormat::Q8_0, 1536), (WeightFormat::Q4K, 512)] {
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 10), n, k, format).unwrap();
        let x = pseudo_random(m * k, 11);
        let mut slow = vec![0f32; m * n];
        gemm::gemm_with(&q.blocks, n, k, &x, m, &mut slow, Kernel::Scalar);
        let exact = reference(&q, &x, m);
        let vs_exact = max_rel(&slow, &exact);
        println!("{format} [{n}, {k}] m={m}: int8 GEMM (scalar) rel diff vs f64 product {vs_exact:e}");
        assert!(vs_exact < 1.5e-2, "{format}: {vs_exact}");
        if format == WeightFormat::Q8_0 {
            // q8_0 decode quantizes activations the same way: same products up to summation order
            let mut gemv_out = vec![0f32; n];
            gemv_with(&q.blocks, n, k, &x[..k], 1, &mut gemv_out, Kernel::Scalar);
            let vs_gemv = max_rel(&slow[..n], &gemv_out);
            println!("{format} [{n}, {k}]: int8 GEMM row 0 rel diff vs the decode kernel {vs_gemv:e}");
            assert!(vs_gemv < 1e-5, "{format}: {vs_gemv}");
        }
        for kernel in Kernel::available().into_iter().filter(|&k| matches!(k, Kernel::AvxVnni | Kernel::Avx512Vnni)) {
            let mut fast = vec![0f32; m * n];
            gemm::gemm_with(&q.blocks, n, k, &x, m, &mut fast, kernel);
            let twin = max_rel(&fast, &slow);
            println!("{format} [{n}, {k}] m={m}: int8 GEMM {kernel:?} rel diff vs scalar twin {twin:e}");
            assert!(twin < 1e-6, "{format}: {kernel:?} {twin}");
        }
    }
}

#[test]
fn vector_packed_panels_equal_the_general_packing() {
    // 70 columns: two full panels (packed by vector code on the VNNI kernels' CPUs) and a partial one (the
    // general path, which also covers q4_K's last two rows, stored outside the four-row
    // interleave: a full panel never reaches them, as 32-column panels start at multiples of 4)
    let (n, k) = (70, 1536);
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 13), n, k, format).unwrap();
        for kernel in Kernel::available() {
            for first in [0, 32, 64] {
                let general = gemm::PanelPair::pack_with(&q.blocks, n, k, first, Kernel::Scalar);
                let packed = gemm::PanelPair::pack_with(&q.blocks, n, k, first, kernel);
                assert!(packed.bytes == general.bytes, "{format} {kernel:?} panel at {first}: bytes differ");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&packed.scale), bits(&general.scale), "{format} {kernel:?} panel at {first}");
                assert_eq!(bits(&packed.min), bits(&general.min), "{format} {kernel:?} panel at {first}");
            }
        }
    }
}

#[test]
fn formats_parse_and_fall_back_by_block() {
    assert_eq!("q8_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
    assert_eq!("Q4K".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
    assert!("q3".parse::<WeightFormat>().unwrap_err().contains("q4k"));
    assert_eq!(WeightFormat::Q4K.for_inputs(64, DType::F32), WeightFormat::Q8_0);
    assert_eq!(WeightFormat::Q4K.for_inputs(1176, DType::BF16), WeightFormat::BF16);
    assert_eq!(WeightFormat::Q8_0.for_inputs(1536, DType::F32), WeightFormat::Q8_0);
    let err = QuantizedMatrix::quantize(&[0.0; 10], 1, 10, WeightFormat::Q8_0).unwrap_err().to_string();
    assert!(err.contains("multiple of 32"), "{err}");
}

#[test]
fn gather_rows_decodes_embedding_rows() {
    let (n, k) = (10, 64);
    let w = pseudo_random(n * k, 6);
    let q = QuantizedMatrix::quantize(&w, n, k, WeightFormat::Q8_0).unwrap();
    let rows: Vec<f32> = q.gather_rows(&[7, 2], &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let all: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(&rows[..k], &all[7 * k..8 * k]);
    assert_eq!(&rows[k..], &all[2 * k..3 * k]);
    assert!(q.gather_rows(&[10], &Device::Cpu).unwrap_err().to_string().contains("out of range"));
}

#[test]
fn activation_quantization_matches_its_portable_twin() {
    // includes exact .5 ties after scaling (amax 127 gives inv 1) and an all-zero block
    let mut x = pseudo_random(4096, 9);
    x[0] = 127.0;
    for (i, v) in x[1..32].iter_mut().enumerate() {
        *v = i as f32 - 15.5;
    }
    x[64..96].fill(0.0);
    x[100] = f32::NAN;
    for block in [32, 256] {
        let fast = quantize_blocks(&x, block);
        let slow = quantize_blocks_portable(&x, block);
        assert_eq!(fast.1, slow.1, "block {block}");
        assert_eq!(fast.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), slow.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(slow.1[1], -15 - 1, "-15.5 rounds away from zero");
        assert_eq!(slow.1[100], 0, "NaN quantizes to 0");
        assert!(slow.0.iter().all(|d| d.is_finite()), "NaN is left out of the block scale");
    }
}

#[test]
fn abs_max_is_the_serial_fold() {
    let serial = |x: &[f32]| x.iter().fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let mut x = pseudo_random(1000, 17);
    x[3] = f32::NAN;
    x[40] = -0.0;
    x[977] = -9.5;
    for len in [0, 1, 15, 16, 17, 32, 256, 999, 1000] {
        assert_eq!(abs_max(&x[..len]).to_bits(), serial(&x[..len]).to_bits(), "{len} values");
    }
    x[500] = f32::NEG_INFINITY;
    assert_eq!(abs_max(&x), f32::INFINITY);
    assert_eq!(abs_max(&[f32::NAN; 20]), 0.0, "all NaN");
}

#[test]
fn gemm_activation_quantizers_agree_bit_for_bit() {
    // ties after scaling, an all-zero block, NaN and infinities, and a block of tiny values
    let k = 256;
    let mut x = pseudo_random(8 * k, 21).into_iter().map(|v| v * 40.0).collect::<Vec<_>>();
    x[0] = 127.0;
    for (i, v) in x[1..32].iter_mut().enumerate() {
        *v = i as f32 - 15.5;
    }
    x[64..96].fill(0.0);
    x[100] = f32::NAN;
    x[300] = f32::INFINITY;
    x[400] = f32::NEG_INFINITY;
    x[512..544].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) * 1e-40);
    let general = gemm::Activations::quantize_with(&x, k, Kernel::Scalar);
    for kernel in Kernel::available() {
        let fast = gemm::Activations::quantize_with(&x, k, kernel);
        assert_eq!(fast.qs, general.qs, "{kernel:?}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast.dx), bits(&general.dx), "{kernel:?}");
        assert_eq!(bits(&fast.dx_sum), bits(&general.dx_sum), "{kernel:?}");
        assert_eq!(fast.offset, general.offset, "{kernel:?}");
    }
    assert_eq!(general.qs[1], -16, "-15.5 rounds away from zero");
    assert_eq!((general.qs[100], general.qs[300]), (0, 0), "NaN and inf quantize to 0");
}

#[test]
fn round_half_away_is_round() {
    let mut values = pseudo_random(100_000, 12).into_iter().map(|v| v * 300.0).collect::<Vec<_>>();
    values.extend((-600..=600).map(|i| i as f32 * 0.25));
    values.extend([0.49999997, -0.49999997, 8388607.5, -8388607.5, 16777215.0, f32::MIN_POSITIVE, -0.0]);
    for v in values {
        assert_eq!(super::kernels::round_half_away(v).to_bits(), v.round().to_bits(), "{v}");
    }
}

#[test]
fn weight_decoding_matches_its_portable_twin() {
    // 9 rows: two interleaved q4_K groups of four and one plain row
    let (n, k) = (9, 512);
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 4), n, k, format).unwrap();
        for row in 0..n {
            let (mut fast, mut slow) = (vec![0f32; k], vec![0f32; k]);
            dequantize_row(&q.blocks, k, row, &mut fast);
            dequantize_row_portable(&q.blocks, k, row, 0, &mut slow);
            assert_eq!(fast, slow, "{format} row {row}");
            // the second half alone, as the f32 GEMM's packer asks for a K slice
            let mut half = vec![0f32; k / 2];
            dequantize_row_range(&q.blocks, k, row, k / 2, &mut half);
            assert_eq!(half, fast[k / 2..], "{format} row {row}, values {}..", k / 2);
        }
    }
}

#[test]
fn offset_and_strided_inputs_give_the_contiguous_result() {
    let (n, k) = (40, 64);
    let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 13), n, k, WeightFormat::Q8_0).unwrap();
    for m in [3, 40] {
        // rows 1..m+1 of a larger tensor (contiguous with a start offset), and a transposed view
        let x = Tensor::from_slice(&pseudo_random((m + 2) * k, 14), (m + 2, k), &Device::Cpu).unwrap();
        let offset = x.narrow(0, 1, m).unwrap();
        let strided = x.narrow(0, 1, m).unwrap().t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!strided.is_contiguous());
        let want: Vec<f32> = q.matmul_t(&offset.copy().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for input in [&offset, &strided] {
            let got: Vec<f32> = q.matmul_t(input).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "m={m}");
        }
    }
}

#[test]
fn stacked_rows_equal_the_stacked_matrix_quantized() {
    let k = 512;
    // 5 and 7 rows leave q4_K groups of four unfilled inside the stack
    let sizes = [5usize, 7, 4];
    let parts_f32: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| pseudo_random(n * k, 40 + i as u64)).collect();
    let stacked: Vec<f32> = parts_f32.concat();
    for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
        let parts: Vec<QuantizedMatrix> = parts_f32.iter().zip(sizes).map(|(v, n)| QuantizedMatrix::quantize(v, n, k, format).unwrap()).collect();
        let joined = QuantizedMatrix::concat_rows(&parts.iter().collect::<Vec<_>>()).unwrap();
        let whole = QuantizedMatrix::quantize(&stacked, sizes.iter().sum(), k, format).unwrap();
        assert_eq!(joined.dims(), whole.dims());
        assert!(joined.encode() == whole.encode(), "{format}: stacking differs from quantizing the stack");
    }
    let q8 = QuantizedMatrix::quantize(&parts_f32[0], 5, k, WeightFormat::Q8_0).unwrap();
    let q4 = QuantizedMatrix::quantize(&parts_f32[0], 5, k, WeightFormat::Q4K).unwrap();
    let err = QuantizedMatrix::concat_rows(&[&q8, &q4]).unwrap_err().to_string();
    assert!(err.contains("q4k") && err.contains("q8_0"), "{err}");
}

#[test]
fn one_row_decode_equals_each_row_of_a_batch_bit_for_bit() {
    // the one-row kernels and the batched ones (AVX-512 q4_K: passes of up to four activation
    // rows over groups of four weight rows) must agree exactly, whatever the batch: batching
    // must not change a sequence's tokens. 42 rows: ten full groups and two rows past them.
    // q8_0 K = 672: the AVX-512 kernel's 16-block group, a leftover pair and the odd block
    for (format, k) in [(WeightFormat::Q8_0, 672), (WeightFormat::Q4K, 512)] {
        let n = 42;
        let q = QuantizedMatrix::quantize(&pseudo_random(n * k, 8), n, k, format).unwrap();
        let x = pseudo_random(MAX_ROWS * k, 9);
        for kernel in Kernel::available() {
            let alone: Vec<Vec<f32>> = x
                .chunks(k)
                .map(|row| {
                    let mut out = vec![0f32; n];
                    gemv_with(&q.blocks, n, k, row, 1, &mut out, kernel);
                    out
                })
                .collect();
            for m in 2..=MAX_ROWS {
                let mut batch = vec![0f32; m * n];
                gemv_with(&q.blocks, n, k, &x[..m * k], m, &mut batch, kernel);
                for (r, one) in alone[..m].iter().enumerate() {
                    assert_eq!(one[..], batch[r * n..(r + 1) * n], "{format} {kernel:?}: row {r} alone and in a batch of {m}");
                }
            }
        }
    }
}

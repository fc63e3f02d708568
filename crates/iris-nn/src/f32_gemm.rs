//! Many-row products with f32, f16 or bf16 weights on x86-64 CPUs without AMX: `[m, K] x W^T`, f32
//! activations and sums, f32 out: the exact path (`--quant f32`, the CPU default, and 16-bit
//! weights, widened exactly) of the vision towers and prefill, and the quantized products on CPUs
//! without VNNI (decoded to f32 panel by panel). candle 0.11's GEMM (the `gemm` crate) issues
//! 256-bit FMAs on stable Rust: ~180 GFLOP/s on the Xeon VM of BENCHMARKS.md, whose cores retire
//! two 512-bit FMAs per cycle (`simd_peak`, ~490 GFLOP/s on 2 cores). On AVX2-only CPUs it reaches
//! the same share of their 256-bit peak, but needs its operands as whole f32 matrices: bf16 weights
//! were widened whole on every call, quantized ones tile by tile with the activations repacked for
//! each tile. This GEMM packs only the weight, from any of those storages, so the AVX2 twin
//! (`f32_gemm/avx2.rs`) serves those paths.
//!
//! Blocking (GotoBLAS's): a task owns up to `COL_BLOCK` output columns and takes the rows in blocks
//! of up to `ROW_BLOCK`. For each block and each `KC` slice of K it packs its columns into panels
//! of 32, `KC x 32` f32 (16 x 16 register transposes, laid out as the ISA's tiles read them,
//! `panel_index`; the task's panels stay in L2), then for each tile of `TILE_ROWS` activation rows
//! (their `KC` slice stays in L1) runs every panel: `2 * TILE_ROWS` accumulators, per k two panel
//! loads and one broadcast per row. Partial sums live in the output between K slices. (Copying each
//! tile's activations k-major, so a k step's broadcasts read one line through one pointer, measured
//! slower: 280-300 -> 195-245 GFLOP/s on `gemm_bench`'s vision MLP.)
//!
//! Numbers: every output is summed in k order with fused multiply-adds (one rounding per step),
//! which `gemm_reference`, a plain `mul_add` loop, reproduces bit for bit.

use crate::quant::QuantizedMatrix;
use crate::tiled_output::ColumnTiles;
use half::{bf16, f16};
use rayon::prelude::*;

/// A weight `[n, k]` (PyTorch `[out, in]`) this GEMM takes.
#[derive(Clone, Copy)]
pub enum F32Weight<'a> {
    F32(&'a [f32]),
    /// Widened to f32 while packing (exact).
    F16(&'a [f16]),
    /// Widened to f32 while packing (exact).
    BF16(&'a [bf16]),
    /// Decoded to f32 while packing, one `[32][KC]` slice at a time (`pack_panel`), so the
    /// decoded weight never exists whole.
    Quantized(&'a QuantizedMatrix),
}

impl F32Weight<'_> {
    fn len(&self) -> usize {
        match self {
            F32Weight::F32(v) => v.len(),
            F32Weight::F16(v) => v.len(),
            F32Weight::BF16(v) => v.len(),
            F32Weight::Quantized(q) => q.dims().0 * q.dims().1,
        }
    }

    fn at(&self, i: usize) -> f32 {
        match self {
            F32Weight::F32(v) => v[i],
            F32Weight::F16(v) => v[i].to_f32(),
            F32Weight::BF16(v) => v[i].to_f32(),
            F32Weight::Quantized(q) => {
                // the value's whole block decoded: for the plain twins (`pack_panel` decodes
                // whole slices before it packs)
                let (k, block) = (q.dims().1, q.format().block_len());
                let (row, col) = (i / k, i % k);
                let mut values = vec![0f32; block];
                q.dequantize_row_range(row, col / block * block, &mut values);
                values[col % block]
            }
        }
    }
}

/// Output columns per panel (two 16-lane vectors).
const PANEL: usize = 32;
/// Activation rows per tile: 2 x 12 accumulators, two panel vectors and a broadcast fit the 32
/// vector registers.
const TILE_ROWS: usize = 12;
/// k values per packed slice.
const KC: usize = 256;
/// Most output columns per task.
const COL_BLOCK: usize = 256;
/// Most activation rows a task takes through all of K before the next rows (GotoBLAS's `mc`).
/// With every row at once, a large input's K slice (9217 rows x 1 KiB in CogVLM2's tower) and
/// the task's output block, read back for each K slice, left the caches between slices:
/// `gemm_bench` (2-core Zen 2 VM, AVX2 kernels, f32 weights) `[9216, 1792] x [15360, 1792]^T`
/// 156-159 GFLOP/s and `[9216, 15360] x [1792, 15360]^T` 152-156, against 174 and 165 at 1024
/// rows; in blocks of 1020 rows 176 and 182-183, 1320 rows 173 and 183, 2040 rows 171 and
/// 178. (Prefetching the next tile's rows instead changed nothing.) Not re-timed on AVX-512.
const ROW_BLOCK: usize = 1536;

/// The kernels a CPU runs this GEMM with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    /// AVX2, FMA and F16C (`f32_gemm/avx2.rs`).
    Avx2,
}

impl Isa {
    /// Every ISA this CPU runs the GEMM with, the fastest last.
    pub fn supported() -> Vec<Isa> {
        // filled on x86-64 only
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Isa::Avx2);
            }
            if has!("avx512f") && has!("fma") {
                out.push(Isa::Avx512);
            }
        }
        out
    }
}

/// The ISA many-row products take this GEMM with: the fastest this CPU runs, or none where it
/// runs neither or the environment sets `IRIS_NO_F32_GEMM` (then candle's GEMM, for A/B runs).
pub fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| if std::env::var_os("IRIS_NO_F32_GEMM").is_some() { None } else { Isa::supported().last().copied() })
}

/// Whether many-row products take this GEMM (`isa()`).
pub fn available() -> bool {
    isa().is_some()
}

/// `x [m, k] x W^T` into a new `[m, n]` buffer, written once (never zeroed first). Only call
/// where `available()`.
pub fn gemm_vec(x: &[f32], m: usize, w: F32Weight, n: usize, k: usize) -> Vec<f32> {
    gemm_vec_with(isa().expect("f32 GEMM called on a CPU it does not run on"), x, m, w, n, k)
}

/// `gemm_vec` with the kernels of `isa`, one of `Isa::supported()`.
pub fn gemm_vec_with(isa: Isa, x: &[f32], m: usize, w: F32Weight, n: usize, k: usize) -> Vec<f32> {
    assert!(Isa::supported().contains(&isa), "f32 GEMM with {isa:?} kernels on a CPU without them");
    if k == 0 {
        return vec![0.0; m * n];
    }
    // SAFETY: `gemm_into` writes every value (its tasks cover all columns, each for all rows, the
    // first K slice without reading).
    unsafe { crate::tiled_output::written_once(m, n, |dst| gemm_into(isa, x, m, w, n, k, dst)) }
}

/// Only called with one of `Isa::supported()` (`gemm_vec_with` asserts it).
fn gemm_into(isa: Isa, x: &[f32], m: usize, w: F32Weight, n: usize, k: usize, dst: ColumnTiles) {
    assert!(x.len() == m * k && w.len() == n * k && k > 0, "f32 GEMM operands for [{m}, {k}] x [{n}, {k}]^T");
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(PANEL);
    // at least four tasks per thread when the weight is wide enough, so that no thread idles
    let per_task = panels.div_ceil(4 * rayon::current_num_threads()).clamp(1, COL_BLOCK / PANEL);
    (0..panels.div_ceil(per_task)).into_par_iter().for_each(|task| {
        let (p0, count) = (task * per_task, per_task.min(panels - task * per_task));
        // [count][KC][PANEL]
        let mut packed = vec![0f32; count * KC * PANEL];
        // rows in blocks of at most ROW_BLOCK, equal and whole tiles, each block taking every
        // K slice before the next (the slices' panels packed again per block)
        let row_blocks = m.div_ceil(ROW_BLOCK);
        let block_rows = m.div_ceil(row_blocks).next_multiple_of(TILE_ROWS);
        for m0 in (0..m).step_by(block_rows) {
            let m1 = (m0 + block_rows).min(m);
            for kb in (0..k).step_by(KC) {
                let kc = KC.min(k - kb);
                for (p, panel) in packed.chunks_exact_mut(KC * PANEL).enumerate() {
                    pack_panel(isa, w, n, k, (p0 + p) * PANEL, kb, kc, panel);
                }
                for r0 in (m0..m1).step_by(TILE_ROWS) {
                    let rows = TILE_ROWS.min(m1 - r0);
                    for (p, panel) in packed.chunks_exact(KC * PANEL).enumerate() {
                        let first = (p0 + p) * PANEL;
                        let cols = PANEL.min(n - first);
                        // SAFETY: the CPU runs `isa` (`gemm_vec_with`); the activations hold rows
                        // r0.. of k values from kb + kc <= k, the panel kc rows; this task alone
                        // owns columns first..first + cols of the output, whose rows are n apart.
                        let (a, c) = unsafe { (x.as_ptr().add(r0 * k + kb), dst.at(r0, first)) };
                        match isa {
                            Isa::Avx512 => unsafe { avx512::tile(rows, a, k, panel, kc, c, n, cols, kb > 0) },
                            Isa::Avx2 => unsafe { avx2::tile(rows, a, k, panel, kc, c, n, cols, kb > 0) },
                        }
                    }
                }
            }
        }
    });
}

/// Weight columns `first..first + PANEL` over k values `kb..kb + kc` as f32 values of `panel`
/// in `isa`'s layout (`panel_index`), zero past `n`.
#[allow(clippy::too_many_arguments)]
fn pack_panel(isa: Isa, w: F32Weight, n: usize, k: usize, first: usize, kb: usize, kc: usize, panel: &mut [f32]) {
    if let F32Weight::Quantized(q) = w {
        // the panel's columns decoded into a [cols][kc] slice that stays in cache, then packed
        // as f32 (a partial last panel by the scalar packer, zero past its columns); K slices
        // start at multiples of KC, a multiple of both formats' blocks, and K is one too
        const _: () = assert!(KC.is_multiple_of(256));
        let cols = PANEL.min(n - first);
        let mut decoded = vec![0f32; cols * kc];
        for (c, row) in decoded.chunks_exact_mut(kc).enumerate() {
            // the same row of the next panel, one panel's decoding ahead
            q.prefetch_row_range(first + PANEL + c, kb, kc);
            q.dequantize_row_range(first + c, kb, row);
        }
        return pack_panel(isa, F32Weight::F32(&decoded), cols, kc, 0, 0, kc, panel);
    }
    if first + PANEL <= n {
        // SAFETY: the CPU runs `isa` (asserted by `gemm_vec_with` or the tests); the columns are
        // inside the weight.
        return unsafe {
            match isa {
                Isa::Avx512 => avx512::pack_whole_panel(w, k, first, kb, kc, panel),
                Isa::Avx2 => avx2::pack_whole_panel(w, k, first, kb, kc, panel),
            }
        };
    }
    pack_panel_scalar(isa, w, n, k, first, kb, kc, panel);
}

/// Where value `(i, c)` (k value `i` of the slice, column `c` of the panel) of a `kc`-row panel
/// lives for `isa`'s tiles. AVX-512 tiles read both 16-column halves of a k row at once:
/// `[kc][32]`. AVX2 tiles read one half per pass, so its halves are stored apart,
/// `[2][kc][16]`, and a pass streams 64 contiguous bytes per k instead of every other 64 of
/// 128: `gemm_bench` on the 2-core Zen 2 VM, f32 weights, 177 -> 186 GFLOP/s (vision fc1), 159
/// -> 181 (fc2), 169 -> 176 and 179 -> 182 (language MLP, 307 rows).
#[inline(always)]
fn panel_index(isa: Isa, kc: usize, i: usize, c: usize) -> usize {
    match isa {
        Isa::Avx512 => i * PANEL + c,
        Isa::Avx2 => c / 16 * (kc * 16) + i * 16 + c % 16,
    }
}

/// Plain twin of the AVX-512 and AVX2 packers (and their path for a last, partial panel).
#[allow(clippy::too_many_arguments)]
fn pack_panel_scalar(isa: Isa, w: F32Weight, n: usize, k: usize, first: usize, kb: usize, kc: usize, panel: &mut [f32]) {
    for i in 0..kc {
        for c in 0..PANEL {
            panel[panel_index(isa, kc, i, c)] = if first + c < n { w.at((first + c) * k + kb + i) } else { 0.0 };
        }
    }
}

/// Plain twin of `gemm_vec`: each output a `mul_add` chain over k in order.
pub fn gemm_reference(x: &[f32], m: usize, w: F32Weight, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            out[r * n + c] = (0..k).fold(0f32, |acc, i| x[r * k + i].mul_add(w.at(c * k + i), acc));
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{F32Weight, KC, PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// `pack_panel` for 32 columns inside the weight: 16 columns x 16 k values loaded (f16
    /// widened), transposed in registers, stored as 16 panel rows; a slice's last k values
    /// (`kc % 16`) one by one.
    ///
    /// # Safety
    /// AVX-512F; columns `first..first + 32` and k values `kb..kb + kc` are inside the `[n, k]`
    /// weight, and `panel` holds `kc * PANEL` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_whole_panel(w: F32Weight, k: usize, first: usize, kb: usize, kc: usize, panel: &mut [f32]) {
        assert!(panel.len() >= kc * PANEL && kc <= KC);
        let whole = kc / 16 * 16;
        for half in 0..2 {
            let c0 = first + 16 * half;
            for i0 in (0..whole).step_by(16) {
                // SAFETY: per the contract: rows c0..c0 + 16 of the weight, values kb + i0..+16,
                // and panel rows i0..i0 + 16 at columns 16 * half..+16.
                unsafe {
                    let mut v: [__m512i; 16] = std::array::from_fn(|c| {
                        let at = (c0 + c) * k + kb + i0;
                        match w {
                            F32Weight::F32(s) => _mm512_castps_si512(_mm512_loadu_ps(s.as_ptr().add(at))),
                            F32Weight::F16(s) => _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(at) as *const __m256i))),
                            // a bf16 is the high half of the f32 with the same bits
                            F32Weight::BF16(s) => _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().add(at) as *const __m256i))),
                            F32Weight::Quantized(_) => unreachable!("`pack_panel` decodes quantized weights to f32 first"),
                        }
                    });
                    crate::amx::transpose_16x16(&mut v);
                    for (j, row) in v.iter().enumerate() {
                        _mm512_storeu_si512(panel.as_mut_ptr().add((i0 + j) * PANEL + 16 * half) as *mut _, *row);
                    }
                }
            }
            for i in whole..kc {
                for c in 0..16 {
                    panel[i * PANEL + 16 * half + c] = w.at((c0 + c) * k + kb + i);
                }
            }
        }
    }

    /// One tile: `rows` (1..=TILE_ROWS) activation rows at `a` (`lda` apart, `kc` values each)
    /// against a `[kc][32]` panel, into `cols` (1..=32) output columns at `c` (rows `ldc` apart),
    /// added to what they hold when `accumulate`.
    ///
    /// # Safety
    /// AVX-512F; the pointers cover those extents.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(rows: usize, a: *const f32, lda: usize, panel: &[f32], kc: usize, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
        assert!(panel.len() >= kc * PANEL && (1..=PANEL).contains(&cols));
        // SAFETY (all): per the contract.
        unsafe {
            match rows {
                1 => tile_rows::<1>(a, lda, panel, kc, c, ldc, cols, accumulate),
                2 => tile_rows::<2>(a, lda, panel, kc, c, ldc, cols, accumulate),
                3 => tile_rows::<3>(a, lda, panel, kc, c, ldc, cols, accumulate),
                4 => tile_rows::<4>(a, lda, panel, kc, c, ldc, cols, accumulate),
                5 => tile_rows::<5>(a, lda, panel, kc, c, ldc, cols, accumulate),
                6 => tile_rows::<6>(a, lda, panel, kc, c, ldc, cols, accumulate),
                7 => tile_rows::<7>(a, lda, panel, kc, c, ldc, cols, accumulate),
                8 => tile_rows::<8>(a, lda, panel, kc, c, ldc, cols, accumulate),
                9 => tile_rows::<9>(a, lda, panel, kc, c, ldc, cols, accumulate),
                10 => tile_rows::<10>(a, lda, panel, kc, c, ldc, cols, accumulate),
                11 => tile_rows::<11>(a, lda, panel, kc, c, ldc, cols, accumulate),
                12 => tile_rows::<12>(a, lda, panel, kc, c, ldc, cols, accumulate),
                rows => unreachable!("{rows} rows in a tile (at most {TILE_ROWS})"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_rows<const R: usize>(a: *const f32, lda: usize, panel: &[f32], kc: usize, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
        // the two 16-column halves' valid lanes
        let mask = |half: usize| ((1u32 << cols.saturating_sub(16 * half).min(16)) - 1) as __mmask16;
        let (m0, m1) = (mask(0), mask(1));
        // SAFETY (all): per the contract; masked loads and stores touch only the valid columns.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    row[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                    row[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
                }
            }
            let w = panel.as_ptr();
            for i in 0..kc {
                let (w0, w1) = (_mm512_loadu_ps(w.add(i * PANEL)), _mm512_loadu_ps(w.add(i * PANEL + 16)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + i));
                    row[0] = _mm512_fmadd_ps(x, w0, row[0]);
                    row[1] = _mm512_fmadd_ps(x, w1, row[1]);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * ldc), m0, row[0]);
                _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, row[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Elsewhere this GEMM never runs (`Isa::supported()` is empty); these keep it compiling.
#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::F32Weight;

    pub unsafe fn pack_whole_panel(_w: F32Weight, _k: usize, _first: usize, _kb: usize, _kc: usize, _panel: &mut [f32]) {
        unreachable!("the f32 GEMM needs x86-64 with AVX-512F or AVX2")
    }

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(_rows: usize, _a: *const f32, _lda: usize, _panel: &[f32], _kc: usize, _c: *mut f32, _ldc: usize, _cols: usize, _accumulate: bool) {
        unreachable!("the f32 GEMM needs x86-64 with AVX-512F or AVX2")
    }
}

#[cfg(not(target_arch = "x86_64"))]
use avx512 as avx2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amx::tests::values;

    /// The ISAs to test here, printing the ones this CPU lacks.
    fn isas_here() -> Vec<Isa> {
        let here = Isa::supported();
        let skipped: Vec<_> = [Isa::Avx2, Isa::Avx512].into_iter().filter(|i| !here.contains(i)).collect();
        println!("f32 GEMM kernels tested: {here:?}; SKIPPED (CPU lacks them): {skipped:?}");
        here
    }

    fn weights(n: usize, k: usize, seed: u32) -> (Vec<f32>, Vec<f16>, Vec<bf16>) {
        let w32 = values(n * k, seed);
        (w32.clone(), w32.iter().map(|&v| f16::from_f32(v)).collect(), w32.iter().map(|&v| bf16::from_f32(v)).collect())
    }

    #[test]
    fn gemm_equals_the_mul_add_chain_bit_for_bit() {
        // shapes crossing every edge: rows past and below a tile and a 6-row AVX2 group, columns
        // past COL_BLOCK and not a multiple of PANEL (or of 8 and 16), K past KC and not a
        // multiple of 16 or 8
        for isa in isas_here() {
            // and rows past ROW_BLOCK (two row blocks)
            for (m, n, k) in [(1, 1, 1), (5, 33, 17), (37, 45, 300), (30, 290, 530), (13, 64, 256), (7, 21, 9), (ROW_BLOCK + 13, 40, 300)] {
                let x = values(m * k, 11);
                let (w32, w16, wb16) = weights(n, k, 13);
                for w in [F32Weight::F32(&w32), F32Weight::F16(&w16), F32Weight::BF16(&wb16)] {
                    let fast = gemm_vec_with(isa, &x, m, w, n, k);
                    let plain = gemm_reference(&x, m, w, n, k);
                    assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} [{m}, {k}] x [{n}, {k}]^T");
                }
            }
        }
    }

    #[test]
    fn quantized_weights_equal_their_decoded_f32() {
        use crate::quant::WeightFormat;
        // 40 columns: a whole panel and a partial one; K over KC
        let (m, n, k) = (7, 40, 512);
        let x = values(m * k, 17);
        for format in [WeightFormat::Q8_0, WeightFormat::Q4K] {
            let q = QuantizedMatrix::quantize(&values(n * k, 19), n, k, format).unwrap();
            let mut decoded = vec![0f32; n * k];
            q.dequantize_rows(0, n, &mut decoded);
            let plain = gemm_reference(&x, m, F32Weight::F32(&decoded), n, k);
            for isa in isas_here() {
                let fast = gemm_vec_with(isa, &x, m, F32Weight::Quantized(&q), n, k);
                assert!(fast.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} {format}");
            }
        }
    }

    #[test]
    fn packer_equals_its_twin() {
        let (n, k) = (64, 300);
        let (w32, w16, wb16) = weights(n, k, 5);
        for isa in isas_here() {
            for w in [F32Weight::F32(&w32), F32Weight::F16(&w16), F32Weight::BF16(&wb16)] {
                for (kb, kc) in [(0, 256), (256, 44), (3, 16), (5, 13)] {
                    let (mut fast, mut plain) = (vec![1f32; KC * PANEL], vec![2f32; KC * PANEL]);
                    pack_panel(isa, w, n, k, 32, kb, kc, &mut fast);
                    pack_panel_scalar(isa, w, n, k, 32, kb, kc, &mut plain);
                    assert_eq!(fast[..kc * PANEL], plain[..kc * PANEL], "{isa:?}: k values {kb}..{}", kb + kc);
                }
            }
        }
    }
}

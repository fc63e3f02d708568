//! In-situ weight quantization: `WeightFormat` (how a linear's weight is stored) and
//! `QuantizedMatrix`, a `[N, K]` weight in ggml's q8_0 or q4_K encoding with our own decode
//! kernels. The encodings are ggml's (`block_q8_0`, `block_q4_K`; quantized with candle's
//! `GgmlType::from_float`), so numbers match llama.cpp's formats; the storage layout and kernels
//! are ours because candle 0.11's quantized matmul keeps a second, repacked copy of every weight
//! on x86 (2-2.3x the memory), which breaks the memory budget this crate is built for.
//!
//! Products: decode-sized inputs (m <= `kernels::MAX_ROWS`) quantize the activations per block
//! as llama.cpp does and use integer dot products (`kernels`); larger inputs do the same in an
//! int8 GEMM on AVX512-VNNI CPUs (`gemm`), and elsewhere dequantize the weight tile by tile to
//! f32 and use the f32 GEMM (f32 activations).

pub mod cache;
mod gemm;
pub mod kernels;

use crate::error::{NnError, Result};
use crate::inplace::Epilogue;
use crate::ops::with_f32_values;
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType, QK8_0, QK_K};
use candle_core::{DType, Device, Tensor};
use half::f16;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// How a linear layer's weight is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    /// ggml q8_0: blocks of 32 int8 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// ggml q4_K: super-blocks of 256 4-bit values, 8 sub-blocks with 6-bit scales and mins
    /// (4.5 bits per weight).
    Q4K,
}

impl WeightFormat {
    pub const NAMES: &'static str = "f32, f16, bf16, q8_0, q4k";

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Q8_0 | Self::Q4K)
    }

    /// The dense dtype, for unquantized formats.
    pub fn dense_dtype(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// Values per quantization block along K (1 for dense formats).
    pub fn block_len(self) -> usize {
        match self {
            Self::Q8_0 => QK8_0,
            Self::Q4K => QK_K,
            _ => 1,
        }
    }

    /// Bytes per weight, for memory planning.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 | Self::BF16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
            Self::Q4K => 144.0 / 256.0,
        }
    }

    /// The format actually used for a weight with `k` inputs: a block format falls back to the
    /// next finer one when `k` is not a multiple of its block (q4k -> q8_0 -> `dense`).
    pub fn for_inputs(self, k: usize, dense: DType) -> WeightFormat {
        match self {
            Self::Q4K if !k.is_multiple_of(QK_K) => Self::Q8_0.for_inputs(k, dense),
            Self::Q8_0 if !k.is_multiple_of(QK8_0) => match dense {
                DType::F16 => Self::F16,
                DType::BF16 => Self::BF16,
                _ => Self::F32,
            },
            f => f,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            other => Err(format!("unknown weight format `{other}` (expected {})", Self::NAMES)),
        }
    }
}

/// Encoded blocks, row-major: row `o` owns blocks `[o * K/B, (o+1) * K/B)`.
#[derive(Clone)]
pub(crate) enum Blocks {
    /// q8_0 split into int8 quants `[N * K]` and f16 scales `[N * K / 32]`, so the kernel loads
    /// 64 quants per instruction.
    Q8_0 { qs: Vec<i8>, d: Vec<f16> },
    /// q4_K blocks with the 6-bit scales unpacked once at load time.
    Q4K(Vec<kernels::Q4KBlock>),
}

/// Rows above which candle's GEMM on f32 tiles beats passes of the integer kernel. Measured on
/// full-size Qwen2-VL-2B q8_0 (2-core AVX2): decoding every weight to f32 costs ~2.5 s per
/// forward whatever the row count, while one integer pass of <= 8 rows costs 0.13-0.23 s, so
/// passes win up to roughly 100 rows; 64 keeps a margin for the slower q4k kernel.
pub const INTEGER_KERNEL_MAX_ROWS: usize = 64;

/// Rows from which the int8 GEMM (AVX512-VNNI, AVX-VNNI) beats passes of the decode kernels, per
/// format and kernel.
/// Packing the weight costs the same whatever the row count. `gemm_bench` on a [8960, 1536]
/// weight, passes vs GEMM: 2-core Zen 5 (q8_0 / q4k, scalar packing) at 64 rows 8.8/7.1 vs 5.8
/// ms, at 32 rows 4.5/3.7 vs 4.3, at 16 rows 2.3/1.9 vs 3.3; then q8_0 panels were packed with
/// gathers, and on the 2-core Xeon VM of 2026-12-05 q8_0 measured 4.5-4.6 vs 1.9-2.3 ms at 32
/// rows, 2.1-2.4 vs 1.5-1.6 at 16, 1.4 vs 1.2 at 9; q4k 4.1 vs 2.9 at 32, 1.9 vs 2.2 at 16.
/// AVX-VNNI passes vs its 256-bit GEMM, on the same Xeon with `IRIS_QUANT_KERNEL=avxvnni
/// IRIS_NO_AMX=1`, two rounds each: q8_0 at 16 rows 2.9, 2.9 vs 3.4, 3.8 ms, at 32 rows 5.7, 5.7
/// vs 4.7, 4.3; q4k at 32 rows 5.5, 5.6 vs 5.8, 5.6, at 64 11.6, 11.8 vs 5.8, 5.9.
pub fn int8_gemm_min_rows(format: WeightFormat) -> usize {
    match (format, kernels::Kernel::best()) {
        (WeightFormat::Q8_0, kernels::Kernel::AvxVnni) => 32,
        (WeightFormat::Q8_0, _) => 16,
        _ => 33,
    }
}

/// Rows from which products take the AMX GEMM where the CPU has AMX (both formats). `gemm_bench`
/// on a [8960, 1536] weight, Xeon VM, AMX against the best other path (q8_0 / q4k): at 9 rows
/// 1.8 / 1.8 ms against passes' 1.4 / 1.2; at 16 rows 1.6 / 1.9 against 1.5 (int8 GEMM) / 1.9
/// (passes); at 32 rows 1.7 / 2.1 against 1.9-2.3 / 4.0.
pub const AMX_MIN_ROWS: usize = 16;

/// Rows from which the f32 GEMM on weights decoded panel by panel (`f32_gemm`, CPUs without
/// VNNI) beats passes of the decode kernels. Its AVX2 kernels, `gemm_bench` on a [8960, 1536]
/// weight, 2-core Zen 2 VM of 2026-12-06, two rounds, passes vs GEMM in ms: q8_0 at 64 rows
/// 17.0, 17.2 vs 15.0, 16.1; at 48 12.8, 12.8 vs 12.4, 12.4; at 40 10.7, 10.8 vs 11.3, 12.2; q4k
/// at 48 11.6, 11.6 vs 10.5, 10.2; at 40 9.8, 9.7 vs 9.2, 9.2; at 32 7.8, 7.8 vs 8.3, 8.4. With
/// the GEMM's half-panel layout (`f32_gemm::panel_index`) three rounds at 40 rows: q8_0 10.6-10.7
/// vs 10.1-11.1, q4k 8.6-8.7 vs 8.6-8.7; at 32 rows passes still won (q8_0 8.5 vs 9.1).
/// Elsewhere (candle's GEMM on f32 tiles) `INTEGER_KERNEL_MAX_ROWS` holds.
pub fn f32_gemm_min_rows(format: WeightFormat) -> usize {
    let avx2_gemm = crate::f32_gemm::isa() == Some(crate::f32_gemm::Isa::Avx2);
    match (format, avx2_gemm && kernels::Kernel::best() == kernels::Kernel::Avx2) {
        (WeightFormat::Q8_0, true) => 48,
        (_, true) => 40,
        _ => INTEGER_KERNEL_MAX_ROWS + 1,
    }
}

/// Rows from which a product of a `format` weight leaves the decode kernels' passes for a GEMM
/// on this CPU (AMX, int8 or f32, in that order of preference).
pub fn gemm_min_rows(format: WeightFormat) -> usize {
    if crate::amx::available() {
        AMX_MIN_ROWS
    } else if gemm::available() {
        int8_gemm_min_rows(format)
    } else {
        f32_gemm_min_rows(format)
    }
}

/// A `[N, K]` weight (PyTorch `[out, in]`) in a block-quantized format.
#[derive(Clone)]
pub struct QuantizedMatrix {
    n: usize,
    k: usize,
    blocks: Blocks,
}

impl fmt::Debug for QuantizedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantizedMatrix({}, [{}, {}])", self.format(), self.n, self.k)
    }
}

/// Serialized size of one `kernels::Q4KBlock`.
const Q4K_BLOCK_BYTES: usize = 4 + 8 + 8 + QK_K / 2;

/// Rows encoded per parallel task while quantizing.
const QUANTIZE_ROWS: usize = 64;
/// Rows dequantized at once in the large-input path. A 512-row tile of a 1536-wide weight is 3 MiB,
/// small enough to stay in cache between its decode and the GEMM's packing: on Qwen2-VL-2B q4k a
/// 300-token prefill ran at 51.7 tok/s with 2048-row tiles and 53.3 with 512 (256: 49.7), and
/// peaked 60 MB lower.
const DEQUANT_TILE_ROWS: usize = 512;

impl QuantizedMatrix {
    /// Encodes an f32 `[N, K]` matrix given as a flat slice. `format` must be q8_0 or q4k and
    /// `K` a multiple of its block.
    pub fn quantize(values: &[f32], n: usize, k: usize, format: WeightFormat) -> Result<Self> {
        let bad = |m: String| NnError::Quantization(m);
        if values.len() != n * k {
            return Err(bad(format!("{} values for a [{n}, {k}] matrix", values.len())));
        }
        if !format.is_quantized() || !k.is_multiple_of(format.block_len()) {
            return Err(bad(format!("cannot store a [{n}, {k}] matrix as {format} (K must be a multiple of {})", format.block_len())));
        }
        let blocks = match format {
            WeightFormat::Q8_0 => {
                let per_row = k / QK8_0;
                let mut qs = vec![0i8; n * k];
                let mut d = vec![f16::ZERO; n * per_row];
                qs.par_chunks_mut(QUANTIZE_ROWS * k)
                    .zip(d.par_chunks_mut(QUANTIZE_ROWS * per_row))
                    .zip(values.par_chunks(QUANTIZE_ROWS * k))
                    .for_each(|((qs, d), src)| {
                        let mut tmp = vec![BlockQ8_0::zeros(); src.len() / QK8_0];
                        BlockQ8_0::from_float(src, &mut tmp);
                        for (i, b) in tmp.iter().enumerate() {
                            let raw = kernels::q8_0_block_parts(b);
                            d[i] = raw.0;
                            qs[i * QK8_0..(i + 1) * QK8_0].copy_from_slice(raw.1);
                        }
                    });
                Blocks::Q8_0 { qs, d }
            }
            WeightFormat::Q4K => {
                let per_row = k / QK_K;
                let mut out = vec![kernels::Q4KBlock::default(); n * per_row];
                out.par_chunks_mut(QUANTIZE_ROWS * per_row).zip(values.par_chunks(QUANTIZE_ROWS * k)).for_each(|(dst, src)| {
                    let mut tmp = vec![BlockQ4K::zeros(); src.len() / QK_K];
                    BlockQ4K::from_float(src, &mut tmp);
                    for (d, b) in dst.iter_mut().zip(&tmp) {
                        *d = kernels::Q4KBlock::from_ggml(b);
                    }
                });
                Blocks::Q4K(kernels::q4k_interleave(out, per_row))
            }
            _ => unreachable!("checked above"),
        };
        Ok(Self { n, k, blocks })
    }

    /// The rows of `parts` (same format and K) stacked, `[sum of N, K]`: the matrix quantizing
    /// their stacked values would give, as both formats encode each row on its own.
    pub fn concat_rows(parts: &[&QuantizedMatrix]) -> Result<Self> {
        let bad = |m: String| NnError::Quantization(m);
        let first = parts.first().ok_or_else(|| bad("no matrices to stack".into()))?;
        let k = first.k;
        if let Some(p) = parts.iter().find(|p| p.k != k || p.format() != first.format()) {
            return Err(bad(format!("cannot stack a [{}, {}] {} matrix under a [{}, {k}] {} one", p.n, p.k, p.format(), first.n, first.format())));
        }
        let n = parts.iter().map(|p| p.n).sum();
        let blocks = match &first.blocks {
            Blocks::Q8_0 { .. } => {
                let (mut qs, mut d) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k / QK8_0));
                for p in parts {
                    if let Blocks::Q8_0 { qs: part_qs, d: part_d } = &p.blocks {
                        qs.extend_from_slice(part_qs);
                        d.extend_from_slice(part_d);
                    }
                }
                Blocks::Q8_0 { qs, d }
            }
            Blocks::Q4K(_) => {
                // back to row-major, then interleaved again: a part's rows past its last group of
                // four would otherwise sit in the middle of the result
                let per_row = k / QK_K;
                let mut row_major = Vec::with_capacity(n * per_row);
                for p in parts {
                    if let Blocks::Q4K(b) = &p.blocks {
                        for o in 0..p.n {
                            row_major.extend(kernels::q4k_row(b, per_row, o).map(|(_, blk)| *blk));
                        }
                    }
                }
                Blocks::Q4K(kernels::q4k_interleave(row_major, per_row))
            }
        };
        Ok(Self { n, k, blocks })
    }

    /// Encodes a `[N, K]` tensor of any float dtype.
    pub fn quantize_tensor(t: &Tensor, format: WeightFormat) -> Result<Self> {
        let (n, k) = t.dims2()?;
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Self::quantize(&values, n, k, format)
    }

    pub fn format(&self) -> WeightFormat {
        match self.blocks {
            Blocks::Q8_0 { .. } => WeightFormat::Q8_0,
            Blocks::Q4K(_) => WeightFormat::Q4K,
        }
    }

    /// `(N, K)`
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Resident bytes of the encoded weight.
    pub fn size_in_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q8_0 { qs, d } => qs.len() + 2 * d.len(),
            Blocks::Q4K(b) => b.len() * std::mem::size_of::<kernels::Q4KBlock>(),
        }
    }

    /// Decodes rows `[start, start + len)` into `out` (`len * K` values).
    pub fn dequantize_rows(&self, start: usize, len: usize, out: &mut [f32]) {
        assert!(start + len <= self.n && out.len() == len * self.k);
        let k = self.k;
        out.par_chunks_mut(k).enumerate().for_each(|(i, row)| kernels::dequantize_row(&self.blocks, k, start + i, row));
    }

    /// A q8_0 matrix's int8 quants `[N * K]` and f16 scales `[N * K / 32]`; None for q4_K.
    pub(crate) fn q8_0_parts(&self) -> Option<(&[i8], &[f16])> {
        match &self.blocks {
            Blocks::Q8_0 { qs, d } => Some((qs, d)),
            Blocks::Q4K(_) => None,
        }
    }

    /// Decodes values `kb..kb + out.len()` of row `row` into `out`; both multiples of the
    /// format's block (32 values, 256 for q4_K).
    pub(crate) fn dequantize_row_range(&self, row: usize, kb: usize, out: &mut [f32]) {
        assert!(row < self.n);
        kernels::dequantize_row_range(&self.blocks, self.k, row, kb, out)
    }

    /// Starts loading the bytes of values `kb..kb + len` of row `row` into L2, where the row
    /// exists (`kernels::prefetch_row_range`).
    pub(crate) fn prefetch_row_range(&self, row: usize, kb: usize, len: usize) {
        if row < self.n {
            kernels::prefetch_row_range(&self.blocks, self.k, row, kb, len)
        }
    }

    /// Decodes row `row` into `out` (`K` values).
    pub(crate) fn dequantize_row_into(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.n && out.len() == self.k);
        kernels::dequantize_row(&self.blocks, self.k, row, out)
    }

    /// The whole matrix as an f32 tensor `[N, K]`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; self.n * self.k];
        self.dequantize_rows(0, self.n, &mut out);
        Ok(Tensor::from_vec(out, (self.n, self.k), device)?)
    }

    /// Rows `ids` as f32 `[len(ids), K]` (an embedding lookup).
    pub fn gather_rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.k];
        for (row, &id) in out.chunks_mut(self.k).zip(ids) {
            if id as usize >= self.n {
                return Err(NnError::Quantization(format!("row {id} out of range for a [{}, {}] matrix", self.n, self.k)));
            }
            kernels::dequantize_row(&self.blocks, self.k, id as usize, row);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.k), device)?)
    }

    /// The blocks as bytes, little-endian (the cache payload): q8_0 as the `[N*K]` int8 quants
    /// then the f16 scales; q4_K as 148-byte blocks `d, dmin, sc[8], m[8], qs[128]` in storage
    /// order (rows interleaved by four, see `kernels::q4k_row_layout`).
    pub fn encode(&self) -> Vec<u8> {
        match &self.blocks {
            Blocks::Q8_0 { qs, d } => {
                let mut out = Vec::with_capacity(qs.len() + 2 * d.len());
                out.extend(qs.iter().map(|&q| q as u8));
                out.extend(d.iter().flat_map(|s| s.to_bits().to_le_bytes()));
                out
            }
            Blocks::Q4K(blocks) => {
                let mut out = Vec::with_capacity(blocks.len() * Q4K_BLOCK_BYTES);
                for b in blocks {
                    out.extend(b.dm.iter().flat_map(|s| s.to_bits().to_le_bytes()));
                    out.extend_from_slice(&b.sc);
                    out.extend_from_slice(&b.m);
                    out.extend_from_slice(&b.qs);
                }
                out
            }
        }
    }

    /// Inverse of `encode` for a `[n, k]` matrix in `format`; a length that does not fit is an error.
    pub fn decode(format: WeightFormat, n: usize, k: usize, bytes: &[u8]) -> Result<Self> {
        let bad = || NnError::Quantization(format!("{} bytes do not hold a [{n}, {k}] {format} matrix", bytes.len()));
        if !format.is_quantized() || !k.is_multiple_of(format.block_len()) {
            return Err(bad());
        }
        let f16_at = |b: &[u8]| f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        let blocks = match format {
            WeightFormat::Q8_0 => {
                if bytes.len() != n * k + 2 * (n * k / QK8_0) {
                    return Err(bad());
                }
                let (qs, d) = bytes.split_at(n * k);
                Blocks::Q8_0 { qs: qs.iter().map(|&q| q as i8).collect(), d: d.chunks_exact(2).map(f16_at).collect() }
            }
            WeightFormat::Q4K => {
                if bytes.len() != n * (k / QK_K) * Q4K_BLOCK_BYTES {
                    return Err(bad());
                }
                let blocks = bytes
                    .chunks_exact(Q4K_BLOCK_BYTES)
                    .map(|b| kernels::Q4KBlock {
                        dm: [f16_at(&b[0..2]), f16_at(&b[2..4])],
                        sc: b[4..12].try_into().unwrap(),
                        m: b[12..20].try_into().unwrap(),
                        qs: b[20..].try_into().unwrap(),
                    })
                    .collect();
                Blocks::Q4K(blocks)
            }
            _ => unreachable!("checked above"),
        };
        Ok(Self { n, k, blocks })
    }

    /// `x [m, K] (f32) -> x W^T [m, N] (f32)`. Inputs of fewer than `gemm_min_rows` rows
    /// (decode, batched decode) run the integer kernels in passes of `MAX_ROWS` rows; more take
    /// the AMX GEMM where the CPU has AMX, else the int8 GEMM where it has AVX512-VNNI, else
    /// (from `f32_gemm_min_rows`) the f32 GEMM on weights decoded as it packs them.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(NnError::Quantization(format!("input has {k} features, weight expects {}", self.k)));
        }
        let x = x.to_dtype(DType::F32)?;
        let passes = m < gemm_min_rows(self.format());
        if passes && x.device().is_cpu() {
            // integer kernels, MAX_ROWS input rows per pass over the weight
            let mut out = vec![0f32; m * self.n];
            with_f32_values(&x, |xs| {
                for r0 in (0..m).step_by(kernels::MAX_ROWS) {
                    let rows = kernels::MAX_ROWS.min(m - r0);
                    kernels::gemv(&self.blocks, self.n, self.k, &xs[r0 * k..(r0 + rows) * k], rows, &mut out[r0 * self.n..(r0 + rows) * self.n]);
                }
            })?;
            return Ok(Tensor::from_vec(out, (m, self.n), x.device())?);
        }
        if let Some(y) = self.amx_matmul_t(&x, None)? {
            return Ok(y);
        }
        if gemm::available() && x.device().is_cpu() {
            let out = with_f32_values(&x, |xs| gemm::gemm_vec(&self.blocks, self.n, self.k, xs, m, kernels::Kernel::best()))?;
            return Ok(Tensor::from_vec(out, (m, self.n), x.device())?);
        }
        self.matmul_t_f32_tiles(&x)
    }

    /// `matmul_t` on the AMX GEMM, each output row through `epilogue` as its block is written,
    /// where `matmul_t` takes that GEMM (`gemm_min_rows` rows or more, a CPU with AMX); `None`
    /// elsewhere.
    pub(crate) fn amx_matmul_t(&self, x: &Tensor, epilogue: Option<&Epilogue>) -> Result<Option<Tensor>> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(NnError::Quantization(format!("input has {k} features, weight expects {}", self.k)));
        }
        if m < gemm_min_rows(self.format()) || !crate::amx::available() || !x.device().is_cpu() {
            return Ok(None);
        }
        let x = x.to_dtype(DType::F32)?;
        let out = with_f32_values(&x, |xs| crate::amx::gemm_vec(xs, m, &crate::amx::WeightRows::Quantized(self), self.n, self.k, epilogue))?;
        Ok(Some(Tensor::from_vec(out, (m, self.n), x.device())?))
    }

    /// Prefill without VNNI: f32 activations against the weight decoded to f32. Iris's f32 GEMM
    /// (`f32_gemm`, where the CPU runs it) decodes each panel's K slice as it packs it; elsewhere
    /// tiles of `DEQUANT_TILE_ROWS` rows go through candle's GEMM, each tile's columns written
    /// straight into the output (collecting the tiles and concatenating held the output twice).
    fn matmul_t_f32_tiles(&self, x: &Tensor) -> Result<Tensor> {
        let m = x.dim(0)?;
        if crate::f32_gemm::available() && x.device().is_cpu() {
            let out = with_f32_values(x, |xs| crate::f32_gemm::gemm_vec(xs, m, crate::f32_gemm::F32Weight::Quantized(self), self.n, self.k))?;
            return Ok(Tensor::from_vec(out, (m, self.n), x.device())?);
        }
        let mut out = vec![0f32; m * self.n];
        for start in (0..self.n).step_by(DEQUANT_TILE_ROWS) {
            let len = DEQUANT_TILE_ROWS.min(self.n - start);
            let mut tile = vec![0f32; len * self.k];
            self.dequantize_rows(start, len, &mut tile);
            // the tensor takes the buffer (no copy); [m, K] x [len, K]^T -> [m, len]
            let tile = Tensor::from_vec(tile, (len, self.k), x.device())?;
            let piece: Vec<f32> = x.matmul(&tile.t()?)?.flatten_all()?.to_vec1()?;
            for (dst, src) in out.chunks_exact_mut(self.n).zip(piece.chunks_exact(len)) {
                dst[start..start + len].copy_from_slice(src);
            }
        }
        Ok(Tensor::from_vec(out, (m, self.n), x.device())?)
    }
}

#[cfg(test)]
mod tests;

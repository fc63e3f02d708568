//! Layers shared by every family: linear, RMSNorm and LayerNorm in the reference operation order,
//! activations. Mirrors `torch.nn.Linear`, `Qwen2RMSNorm`/`LlamaRMSNorm` and `torch.nn.LayerNorm`.

use crate::error::{NnError, Result};
use crate::inplace::{Activation, Epilogue};
use crate::quant::{QuantizedMatrix, WeightFormat};
use crate::weights::Weights;
use std::sync::Arc;
use candle_core::{DType, Tensor, D};

/// A linear layer's weight `[out, in]`: dense (any float dtype) or block-quantized.
#[derive(Debug, Clone)]
enum LinearWeight {
    Dense(Tensor),
    Quantized(Arc<QuantizedMatrix>),
}

impl LinearWeight {
    /// Rows (`out`) of the `[out, in]` matrix.
    fn rows(&self) -> usize {
        match self {
            Self::Dense(t) => t.dim(0).unwrap_or(0),
            Self::Quantized(q) => q.dims().0,
        }
    }

    fn size_in_bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Self::Quantized(q) => q.size_in_bytes(),
        }
    }
}

/// `y = x W^T + b` with W stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: LinearWeight::Dense(weight), bias }
    }

    /// A layer over an already-quantized `[out, in]` weight.
    pub fn quantized(weight: QuantizedMatrix, bias: Option<Tensor>) -> Self {
        Self { weight: LinearWeight::Quantized(Arc::new(weight)), bias }
    }

    /// Loads `{prefix}.weight` `[out, in]` in the view's linear format (falling back to a finer
    /// one when `in` is not a multiple of its block) and, when `bias`, `{prefix}.bias` `[out]` in
    /// the compute dtype.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        Self::load_as(w, in_dim, out_dim, bias, w.linear_format())
    }

    /// An output head (`lm_head`): quantized formats become q8_0, as the logits are the most
    /// precision-sensitive product of the model (llama.cpp keeps its output tensor at >= 6 bits).
    pub fn load_head(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::load_as(w, in_dim, out_dim, false, head_format(w.linear_format()))
    }

    fn load_as(w: &Weights, in_dim: usize, out_dim: usize, bias: bool, format: Option<WeightFormat>) -> Result<Self> {
        let weight = load_matrix(w, "weight", out_dim, in_dim, format)?;
        let bias = if bias { Some(w.get(&[out_dim], "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    /// One linear computing the outputs of `parts` side by side, `[.., in] -> [.., sum of out]`:
    /// their weights stacked by rows (all stored alike) and their biases joined (all or none).
    /// Decode runs one product instead of several; alone, a 256-row k/v projection streamed at
    /// a third of the bandwidth of a large one (`gemv_bench`).
    pub fn concat_rows(parts: Vec<Linear>) -> Result<Self> {
        let bad = |m: &str| NnError::Quantization(format!("cannot stack linears: {m}"));
        let weight = match parts.first().map(|p| &p.weight) {
            None => return Err(bad("none given")),
            Some(LinearWeight::Dense(_)) => {
                let dense: Option<Vec<&Tensor>> = parts.iter().map(|p| if let LinearWeight::Dense(t) = &p.weight { Some(t) } else { None }).collect();
                LinearWeight::Dense(Tensor::cat(&dense.ok_or_else(|| bad("dense and quantized weights"))?, 0)?)
            }
            Some(LinearWeight::Quantized(_)) => {
                let quantized: Option<Vec<&QuantizedMatrix>> = parts.iter().map(|p| if let LinearWeight::Quantized(q) = &p.weight { Some(q.as_ref()) } else { None }).collect();
                LinearWeight::Quantized(Arc::new(QuantizedMatrix::concat_rows(&quantized.ok_or_else(|| bad("dense and quantized weights"))?)?))
            }
        };
        let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
        let bias = match biases.len() {
            0 => None,
            n if n == parts.len() => Some(Tensor::cat(&biases, 0)?),
            _ => return Err(bad("some have a bias and some do not")),
        };
        Ok(Self { weight, bias })
    }

    /// How the weight is stored.
    pub fn format(&self) -> WeightFormat {
        match &self.weight {
            LinearWeight::Dense(t) => match t.dtype() {
                DType::F16 => WeightFormat::F16,
                DType::BF16 => WeightFormat::BF16,
                _ => WeightFormat::F32,
            },
            LinearWeight::Quantized(q) => q.format(),
        }
    }

    /// Resident bytes of the weight (the bytes one forward of a single row reads).
    pub fn weight_bytes(&self) -> usize {
        self.weight.size_in_bytes()
    }

    pub fn out_dim(&self) -> usize {
        self.weight.rows()
    }

    /// `[.., in] -> [rows, in]`, and the `[.., out]` shape to give the `[rows, out]` result.
    fn as_rows(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let mut dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        *dims.last_mut().unwrap() = self.out_dim();
        Ok((x.reshape((rows, in_dim))?, dims))
    }

    /// `[.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [.., in] -> [rows, in] -> [rows, out]
        let (x2, out_dims) = self.as_rows(x)?;
        let mut y = match &self.weight {
            LinearWeight::Dense(w) => {
                if let Some(y) = dense_forward(&x2, w)? {
                    y
                } else if w.dtype() == x2.dtype() {
                    x2.matmul(&w.t()?)?
                } else {
                    // a weight stored in another precision than the activations: widen it for the
                    // (compute-bound) large product
                    x2.matmul(&w.to_dtype(x2.dtype())?.t()?)?
                }
            }
            LinearWeight::Quantized(q) => q.matmul_t(&x2)?.to_dtype(x.dtype())?,
        };
        if let Some(b) = &self.bias {
            // `y` is the product just computed: nothing else holds its buffer
            y = crate::inplace::add_bias(y, b)?;
        }
        Ok(y.reshape(out_dims)?)
    }

    /// `activation(forward(x))`. With quantized weights on the AMX GEMM (vision towers,
    /// prefill) the bias and the activation are applied to each block of the output as it is
    /// written, still in L2, with the same f32 operations as the separate passes.
    pub fn forward_activated(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        if let (LinearWeight::Quantized(q), DType::F32) = (&self.weight, x.dtype()) {
            // [.., in] -> [rows, in] -> [rows, out]
            let (x2, out_dims) = self.as_rows(x)?;
            let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            let epilogue = Epilogue { bias: bias.as_deref(), activation: Some(activation) };
            if let Some(y) = q.amx_matmul_t(&x2, Some(&epilogue))? {
                return Ok(y.reshape(out_dims)?);
            }
        }
        activation.apply(self.forward(x)?)
    }
}

/// Quantized formats of the linears map to q8_0 for heads and embeddings.
fn head_format(linears: Option<WeightFormat>) -> Option<WeightFormat> {
    linears.map(|f| if f.is_quantized() { WeightFormat::Q8_0 } else { f })
}

/// `{name}` `[rows, cols]` in `format` (None: dense in the compute dtype).
fn load_matrix(w: &Weights, name: &str, rows: usize, cols: usize, format: Option<WeightFormat>) -> Result<LinearWeight> {
    match format.map(|f| f.for_inputs(cols, w.dtype())) {
        None => Ok(LinearWeight::Dense(w.get(&[rows, cols], name)?)),
        Some(f) => match f.dense_dtype() {
            Some(dtype) => Ok(LinearWeight::Dense(w.store().get(&w.path(name), &[rows, cols], dtype)?)),
            None => {
                Ok(LinearWeight::Quantized(Arc::new(w.store().get_quantized(&w.path(name), &[rows, cols], f)?)))
            }
        },
    }
}

/// A token embedding table `[vocab, dim]` stored like an output head (q8_0 when the view's
/// linears are quantized, rows decoded on lookup), so a tied head shares the one copy.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: LinearWeight,
    dtype: DType,
}

impl Embedding {
    pub fn load(w: &Weights, vocab: usize, dim: usize) -> Result<Self> {
        Ok(Self { table: load_matrix(w, "weight", vocab, dim, head_format(w.linear_format()))?, dtype: w.dtype() })
    }

    pub fn vocab_size(&self) -> usize {
        self.table.rows()
    }

    /// `[T] ids -> [T, C]` in the compute dtype.
    pub fn forward(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        match &self.table {
            LinearWeight::Dense(t) => Ok(t.index_select(&Tensor::new(ids, device)?, 0)?.to_dtype(self.dtype)?),
            LinearWeight::Quantized(q) => Ok(q.gather_rows(ids, device)?.to_dtype(self.dtype)?),
        }
    }

    /// The tied output head reading the same storage.
    pub fn as_head(&self) -> Linear {
        Linear { weight: self.table.clone(), bias: None }
    }

    pub fn weight_bytes(&self) -> usize {
        self.table.size_in_bytes()
    }
}

/// `x [m, K] x W^T` through Iris's own dense CPU kernels: the bandwidth-bound GEMV for
/// decode-sized inputs (any float weight) and, for more rows, the AMX GEMM for bf16 and f16
/// weights (`amx`) or else the AVX512-BF16 GEMM for bf16 ones (`bf16_gemm`), and the f32 GEMM
/// (AVX-512F or AVX2) for f32 weights and 16-bit ones those do not take (`f32_gemm`); `None`
/// when the shapes, storage or CPU call for the general matmul.
pub fn dense_forward(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    use crate::gemv::WeightRows;
    use candle_core::{CpuStorage, Storage};
    let (m, k) = x.dims2()?;
    let n = weight.dim(0)?;
    let gemv = m <= crate::gemv::MAX_ROWS;
    // f16 weights too: the packers round them to bf16, exact for bf16 checkpoints' values
    let amx = !gemv && matches!(weight.dtype(), DType::BF16 | DType::F16) && crate::amx::available();
    let bf16_gemm = !gemv && weight.dtype() == DType::BF16 && !amx && crate::bf16_gemm::available();
    // exact f32 products for f32 weights, and 16-bit ones where neither 16-bit GEMM takes them
    let f32_gemm = !gemv && !amx && !bf16_gemm && matches!(weight.dtype(), DType::F32 | DType::F16 | DType::BF16) && crate::f32_gemm::available();
    if m == 0 || !(gemv || amx || bf16_gemm || f32_gemm) || !x.device().is_cpu() || !weight.is_contiguous() || weight.dim(1)? != k {
        return Ok(None);
    }
    let (storage, layout) = weight.storage_and_layout();
    let (off, len) = (layout.start_offset(), n * k);
    let rows = match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => WeightRows::F32(&v[off..off + len]),
        Storage::Cpu(CpuStorage::F16(v)) => WeightRows::F16(&v[off..off + len]),
        Storage::Cpu(CpuStorage::BF16(v)) => WeightRows::BF16(&v[off..off + len]),
        _ => return Ok(None),
    };
    let out = with_f32_values(&x.to_dtype(DType::F32)?, |xs| {
        if amx {
            let w = match rows {
                WeightRows::BF16(w) => crate::amx::WeightRows::Bf16(w),
                WeightRows::F16(w) => crate::amx::WeightRows::F16(w),
                WeightRows::F32(_) => unreachable!("AMX is chosen for 16-bit weights only"),
            };
            // writes every output once: no zeroed buffer
            return crate::amx::gemm_vec(xs, m, &w, n, k, None);
        }
        match rows {
            WeightRows::F32(w) if f32_gemm => return crate::f32_gemm::gemm_vec(xs, m, crate::f32_gemm::F32Weight::F32(w), n, k),
            WeightRows::F16(w) if f32_gemm => return crate::f32_gemm::gemm_vec(xs, m, crate::f32_gemm::F32Weight::F16(w), n, k),
            WeightRows::BF16(w) if f32_gemm => return crate::f32_gemm::gemm_vec(xs, m, crate::f32_gemm::F32Weight::BF16(w), n, k),
            _ => {}
        }
        let mut out = vec![0f32; m * n];
        match rows {
            WeightRows::BF16(w) if bf16_gemm => crate::bf16_gemm::gemm(xs, m, w, n, k, &mut out),
            rows => crate::gemv::gemv(xs, m, rows, n, k, &mut out),
        }
        out
    })?;
    drop(storage);
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?.to_dtype(x.dtype())?))
}

/// Runs `f` on the values of the f32 tensor `x` in row-major order: borrowed from its storage
/// when it is a contiguous CPU tensor (a prompt's activations are megabytes, copied once per
/// product before), copied otherwise.
pub(crate) fn with_f32_values<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    use candle_core::{CpuStorage, Storage};
    if x.is_contiguous() {
        let (storage, layout) = x.storage_and_layout();
        if let Storage::Cpu(CpuStorage::F32(values)) = &*storage {
            return Ok(f(&values[layout.start_offset()..][..x.elem_count()]));
        }
    }
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    Ok(f(&values))
}

/// RMSNorm: normalise in f32, then either (`Qwen2RMSNorm`, `LlamaRMSNorm`) cast back to the input
/// dtype and scale by the weight in that dtype, or (CogVLM2's `RMSNorm`) scale in f32 and cast
/// last. The two orders differ only in 16-bit.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight in f32 when scaling happens in f32, else ones (normalise only).
    f32_scale: Tensor,
    scale_in_f32: bool,
    eps: f32,
}

impl RmsNorm {
    /// Cast-then-scale order (Qwen2, Llama).
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        let weight = w.get(&[dim], "weight")?;
        let f32_scale = Tensor::ones(dim, DType::F32, w.device())?;
        Ok(Self { weight, f32_scale, scale_in_f32: false, eps: eps as f32 })
    }

    /// Scale-in-f32-then-cast order (CogVLM2).
    pub fn load_scale_in_f32(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        let weight = w.get(&[dim], "weight")?;
        let f32_scale = weight.to_dtype(DType::F32)?;
        Ok(Self { weight, f32_scale, scale_in_f32: true, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            return Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?);
        }
        let normed = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &self.f32_scale, self.eps)?;
        if self.scale_in_f32 {
            return Ok(normed.to_dtype(x.dtype())?);
        }
        Ok(normed.to_dtype(x.dtype())?.broadcast_mul(&self.weight)?)
    }

    /// The obviously-correct formula, for tests.
    pub fn forward_slow(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
        if self.scale_in_f32 {
            return Ok(normed.broadcast_mul(&self.weight.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?);
        }
        Ok(normed.to_dtype(x.dtype())?.broadcast_mul(&self.weight)?)
    }
}

/// `torch.nn.LayerNorm` with weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get(&[dim], "weight")?, bias: w.get(&[dim], "bias")?, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// Largest absolute difference between two tensors, in f32 (test and diagnostics helper).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused epilogue (AMX GEMM on quantized weights) against the product, the bias and the
    /// activation as separate passes: equal where every output row is whole 16-value vectors
    /// (the activations' vector and scalar formulas then meet the same values), within the
    /// formulas' agreement otherwise; across the weight-tile GEMM (fewer rows) and the
    /// activation-tile GEMM.
    #[test]
    fn activated_forward_matches_the_separate_passes() {
        if !crate::amx::available() {
            println!("SKIPPED: no AMX on this CPU (forward_activated runs the separate passes)");
            return;
        }
        let dev = Device::Cpu;
        for (rows, n, k) in [(600, 96, 64), (40, 96, 64), (600, 40, 96)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let lin = Linear::quantized(QuantizedMatrix::quantize_tensor(&w, WeightFormat::Q8_0).unwrap(), Some(bias));
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            for activation in [Activation::GeluErf, Activation::QuickGelu] {
                let fused = lin.forward_activated(&x, activation).unwrap();
                let separate = activation.apply(lin.forward(&x).unwrap()).unwrap();
                let diff = crate::ops::max_abs_diff(&fused, &separate).unwrap();
                println!("[{rows}, {k}] x [{n}, {k}]^T {activation:?}: max |diff| {diff:e}");
                if n % 16 == 0 {
                    assert_eq!(diff, 0.0);
                } else {
                    assert!(diff < 1e-5, "{diff:e}");
                }
            }
        }
    }

    #[test]
    fn stacked_linears_compute_the_parts_side_by_side() {
        let dev = Device::Cpu;
        let (k, outs) = (64usize, [48usize, 16, 16]);
        let weights: Vec<Tensor> = outs.iter().map(|&n| Tensor::randn(0f32, 0.2, (n, k), &dev).unwrap()).collect();
        let biases: Vec<Tensor> = outs.iter().map(|&n| Tensor::randn(0f32, 0.2, n, &dev).unwrap()).collect();
        for format in [None, Some(WeightFormat::Q8_0)] {
            let make = |w: &Tensor, b: &Tensor| match format {
                None => Linear::new(w.clone(), Some(b.clone())),
                Some(f) => Linear { weight: LinearWeight::Quantized(Arc::new(QuantizedMatrix::quantize_tensor(w, f).unwrap())), bias: Some(b.clone()) },
            };
            let parts: Vec<Linear> = weights.iter().zip(&biases).map(|(w, b)| make(w, b)).collect();
            let joined = Linear::concat_rows(parts.clone()).unwrap();
            assert_eq!(joined.out_dim(), 80);
            // decode-sized and prefill-sized inputs take different kernels
            for rows in [1usize, 40] {
                let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
                let separate = Tensor::cat(&parts.iter().map(|p| p.forward(&x).unwrap()).collect::<Vec<_>>(), 1).unwrap();
                let d = max_abs_diff(&joined.forward(&x).unwrap(), &separate).unwrap();
                println!("stacked linears {format:?}, {rows} rows: max|diff| = {d:e}");
                assert!(d <= 1e-5, "{format:?} {rows} rows: {d}");
            }
        }
        let no_bias = Linear::new(weights[0].clone(), None);
        let with_bias = Linear::new(weights[1].clone(), Some(biases[1].clone()));
        assert!(Linear::concat_rows(vec![no_bias, with_bias]).unwrap_err().to_string().contains("bias"));
    }

    #[test]
    fn rms_norm_fast_matches_slow_in_f32_and_bf16() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (5, 64), &dev).unwrap();
        let w = (Tensor::randn(0f32, 0.1, 64, &dev).unwrap() + 1.0).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for scale_in_f32 in [false, true] {
                let weight = w.to_dtype(dtype).unwrap();
                let f32_scale = if scale_in_f32 { weight.to_dtype(DType::F32).unwrap() } else { Tensor::ones(64, DType::F32, &dev).unwrap() };
                let norm = RmsNorm { weight, f32_scale, scale_in_f32, eps: 1e-6 };
                let xd = x.to_dtype(dtype).unwrap();
                let d = max_abs_diff(&norm.forward(&xd).unwrap(), &norm.forward_slow(&xd).unwrap()).unwrap();
                let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
                println!("rms_norm {dtype:?} scale_in_f32={scale_in_f32} max|diff| = {d:e}");
                assert!(d <= tol, "{dtype:?}: {d}");
            }
        }
    }
}

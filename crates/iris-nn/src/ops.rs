//! Layers shared by every family: linear, RMSNorm and LayerNorm in the reference operation order,
//! activations. Mirrors `torch.nn.Linear`, `Qwen2RMSNorm`/`LlamaRMSNorm` and `torch.nn.LayerNorm`.

use crate::error::Result;
use crate::weights::Weights;
use candle_core::{DType, Tensor, D};

/// `y = x W^T + b` with W stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `{prefix}.weight` `[out, in]` and, when `bias`, `{prefix}.bias` `[out]`.
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(w.get(&[out_dim], "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        // [.., in] -> [rows, in] -> [rows, out]
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = match gemv_forward(&x2, &self.weight)? {
            Some(y) => y,
            None => x2.matmul(&self.weight.t()?)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// `x [m, K] x W^T` through the bandwidth-bound GEMV for decode-sized inputs on CPU; `None` when
/// the shapes or storage call for the general matmul.
pub fn gemv_forward(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    let (m, k) = x.dims2()?;
    let n = weight.dim(0)?;
    if m == 0 || m > crate::gemv::MAX_ROWS || !x.device().is_cpu() || !weight.is_contiguous() || weight.dim(1)? != k {
        return Ok(None);
    }
    let xf: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (storage, layout) = weight.storage_and_layout();
    let off = layout.start_offset();
    let len = n * k;
    let mut out = vec![0f32; m * n];
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => crate::gemv::gemv(&xf, m, crate::gemv::WeightRows::F32(&v[off..off + len]), n, k, &mut out),
        Storage::Cpu(CpuStorage::F16(v)) => crate::gemv::gemv(&xf, m, crate::gemv::WeightRows::F16(&v[off..off + len]), n, k, &mut out),
        Storage::Cpu(CpuStorage::BF16(v)) => crate::gemv::gemv(&xf, m, crate::gemv::WeightRows::BF16(&v[off..off + len]), n, k, &mut out),
        _ => return Ok(None),
    }
    drop(storage);
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?.to_dtype(x.dtype())?))
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

/// `x * sigmoid(1.702 x)` (transformers `QuickGELUActivation`).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

/// Exact erf GELU (`nn.GELU()` default).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
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

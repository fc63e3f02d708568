//! Attention heads out of a fused projection, with the rotary embedding applied on the way:
//! `[T, W]` (q, k and v columns side by side) -> one part's `[heads, T, D]`, contiguous, in one
//! parallel pass. The rotation is candle_nn's `rope` (transformers' non-interleaved
//! `rotate_half` form), value for value: `x1 * cos - x2 * sin`, `x1 * sin + x2 * cos` in f32 with
//! no fused multiply-add. It replaces a strided copy per part plus candle's rope pass (~9% of a
//! 448² Qwen2-VL vision encode). `split_heads_slow` (narrow, transpose, copy, candle's rope) is
//! the twin; other dtypes take it.

use crate::error::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Values below which one thread does the whole split (a decode step's few heads).
const PARALLEL_VALUES: usize = 1 << 15;

/// Columns `first..first + heads * head_dim` of `x` (`[T, W]`) as `[heads, T, head_dim]`,
/// rotated by `rope = (cos, sin)`, each `[T, head_dim / 2]`, when given.
pub fn split_heads(x: &Tensor, first: usize, heads: usize, head_dim: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (t, width) = x.dims2()?;
    let half = head_dim / 2;
    let tables_fit = |c: &Tensor| c.dtype() == DType::F32 && c.is_contiguous() && c.dims() == [t, half];
    if t * heads * head_dim == 0 {
        // (candle's rope cannot take an empty tensor)
        return Ok(Tensor::zeros((heads, t, head_dim), x.dtype(), x.device())?);
    }
    let fast = x.dtype() == DType::F32 && x.is_contiguous() && head_dim.is_multiple_of(2) && first + heads * head_dim <= width && rope.is_none_or(|(c, s)| tables_fit(c) && tables_fit(s));
    if !fast || !x.device().is_cpu() {
        return split_heads_slow(x, first, heads, head_dim, rope);
    }
    // `[heads, T, D]` from `x`'s values and, with rope, the cos and sin tables' (all borrowed)
    let gather = |src: &[f32], tables: Option<(&[f32], &[f32])>| -> Vec<f32> {
        let len = heads * t * head_dim;
        // written once below, never zeroed first (zeroing was a third of this pass)
        let mut out = Vec::<f32>::with_capacity(len);
        // head h: [T, D] gathered from columns first + h * D.. of every row
        let one_head = |(h, dst): (usize, &mut [std::mem::MaybeUninit<f32>])| {
            for (row, d) in dst.chunks_exact_mut(head_dim).enumerate() {
                let s = &src[row * width + first + h * head_dim..][..head_dim];
                match tables {
                    None => d.iter_mut().zip(s).for_each(|(o, &v)| {
                        o.write(v);
                    }),
                    Some((cos, sin)) => {
                        let (c, sn) = (&cos[row * half..][..half], &sin[row * half..][..half]);
                        let (x1, x2) = s.split_at(half);
                        let (d1, d2) = d.split_at_mut(half);
                        // zipped, so the loop has no bounds checks and vectorises
                        for (((o1, o2), (&a, &b)), (&cv, &sv)) in d1.iter_mut().zip(d2.iter_mut()).zip(x1.iter().zip(x2)).zip(c.iter().zip(sn)) {
                            o1.write(a * cv - b * sv);
                            o2.write(a * sv + b * cv);
                        }
                    }
                }
            }
        };
        let spare = &mut out.spare_capacity_mut()[..len];
        if len < PARALLEL_VALUES {
            spare.chunks_mut(t * head_dim).enumerate().for_each(one_head);
        } else {
            spare.par_chunks_mut(t * head_dim).enumerate().for_each(one_head);
        }
        // SAFETY: the heads' chunks cover all `len` values, and each writes every value of its
        // rows (`head_dim` per row: the copy, or both rotated halves of an even `head_dim`).
        unsafe { out.set_len(len) };
        out
    };
    use crate::ops::with_f32_values;
    let out = with_f32_values(x, |src| match rope {
        None => Ok(gather(src, None)),
        Some((cos, sin)) => with_f32_values(cos, |c| with_f32_values(sin, |s| gather(src, Some((c, s))))).and_then(|inner| inner),
    })??;
    Ok(Tensor::from_vec(out, (heads, t, head_dim), x.device())?)
}

/// Plain twin of `split_heads`: `[T, W]` -> `[T, heads, D]` -> `[heads, T, D]`, copied, then
/// candle's rope in `x`'s dtype.
pub fn split_heads_slow(x: &Tensor, first: usize, heads: usize, head_dim: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let t = x.dim(0)?;
    let h = x.narrow(1, first, heads * head_dim)?.reshape((t, heads, head_dim))?.transpose(0, 1)?.contiguous()?;
    Ok(match rope {
        // [heads, T, D] -> [1, heads, T, D] and back
        Some((cos, sin)) => candle_nn::rotary_emb::rope(&h.unsqueeze(0)?, cos, sin)?.squeeze(0)?,
        None => h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn split_heads_equals_its_twin_bit_for_bit() {
        let dev = Device::Cpu;
        // (T, q heads, kv heads, D): one decode row, a prompt, and enough values to go parallel
        let empty = Tensor::zeros((0, 64), DType::F32, &dev).unwrap();
        assert_eq!(split_heads(&empty, 16, 2, 16, None).unwrap().dims(), &[2, 0, 16]);
        for (t, qh, kvh, d) in [(1, 12, 2, 128), (37, 4, 2, 64), (300, 16, 16, 80)] {
            let width = (qh + 2 * kvh) * d;
            let x = Tensor::randn(0f32, 3.0, (t, width), &dev).unwrap();
            let angles = Tensor::randn(0f32, 2.0, (t, d / 2), &dev).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            for (first, heads, rope) in [(0, qh, Some((&cos, &sin))), (qh * d, kvh, Some((&cos, &sin))), ((qh + kvh) * d, kvh, None)] {
                let fast: Vec<f32> = split_heads(&x, first, heads, d, rope).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let slow: Vec<f32> = split_heads_slow(&x, first, heads, d, rope).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(fast.len(), heads * t * d);
                assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "T {t}, columns from {first}, {heads} heads of {d}, rope {}", rope.is_some());
            }
        }
    }

    #[test]
    fn other_dtypes_take_the_twin() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 64), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let angles = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let a = split_heads(&x, 16, 2, 16, Some((&cos, &sin))).unwrap();
        assert_eq!((a.dims(), a.dtype()), (&[2usize, 5, 16][..], DType::BF16));
        let b = split_heads_slow(&x, 16, 2, 16, Some((&cos, &sin))).unwrap();
        assert_eq!(a.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap(), b.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap());
    }
}

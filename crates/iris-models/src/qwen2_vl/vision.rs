//! The Qwen2-VL vision tower: Conv3d patch embedding as a matmul, 2-D rotary ViT blocks with
//! block-diagonal attention per temporal slice, QuickGELU MLP, and the 2x2 PatchMerger.
//! Mirrors transformers 4.57.6 `modeling_qwen2_vl.py`: `PatchEmbed`, `VisionRotaryEmbedding`,
//! `VisionAttention`, `Qwen2VLVisionBlock`, `PatchMerger`,
//! `Qwen2VisionTransformerPretrainedModel` (spec §5).

use super::config::VisionConfig;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use iris_nn::attention::{attention_with, Products, DEFAULT_SCORE_BYTES};
use iris_nn::heads::split_heads;
use iris_nn::inplace::Activation;
use iris_nn::ops::{LayerNorm, Linear};
use iris_nn::weights::Weights;

const LN_EPS: f64 = 1e-6;
const ROPE_THETA: f32 = 10000.0;

struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

pub struct VisionTower {
    /// `[E, C*tp*p*p]` (the Conv3d kernel flattened; stride == kernel makes it a matmul)
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    ln_q: LayerNorm,
    merger_fc1: Linear,
    merger_fc2: Linear,
    inv_freq: Vec<f32>,
    cfg: VisionConfig,
    dtype: DType,
    /// Attention products: bf16 where the linears are quantized or 16-bit (`Products::for_linears`).
    products: Products,
}

impl VisionTower {
    /// Resident bytes of the linear weights (norms and biases are negligible).
    pub fn weight_bytes(&self) -> usize {
        let blocks = self.blocks.iter().flat_map(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2]);
        blocks.chain([&self.patch_embed, &self.merger_fc1, &self.merger_fc2]).map(Linear::weight_bytes).sum()
    }

    pub fn load(w: &Weights, cfg: &VisionConfig) -> Result<Self> {
        let e = cfg.embed_dim;
        let (p, tp, c) = (cfg.patch_size, cfg.temporal_patch_size, cfg.in_channels);
        // [E, C, tp, p, p] -> [E, C*tp*p*p]
        let conv = w.pp("patch_embed.proj").get(&[e, c, tp, p, p], "weight")?.reshape((e, c * tp * p * p))?;
        let mlp = cfg.mlp_dim();
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = w.pp("blocks").pp(i);
                Ok(VisionBlock {
                    norm1: LayerNorm::load(&b.pp("norm1"), e, LN_EPS)?,
                    norm2: LayerNorm::load(&b.pp("norm2"), e, LN_EPS)?,
                    qkv: Linear::load(&b.pp("attn.qkv"), e, 3 * e, true)?,
                    proj: Linear::load(&b.pp("attn.proj"), e, e, true)?,
                    fc1: Linear::load(&b.pp("mlp.fc1"), e, mlp, true)?,
                    fc2: Linear::load(&b.pp("mlp.fc2"), mlp, e, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let merged = e * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let m = w.pp("merger");
        let rot_dim = cfg.head_dim() / 2;
        let inv_freq = (0..rot_dim / 2).map(|k| 1.0 / ROPE_THETA.powf((2 * k) as f32 / rot_dim as f32)).collect();
        Ok(Self {
            patch_embed: Linear::new(conv, None),
            blocks,
            ln_q: LayerNorm::load(&m.pp("ln_q"), e, LN_EPS)?,
            merger_fc1: Linear::load(&m.pp("mlp.0"), merged, merged, true)?,
            merger_fc2: Linear::load(&m.pp("mlp.2"), merged, cfg.hidden_size, true)?,
            inv_freq,
            products: Products::for_linears(w.linear_format()),
            cfg: cfg.clone(),
            dtype: w.dtype(),
        })
    }

    /// Rotary angles `[N, head_dim/2]` for one item: `[hpos * inv_freq || wpos * inv_freq]` per
    /// patch, patches in merge-block order, repeated for every temporal slice.
    fn rotary_angles(&self, grid: [usize; 3]) -> Vec<f32> {
        let m = self.cfg.spatial_merge_size;
        let [t, h, w] = grid;
        let mut out = Vec::with_capacity(t * h * w * self.inv_freq.len() * 2);
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (hp, wp) = ((bh * m + mh) as f32, (bw * m + mw) as f32);
                            out.extend(self.inv_freq.iter().map(|f| hp * f));
                            out.extend(self.inv_freq.iter().map(|f| wp * f));
                        }
                    }
                }
            }
        }
        out
    }

    /// `pixel_values [N, 1176]` (f32) of one item with `grid` -> merged embeddings `[N/4, C]`.
    pub fn forward(&self, pixel_values: &Tensor, grid: [usize; 3], device: &Device) -> Result<Tensor> {
        let n = grid.iter().product::<usize>();
        let half = self.cfg.head_dim() / 2;
        let angles = Tensor::from_vec(self.rotary_angles(grid), (n, half), device)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let mut x = self.patch_embed.forward(&pixel_values.to_device(device)?.to_dtype(self.dtype)?)?;
        let slice = grid[1] * grid[2];
        for block in &self.blocks {
            x = self.block_forward(block, x, &cos, &sin, slice)?;
        }
        let m2 = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        // [N, E] -> [N/4, 4E]: four consecutive patches form one 2x2 block
        let y = self.ln_q.forward(&x)?.reshape((n / m2, self.cfg.embed_dim * m2))?;
        let y = self.merger_fc1.forward_activated(&y, Activation::GeluErf)?;
        Ok(self.merger_fc2.forward(&y)?)
    }

    /// One ViT block. Takes `x` by value and drops each activation as soon as it is used: a
    /// 448x448 image's block held ~135 MiB of dead and live buffers at once before, ~50 after.
    fn block_forward(&self, b: &VisionBlock, x: Tensor, cos: &Tensor, sin: &Tensor, slice: usize) -> Result<Tensor> {
        let attn = self.attention(b, &x, cos, sin, slice)?;
        let x = (x + b.proj.forward(&attn)?)?;
        drop(attn);
        let h = b.fc1.forward_activated(&b.norm2.forward(&x)?, Activation::QuickGelu)?;
        let m = b.fc2.forward(&h)?;
        drop(h);
        Ok((x + m)?)
    }

    /// Rotary multi-head self-attention of one block, before `proj`: `[N, E] -> [N, E]`.
    fn attention(&self, b: &VisionBlock, x: &Tensor, cos: &Tensor, sin: &Tensor, slice: usize) -> Result<Tensor> {
        let (n, e) = x.dims2()?;
        let (heads, hd) = (self.cfg.num_heads, self.cfg.head_dim());
        // [N, 3E] -> q, k, v [H, N, D]; rotary in f32 as the reference
        let qkv = b.qkv.forward(&b.norm1.forward(x)?)?;
        let qkv_f32 = qkv.to_dtype(DType::F32)?;
        let rotated = |part: usize| -> Result<Tensor> { Ok(split_heads(&qkv_f32, part * e, heads, hd, Some((cos, sin)))?.to_dtype(self.dtype)?) };
        let q = rotated(0)?;
        let k = rotated(1)?;
        let v = split_heads(&qkv, 2 * e, heads, hd, None)?;
        drop((qkv, qkv_f32));
        let scale = 1.0 / (hd as f64).sqrt();
        // block-diagonal: each temporal slice (one image, one frame pair) attends only to itself
        let mut outs = Vec::with_capacity(n / slice);
        for s in (0..n).step_by(slice) {
            let (qs, ks, vs) = (q.narrow(1, s, slice)?, k.narrow(1, s, slice)?, v.narrow(1, s, slice)?);
            outs.push(attention_with(&qs.contiguous()?, &ks.contiguous()?, &vs.contiguous()?, None, scale, DEFAULT_SCORE_BYTES, self.products)?);
        }
        drop((q, k, v));
        let o = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 1)? };
        drop(outs);
        // [H, N, D] -> [N, H, D] -> [N, E]
        Ok(o.transpose(0, 1)?.contiguous()?.reshape((n, e))?)
    }
}

//! CogVLM2's vision side: EVA2-CLIP-E (patch conv as a matmul, CLS + learned absolute positions,
//! post-LN blocks with full attention and erf GELU), CLS dropped, 2x2 stride-2 conv, GLU adapter,
//! boi/eoi. Mirrors the reference remote code `visual.py` (`PatchEmbedding`, `Attention`, `MLP`,
//! `TransformerLayer`, `GLU`, `EVA2CLIPModel`) (spec §3.2).

use super::config::VisionConfig;
use crate::error::Result;
use candle_core::{DType, Tensor};
use iris_nn::attention::{attention_with, Products, DEFAULT_SCORE_BYTES};
use iris_nn::heads::split_heads;
use iris_nn::inplace::{gelu_erf, silu_mul, Activation};
use iris_nn::ops::{LayerNorm, Linear};
use iris_nn::weights::Weights;

/// `nn.LayerNorm(hidden)` of the adapter uses PyTorch's default eps.
const ADAPTER_LN_EPS: f64 = 1e-5;

struct VisionLayer {
    query_key_value: Linear,
    dense: Linear,
    /// Applied to the attention output (post-LN), despite its name.
    input_layernorm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// Applied to the MLP output.
    post_attention_layernorm: LayerNorm,
}

pub struct VisionTower {
    /// `[E, C*p*p]`: the stride-p conv as a matmul over flattened patches.
    patch_embed: Linear,
    /// `[1, E]`
    cls_embedding: Tensor,
    /// `[N+1, E]`, row 0 for CLS.
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    /// `[E, 4E]`: the 2x2 stride-2 conv as a matmul over 2x2 blocks.
    downsample: Linear,
    linear_proj: Linear,
    norm1: LayerNorm,
    gate_proj: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    /// `[1, C]` each.
    boi: Tensor,
    eoi: Tensor,
    cfg: VisionConfig,
    dtype: DType,
    /// Attention products: bf16 where the linears are quantized or 16-bit (`Products::for_linears`).
    products: Products,
}

impl VisionTower {
    /// Resident bytes of the linear weights and embeddings (norms and biases are negligible).
    pub fn weight_bytes(&self) -> usize {
        let layers = self.layers.iter().flat_map(|l| [&l.query_key_value, &l.dense, &l.fc1, &l.fc2]);
        let adapter = [&self.patch_embed, &self.downsample, &self.linear_proj, &self.gate_proj, &self.dense_h_to_4h, &self.dense_4h_to_h];
        let pos = self.position_embedding.elem_count() * self.position_embedding.dtype().size_in_bytes();
        layers.chain(adapter).map(Linear::weight_bytes).sum::<usize>() + pos
    }

    /// `w` is `model.vision`; `hidden`/`inter` are the language model's widths.
    pub fn load(w: &Weights, cfg: &VisionConfig, hidden: usize, inter: usize) -> Result<Self> {
        let (e, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.in_channels);
        let pe = w.pp("patch_embedding");
        // [E, C, p, p] -> [E, C*p*p]
        let conv = pe.pp("proj").get(&[e, c, p, p], "weight")?.reshape((e, c * p * p))?;
        let patch_embed = Linear::new(conv, Some(pe.pp("proj").get(&[e], "bias")?));
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = w.pp("transformer.layers").pp(i);
                Ok(VisionLayer {
                    query_key_value: Linear::load(&l.pp("attention.query_key_value"), e, 3 * e, true)?,
                    dense: Linear::load(&l.pp("attention.dense"), e, e, true)?,
                    input_layernorm: LayerNorm::load(&l.pp("input_layernorm"), e, cfg.layer_norm_eps)?,
                    fc1: Linear::load(&l.pp("mlp.fc1"), e, cfg.intermediate_size, true)?,
                    fc2: Linear::load(&l.pp("mlp.fc2"), cfg.intermediate_size, e, true)?,
                    post_attention_layernorm: LayerNorm::load(&l.pp("post_attention_layernorm"), e, cfg.layer_norm_eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // [E, E, 2, 2] -> [E, 4E]
        let down = w.pp("conv").get(&[e, e, 2, 2], "weight")?.reshape((e, 4 * e))?;
        let lp = w.pp("linear_proj");
        Ok(Self {
            patch_embed,
            cls_embedding: pe.get(&[1, e], "cls_embedding")?,
            position_embedding: pe.pp("position_embedding").get(&[cfg.num_positions, e], "weight")?,
            layers,
            downsample: Linear::new(down, Some(w.pp("conv").get(&[e], "bias")?)),
            linear_proj: Linear::load(&lp.pp("linear_proj"), e, hidden, false)?,
            norm1: LayerNorm::load(&lp.pp("norm1"), hidden, ADAPTER_LN_EPS)?,
            gate_proj: Linear::load(&lp.pp("gate_proj"), hidden, inter, false)?,
            dense_h_to_4h: Linear::load(&lp.pp("dense_h_to_4h"), hidden, inter, false)?,
            dense_4h_to_h: Linear::load(&lp.pp("dense_4h_to_h"), inter, hidden, false)?,
            // [1, 1, C] -> [1, C]
            boi: w.get(&[1, 1, hidden], "boi")?.reshape((1, hidden))?,
            eoi: w.get(&[1, 1, hidden], "eoi")?.reshape((1, hidden))?,
            cfg: cfg.clone(),
            dtype: w.dtype(),
            products: Products::for_linears(w.linear_format()),
        })
    }

    /// `pixel_values [3, S, S]` (f32) -> `[boi, (S/2p)^2 adapter outputs, eoi]` = `[tokens, C]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (p, g, e) = (self.cfg.patch_size, self.cfg.grid(), self.cfg.hidden_size);
        let c = self.cfg.in_channels;
        let px = pixel_values.to_device(self.boi.device())?.to_dtype(self.dtype)?;
        // [C, S, S] -> [C, g, p, g, p] -> [g, g, C, p, p] -> [g*g, C*p*p] (conv weight order)
        let patches = px.reshape((c, g, p, g, p))?.permute((1, 3, 0, 2, 4))?.contiguous()?.reshape((g * g, c * p * p))?;
        let x = self.patch_embed.forward(&patches)?;
        // prepend CLS, add absolute positions: [N+1, E]
        let mut x = Tensor::cat(&[&self.cls_embedding, &x], 0)?.add(&self.position_embedding)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, x)?;
        }
        // drop CLS; [g*g, E] -> [g/2, 2, g/2, 2, E] -> [g/2, g/2, E, 2, 2] -> [(g/2)^2, 4E] (conv order)
        let h = g / 2;
        let x = x.narrow(0, 1, g * g)?.reshape((h, 2, h, 2, e))?.permute((0, 2, 4, 1, 3))?.contiguous()?.reshape((h * h, 4 * e))?;
        let x = self.downsample.forward(&x)?;
        // GLU adapter
        let u = gelu_erf(self.norm1.forward(&self.linear_proj.forward(&x)?)?)?;
        let v = silu_mul(self.gate_proj.forward(&u)?, &self.dense_h_to_4h.forward(&u)?)?;
        let out = self.dense_4h_to_h.forward(&v)?;
        Ok(Tensor::cat(&[&self.boi, &out, &self.eoi], 0)?)
    }

    /// Post-LN block: `h = x + LN_in(attn(x))`, `out = h + LN_post(mlp(h))`. Takes `x` by value
    /// and drops each activation once used: at 1344x1344 (9217 tokens) one MLP-wide f32 buffer
    /// is 566 MB, and the block used to hold two of them plus dead attention buffers.
    fn layer_forward(&self, l: &VisionLayer, x: Tensor) -> Result<Tensor> {
        let attn = self.attention(l, &x)?;
        let h = (x + l.input_layernorm.forward(&l.dense.forward(&attn)?)?)?;
        drop(attn);
        let act = l.fc1.forward_activated(&h, Activation::GeluErf)?;
        let m = l.fc2.forward(&act)?;
        drop(act);
        Ok((&h + l.post_attention_layernorm.forward(&m)?)?)
    }

    /// Full multi-head self-attention over CLS + patches, before `dense`: `[N, E] -> [N, E]`.
    fn attention(&self, l: &VisionLayer, x: &Tensor) -> Result<Tensor> {
        let (n, e) = x.dims2()?;
        let (heads, hd) = (self.cfg.num_heads, self.cfg.head_dim());
        // [N, 3E] -> q, k, v [H, N, D]
        let qkv = l.query_key_value.forward(x)?;
        let (q, k, v) = (split_heads(&qkv, 0, heads, hd, None)?, split_heads(&qkv, e, heads, hd, None)?, split_heads(&qkv, 2 * e, heads, hd, None)?);
        drop(qkv);
        // chunked so 9217 x 9217 scores of all heads never coexist
        let o = attention_with(&q, &k, &v, None, 1.0 / (hd as f64).sqrt(), DEFAULT_SCORE_BYTES, self.products)?;
        drop((q, k, v));
        // [H, N, D] -> [N, H, D] -> [N, E]
        Ok(o.transpose(0, 1)?.contiguous()?.reshape((n, e))?)
    }
}

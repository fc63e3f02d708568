//! The Qwen2 decoder of Qwen2-VL with multimodal rotary embedding (M-RoPE): q/k/v with bias, GQA,
//! RMSNorm in the reference order, SwiGLU MLP, tied or untied lm_head.
//! Mirrors transformers 4.57.6 `modeling_qwen2_vl.py`: `Qwen2VLRotaryEmbedding`,
//! `apply_multimodal_rotary_pos_emb`, `Qwen2VLAttention`, `Qwen2VLDecoderLayer`,
//! `Qwen2VLTextModel` (spec §6.2, §6.4).

use super::config::TextConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use crate::api::StepInput;
use crate::common::{logit_rows, split_rows, stacked_positions};
use iris_nn::attention::{batched_cached_attention, Products};
use iris_nn::heads::split_heads;
use iris_nn::inplace::silu_mul;
use iris_nn::ops::{Embedding, Linear, RmsNorm};
use iris_nn::weights::Weights;
use iris_nn::{KvCache, LayerKv};

struct DecoderLayer {
    input_layernorm: RmsNorm,
    /// q, k and v stacked by rows, `[C] -> [(H + 2 KVH) * D]`: one product per step instead of
    /// three (decode's small k/v products could not stream at bandwidth alone).
    qkv_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct TextModel {
    /// `[V, C]`
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `[V, C]`; the embedding itself when tied.
    lm_head: Linear,
    inv_freq: Vec<f32>,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
    /// Attention products: bf16 where the linears are quantized or 16-bit (`Products::for_linears`).
    products: Products,
}

impl TextModel {
    /// `w` is the checkpoint root (names `model.*`, `lm_head.*` after normalisation).
    pub fn load(w: &Weights, cfg: &TextConfig) -> Result<Self> {
        let m = w.pp("model");
        let (c, hd) = (cfg.hidden_size, cfg.head_dim());
        let (q_dim, kv_dim) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        // The vocabulary and MLP width are read from the tensors: quantised exports pad them.
        let vocab = m.shape_of("embed_tokens.weight").map(|s| s[0]).unwrap_or(cfg.vocab_size);
        let embed_tokens = Embedding::load(&m.pp("embed_tokens"), vocab, c)?;
        let inter = m.shape_of("layers.0.mlp.gate_proj.weight").map(|s| s[0]).unwrap_or(cfg.intermediate_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp("layers").pp(i);
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load(&l.pp("input_layernorm"), c, cfg.rms_norm_eps)?,
                    qkv_proj: Linear::concat_rows(vec![
                        Linear::load(&l.pp("self_attn.q_proj"), c, q_dim, true)?,
                        Linear::load(&l.pp("self_attn.k_proj"), c, kv_dim, true)?,
                        Linear::load(&l.pp("self_attn.v_proj"), c, kv_dim, true)?,
                    ])?,
                    o_proj: Linear::load(&l.pp("self_attn.o_proj"), q_dim, c, false)?,
                    post_attention_layernorm: RmsNorm::load(&l.pp("post_attention_layernorm"), c, cfg.rms_norm_eps)?,
                    gate_proj: Linear::load(&l.pp("mlp.gate_proj"), c, inter, false)?,
                    up_proj: Linear::load(&l.pp("mlp.up_proj"), c, inter, false)?,
                    down_proj: Linear::load(&l.pp("mlp.down_proj"), inter, c, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), c, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            // HF ties even when the file carries a copy; that copy is deliberately unused.
            if w.contains("lm_head.weight") {
                w.store().mark_ignored(&w.path("lm_head.weight"));
            }
            embed_tokens.as_head()
        } else {
            Linear::load_head(&w.pp("lm_head"), c, vocab)?
        };
        let half = hd / 2;
        let base = cfg.rope_theta as f32;
        let inv_freq = (0..half).map(|j| 1.0 / base.powf((2 * j) as f32 / hd as f32)).collect();
        Ok(Self { embed_tokens, layers, norm, lm_head, inv_freq, cfg: cfg.clone(), dtype: w.dtype(), device: w.device().clone(), products: Products::for_linears(w.linear_format()) })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.vocab_size()
    }

    fn layer_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|x| [&x.qkv_proj, &x.o_proj, &x.gate_proj, &x.up_proj, &x.down_proj])
            .map(Linear::weight_bytes)
            .sum()
    }

    /// Resident bytes of the weight matrices (a tied head shares the embedding).
    pub fn weight_bytes(&self) -> usize {
        let head = if self.cfg.tie_word_embeddings { 0 } else { self.lm_head.weight_bytes() };
        self.embed_tokens.weight_bytes() + self.layer_bytes() + head
    }

    /// Weight bytes one decoded token reads: every layer and the head.
    pub fn decode_bytes_per_token(&self) -> usize {
        self.layer_bytes() + self.lm_head.weight_bytes()
    }

    /// `[T] ids -> [T, C]`, validating ids against the embedding size.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let v = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(ModelError::Prompt(format!("token id {bad} is outside the vocabulary of {v}")));
        }
        Ok(self.embed_tokens.forward(ids, &self.device)?)
    }

    /// M-RoPE cos/sin `[T, D/2]`: frequency j uses the t, h or w position by `mrope_section`;
    /// computed in f32 then cast to the model dtype, as the reference does.
    fn rope_tables(&self, positions: &[Vec<i64>], t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let s = self.cfg.mrope_section;
        let axis_of = |j: usize| if j < s[0] { 0 } else if j < s[0] + s[1] { 1 } else { 2 };
        let mut angles = Vec::with_capacity(t * half);
        for i in 0..t {
            for (j, f) in self.inv_freq.iter().enumerate() {
                let row = &positions[axis_of(j).min(positions.len() - 1)];
                angles.push(row[i] as f32 * f);
            }
        }
        let a = Tensor::from_vec(angles, (t, half), &self.device)?;
        Ok((a.cos()?.to_dtype(self.dtype)?, a.sin()?.to_dtype(self.dtype)?))
    }

    /// `embeds [ΣT, C]`: the steps' tokens stacked, step `i` at cache index `caches[i].len()` ->
    /// each step's f32 logits (its last token `[1, V]`, or all `[T, V]`).
    pub fn forward_batch(&self, embeds: &Tensor, steps: &[StepInput], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        let (total, _) = embeds.dims2()?;
        let lens: Vec<usize> = steps.iter().map(|s| s.token_ids.len()).collect();
        let (cos, sin) = self.rope_tables(&stacked_positions(steps)?, total)?;
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            x = self.layer_forward(layer, x, &cos, &sin, &lens, &mut kvs)?;
        }
        let (x, counts) = logit_rows(&x, steps)?;
        let x = self.norm.forward(&x)?;
        split_rows(&self.lm_head.forward(&x)?.to_dtype(DType::F32)?, &counts)
    }

    /// One decoder layer. Takes `x` by value and drops each activation once used, so a long
    /// prefill holds one MLP-wide buffer at a time instead of four.
    fn layer_forward(&self, l: &DecoderLayer, x: Tensor, cos: &Tensor, sin: &Tensor, lens: &[usize], kvs: &mut [&mut LayerKv]) -> Result<Tensor> {
        let attn = self.attention(l, &x, cos, sin, lens, kvs)?;
        let x = (x + l.o_proj.forward(&attn)?)?;
        drop(attn);
        let h = l.post_attention_layernorm.forward(&x)?;
        let (gate, up) = (l.gate_proj.forward(&h)?, l.up_proj.forward(&h)?);
        drop(h);
        let act = silu_mul(gate, &up)?;
        drop(up);
        let mlp = l.down_proj.forward(&act)?;
        drop(act);
        Ok((x + mlp)?)
    }

    /// Self-attention with M-RoPE over each step's cache, before `o_proj`: `[T, C] -> [T, C]`.
    fn attention(&self, l: &DecoderLayer, x: &Tensor, cos: &Tensor, sin: &Tensor, lens: &[usize], kvs: &mut [&mut LayerKv]) -> Result<Tensor> {
        let (t, c) = x.dims2()?;
        let hd = self.cfg.head_dim();
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let qkv = l.qkv_proj.forward(&l.input_layernorm.forward(x)?)?;
        // [T, (H + 2 KVH) * D] -> [H, T, D], [KVH, T, D], [KVH, T, D]
        let q = split_heads(&qkv, 0, nh, hd, Some((cos, sin)))?;
        let k = split_heads(&qkv, nh * hd, nkv, hd, Some((cos, sin)))?;
        let v = split_heads(&qkv, (nh + nkv) * hd, nkv, hd, None)?;
        drop(qkv);
        let o = batched_cached_attention(&q, &k, &v, lens, kvs, 1.0 / (hd as f64).sqrt(), self.products)?;
        // [H, T, D] -> [T, H, D] -> [T, C]
        Ok(o.transpose(0, 1)?.contiguous()?.reshape((t, c))?)
    }
}

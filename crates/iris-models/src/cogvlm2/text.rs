//! CogVLM2's decoder: Llama-3-8B layers where every token takes either the language or the
//! vision expert (fused QKV, attention output projection, SwiGLU MLP), with shared RMSNorms and
//! one causal attention over all tokens; half-split RoPE (base 500000) from the checkpoint's
//! stored `inv_freq`, looked up by position id.
//! Mirrors the reference remote code `modeling_cogvlm.py` (`get_expert_mask`, `VisionExpertMLP`,
//! `VisionExpertAttention`, `CogVLMDecoderLayer`, `CogVLMModel`) and `util.py`
//! (`FastRotaryEmbedding`) (spec §4).

use super::config::{TextConfig, ROPE_THETA};
use crate::api::TokenType;
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

/// One expert's weights in one layer.
struct Expert {
    /// `[Q | K | V]` rows.
    query_key_value: Linear,
    dense: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Expert {
    fn load(l: &Weights, name: &str, cfg: &TextConfig, inter: usize, qkv_bias: bool) -> Result<Self> {
        let c = cfg.hidden_size;
        let mlp = l.pp(format!("mlp.{name}_mlp"));
        Ok(Self {
            query_key_value: Linear::load(&l.pp(format!("self_attn.{name}_expert_query_key_value")), c, cfg.qkv_dim(), qkv_bias)?,
            dense: Linear::load(&l.pp(format!("self_attn.{name}_expert_dense")), c, c, false)?,
            gate_proj: Linear::load(&mlp.pp("gate_proj"), c, inter, false)?,
            up_proj: Linear::load(&mlp.pp("up_proj"), c, inter, false)?,
            down_proj: Linear::load(&mlp.pp("down_proj"), inter, c, false)?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let act = silu_mul(gate, &up)?;
        drop(up);
        Ok(self.down_proj.forward(&act)?)
    }

    fn weight_bytes(&self) -> usize {
        [&self.query_key_value, &self.dense, &self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .map(|l| l.weight_bytes())
            .sum()
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    language: Expert,
    vision: Expert,
    /// Index into `TextModel::inv_freqs`.
    rope: usize,
}

/// `get_expert_mask`: token t takes the vision expert iff t and t + 1 are both image tokens, so
/// boi and the patches do; eoi, text and the prompt's last token do not.
pub fn vision_expert_mask(types: &[TokenType]) -> Vec<bool> {
    vision_expert_mask_before(types, None)
}

/// The mask of a step followed in the prompt by a token of type `next` (None: nothing follows),
/// so a prompt split into steps is routed exactly as the whole prompt.
pub fn vision_expert_mask_before(types: &[TokenType], next: Option<TokenType>) -> Vec<bool> {
    let n = types.len();
    let after = |t: usize| if t + 1 < n { Some(types[t + 1]) } else { next };
    (0..n).map(|t| types[t] == TokenType::Vision && after(t) == Some(TokenType::Vision)).collect()
}

/// Which rows of a step go through which expert (`vision_expert_mask`).
enum Routing {
    AllLanguage,
    Mixed {
        /// `[Tl]`, `[Tv]` row indices, and `[T]` rows of `cat(language, vision)` back in order.
        language: Tensor,
        vision: Tensor,
        inverse: Tensor,
    },
}

impl Routing {
    /// `vision_mask[t]`: row t takes the vision expert (`vision_expert_mask`).
    fn new(vision_mask: &[bool], device: &Device) -> Result<Self> {
        let n = vision_mask.len();
        let vis: Vec<u32> = (0..n as u32).filter(|&t| vision_mask[t as usize]).collect();
        if vis.is_empty() {
            return Ok(Routing::AllLanguage);
        }
        let lang: Vec<u32> = (0..n as u32).filter(|&t| !vision_mask[t as usize]).collect();
        let mut inverse = vec![0u32; n];
        for (rank, &t) in lang.iter().enumerate() {
            inverse[t as usize] = rank as u32;
        }
        for (rank, &t) in vis.iter().enumerate() {
            inverse[t as usize] = (lang.len() + rank) as u32;
        }
        Ok(Routing::Mixed {
            language: Tensor::new(lang.as_slice(), device)?,
            vision: Tensor::new(vis.as_slice(), device)?,
            inverse: Tensor::new(inverse.as_slice(), device)?,
        })
    }

    /// `x [T, in] -> [T, out]`, each row through its expert's `f`.
    fn apply(&self, x: &Tensor, layer: &DecoderLayer, f: impl Fn(&Expert, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        match self {
            Routing::AllLanguage => f(&layer.language, x),
            Routing::Mixed { language, vision, inverse } => {
                let mut parts = Vec::with_capacity(2);
                if language.dim(0)? > 0 {
                    parts.push(f(&layer.language, &x.index_select(language, 0)?)?);
                }
                parts.push(f(&layer.vision, &x.index_select(vision, 0)?)?);
                let joined = Tensor::cat(&parts, 0)?;
                drop(parts);
                Ok(joined.index_select(inverse, 0)?)
            }
        }
    }
}

pub struct TextModel {
    /// `[V, C]`
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `[V, C]`, untied.
    lm_head: Linear,
    /// Distinct `inv_freq` buffers of the checkpoint (normally one shared by all layers).
    inv_freqs: Vec<Vec<f32>>,
    cfg: TextConfig,
    dtype: DType,
    device: Device,
    /// Attention products: bf16 where the linears are quantized or 16-bit (`Products::for_linears`).
    products: Products,
}

impl TextModel {
    /// `w` is the checkpoint root (`model.*`, `lm_head.*`).
    pub fn load(w: &Weights, cfg: &TextConfig) -> Result<Self> {
        let m = w.pp("model");
        let c = cfg.hidden_size;
        let vocab = m.shape_of("embed_tokens.weight").map(|s| s[0]).unwrap_or(cfg.vocab_size);
        let embed_tokens = Embedding::load(&m.pp("embed_tokens"), vocab, c)?;
        let inter = m.shape_of("layers.0.mlp.language_mlp.gate_proj.weight").map(|s| s[0]).unwrap_or(cfg.intermediate_size);
        let half = cfg.head_dim() / 2;
        let mut inv_freqs: Vec<Vec<f32>> = Vec::new();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp("layers").pp(i);
                let inv_freq = load_inv_freq(&l, half)?;
                let rope = match inv_freqs.iter().position(|f| *f == inv_freq) {
                    Some(r) => r,
                    None => {
                        inv_freqs.push(inv_freq);
                        inv_freqs.len() - 1
                    }
                };
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load_scale_in_f32(&l.pp("input_layernorm"), c, cfg.rms_norm_eps)?,
                    post_attention_layernorm: RmsNorm::load_scale_in_f32(&l.pp("post_attention_layernorm"), c, cfg.rms_norm_eps)?,
                    // only the vision expert's QKV has a bias
                    language: Expert::load(&l, "language", cfg, inter, false)?,
                    vision: Expert::load(&l, "vision", cfg, inter, true)?,
                    rope,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load_scale_in_f32(&m.pp("norm"), c, cfg.rms_norm_eps)?,
            lm_head: Linear::load_head(&w.pp("lm_head"), c, vocab)?,
            inv_freqs,
            cfg: cfg.clone(),
            dtype: w.dtype(),
            device: w.device().clone(),
            products: Products::for_linears(w.linear_format()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.vocab_size()
    }

    /// Resident bytes of every weight matrix (both experts, embedding, lm_head).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.language.weight_bytes() + l.vision.weight_bytes()).sum();
        self.embed_tokens.weight_bytes() + self.lm_head.weight_bytes() + layers
    }

    /// Weight bytes one decoded (text) token reads: the language expert of every layer and the head.
    pub fn decode_bytes_per_token(&self) -> usize {
        self.layers.iter().map(|l| l.language.weight_bytes()).sum::<usize>() + self.lm_head.weight_bytes()
    }

    /// `[T] ids -> [T, C]`, validating ids against the embedding size.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let v = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(ModelError::Prompt(format!("token id {bad} is outside the vocabulary of {v}")));
        }
        Ok(self.embed_tokens.forward(ids, &self.device)?)
    }

    /// cos/sin `[T, D/2]` in the model dtype for one `inv_freq` buffer. The reference builds the
    /// position grid and the angles in the buffer's dtype (`pos_idx_in_fp32=False`): exact in f32;
    /// in a 16-bit run positions above 256 round to the bf16 grid, and we reproduce that (see
    /// docs/ARCHITECTURE.md, "CogVLM2 RoPE precision").
    fn rope_tables(&self, inv_freq: &[f32], positions: &[i64]) -> Result<(Tensor, Tensor)> {
        let round = dtype_rounding(self.dtype);
        let mut angles = Vec::with_capacity(positions.len() * inv_freq.len());
        for &p in positions {
            let pos = round(p as f32);
            angles.extend(inv_freq.iter().map(|f| round(pos * round(*f))));
        }
        let a = Tensor::from_vec(angles, (positions.len(), inv_freq.len()), &self.device)?;
        Ok((a.cos()?.to_dtype(self.dtype)?, a.sin()?.to_dtype(self.dtype)?))
    }

    /// `embeds [ΣT, C]`: the steps' tokens stacked (one position row and per-token types each),
    /// step `i` at cache index `caches[i].len()` -> each step's f32 logits (`[1, V]` or `[T, V]`).
    pub fn forward_batch(&self, embeds: &Tensor, steps: &[StepInput], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        let (total, _) = embeds.dims2()?;
        let lens: Vec<usize> = steps.iter().map(|s| s.token_ids.len()).collect();
        let rows = stacked_positions(steps)?;
        let positions = rows.first().ok_or_else(|| ModelError::Prompt("step has no position row".into()))?;
        if positions.len() != total || steps.iter().any(|s| s.token_types.len() != s.token_ids.len()) {
            return Err(ModelError::Prompt(format!("a batch of {total} tokens has {} positions or mismatched token types", positions.len())));
        }
        let tables = self.inv_freqs.iter().map(|f| self.rope_tables(f, positions)).collect::<Result<Vec<_>>>()?;
        // the expert mask looks one token ahead: within each step, then at the prompt token after it
        let mask: Vec<bool> = steps.iter().flat_map(|s| vision_expert_mask_before(s.token_types, s.next_token_type)).collect();
        let routing = Routing::new(&mask, embeds.device())?;
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = &tables[layer.rope];
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            x = self.layer_forward(layer, x, &routing, cos, sin, &lens, &mut kvs)?;
        }
        let (x, counts) = logit_rows(&x, steps)?;
        let x = self.norm.forward(&x)?;
        split_rows(&self.lm_head.forward(&x)?.to_dtype(DType::F32)?, &counts)
    }

    /// One decoder layer. Takes `x` by value and drops each activation once used (a 2341-token
    /// image prompt's MLP buffers are ~130 MiB each).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(&self, l: &DecoderLayer, x: Tensor, routing: &Routing, cos: &Tensor, sin: &Tensor, lens: &[usize], kvs: &mut [&mut LayerKv]) -> Result<Tensor> {
        let attn = self.attention(l, &x, routing, cos, sin, lens, kvs)?;
        let x = (x + routing.apply(&attn, l, |e, a| Ok(e.dense.forward(a)?))?)?;
        drop(attn);
        let h = l.post_attention_layernorm.forward(&x)?;
        let mlp = routing.apply(&h, l, |e, a| e.mlp(a))?;
        drop(h);
        Ok((x + mlp)?)
    }

    /// Causal self-attention (the expert's q/k/v) over each step's cache, before `dense`:
    /// `[T, C] -> [T, C]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, l: &DecoderLayer, x: &Tensor, routing: &Routing, cos: &Tensor, sin: &Tensor, lens: &[usize], kvs: &mut [&mut LayerKv]) -> Result<Tensor> {
        let (t, c) = x.dims2()?;
        let hd = self.cfg.head_dim();
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.num_kv_heads);
        let qkv = routing.apply(&l.input_layernorm.forward(x)?, l, |e, a| Ok(e.query_key_value.forward(a)?))?;
        // [T, (H + 2 KVH) * D] -> [H, T, D], [KVH, T, D], [KVH, T, D]
        let q = split_heads(&qkv, 0, nh, hd, Some((cos, sin)))?;
        let k = split_heads(&qkv, nh * hd, nkv, hd, Some((cos, sin)))?;
        let v = split_heads(&qkv, (nh + nkv) * hd, nkv, hd, None)?;
        drop(qkv);
        // plain causal attention over everything, image tokens included
        let o = batched_cached_attention(&q, &k, &v, lens, kvs, 1.0 / (hd as f64).sqrt(), self.products)?;
        // [H, T, D] -> [T, H, D] -> [T, C]
        Ok(o.transpose(0, 1)?.contiguous()?.reshape((t, c))?)
    }
}

/// The layer's stored `rotary_emb.inv_freq` (bf16 values in the official checkpoint), else the
/// formula `1 / 500000^(2j/D)` for checkpoints saved without the buffer.
fn load_inv_freq(l: &Weights, half: usize) -> Result<Vec<f32>> {
    let name = "self_attn.rotary_emb.inv_freq";
    if l.contains(name) {
        let t = l.store().get(&l.path(name), &[half], DType::F32)?;
        return Ok(t.to_vec1::<f32>()?);
    }
    Ok((0..half).map(|j| (1.0 / ROPE_THETA.powf((2 * j) as f64 / (2 * half) as f64)) as f32).collect())
}

/// Rounds an f32 to the nearest value of `dtype` (identity for f32).
fn dtype_rounding(dtype: DType) -> fn(f32) -> f32 {
    match dtype {
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenType::{Text as T, Vision as V};

    #[test]
    fn expert_mask_needs_the_next_token_to_be_an_image_token() {
        let dev = Device::Cpu;
        let Routing::Mixed { language, vision, inverse } = Routing::new(&vision_expert_mask(&[T, V, V, V, T, T]), &dev).unwrap() else { panic!("mixed expected") };
        // boi and the patch go to the vision expert; eoi (index 3) and text to the language one
        assert_eq!(vision.to_vec1::<u32>().unwrap(), vec![1, 2]);
        assert_eq!(language.to_vec1::<u32>().unwrap(), vec![0, 3, 4, 5]);
        assert_eq!(inverse.to_vec1::<u32>().unwrap(), vec![0, 4, 5, 1, 2, 3]);
        // a lone image token, or one that ends the step, is language
        assert!(matches!(Routing::new(&vision_expert_mask(&[T, V, T]), &dev).unwrap(), Routing::AllLanguage));
        assert!(matches!(Routing::new(&vision_expert_mask(&[V]), &dev).unwrap(), Routing::AllLanguage));
    }

    #[test]
    fn a_prompt_split_into_steps_is_routed_as_the_whole() {
        let whole = [T, V, V, V, V, T, T];
        let want = vision_expert_mask(&whole);
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            let mut got = vision_expert_mask_before(a, Some(b[0]));
            got.extend(vision_expert_mask_before(b, None));
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn bf16_positions_alias_above_256_as_in_the_reference() {
        let r = dtype_rounding(DType::BF16);
        assert_eq!(r(255.0), 255.0);
        assert_eq!(r(257.0), 256.0);
        // spacing 8 between 1024 and 2048
        assert_eq!(r(1995.0), 1992.0);
        assert_eq!(dtype_rounding(DType::F32)(257.0), 257.0);
    }
}

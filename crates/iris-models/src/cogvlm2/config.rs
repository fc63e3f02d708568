//! CogVLM2 `config.json` with the defaults of the reference `configuration_cogvlm.py` for what the
//! official file omits: 8 KV heads (`num_multi_query_heads`), an untied lm_head, RoPE base 500000
//! (hard-coded in `modeling_cogvlm.py`), template "chat" (spec: shared/specs/cogvlm2.md §1).

use crate::config_util::{read_json, Lookup};
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

/// The reference hard-codes the rotary base; no config key carries it.
pub const ROPE_THETA: f64 = 500_000.0;

/// Prompt template of `build_conversation_input_ids` (spec §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `Question: q Answer:` with `Question: q Answer: r\n` history.
    Chat,
    /// The query alone; history is ignored.
    Base,
    /// `Question: q Short answer:`.
    Vqa,
}

impl Template {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "chat" => Ok(Template::Chat),
            "base" => Ok(Template::Base),
            "vqa" => Ok(Template::Vqa),
            other => Err(ModelError::Prompt(format!("unknown CogVLM2 template `{other}` (expected chat, base or vqa)"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// KV heads (GQA); the reference calls them multi-query heads.
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub bos_token_id: u32,
    /// Image placeholder and pad id.
    pub pad_token_id: u32,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Rows of the fused QKV projection: `[Q | K | V]`.
    pub fn qkv_dim(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    pub image_size: usize,
    pub in_channels: usize,
    pub layer_norm_eps: f64,
    pub num_positions: usize,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Patches per side of the square input.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Prompt slots of one image: boi + (grid/2)^2 adapter outputs + eoi (2306 on the real model).
    pub fn image_tokens(&self) -> usize {
        (self.grid() / 2).pow(2) + 2
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CogVlmConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub template: Template,
}

impl CogVlmConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let root = Lookup::new(path, vec![v]);
        let hidden_size = root.usize_or("hidden_size", 4096)?;
        let num_attention_heads = root.usize_or("num_attention_heads", 32)?;
        let id = |key: &str, default: usize| -> Result<u32> {
            // eos may be a list; bos and pad are scalars
            Ok(root.usize_or(key, default)? as u32)
        };
        let text = TextConfig {
            hidden_size,
            intermediate_size: root.usize_or("intermediate_size", 14336)?,
            num_hidden_layers: root.usize_or("num_hidden_layers", 32)?,
            num_attention_heads,
            num_kv_heads: root.usize_or("num_multi_query_heads", 8)?,
            vocab_size: root.usize_or("vocab_size", 128256)?,
            max_position_embeddings: root.usize_or("max_position_embeddings", 8192)?,
            rms_norm_eps: root.f64_or("rms_norm_eps", 1e-5)?,
            bos_token_id: id("bos_token_id", 128000)?,
            pad_token_id: id("pad_token_id", 128002)?,
        };
        let empty = Value::Object(Default::default());
        let vis = Lookup::new(path, vec![v.get("vision_config").unwrap_or(&empty)]);
        let vision = VisionConfig {
            hidden_size: vis.usize_or("hidden_size", 1792)?,
            intermediate_size: vis.usize_or("intermediate_size", 15360)?,
            num_hidden_layers: vis.usize_or("num_hidden_layers", 63)?,
            num_heads: vis.usize_or("num_heads", 16)?,
            patch_size: vis.usize_or("patch_size", 14)?,
            image_size: vis.usize_or("image_size", 1344)?,
            in_channels: vis.usize_or("in_channels", 3)?,
            layer_norm_eps: vis.f64_or("layer_norm_eps", 1e-6)?,
            num_positions: vis.usize_or("num_positions", 9217)?,
        };
        let template = Template::parse(&root.str_or("template_version", "chat")?)
            .map_err(|e| ModelError::Config { path: path.display().to_string(), message: format!("field `template_version`: {e}") })?;
        let cfg = Self { text, vision, template };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(ModelError::Config { path: path.display().to_string(), message });
        let (t, v) = (&self.text, &self.vision);
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 || (t.hidden_size / t.num_attention_heads) % 2 != 0 {
            return bad(format!("hidden_size {} is not an even head size times num_attention_heads {}", t.hidden_size, t.num_attention_heads));
        }
        if t.num_kv_heads == 0 || t.num_attention_heads % t.num_kv_heads != 0 {
            return bad(format!("num_attention_heads {} is not a multiple of num_multi_query_heads {}", t.num_attention_heads, t.num_kv_heads));
        }
        if v.num_heads == 0 || v.hidden_size % v.num_heads != 0 {
            return bad(format!("vision hidden_size {} is not a multiple of num_heads {}", v.hidden_size, v.num_heads));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 || v.grid() % 2 != 0 {
            return bad(format!("vision image_size {} must be an even number of {}-pixel patches", v.image_size, v.patch_size));
        }
        if v.num_positions != v.grid() * v.grid() + 1 {
            return bad(format!(
                "vision num_positions {} does not match image_size {} / patch_size {} (expected {})",
                v.num_positions,
                v.image_size,
                v.patch_size,
                v.grid() * v.grid() + 1
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn official_config_gets_the_reference_code_defaults() {
        // the real config.json's fields (spec §1.1): no num_multi_query_heads, no rope_theta
        let v = json!({
            "architectures": ["CogVLMForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_hidden_layers": 32, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-05, "template_version": "chat", "bos_token_id": 128000,
            "eos_token_id": [128001, 128009], "pad_token_id": 128002, "vocab_size": 128256,
            "vision_config": {"dropout_prob": 0.0, "hidden_act": "gelu", "in_channels": 3, "num_hidden_layers": 63,
                "hidden_size": 1792, "patch_size": 14, "num_heads": 16, "intermediate_size": 15360,
                "layer_norm_eps": 1e-06, "num_positions": 9217, "image_size": 1344}
        });
        let c = CogVlmConfig::from_value(&v, Path::new("config.json")).unwrap();
        assert_eq!(c.text.num_kv_heads, 8);
        assert_eq!(c.text.qkv_dim(), 6144);
        assert_eq!(c.vision.head_dim(), 112);
        assert_eq!(c.vision.image_tokens(), 2306);
        assert_eq!(c.template, Template::Chat);
    }

    #[test]
    fn inconsistent_vision_sizes_name_the_field() {
        let v = json!({"vision_config": {"image_size": 1344, "patch_size": 14, "num_positions": 1226}});
        let e = CogVlmConfig::from_value(&v, Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("num_positions") && e.contains("x/config.json"), "{e}");
        let v = json!({"template_version": "poem"});
        let e = CogVlmConfig::from_value(&v, Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("template_version") && e.contains("poem"), "{e}");
    }
}

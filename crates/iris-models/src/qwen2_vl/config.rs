//! Qwen2-VL `config.json` and `preprocessor_config.json`, in both the flat (original Qwen) and the
//! nested `text_config` form written by transformers >= 4.52, with HF's vision defaults filled in
//! when re-saved configs omit them. Mirrors transformers 4.57.6
//! `models/qwen2_vl/configuration_qwen2_vl.py` and `image_processing_qwen2_vl.py`
//! (spec: shared/specs/qwen2-vl.md §1, §3.1).

use crate::config_util::{read_json, Lookup};
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Rotary frequencies per axis (t, h, w); sums to head_dim / 2.
    pub mrope_section: [usize; 3],
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// Output width of the merger (= the LLM hidden size).
    pub hidden_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Values of one flattened patch: C x temporal x patch x patch (1176).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Qwen2VlConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_value(&read_json(path)?, path)
    }

    pub fn from_value(root: &Value, path: &Path) -> Result<Self> {
        let text_scope = root.get("text_config").filter(|v| v.is_object());
        // Nested (4.52+): text keys under text_config, some left at the root; flat: all at the root.
        let t = Lookup::new(path, text_scope.into_iter().chain(std::iter::once(root)).collect());
        let rope = t.raw("rope_scaling").or_else(|| t.raw("rope_parameters"));
        let mrope = rope
            .and_then(|r| r.get("mrope_section"))
            .and_then(|m| m.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect::<Vec<_>>())
            .unwrap_or_else(|| vec![16, 24, 24]);
        let mrope_section: [usize; 3] = mrope.try_into().map_err(|m: Vec<usize>| ModelError::Config {
            path: path.display().to_string(),
            message: format!("field `rope_scaling.mrope_section`: expected 3 values, got {m:?}"),
        })?;
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")).and_then(|x| x.as_f64()) {
            Some(theta) => theta,
            None => t.f64_or("rope_theta", 1_000_000.0)?,
        };
        // HF 4.57 ties iff text_config says so; v5 moves the flag to the root.
        let tie_word_embeddings = t.bool_or("tie_word_embeddings", false)?;
        let text = TextConfig {
            hidden_size: t.usize_or("hidden_size", 8192)?,
            intermediate_size: t.usize_or("intermediate_size", 29568)?,
            num_hidden_layers: t.usize_or("num_hidden_layers", 80)?,
            num_attention_heads: t.usize_or("num_attention_heads", 64)?,
            num_key_value_heads: t.usize_or("num_key_value_heads", 8)?,
            vocab_size: t.usize_or("vocab_size", 152064)?,
            max_position_embeddings: t.usize_or("max_position_embeddings", 32768)?,
            rope_theta,
            rms_norm_eps: t.f64_or("rms_norm_eps", 1e-5)?,
            mrope_section,
            tie_word_embeddings,
        };
        let empty = Value::Object(Default::default());
        let vision_value = root.get("vision_config").unwrap_or(&empty);
        let v = Lookup::new(path, vec![vision_value]);
        let in_channels = match v.raw("in_channels") {
            Some(_) => v.usize_or("in_channels", 3)?,
            None => v.usize_or("in_chans", 3)?,
        };
        let act = v.str_or("hidden_act", "quick_gelu")?;
        if act != "quick_gelu" {
            return Err(ModelError::Config { path: path.display().to_string(), message: format!("field `vision_config.hidden_act`: `{act}` is not supported (expected quick_gelu)") });
        }
        let vision = VisionConfig {
            depth: v.usize_or("depth", 32)?,
            embed_dim: v.usize_or("embed_dim", 1280)?,
            num_heads: v.usize_or("num_heads", 16)?,
            mlp_ratio: v.f64_or("mlp_ratio", 4.0)?,
            hidden_size: v.usize_or("hidden_size", 3584)?,
            in_channels,
            patch_size: v.usize_or("patch_size", v.usize_or("spatial_patch_size", 14)?)?,
            spatial_merge_size: v.usize_or("spatial_merge_size", 2)?,
            temporal_patch_size: v.usize_or("temporal_patch_size", 2)?,
        };
        let r = Lookup::new(path, vec![root]);
        let cfg = Self {
            text,
            vision,
            image_token_id: r.usize_or("image_token_id", 151655)? as u32,
            video_token_id: r.usize_or("video_token_id", 151656)? as u32,
            vision_start_token_id: r.usize_or("vision_start_token_id", 151652)? as u32,
            vision_end_token_id: r.usize_or("vision_end_token_id", 151653)? as u32,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Err(ModelError::Config { path: path.display().to_string(), message });
        let t = &self.text;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return bad(format!("hidden_size {} is not divisible by num_attention_heads {}", t.hidden_size, t.num_attention_heads));
        }
        if t.num_key_value_heads == 0 || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return bad(format!("num_attention_heads {} is not a multiple of num_key_value_heads {}", t.num_attention_heads, t.num_key_value_heads));
        }
        if t.mrope_section.iter().sum::<usize>() * 2 != t.head_dim() {
            return bad(format!("mrope_section {:?} does not sum to head_dim/2 = {}", t.mrope_section, t.head_dim() / 2));
        }
        let v = &self.vision;
        if v.num_heads == 0 || !v.embed_dim.is_multiple_of(v.num_heads) || !v.head_dim().is_multiple_of(4) {
            return bad(format!("vision embed_dim {} / num_heads {} must give a head dim divisible by 4", v.embed_dim, v.num_heads));
        }
        if v.hidden_size != t.hidden_size {
            return bad(format!("vision_config.hidden_size {} differs from the language model hidden_size {}", v.hidden_size, t.hidden_size));
        }
        Ok(())
    }
}

impl PreprocessorConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let root = read_json(path)?;
        let p = Lookup::new(path, vec![&root]);
        let size = root.get("size");
        let from_size = |key: &str| size.and_then(|s| s.get(key)).and_then(|x| x.as_u64()).map(|x| x as usize);
        let min_pixels = match p.raw("min_pixels") {
            Some(_) => p.usize_or("min_pixels", 3136)?,
            None => from_size("shortest_edge").unwrap_or(3136),
        };
        let max_pixels = match p.raw("max_pixels") {
            Some(_) => p.usize_or("max_pixels", 12_845_056)?,
            None => from_size("longest_edge").unwrap_or(12_845_056),
        };
        let three = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            let v = p.f32_vec_or(key, &default)?;
            v.try_into().map_err(|_| ModelError::Config { path: path.display().to_string(), message: format!("field `{key}`: expected 3 values") })
        };
        let cfg = Self {
            min_pixels,
            max_pixels,
            patch_size: p.usize_or("patch_size", 14)?,
            temporal_patch_size: p.usize_or("temporal_patch_size", 2)?,
            merge_size: p.usize_or("merge_size", 2)?,
            image_mean: three("image_mean", crate::image::CLIP_MEAN)?,
            image_std: three("image_std", crate::image::CLIP_STD)?,
        };
        if cfg.min_pixels > cfg.max_pixels {
            return Err(ModelError::Config { path: path.display().to_string(), message: format!("min_pixels {} > max_pixels {}", cfg.min_pixels, cfg.max_pixels) });
        }
        Ok(cfg)
    }

    /// The official defaults, used when a checkpoint has no preprocessor_config.json.
    pub fn official() -> Self {
        Self {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: crate::image::CLIP_MEAN,
            image_std: crate::image::CLIP_STD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_official_2b_config_parses_with_vision_defaults() {
        // The original Qwen layout, as re-saved by transformers 4.45 (vision fields omitted).
        let json: Value = serde_json::from_str(
            r#"{"architectures":["Qwen2VLForConditionalGeneration"],"hidden_size":1536,"intermediate_size":8960,
            "num_hidden_layers":28,"num_attention_heads":12,"num_key_value_heads":2,"vocab_size":151936,
            "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,
            "rope_scaling":{"type":"mrope","mrope_section":[16,24,24]},
            "vision_config":{"hidden_size":1536,"in_chans":3,"model_type":"qwen2_vl","spatial_patch_size":14}}"#,
        )
        .unwrap();
        let c = Qwen2VlConfig::from_value(&json, Path::new("config.json")).unwrap();
        assert_eq!(c.text.head_dim(), 128);
        assert!(c.text.tie_word_embeddings);
        assert_eq!(c.vision.depth, 32);
        assert_eq!(c.vision.embed_dim, 1280);
        assert_eq!(c.vision.patch_dim(), 1176);
        assert_eq!(c.image_token_id, 151655);
    }

    #[test]
    fn nested_v5_style_config_reads_rope_parameters() {
        let json: Value = serde_json::from_str(
            r#"{"tie_word_embeddings":false,"text_config":{"hidden_size":3584,"intermediate_size":18944,
            "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"vocab_size":152064,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_type":"default","mrope_section":[16,24,24],"rope_theta":1000000.0}},
            "vision_config":{}}"#,
        )
        .unwrap();
        let c = Qwen2VlConfig::from_value(&json, Path::new("config.json")).unwrap();
        assert_eq!(c.vision.hidden_size, 3584);
        assert!(!c.text.tie_word_embeddings);
        assert_eq!(c.text.rope_theta, 1e6);
    }

    #[test]
    fn bad_mrope_section_is_a_named_error() {
        let json: Value = serde_json::from_str(r#"{"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"rope_scaling":{"mrope_section":[1,2]},"vision_config":{"hidden_size":64}}"#).unwrap();
        let e = Qwen2VlConfig::from_value(&json, Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("mrope_section"), "{e}");
    }
}

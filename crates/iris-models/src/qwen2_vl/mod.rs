//! Qwen2-VL (2B/7B/72B-Instruct): glue between the processor, the vision tower and the decoder,
//! exposed to the engine through `VisionLanguageModel`.
//! Reference: transformers 4.57.6 `Qwen2VLForConditionalGeneration`.
//! `iris run --model Qwen2-VL-2B-Instruct --image cat.png "What is this?"`

pub mod config;
pub mod grounding;
pub mod processor;
pub mod synthetic;
pub mod text;
pub mod video;
pub mod vision;

use crate::api::*;
use crate::common::stacked_step_embeds;
use crate::error::{ModelError, Result};
use crate::registry::LoadOptions;
use candle_core::{Device, Tensor};
use config::{PreprocessorConfig, Qwen2VlConfig};
use iris_nn::{KvCache, WeightStore};
use processor::Processor;
use std::path::Path;
use text::TextModel;
use vision::VisionTower;

pub const ARCHITECTURES: &[&str] = &["Qwen2VLForConditionalGeneration"];
pub const MODEL_TYPES: &[&str] = &["qwen2_vl"];

/// Normalises checkpoint names to the original Qwen layout (`visual.*`, `model.*`, `lm_head.*`),
/// as vLLM's `hf_to_vllm_mapper` does for files saved by transformers >= 4.52 (spec §2.2).
pub fn canonical_name(name: &str) -> String {
    const RULES: &[(&str, &str)] = &[
        ("model.language_model.", "model."),
        ("model.visual.", "visual."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ];
    for (from, to) in RULES {
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

pub struct Qwen2Vl {
    processor: Processor,
    vision: VisionTower,
    text: TextModel,
    info: ModelInfo,
    device: Device,
    unconsumed: Vec<String>,
}

impl Qwen2Vl {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = Qwen2VlConfig::from_file(&dir.join("config.json"))?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre = if pre_path.exists() { PreprocessorConfig::from_file(&pre_path)? } else { PreprocessorConfig::official() };
        let store = match opts.synthetic_seed {
            Some(seed) => WeightStore::synthetic(&synthetic::tensor_specs(&cfg), seed, &canonical_name, &opts.device),
            None => WeightStore::open(dir, &canonical_name, &opts.device)?.with_quant_cache(opts.quant_cache.as_deref()),
        };
        Self::from_store(cfg, pre, &store, opts)
    }

    pub fn from_store(cfg: Qwen2VlConfig, pre: PreprocessorConfig, store: &WeightStore, opts: &LoadOptions) -> Result<Self> {
        let root = store.root(opts.dtype);
        let vision = VisionTower::load(&root.pp("visual").with_linear_format(opts.vision_format), &cfg.vision)?;
        let text = TextModel::load(&root.clone().with_linear_format(opts.language_format), &cfg.text)?;
        let unconsumed = store.unconsumed();
        let t = &cfg.text;
        let kv_bytes_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim() * opts.kv_storage().size_in_bytes();
        let info = ModelInfo {
            family: "qwen2-vl",
            vocab_size: text.vocab_size(),
            hidden_size: t.hidden_size,
            num_layers: t.num_hidden_layers,
            max_context: t.max_position_embeddings,
            dtype: opts.dtype,
            max_media_per_conversation: None,
            supports_video: true,
            kv_dtype: opts.kv_storage(),
            kv_bytes_per_token,
            weight_bytes: text.weight_bytes() + vision.weight_bytes(),
            decode_bytes_per_token: text.decode_bytes_per_token(),
        };
        Ok(Self { processor: Processor { pre, cfg }, vision, text, info, device: opts.device.clone(), unconsumed })
    }

}

impl VisionLanguageModel for Qwen2Vl {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn prepare_media(&self, media: &Media, opts: &MediaOptions) -> Result<PreparedMedia> {
        let pre = &self.processor.pre;
        let min = opts.min_pixels.unwrap_or(pre.min_pixels);
        let max = opts.max_pixels.unwrap_or(pre.max_pixels);
        if min > max {
            return Err(ModelError::Prompt(format!("min_pixels {min} is larger than max_pixels {max}")));
        }
        match media {
            Media::Image(img) => self.processor.prepare_image(img, min, max),
            Media::Video { frames, from_file: false } => self.processor.prepare_video(frames, None, min, max),
            Media::Video { frames, from_file: true } => {
                let hw = frames.first().map(|f| [f.height, f.width]);
                self.processor.prepare_video(frames, hw, min, max)
            }
        }
    }

    fn plan_video(&self, info: &VideoInfo, opts: &MediaOptions) -> Result<VideoPlan> {
        video::plan(info, opts, self.processor.pre.patch_size * self.processor.pre.merge_size)
    }

    fn build_prompt(&self, messages: &[ChatMessage], media: &[PreparedMedia], codec: &dyn PromptCodec, opts: &PromptOptions) -> Result<PromptInputs> {
        if let Some(t) = &opts.template {
            return Err(ModelError::Unsupported(format!("Qwen2-VL prompts come from the checkpoint's chat template; template `{t}` does not apply")));
        }
        self.processor.build_prompt(messages, media, codec)
    }

    fn encode_media(&self, media: &PreparedMedia) -> Result<Tensor> {
        self.vision.forward(&media.pixel_values, media.grid_thw, &self.device)
    }

    fn forward_batch(&self, steps: &[StepInput], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        let embeds = stacked_step_embeds(steps, |ids| self.text.embed(ids), self.info.dtype)?;
        self.text.forward_batch(&embeds, steps, caches)
    }

    fn unconsumed_tensors(&self) -> &[String] {
        &self.unconsumed
    }

    fn parse_boxes(&self, text: &str, image_hw: [usize; 2]) -> Vec<GroundingBox> {
        grounding::parse_boxes(text, image_hw[1], image_hw[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_checkpoint_layouts_normalise_to_the_original_names() {
        assert_eq!(canonical_name("model.language_model.layers.0.mlp.up_proj.weight"), "model.layers.0.mlp.up_proj.weight");
        assert_eq!(canonical_name("model.visual.blocks.3.attn.qkv.bias"), "visual.blocks.3.attn.qkv.bias");
        assert_eq!(canonical_name("language_model.lm_head.weight"), "lm_head.weight");
        assert_eq!(canonical_name("visual.merger.ln_q.weight"), "visual.merger.ln_q.weight");
        assert_eq!(canonical_name("model.norm.weight"), "model.norm.weight");
    }
}

//! CogVLM2 (cogvlm2-llama3-chat-19B, cogvlm2-llama3-chinese-chat-19B): glue between the
//! processor, the EVA2-CLIP vision side and the visual-expert decoder, exposed to the engine
//! through `VisionLanguageModel`. Reference: the checkpoints' remote code `modeling_cogvlm.py`,
//! `visual.py`, `util.py` (spec: shared/specs/cogvlm2.md).
//! `iris run --model cogvlm2-llama3-chat-19B --image cat.png "What is this?"`

pub mod config;
pub mod processor;
pub mod synthetic;
pub mod text;
pub mod vision;

use crate::api::*;
use crate::common::stacked_step_embeds;
use crate::error::{ModelError, Result};
use crate::registry::LoadOptions;
use candle_core::Tensor;
use config::{CogVlmConfig, Template};
use iris_nn::{KvCache, WeightStore};
use std::path::Path;
use text::TextModel;
use vision::VisionTower;

pub const ARCHITECTURES: &[&str] = &["CogVLMForCausalLM"];
pub const MODEL_TYPES: &[&str] = &[];

pub struct CogVlm2 {
    cfg: CogVlmConfig,
    vision: VisionTower,
    text: TextModel,
    info: ModelInfo,
    unconsumed: Vec<String>,
}

impl CogVlm2 {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = CogVlmConfig::from_file(&dir.join("config.json"))?;
        let same = |n: &str| n.to_string();
        let store = match opts.synthetic_seed {
            Some(seed) => WeightStore::synthetic(&synthetic::tensor_specs(&cfg), seed, &same, &opts.device),
            None => WeightStore::open(dir, &same, &opts.device)?.with_quant_cache(opts.quant_cache.as_deref()),
        };
        Self::from_store(cfg, &store, opts)
    }

    pub fn from_store(cfg: CogVlmConfig, store: &WeightStore, opts: &LoadOptions) -> Result<Self> {
        let root = store.root(opts.dtype);
        let t = &cfg.text;
        // tensors are converted one at a time from the mmap: no full-precision copy stays resident
        let text = TextModel::load(&root.clone().with_linear_format(opts.language_format), t)?;
        let vision_root = root.pp("model.vision").with_linear_format(opts.vision_format);
        let vision = VisionTower::load(&vision_root, &cfg.vision, t.hidden_size, t.intermediate_size)?;
        let unconsumed = store.unconsumed();
        let info = ModelInfo {
            family: "cogvlm2",
            vocab_size: text.vocab_size(),
            hidden_size: t.hidden_size,
            num_layers: t.num_hidden_layers,
            max_context: t.max_position_embeddings,
            dtype: opts.dtype,
            // the reference asserts len(images) <= 1
            max_media_per_conversation: Some(1),
            supports_video: false,
            kv_dtype: opts.kv_storage(),
            kv_bytes_per_token: 2 * t.num_hidden_layers * t.num_kv_heads * t.head_dim() * opts.kv_storage().size_in_bytes(),
            weight_bytes: text.weight_bytes() + vision.weight_bytes(),
            decode_bytes_per_token: text.decode_bytes_per_token(),
        };
        Ok(Self { cfg, vision, text, info, unconsumed })
    }
}

impl VisionLanguageModel for CogVlm2 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn prepare_media(&self, media: &Media, opts: &MediaOptions) -> Result<PreparedMedia> {
        if opts.min_pixels.is_some() || opts.max_pixels.is_some() {
            let s = self.cfg.vision.image_size;
            return Err(ModelError::Unsupported(format!("CogVLM2 always resizes images to {s}x{s}; min_pixels/max_pixels do not apply")));
        }
        match media {
            Media::Image(img) => processor::prepare_image(img, self.cfg.vision.image_size, self.cfg.vision.image_tokens()),
            Media::Video { .. } => Err(ModelError::Unsupported("CogVLM2 takes images, not videos".into())),
        }
    }

    fn build_prompt(&self, messages: &[ChatMessage], media: &[PreparedMedia], codec: &dyn PromptCodec, opts: &PromptOptions) -> Result<PromptInputs> {
        let template = match &opts.template {
            Some(name) => Template::parse(name)?,
            None => self.cfg.template,
        };
        processor::build_prompt(&self.cfg, messages, media, codec, template)
    }

    fn encode_media(&self, media: &PreparedMedia) -> Result<Tensor> {
        self.vision.forward(&media.pixel_values)
    }

    fn forward_batch(&self, steps: &[StepInput], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        let embeds = stacked_step_embeds(steps, |ids| self.text.embed(ids), self.info.dtype)?;
        self.text.forward_batch(&embeds, steps, caches)
    }

    fn unconsumed_tensors(&self) -> &[String] {
        &self.unconsumed
    }
}

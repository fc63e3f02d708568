//! One request through a loaded model: media decode and preprocessing, prompt building, vision
//! encoding, prefill, then sampling token by token with streaming text, EOS ids, stop strings and
//! a token limit. Used by the CLI (`run`, `chat`); never names a model family.

use crate::decoding::Decoding;
use crate::error::{EngineError, Result};
use crate::generation_config::GenerationDefaults;
use crate::messages::{load_media, Conversation};
use crate::sampler::SamplingParams;
use crate::tokenizer::TextTokenizer;
use iris_models::image::DecodeLimits;
use iris_models::{LoadOptions, MediaOptions, PromptInputs, PromptOptions, StepInput, VisionLanguageModel};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Prompt tokens processed per forward call during prefill (bounds activation memory).
pub const PREFILL_CHUNK: usize = 2048;

pub struct Engine {
    pub model: Box<dyn VisionLanguageModel>,
    pub tokenizer: TextTokenizer,
    pub defaults: GenerationDefaults,
    pub dir: PathBuf,
    pub load_ms: f64,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub conversation: Conversation,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub media_options: MediaOptions,
    pub prompt_options: PromptOptions,
    pub decode_limits: DecodeLimits,
}

impl GenerateRequest {
    /// Greedy decoding with the checkpoint's preprocessing and no stop strings.
    pub fn greedy(conversation: Conversation, max_new_tokens: usize) -> Self {
        Self {
            conversation,
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop: vec![],
            media_options: MediaOptions::default(),
            prompt_options: PromptOptions::default(),
            decode_limits: DecodeLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub timings: Timings,
    /// Grounding boxes in the answer, in pixels of the conversation's last image (`box_reference`).
    pub boxes: Vec<iris_models::GroundingBox>,
}

impl Engine {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let t0 = Instant::now();
        let tokenizer = TextTokenizer::load(dir)?;
        let defaults = GenerationDefaults::load(dir)?;
        let model = iris_models::load_model(dir, opts)?;
        // the buffers loading freed (quantization scratch) are not needed again
        crate::memory::release_cached_memory();
        Ok(Self { model, tokenizer, defaults, dir: dir.to_path_buf(), load_ms: t0.elapsed().as_secs_f64() * 1e3 })
    }

    /// Decodes media and builds the prompt (no model compute).
    pub fn prepare(&self, req: &GenerateRequest) -> Result<(PromptInputs, Vec<iris_models::PreparedMedia>)> {
        let conv = &req.conversation;
        let info = self.model.info();
        if let Some(max) = info.max_media_per_conversation {
            if conv.media.len() > max {
                return Err(EngineError::Limit(format!("{} supports at most {max} image(s) per conversation, got {}", info.family, conv.media.len())));
            }
        }
        let prepared = conv
            .media
            .iter()
            .map(|m| {
                let opts = m.options.or(req.media_options);
                check_pixel_options(&opts, req.decode_limits)?;
                Ok(self.model.prepare_media(&load_media(m, req.decode_limits, self.model.as_ref(), &opts)?, &opts)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let prompt = self.model.build_prompt(&conv.messages, &prepared, &self.tokenizer, &req.prompt_options)?;
        if prompt.token_ids.len() >= info.max_context {
            return Err(EngineError::Limit(format!("the prompt has {} tokens; the model's context is {}", prompt.token_ids.len(), info.max_context)));
        }
        Ok((prompt, prepared))
    }

    /// Decoding state for a prompt: the token limit clamped to what the context leaves, the
    /// checkpoint's EOS ids.
    pub fn decoding(&self, prompt_ids: &[u32], sampling: SamplingParams, max_new_tokens: usize, stop: Vec<String>, top_logprobs: Option<usize>) -> Decoding {
        let max_new = max_new_tokens.min(self.model.info().max_context.saturating_sub(prompt_ids.len()));
        Decoding::new(prompt_ids, sampling, max_new, self.defaults.eos_token_ids.clone(), stop, top_logprobs)
    }

    /// Runs one request, calling `on_text` with each newly completed piece of text.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str)) -> Result<GenerateOutput> {
        req.sampling.validate().map_err(EngineError::Request)?;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let (prompt, prepared) = self.prepare(req)?;
        timings.preprocess_ms = ms(t0);

        let t1 = Instant::now();
        let media_embeds = iris_nn::on_compute_pool(|| encode_media_spans(self.model.as_ref(), &prompt, &prepared))?;
        if !media_embeds.is_empty() {
            crate::memory::release_cached_memory();
        }
        timings.vision_ms = ms(t1);

        let t2 = Instant::now();
        let mut cache = self.model.new_cache();
        let logits = iris_nn::on_compute_pool(|| prefill(self.model.as_ref(), &prompt, &media_embeds, &mut cache))?;
        crate::memory::release_cached_memory();
        timings.prefill_ms = ms(t2);

        let t3 = Instant::now();
        let mut decoding = self.decoding(&prompt.token_ids, req.sampling.clone(), req.max_new_tokens, req.stop.clone(), None);
        let mut logits = logits;
        while decoding.finished().is_none() {
            let step = decoding.step(&logits.flatten_all()?.to_vec1::<f32>()?, &self.tokenizer)?;
            if !step.text.is_empty() {
                on_text(&step.text);
            }
            let (Some(token), None) = (step.token, step.finish) else { break };
            let positions = prompt.positions.slice(cache.len(), 1);
            logits = iris_nn::on_compute_pool(|| self.model.forward(&StepInput::decode(&[token], &positions), &mut cache))?;
        }
        timings.decode_ms = ms(t3);
        let out_ids = decoding.token_ids().to_vec();
        let text = decoding.text().to_string();
        let finish = decoding.finished().unwrap_or(FinishReason::Length);
        let decode_steps = out_ids.len().saturating_sub(1).max(1) as f64;
        timings.decode_tokens_per_s = if out_ids.len() > 1 { decode_steps / (timings.decode_ms / 1e3) } else { 0.0 };
        let boxes = box_reference(&prepared).map(|m| self.model.parse_boxes(&text, m.orig_hw)).unwrap_or_default();
        Ok(GenerateOutput {
            boxes,
            prompt_token_ids: prompt.token_ids,
            token_ids: out_ids,
            text,
            finish_reason: finish,
            timings,
        })
    }
}

/// End of the prefill chunk that starts at `start`: at most `max_len` tokens. A media item may be
/// split across chunks: each chunk gets its rows of the item's embeddings, and `next_token_type`
/// carries the look-ahead that routing needs.
pub fn chunk_end(prompt: &PromptInputs, start: usize, max_len: usize) -> usize {
    (start + max_len.max(1)).min(prompt.token_ids.len())
}

/// The prompt's step `[start, end)` with the rows of the media embeddings (`(prompt offset,
/// [len, C])`) that fall inside it.
pub fn prompt_step<'a>(prompt: &'a PromptInputs, start: usize, end: usize, positions: &'a [Vec<i64>], media_embeds: &[(usize, candle_core::Tensor)]) -> Result<StepInput<'a>> {
    let mut pieces = Vec::new();
    for (offset, emb) in media_embeds {
        let (a, b) = ((*offset).max(start), (offset + emb.dim(0)?).min(end));
        if a < b {
            // [len, C] -> the rows inside this step [b - a, C]
            pieces.push((a - start, emb.narrow(0, a - offset, b - a)?));
        }
    }
    Ok(StepInput {
        token_ids: &prompt.token_ids[start..end],
        positions,
        token_types: &prompt.token_types[start..end],
        media_embeds: pieces,
        all_logits: false,
        next_token_type: prompt.token_types.get(end).copied(),
    })
}

/// The vision embeddings of each media span of `prompt`, as `(first token, [tokens, C])`.
pub fn encode_media_spans(model: &dyn VisionLanguageModel, prompt: &PromptInputs, media: &[iris_models::PreparedMedia]) -> Result<Vec<(usize, candle_core::Tensor)>> {
    prompt.media_spans.iter().map(|span| Ok((span.start, model.encode_media(&media[span.media_index])?))).collect()
}

/// Runs the prompt through the model in chunks; returns the last token's logits `[1, V]`.
pub fn prefill(
    model: &dyn VisionLanguageModel,
    prompt: &PromptInputs,
    media_embeds: &[(usize, candle_core::Tensor)],
    cache: &mut iris_nn::KvCache,
) -> Result<candle_core::Tensor> {
    let total = prompt.token_ids.len();
    let mut start = 0;
    let mut logits = None;
    while start < total {
        let end = chunk_end(prompt, start, PREFILL_CHUNK);
        let positions = prompt.positions.slice(start, end - start);
        logits = Some(model.forward(&prompt_step(prompt, start, end, &positions, media_embeds)?, cache)?);
        start = end;
    }
    logits.ok_or_else(|| EngineError::Request("empty prompt".into()))
}

/// Pixel budgets a request asks for stay within the pixel limit, so a tiny image cannot be
/// resized into an enormous one.
fn check_pixel_options(opts: &MediaOptions, limits: DecodeLimits) -> Result<()> {
    for (name, value) in [("min_pixels", opts.min_pixels), ("max_pixels", opts.max_pixels), ("total_pixels", opts.total_pixels)] {
        if let Some(v) = value.filter(|&v| v as u64 > limits.max_pixels) {
            return Err(EngineError::TooLarge(format!("{name} {v} is over the pixel limit of {}", limits.max_pixels)));
        }
    }
    Ok(())
}

/// The media item grounding boxes refer to: the conversation's last image, else its last item.
pub fn box_reference(media: &[iris_models::PreparedMedia]) -> Option<&iris_models::PreparedMedia> {
    media.iter().rev().find(|m| m.kind == iris_models::MediaKind::Image).or(media.last())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

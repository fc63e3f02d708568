//! The seam between a model family and the engine. The engine sees only this file: plain data in
//! (messages, decoded media, token ids, positions, token types) and tensors out (media embeddings,
//! logits). Dimension letters: T tokens, C hidden, V vocabulary, N patches.

use crate::error::Result;
use crate::image::{ResizeFilter, RgbImage};
use candle_core::{DType, Tensor};
use iris_nn::KvCache;

/// Decoded media, before the family's preprocessing.
#[derive(Debug, Clone)]
pub enum Media {
    Image(RgbImage),
    /// Frames in order. `from_file`: sampled from a video file by the family's `plan_video` (and
    /// already at its planned size); otherwise given as a list of images.
    Video { frames: Vec<RgbImage>, from_file: bool },
}

/// What probing a video file tells before any frame is decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    pub total_frames: usize,
    pub fps: f64,
    pub width: usize,
    pub height: usize,
}

/// Which frames of a video file to decode, and the size each is resized to as it is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoPlan {
    /// Frame indices in `[0, total_frames)`, ascending.
    pub indices: Vec<usize>,
    /// `[H, W]`
    pub frame_hw: [usize; 2],
    /// The resize the family's reference applies to decoded frames.
    pub filter: ResizeFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// Per-request (or per-item) preprocessing overrides (None: the family's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaOptions {
    pub min_pixels: Option<usize>,
    pub max_pixels: Option<usize>,
    /// Video: frames sampled per second of video.
    pub fps: Option<f64>,
    /// Video: most frames sampled.
    pub max_frames: Option<usize>,
    /// Video: pixel budget of all sampled frames together.
    pub total_pixels: Option<usize>,
}

impl MediaOptions {
    /// `self`'s values where set, else `base`'s.
    pub fn or(self, base: MediaOptions) -> MediaOptions {
        MediaOptions {
            min_pixels: self.min_pixels.or(base.min_pixels),
            max_pixels: self.max_pixels.or(base.max_pixels),
            fps: self.fps.or(base.fps),
            max_frames: self.max_frames.or(base.max_frames),
            total_pixels: self.total_pixels.or(base.total_pixels),
        }
    }
}

/// One media item after the family's preprocessing: the exact model input and its token count.
#[derive(Debug, Clone)]
pub struct PreparedMedia {
    pub kind: MediaKind,
    /// Model-specific pixel tensor in f32 (Qwen2-VL: `[N, 1176]` patches; CogVLM2: `[3, H, W]`).
    pub pixel_values: Tensor,
    /// `[t, h, w]` in patches for grid-based families, `[1, 1, 1]` otherwise.
    pub grid_thw: [usize; 3],
    /// Number of prompt tokens this item occupies.
    pub num_tokens: usize,
    /// Original `[H, W]` of the first image/frame, for mapping outputs (boxes) back.
    pub orig_hw: [usize; 2],
    /// Size the model saw, `[H, W]`.
    pub resized_hw: [usize; 2],
}

/// A chat message with its parts; media parts index into the request's media list.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    pub parts: Vec<ContentPart>,
    /// The content was a plain string (templates render strings and part lists differently).
    pub content_is_string: bool,
}

#[derive(Debug, Clone)]
pub enum ContentPart {
    Text(String),
    Media(usize),
}

/// What a family needs from the engine's tokenizer and chat template.
pub trait PromptCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;
    fn token_id(&self, token: &str) -> Option<u32>;
    /// Renders the checkpoint's chat template over OpenAI-style JSON messages.
    fn render_chat_template(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> Result<String>;
}

/// Position ids of a prompt: 1 row (plain RoPE) or 3 rows (M-RoPE t/h/w), and the offset that
/// gives a decoded token at cache index `c` the position `c + delta` on every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    pub rows: Vec<Vec<i64>>,
    pub delta: i64,
}

impl Positions {
    pub fn sequential(len: usize) -> Self {
        Self { rows: vec![(0..len as i64).collect()], delta: 0 }
    }

    pub fn len(&self) -> usize {
        self.rows.first().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows for tokens `[start, start + len)`; tokens past the prompt get `index + delta`.
    pub fn slice(&self, start: usize, len: usize) -> Vec<Vec<i64>> {
        self.rows
            .iter()
            .map(|row| (start..start + len).map(|i| row.get(i).copied().unwrap_or(i as i64 + self.delta)).collect())
            .collect()
    }
}

/// Which expert/stream a token belongs to (CogVLM2's visual expert); families without experts
/// use `Text` everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Text,
    Vision,
}

/// Where a media item's embeddings go in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSpan {
    pub media_index: usize,
    pub start: usize,
    pub len: usize,
}

/// A fully built prompt: what the engine schedules.
#[derive(Debug, Clone)]
pub struct PromptInputs {
    pub token_ids: Vec<u32>,
    pub positions: Positions,
    pub token_types: Vec<TokenType>,
    pub media_spans: Vec<MediaSpan>,
}

/// Options a family may honour when building the prompt (e.g. CogVLM2's template choice).
#[derive(Debug, Clone, Default)]
pub struct PromptOptions {
    pub template: Option<String>,
}

/// One forward step of one sequence: tokens `[T]` starting at cache index `cache.len()`.
pub struct StepInput<'a> {
    pub token_ids: &'a [u32],
    /// Position rows for these tokens (see `Positions::slice`).
    pub positions: &'a [Vec<i64>],
    pub token_types: &'a [TokenType],
    /// Embeddings `[len, C]` replacing the token embeddings at `offset` within this step.
    pub media_embeds: Vec<(usize, Tensor)>,
    /// Return logits for every token (`[T, V]`) instead of the last one (`[1, V]`).
    pub all_logits: bool,
    /// Type of the prompt token right after this step (None at the prompt's end and for
    /// generated tokens), so a family whose routing looks one token ahead (CogVLM2's expert mask)
    /// routes a media span split across steps as it routes the whole prompt.
    pub next_token_type: Option<TokenType>,
}

impl<'a> StepInput<'a> {
    /// One generated token: text type, no media, last-token logits.
    pub fn decode(token: &'a [u32], positions: &'a [Vec<i64>]) -> Self {
        Self { token_ids: token, positions, token_types: &[TokenType::Text], media_embeds: vec![], all_logits: false, next_token_type: None }
    }
}

/// Static facts about a loaded model that the engine and front ends need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub family: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub max_context: usize,
    pub dtype: DType,
    /// Most media items one conversation may hold (None: no limit).
    pub max_media_per_conversation: Option<usize>,
    pub supports_video: bool,
    /// What the KV cache is stored as (`KvCache::stored_as`).
    pub kv_dtype: DType,
    /// Bytes of KV cache per token (all layers, K and V, in `kv_dtype`), for memory admission.
    pub kv_bytes_per_token: usize,
    /// Resident bytes of the loaded weights (vision and language).
    pub weight_bytes: usize,
    /// Weight bytes read to decode one text token (the decode roofline's denominator).
    pub decode_bytes_per_token: usize,
}

/// A loaded vision-language model. Weights are immutable; per-sequence state lives in `KvCache`.
pub trait VisionLanguageModel: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Pixels, grid and token count of one item: the single source of the token count.
    fn prepare_media(&self, media: &Media, opts: &MediaOptions) -> Result<PreparedMedia>;

    /// Which frames of a probed video file to decode and at what size (families without video
    /// refuse).
    fn plan_video(&self, _info: &VideoInfo, _opts: &MediaOptions) -> Result<VideoPlan> {
        Err(crate::error::ModelError::Unsupported(format!("{} does not take videos", self.info().family)))
    }

    /// Token ids with media placeholders expanded, positions, token types, media spans.
    fn build_prompt(&self, messages: &[ChatMessage], media: &[PreparedMedia], codec: &dyn PromptCodec, opts: &PromptOptions) -> Result<PromptInputs>;

    /// Runs the vision tower: `[num_tokens, C]` in the model dtype.
    fn encode_media(&self, media: &PreparedMedia) -> Result<Tensor>;

    /// An empty KV cache with one layer per decoder layer.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.info().num_layers).stored_as(self.info().kv_dtype)
    }

    /// Appends the step to `cache` and returns f32 logits `[1, V]` (or `[T, V]`).
    fn forward(&self, step: &StepInput, cache: &mut KvCache) -> Result<Tensor> {
        let mut out = self.forward_batch(std::slice::from_ref(step), &mut [cache])?;
        Ok(out.pop().expect("one step in, one logits tensor out"))
    }

    /// Several sequences' steps in one forward: every linear sees all their tokens stacked
    /// (`[ΣT, C]`), attention stays per sequence, step `i` appends to `caches[i]`. Returns each
    /// step's f32 logits in order. A step may be a prefill chunk or one decode token.
    fn forward_batch(&self, steps: &[StepInput], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>>;

    /// Checkpoint tensors that loading did not consume.
    fn unconsumed_tensors(&self) -> &[String];

    /// Boxes in generated text, in pixels of an image of `[H, W]` `image_hw` (families without a
    /// grounding format return none).
    fn parse_boxes(&self, _text: &str, _image_hw: [usize; 2]) -> Vec<GroundingBox> {
        Vec::new()
    }
}

/// A box the model drew around something, in pixels of the original image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroundingBox {
    pub label: String,
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

/// How a synthetic (random-weight) tensor is initialised, and one tensor of a layout.
pub use iris_nn::synthetic::{Init, TensorSpec};

/// A named real-architecture configuration of a family (e.g. `qwen2-vl-2b`): the files a
/// checkpoint directory needs besides weights and tokenizer, and its tensor layout.
#[derive(Debug, Clone)]
pub struct SyntheticPreset {
    pub name: &'static str,
    pub config_json: serde_json::Value,
    pub generation_config_json: serde_json::Value,
    pub preprocessor_config_json: Option<serde_json::Value>,
    pub tensors: Vec<TensorSpec>,
}

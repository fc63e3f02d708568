//! Command-line options shared by `run`, `chat` (and later `serve`, `bench`).

use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use iris_engine::generation_config::{GenerationDefaults, SamplingOverrides};
use iris_engine::weight_plan::{plan_for_checkpoint, FormatChoice, WeightPlan};
use iris_engine::SamplingParams;
use iris_nn::WeightFormat;
use std::path::Path;
use iris_models::{LoadOptions, MediaOptions, PromptOptions};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DtypeArg {
    /// The fastest faithful precision on this device (f32 on CPU, see BENCHMARKS.md).
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum KvDtypeArg {
    /// f16 when the language model's weights are quantized (q8_0, q4k) and the compute dtype is
    /// f32, as llama.cpp stores its cache; otherwise the compute dtype.
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory, or a Hugging Face repo id (from the local HF cache, else downloaded).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ModelArgs {
    /// Load options for the checkpoint in `dir` (resolving `--quant auto` against its size).
    pub fn load_options(&self, dir: &Path) -> Result<LoadOptions> {
        let p = &self.precision;
        Ok(p.options_from(plan_for_checkpoint(dir, p.dtype(), p.quant, p.quant_vision)?))
    }
}

/// Compute precision and weight storage.
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// Compute precision of the activations (and of weights left dense).
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeArg,
    /// Storage of the language model's linear weights, converted while loading: f32, f16, bf16,
    /// q8_0, q4k, or auto (dense in --dtype if it fits in 80% of available memory, else q8_0,
    /// else q4k). Embedding and lm_head use q8_0 when this is q8_0 or q4k.
    #[arg(long, default_value = "auto", value_parser = parse_format_choice)]
    pub quant: FormatChoice,
    /// Storage of the vision tower's linear weights (default: as --quant, q8_0 under q4k).
    #[arg(long, value_parser = parse_format)]
    pub quant_vision: Option<WeightFormat>,
    /// Keep quantized weights here and reuse them on the next load of the same checkpoint
    /// (default: $IRIS_CACHE_DIR, else $XDG_CACHE_HOME/iris/quant, else ~/.cache/iris/quant).
    #[arg(long, value_name = "DIR")]
    pub quant_cache: Option<std::path::PathBuf>,
    /// Quantize on every load; read and write no cache.
    #[arg(long, conflicts_with = "quant_cache")]
    pub no_quant_cache: bool,
    /// Storage of the KV cache: f32, f16, bf16, or auto (f16 under q8_0/q4k language weights and
    /// f32 compute, else the compute dtype). f16 halves the cache's memory and what a decode step reads.
    #[arg(long, value_enum, default_value = "auto")]
    pub kv_dtype: KvDtypeArg,
}

fn parse_format_choice(s: &str) -> std::result::Result<FormatChoice, String> {
    s.parse()
}

fn parse_format(s: &str) -> std::result::Result<WeightFormat, String> {
    s.parse()
}

impl PrecisionArgs {
    pub fn dtype(&self) -> DType {
        match self.dtype {
            // candle's bf16 matmul is ~30x slower than f32 on CPU, and f16 overflows Qwen2's
            // activations; f32 is the fastest faithful choice for activations.
            DtypeArg::Auto | DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        }
    }

    pub fn options_from(&self, plan: WeightPlan) -> LoadOptions {
        tracing::info!("{}", plan.summary);
        let quant_cache = if self.no_quant_cache { None } else { self.quant_cache.clone().or_else(iris_nn::quant::cache::default_dir) };
        let kv_dtype = match self.kv_dtype {
            // a 16-bit compute dtype keeps its own cache: decode attention reads f16 rows only
            // for f32 queries, and a bf16 model's values may exceed f16's range
            KvDtypeArg::Auto => plan.language.filter(|f| f.is_quantized() && self.dtype() == DType::F32).map(|_| DType::F16),
            KvDtypeArg::F32 => Some(DType::F32),
            KvDtypeArg::F16 => Some(DType::F16),
            KvDtypeArg::Bf16 => Some(DType::BF16),
        };
        LoadOptions { language_format: plan.language, vision_format: plan.vision, quant_cache, kv_dtype, ..LoadOptions::new(self.dtype(), Device::Cpu) }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy. Default: the checkpoint's generation_config.json.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text appears (repeatable); the stop text is not included.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Override the preprocessor's minimum pixels per image.
    #[arg(long)]
    pub min_pixels: Option<usize>,
    /// Override the preprocessor's maximum pixels per image.
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Video frames sampled per second (default 2, as qwen-vl-utils).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Most frames sampled from a video (default 768).
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// Pixel budget of all frames of a video together (default 24576*28*28).
    #[arg(long)]
    pub total_pixels: Option<usize>,
    /// CogVLM2 prompt template (default: the checkpoint's `template_version`).
    #[arg(long, value_parser = ["chat", "base", "vqa"])]
    pub template: Option<String>,
}

impl SamplingArgs {
    /// Checkpoint defaults overridden by the flags; `--temperature 0` forces greedy.
    pub fn sampling(&self, defaults: &GenerationDefaults) -> Result<SamplingParams> {
        let o = SamplingOverrides { temperature: self.temperature, top_p: self.top_p, top_k: self.top_k, repetition_penalty: self.repetition_penalty, seed: self.seed };
        defaults.sampling_with(&o).map_err(|e| anyhow::anyhow!(e))
    }

    pub fn media_options(&self) -> MediaOptions {
        MediaOptions { min_pixels: self.min_pixels, max_pixels: self.max_pixels, fps: self.fps, max_frames: self.max_frames, total_pixels: self.total_pixels }
    }

    pub fn prompt_options(&self) -> PromptOptions {
        PromptOptions { template: self.template.clone() }
    }
}

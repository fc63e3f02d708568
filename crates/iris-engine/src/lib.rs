//! The Iris engine: resolves and loads a checkpoint, owns the tokenizer and chat template, turns
//! OpenAI-style messages into model inputs, samples and streams text. It reaches model families
//! only through `iris_models::api`.

pub mod accuracy;
pub mod checkpoint;
pub mod decoding;
pub mod encoder_cache;
pub mod detokenizer;
pub mod error;
pub mod generate;
pub mod generation_config;
pub mod memory;
pub mod messages;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
pub mod video;
pub mod weight_plan;

pub use error::{EngineError, Result};
pub use generate::{Engine, FinishReason, GenerateOutput, GenerateRequest, Timings};
pub use sampler::SamplingParams;

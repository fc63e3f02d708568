//! Iris model families (Qwen2-VL, CogVLM2) behind one trait (`api::VisionLanguageModel`), the registry that picks a
//! family from a checkpoint, and image handling shared by all families.

pub mod api;
pub mod cogvlm2;
pub mod common;
pub mod config_util;
pub mod error;
pub mod image;
pub mod qwen2_vl;
pub mod registry;

pub use api::*;
pub use error::{ModelError, Result};
pub use registry::{load_model, synthetic_presets, LoadOptions};

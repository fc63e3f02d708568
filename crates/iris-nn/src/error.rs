//! Typed errors of the neural-network layer: every variant names the file or tensor involved.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: corrupt safetensors file: {message}")]
    CorruptSafetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from the checkpoint ({dir})")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}` in {path} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { name: String, path: PathBuf, expected: Vec<usize>, actual: Vec<usize> },
    #[error("tensor `{name}` in {path} has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, path: PathBuf, dtype: String },
    #[error("quantization: {0}")]
    Quantization(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, NnError>;

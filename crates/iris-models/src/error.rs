//! Typed errors of the model layer.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{what}: {message}")]
    Media { what: String, message: String },
    /// Media over a size limit (checked before decoding).
    #[error("{what}: {message}")]
    TooLarge { what: String, message: String },
    #[error("prompt: {0}")]
    Prompt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Nn(#[from] iris_nn::NnError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

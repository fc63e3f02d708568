//! Typed errors of the engine.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("model `{repo}`: {message}")]
    ModelResolve { repo: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("request: {0}")]
    Request(String),
    #[error("{0}")]
    Limit(String),
    /// Input over a size limit (a body, a download).
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Model(#[from] iris_models::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;

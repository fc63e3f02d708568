//! Iris neural-network building blocks on top of candle.
//!
//! Nothing here names a model family: weight loading from memory-mapped safetensors, norms in the
//! reference operation order, chunked multi-head attention, rotary embedding and the KV cache.

pub mod amx;
pub mod attention;
pub mod bandwidth;
pub mod bf16_gemm;
pub mod decode_attention;
pub mod error;
pub mod f32_gemm;
pub mod flash_attention;
pub mod gemv;
pub mod heads;
pub mod inplace;
pub mod kv_cache;
pub mod ops;
pub mod quant;
pub mod softmax;
pub mod synthetic;
pub mod threads;
mod tiled_output;
pub mod weights;

pub use error::{NnError, Result};
pub use kv_cache::{KvCache, LayerKv};
pub use ops::{Embedding, Linear};
pub use quant::{QuantizedMatrix, WeightFormat};
pub use threads::on_compute_pool;
pub use weights::WeightStore;

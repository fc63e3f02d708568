//! Shared by the engine's integration tests: where the fixtures are, and a greedy request for a
//! fixture case's messages.

#![allow(dead_code)]

use iris_engine::messages::parse_messages;
use iris_engine::GenerateRequest;
use serde_json::Value;
use std::path::PathBuf;

/// `../shared/fixtures/NAME` (or `$IRIS_SHARED/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var("IRIS_SHARED").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("fixtures").join(name)
}

/// The Qwen2-VL fixture.
pub fn fixture_dir() -> PathBuf {
    fixture("qwen2-vl-tiny")
}

pub fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap()).unwrap()
}

/// Greedy request for OpenAI-style `messages` whose media paths are relative to the fixture.
pub fn greedy(messages: &Value, max_new_tokens: usize) -> GenerateRequest {
    greedy_in(&fixture_dir(), messages, max_new_tokens)
}

/// Greedy request for `messages` whose media paths are relative to `dir`.
pub fn greedy_in(dir: &std::path::Path, messages: &Value, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest::greedy(parse_messages(messages, Some(dir)).unwrap(), max_new_tokens)
}

/// `(max |ours - reference|, that divided by max |reference|)`, in f32.
pub fn rel_err(ours: &candle_core::Tensor, reference: &candle_core::Tensor) -> (f32, f32) {
    use candle_core::DType;
    let a = ours.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = reference.flatten_all().unwrap();
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let max_abs = (&a - &b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    (max_abs, max_abs / scale.max(1e-12))
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

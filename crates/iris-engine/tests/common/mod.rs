//! Shared by the engine's integration tests: where the fixtures are, and a greedy request for a
//! fixture case's messages.

#![allow(dead_code)]

use iris_engine::messages::parse_messages;
use iris_engine::GenerateRequest;
use serde_json::Value;
use std::path::PathBuf;

/// `../shared/fixtures/qwen2-vl-tiny` (or `$IRIS_SHARED/fixtures/qwen2-vl-tiny`).
pub fn fixture_dir() -> PathBuf {
    let shared = std::env::var("IRIS_SHARED").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("fixtures/qwen2-vl-tiny")
}

pub fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap()).unwrap()
}

/// Greedy request for OpenAI-style `messages` whose media paths are relative to the fixture.
pub fn greedy(messages: &Value, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest::greedy(parse_messages(messages, Some(&fixture_dir())).unwrap(), max_new_tokens)
}

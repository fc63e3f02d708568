//! The OpenAI chat-completions wire format: a request body checked field by field (every error
//! names its field), and the `chat.completion` / `chat.completion.chunk` objects we answer with.
//! Extensions beyond OpenAI, as vLLM spells them: `top_k`, `repetition_penalty`, `min_pixels`,
//! `max_pixels` (and `fps`, `max_frames`, `total_pixels` for videos, `template` for CogVLM2);
//! answers carry `boxes` (grounding boxes in pixels) and `timings`.

use crate::error::ApiError;
use iris_engine::decoding::TokenLogprob;
use iris_engine::generation_config::SamplingOverrides;
use iris_engine::scheduler::SeqSummary;
use iris_engine::tokenizer::TextTokenizer;
use iris_models::MediaOptions;
use serde_json::{json, Map, Value};

/// OpenAI's limits.
const MAX_STOP_STRINGS: usize = 4;
const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Value,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOverrides,
    pub stop: Vec<String>,
    /// None: no logprobs; Some(n): the chosen token's and n alternatives'.
    pub top_logprobs: Option<usize>,
    pub media: MediaOptions,
    pub template: Option<String>,
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| ApiError::invalid(key, format!("expected a boolean, got {v}")))).transpose()
    }

    fn number(&self, key: &str, ok: impl Fn(f64) -> bool, want: &str) -> Result<Option<f64>, ApiError> {
        self.get(key)
            .map(|v| v.as_f64().filter(|x| ok(*x)).ok_or_else(|| ApiError::invalid(key, format!("expected {want}, got {v}"))))
            .transpose()
    }

    fn count(&self, key: &str, min: u64) -> Result<Option<usize>, ApiError> {
        self.get(key)
            .map(|v| v.as_u64().filter(|x| *x >= min).map(|x| x as usize).ok_or_else(|| ApiError::invalid(key, format!("expected an integer >= {min}, got {v}"))))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>, ApiError> {
        self.get(key).map(|v| v.as_str().map(String::from).ok_or_else(|| ApiError::invalid(key, format!("expected a string, got {v}")))).transpose()
    }
}

pub fn parse_chat_request(body: &Value) -> Result<ChatRequest, ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request(format!("the request body must be a JSON object, got {}", type_name(body))))?;
    let f = Fields(obj);
    let messages = f.get("messages").cloned().ok_or_else(|| ApiError::invalid("messages", "required"))?;
    if !messages.is_array() {
        return Err(ApiError::invalid("messages", format!("expected an array of messages, got {}", type_name(&messages))));
    }
    if f.count("n", 1)?.unwrap_or(1) != 1 {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    for key in ["tools", "functions", "tool_choice", "response_format"] {
        if f.get(key).is_some() {
            return Err(ApiError::invalid(key, "not supported by this server"));
        }
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if f.number(key, |x| (-2.0..=2.0).contains(&x), "a number in [-2, 2]")?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::invalid(key, "not supported; use repetition_penalty"));
        }
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o).bool("include_usage").map_err(|e| ApiError { param: Some("stream_options.include_usage".into()), ..e })?.unwrap_or(false),
        Some(v) => return Err(ApiError::invalid("stream_options", format!("expected an object, got {v}"))),
    };
    let max_tokens = match f.count("max_completion_tokens", 1)? {
        Some(n) => Some(n),
        None => f.count("max_tokens", 1)?,
    };
    let top_k = match f.get("top_k") {
        // vLLM's "disabled" spellings
        Some(v) if v.as_i64() == Some(-1) || v.as_i64() == Some(0) => None,
        _ => f.count("top_k", 1)?,
    };
    let seed = f.get("seed").map(|v| v.as_i64().map(|s| s as u64).or_else(|| v.as_u64()).ok_or_else(|| ApiError::invalid("seed", format!("expected an integer, got {v}")))).transpose()?;
    let sampling = SamplingOverrides {
        temperature: f.number("temperature", |x| (0.0..=2.0).contains(&x), "a number in [0, 2]")?.map(|x| x as f32),
        top_p: f.number("top_p", |x| x > 0.0 && x <= 1.0, "a number in (0, 1]")?.map(|x| x as f32),
        top_k,
        repetition_penalty: f.number("repetition_penalty", |x| x > 0.0 && x.is_finite(), "a number > 0")?.map(|x| x as f32),
        seed,
    };
    let stop = match f.get("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from).ok_or_else(|| ApiError::invalid("stop", format!("expected strings, got {s}"))))
            .collect::<Result<Vec<_>, _>>()?,
        Some(v) => return Err(ApiError::invalid("stop", format!("expected a string or an array of strings, got {v}"))),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings, got {}", stop.len())));
    }
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.get("top_logprobs").map(|v| v.as_u64().filter(|n| *n as usize <= MAX_TOP_LOGPROBS).map(|n| n as usize).ok_or_else(|| ApiError::invalid("top_logprobs", format!("expected an integer in [0, {MAX_TOP_LOGPROBS}], got {v}")))).transpose()?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid("top_logprobs", "requires logprobs: true"));
    }
    let media = MediaOptions {
        min_pixels: f.count("min_pixels", 1)?,
        max_pixels: f.count("max_pixels", 1)?,
        fps: f.number("fps", |x| x > 0.0 && x.is_finite(), "a positive number")?,
        max_frames: f.count("max_frames", 1)?,
        total_pixels: f.count("total_pixels", 1)?,
    };
    Ok(ChatRequest {
        model: f.string("model")?,
        messages,
        stream,
        include_usage,
        max_tokens,
        sampling,
        stop,
        top_logprobs: logprobs.then(|| top.unwrap_or(0)),
        media,
        template: f.string("template")?,
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Identity of one completion across its chunks.
pub struct CompletionMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn token_entry(tok: &TextTokenizer, id: u32, logprob: f32) -> Value {
    let text = tok.decode(&[id]).unwrap_or_default();
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
}

/// One `logprobs.content` entry.
pub fn logprob_entry(tok: &TextTokenizer, lp: &TokenLogprob) -> Value {
    let mut e = token_entry(tok, lp.token, lp.logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|(id, l)| token_entry(tok, *id, *l)).collect());
    e
}

pub fn usage(s: &SeqSummary) -> Value {
    json!({"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens})
}

pub fn timings(s: &SeqSummary) -> Value {
    json!({"queue_ms": s.queue_ms, "vision_ms": s.vision_ms, "ttft_ms": s.ttft_ms, "decode_tokens_per_s": s.decode_tokens_per_s, "cached_media": s.cached_media})
}

/// A whole `chat.completion`.
pub fn completion(meta: &CompletionMeta, s: &SeqSummary, logprobs: Option<Vec<Value>>) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": s.text},
            "logprobs": logprobs.map(|c| json!({"content": c})),
            "finish_reason": s.finish.as_str(),
        }],
        "usage": usage(s),
        "boxes": s.boxes,
        "timings": timings(s),
    })
}

/// A `chat.completion.chunk` with one choice.
pub fn chunk(meta: &CompletionMeta, delta: Value, logprobs: Option<Value>, finish: Option<&str>) -> Value {
    json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_and_named() {
        let ok = parse_chat_request(&json!({"model": "m", "messages": [], "max_tokens": 5, "stop": "x", "logprobs": true, "top_logprobs": 2, "top_k": -1, "stream": true, "stream_options": {"include_usage": true}})).unwrap();
        assert_eq!((ok.max_tokens, ok.top_logprobs, ok.sampling.top_k, ok.include_usage), (Some(5), Some(2), None, true));
        assert_eq!(ok.stop, vec!["x".to_string()]);
        for (body, param) in [
            (json!({"messages": "hi"}), "messages"),
            (json!({"model": "m"}), "messages"),
            (json!({"messages": [], "temperature": "hot"}), "temperature"),
            (json!({"messages": [], "temperature": 3}), "temperature"),
            (json!({"messages": [], "max_tokens": 0}), "max_tokens"),
            (json!({"messages": [], "top_p": 0}), "top_p"),
            (json!({"messages": [], "stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"messages": [], "top_logprobs": 3}), "top_logprobs"),
            (json!({"messages": [], "n": 2}), "n"),
            (json!({"messages": [], "max_pixels": -4}), "max_pixels"),
            (json!({"messages": [], "stream": "yes"}), "stream"),
        ] {
            let e = parse_chat_request(&body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        assert!(parse_chat_request(&json!([1])).unwrap_err().message.contains("JSON object"));
    }
}

//! Generation-loop behaviour on the tiny Qwen2-VL fixture: streamed pieces add up to the final
//! text, stop strings cut the text and report `stop`, the token limit reports `length`, seeded
//! sampling is reproducible, and over-long prompts are refused with a named limit.

use candle_core::{DType, Device};
use iris_engine::{Engine, FinishReason, GenerateRequest, SamplingParams};
use iris_models::LoadOptions;
use serde_json::{json, Value};

mod common;

fn request(messages: Value, max_new_tokens: usize, sampling: SamplingParams, stop: Vec<String>) -> GenerateRequest {
    GenerateRequest { sampling, stop, ..common::greedy(&messages, max_new_tokens) }
}

#[test]
fn streaming_stop_strings_limits_and_seeds() {
    let dir = common::fixture_dir();
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    let cases = common::cases();
    let c1 = &cases["cases"][0];
    let messages = c1["request"]["messages"].clone();
    let full_text = c1["generation"]["text"].as_str().unwrap().to_string();

    // streamed pieces == final text == fixture text
    let mut streamed = String::new();
    let out = engine.generate(&request(messages.clone(), 16, SamplingParams::default(), vec![]), &mut |p| streamed.push_str(p)).unwrap();
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, full_text);
    assert_eq!(out.finish_reason, FinishReason::Length);

    // a stop string from the middle of the answer: text ends right before it
    let chars: Vec<char> = full_text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut streamed = String::new();
    let out = engine.generate(&request(messages.clone(), 16, SamplingParams::default(), vec![stop.clone()]), &mut |p| streamed.push_str(p)).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, full_text[..full_text.find(&stop).unwrap()]);
    assert_eq!(streamed, out.text, "no part of the stop string is streamed");

    // token limit
    let out = engine.generate(&request(messages.clone(), 3, SamplingParams::default(), vec![]), &mut |_| {}).unwrap();
    assert_eq!(out.token_ids.len(), 3);
    assert_eq!(out.finish_reason, FinishReason::Length);

    // seeded sampling is reproducible and differs from another seed
    let sample = |seed| {
        let p = SamplingParams { temperature: 1.5, top_k: Some(50), top_p: Some(0.95), repetition_penalty: Some(1.1), seed: Some(seed) };
        engine.generate(&request(messages.clone(), 8, p, vec![]), &mut |_| {}).unwrap().token_ids
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));

    // per-request pixel budget: 150x100 under max_pixels 3136 becomes 28x56, 2 tokens
    let mut req = request(messages.clone(), 1, SamplingParams::default(), vec![]);
    req.media_options.max_pixels = Some(3136);
    let (prompt, media) = engine.prepare(&req).unwrap();
    assert_eq!((media[0].resized_hw, media[0].num_tokens), ([28, 56], 2));
    assert_eq!(prompt.token_ids.len(), (c1["num_prompt_tokens"].as_u64().unwrap() - c1["vision_items"][0]["num_tokens"].as_u64().unwrap()) as usize + 2);
    req.media_options.min_pixels = Some(1 << 20);
    assert!(engine.prepare(&req).unwrap_err().to_string().contains("min_pixels"));

    // a prompt longer than the context is refused, naming the limit
    let long = "word ".repeat(40_000);
    let e = engine.generate(&request(json!([{"role": "user", "content": long}]), 4, SamplingParams::default(), vec![]), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("context") && e.contains("32768"), "{e}");
}

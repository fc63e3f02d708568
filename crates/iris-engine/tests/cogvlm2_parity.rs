//! Parity with the golden outputs of the CogVLM2 reference remote code on the tiny random model in
//! `shared/fixtures/cogvlm2-tiny` (see its README): input ids, token types, positions and the
//! vision-expert mask exact; pixel values max|diff| <= 1e-6; vision embeddings and last logits
//! relative error <= 1e-4 in f32; every greedy step's top-5 within 5e-4 (the README's tolerance);
//! the 16 greedy tokens identical, through the step API and through `Engine::generate`.

use candle_core::{DType, Device, Tensor};
use iris_engine::generate::prefill;
use iris_engine::sampler::{argmax, top_k_logits};
use iris_engine::{Engine, GenerateRequest};
use iris_models::cogvlm2::text::vision_expert_mask;
use iris_models::{LoadOptions, PromptOptions, StepInput, TokenType};
use std::collections::HashMap;

mod common;
use common::{rel_err, u32s};

#[test]
fn cogvlm2_tiny_matches_the_reference_on_every_case() {
    let dir = common::fixture("cogvlm2-tiny");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let expected: HashMap<String, Tensor> = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    assert!(engine.model.unconsumed_tensors().is_empty(), "unconsumed: {:?}", engine.model.unconsumed_tensors());
    assert_eq!(engine.model.info().family, "cogvlm2");
    let get = |key: &str| expected.get(key).unwrap_or_else(|| panic!("missing expected tensor {key}"));

    let list = cases.as_array().unwrap();
    assert_eq!(list.len(), 6, "fixture cases");
    for case in list {
        let id = case["id"].as_str().unwrap();
        let request = &case["request"];
        let template = request["template_version"].as_str().map(String::from);
        let req = GenerateRequest { prompt_options: PromptOptions { template }, ..common::greedy_in(&dir, &request["messages"], 16) };
        let (prompt, media) = engine.prepare(&req).unwrap();

        // ids, token types, positions, expert routing: exact
        assert_eq!(prompt.token_ids, u32s(&case["input_ids"]), "{id}: input_ids");
        let types: Vec<u32> = prompt.token_types.iter().map(|t| (*t == TokenType::Vision) as u32).collect();
        assert_eq!(types, u32s(&case["token_type_ids"]), "{id}: token_type_ids");
        let want_pos: Vec<i64> = case["position_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!(prompt.positions.rows, vec![want_pos], "{id}: position_ids");
        let mask: Vec<u32> = vision_expert_mask(&prompt.token_types).into_iter().map(u32::from).collect();
        assert_eq!(mask, u32s(&case["vision_expert_mask"]), "{id}: vision_expert_mask");

        let mut embeds = Vec::new();
        if case["image"].is_null() {
            assert!(media.is_empty() && prompt.media_spans.is_empty(), "{id}: text-only case has media");
        } else {
            let (d, _) = rel_err(&media[0].pixel_values, get(&format!("{id}.pixel_values")));
            println!("{id}: pixel_values max|diff| = {d:e}");
            assert!(d <= 1e-6, "{id}: pixel_values max|diff| {d}");
            // the vision side on the reference pixels, so that it is checked on its own inputs
            let mut reference = media[0].clone();
            reference.pixel_values = get(&format!("{id}.pixel_values")).clone();
            let emb = engine.model.encode_media(&reference).unwrap();
            let (d, r) = rel_err(&emb, get(&format!("{id}.vision_embeds")));
            println!("{id}: vision_embeds max|diff| = {d:e}, relative {r:e}");
            assert!(r <= 1e-4, "{id}: vision_embeds relative error {r}");
            assert_eq!(prompt.media_spans.len(), 1);
            embeds.push((prompt.media_spans[0].start, emb));
        }

        // prefill logits, then greedy steps with the language expert and their top-5 logits
        let mut cache = engine.model.new_cache();
        let mut logits = prefill(engine.model.as_ref(), &prompt, &embeds, &mut cache).unwrap().flatten_all().unwrap();
        let (d, r) = rel_err(&logits, get(&format!("{id}.logits_last")));
        println!("{id}: logits_last max|diff| = {d:e}, relative {r:e}");
        assert!(r <= 1e-4, "{id}: logits_last relative error {r}");
        let gen = &case["generation"];
        let want_tokens = u32s(&gen["output_ids"]);
        let mut worst_top5 = 0f32;
        for (i, step) in gen["steps"].as_array().unwrap().iter().enumerate() {
            let v = logits.to_vec1::<f32>().unwrap();
            let top5 = top_k_logits(&v, 5);
            let want5 = step["top5"].as_array().unwrap();
            assert_eq!(top5.iter().map(|t| t.0).collect::<Vec<_>>(), want5.iter().map(|t| t["id"].as_u64().unwrap() as u32).collect::<Vec<_>>(), "{id}: step {i} top-5 ids");
            for ((_, ours), want) in top5.iter().zip(want5) {
                worst_top5 = worst_top5.max((ours - want["logit"].as_f64().unwrap() as f32).abs());
            }
            let token = argmax(&v) as u32;
            assert_eq!(token, want_tokens[i], "{id}: greedy token {i}");
            if i + 1 == want_tokens.len() {
                break;
            }
            // the next step feeds this token at the position the reference gives it
            let pos = prompt.positions.slice(cache.len(), 1);
            let next_last = gen["steps"][i + 1]["last_position_id"].as_i64().unwrap();
            assert_eq!(pos[0][0], next_last, "{id}: position of decode step {}", i + 1);
            let ids = [token];
            let step_in = StepInput::decode(&ids, &pos);
            logits = engine.model.forward(&step_in, &mut cache).unwrap().flatten_all().unwrap();
        }
        println!("{id}: top-5 logits over {} steps max|diff| = {worst_top5:e}", want_tokens.len());
        assert!(worst_top5 <= 5e-4, "{id}: top-5 logits differ by {worst_top5}");

        // the whole engine path: same tokens and text
        let out = engine.generate(&req, &mut |_| {}).unwrap();
        assert_eq!(out.token_ids, want_tokens, "{id}: generated ids");
        assert_eq!(out.text, gen["output_text"].as_str().unwrap(), "{id}: generated text");
    }
}

#[test]
fn cogvlm2_rejects_what_the_reference_cannot_do() {
    let dir = common::fixture("cogvlm2-tiny");
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    let img = |f: &str| serde_json::json!({"type": "image", "image": format!("media/{f}")});
    let text = |t: &str| serde_json::json!({"type": "text", "text": t});
    let err = |messages: serde_json::Value, template: Option<&str>| -> String {
        let req = GenerateRequest { prompt_options: PromptOptions { template: template.map(String::from) }, ..common::greedy_in(&dir, &messages, 4) };
        format!("{:#}", engine.generate(&req, &mut |_| {}).unwrap_err())
    };
    let two = serde_json::json!([{"role": "user", "content": [img("a1_gradient_shapes.png"), img("a4_checker_rings.png"), text("Compare.")]}]);
    let e = err(two, None);
    assert!(e.contains("at most 1"), "{e}");
    let system = serde_json::json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]);
    let e = err(system, None);
    assert!(e.contains("system"), "{e}");
    let e = err(serde_json::json!([{"role": "user", "content": "hi"}]), Some("poem"));
    assert!(e.contains("poem"), "{e}");
}

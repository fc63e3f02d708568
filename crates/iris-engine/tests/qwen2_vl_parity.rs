//! Parity with the golden outputs of transformers 4.57.6 on the tiny random Qwen2-VL in
//! `shared/fixtures/qwen2-vl-tiny` (see its README): ids, grids, positions and rope delta exact;
//! pixel values max|diff| <= 1e-6; vision embeddings and last logits relative error <= 1e-4 in f32;
//! top-5 logits of every greedy step within 1e-3; the 16 greedy tokens and their text identical.

use candle_core::{DType, Device, Tensor};
use iris_engine::generate::prefill;
use iris_engine::sampler::{argmax, top_k_logits};
use iris_engine::Engine;
use iris_models::{LoadOptions, MediaKind, StepInput};
use std::collections::HashMap;

mod common;
use common::{rel_err, u32s};

#[test]
fn qwen2_vl_tiny_matches_transformers_on_every_case() {
    let dir = common::fixture_dir();
    let cases = common::cases();
    let expected: HashMap<String, Tensor> = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    assert!(engine.model.unconsumed_tensors().is_empty(), "unconsumed: {:?}", engine.model.unconsumed_tensors());
    let get = |key: &str| expected.get(key).unwrap_or_else(|| panic!("missing expected tensor {key}"));

    for case in cases["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let req = common::greedy(&case["request"]["messages"], 16);
        let (prompt, media) = engine.prepare(&req).unwrap();

        // ids, grids, positions, delta: exact
        assert_eq!(prompt.token_ids, u32s(&case["input_ids"]), "{id}: input_ids");
        let grids = |kind: MediaKind| media.iter().filter(|m| m.kind == kind).map(|m| m.grid_thw.to_vec()).collect::<Vec<_>>();
        let want_grids = |k: &str| case[k].as_array().unwrap().iter().map(|g| g.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()).collect::<Vec<Vec<usize>>>();
        assert_eq!(grids(MediaKind::Image), want_grids("image_grid_thw"), "{id}: image_grid_thw");
        assert_eq!(grids(MediaKind::Video), want_grids("video_grid_thw"), "{id}: video_grid_thw");
        let want_pos: Vec<Vec<i64>> = case["position_ids"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect();
        assert_eq!(prompt.positions.rows, want_pos, "{id}: position_ids");
        assert_eq!(prompt.positions.delta, case["rope_delta"].as_i64().unwrap(), "{id}: rope_delta");

        // pixel values: all items of a kind concatenated in order
        for (kind, name) in [(MediaKind::Image, "pixel_values"), (MediaKind::Video, "pixel_values_videos")] {
            let ours: Vec<Tensor> = media.iter().filter(|m| m.kind == kind).map(|m| m.pixel_values.clone()).collect();
            if ours.is_empty() {
                continue;
            }
            let (d, _) = rel_err(&Tensor::cat(&ours, 0).unwrap(), get(&format!("{id}.{name}")));
            println!("{id}: {name} max|diff| = {d:e}");
            assert!(d <= 1e-6, "{id}: {name} max|diff| {d}");
        }

        // vision embeddings in prompt order, from the reference pixel values so that each stage
        // is checked on its own inputs
        let mut reference_media = media.clone();
        for (kind, name) in [(MediaKind::Image, "pixel_values"), (MediaKind::Video, "pixel_values_videos")] {
            let mut row = 0;
            for m in reference_media.iter_mut().filter(|m| m.kind == kind) {
                let n = m.grid_thw.iter().product::<usize>();
                m.pixel_values = get(&format!("{id}.{name}")).narrow(0, row, n).unwrap();
                row += n;
            }
        }
        let embeds: Vec<(usize, Tensor)> = prompt.media_spans.iter().map(|s| (s.start, engine.model.encode_media(&reference_media[s.media_index]).unwrap())).collect();
        if !embeds.is_empty() {
            let cat = Tensor::cat(&embeds.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), 0).unwrap();
            let (d, r) = rel_err(&cat, get(&format!("{id}.vision_embeds")));
            println!("{id}: vision_embeds max|diff| = {d:e}, relative {r:e}");
            assert!(r <= 1e-4, "{id}: vision_embeds relative error {r}");
        }

        // prefill logits, then greedy steps with their top-5 logits
        let mut cache = engine.model.new_cache();
        let mut logits = prefill(engine.model.as_ref(), &prompt, &embeds, &mut cache).unwrap().flatten_all().unwrap();
        let (d, r) = rel_err(&logits, get(&format!("{id}.logits_last")));
        println!("{id}: logits_last max|diff| = {d:e}, relative {r:e}");
        assert!(r <= 1e-4, "{id}: logits_last relative error {r}");
        let steps = case["generation"]["steps"].as_array().unwrap();
        let want_tokens = u32s(&case["generation"]["token_ids"]);
        let mut worst_top5 = 0f32;
        for (i, step) in steps.iter().enumerate() {
            let v = logits.to_vec1::<f32>().unwrap();
            let top5 = top_k_logits(&v, 5);
            assert_eq!(top5.iter().map(|t| t.0).collect::<Vec<_>>(), u32s(&step["top5_ids"]), "{id}: step {i} top-5 ids");
            for ((_, ours), want) in top5.iter().zip(step["top5_logits"].as_array().unwrap()) {
                worst_top5 = worst_top5.max((ours - want.as_f64().unwrap() as f32).abs());
            }
            let token = argmax(&v) as u32;
            assert_eq!(token, want_tokens[i], "{id}: greedy token {i}");
            let pos = prompt.positions.slice(cache.len(), 1);
            let ids = [token];
            let step_in = StepInput::decode(&ids, &pos);
            logits = engine.model.forward(&step_in, &mut cache).unwrap().flatten_all().unwrap();
        }
        println!("{id}: top-5 logits over {} steps max|diff| = {worst_top5:e}", steps.len());
        assert!(worst_top5 <= 1e-3, "{id}: top-5 logits differ by {worst_top5}");

        // the whole engine path: same tokens, same text, same finish reason
        let out = engine.generate(&req, &mut |_| {}).unwrap();
        assert_eq!(out.token_ids, want_tokens, "{id}: generated ids");
        assert_eq!(out.text, case["generation"]["text"].as_str().unwrap(), "{id}: generated text");
        assert_eq!(out.finish_reason.as_str(), case["generation"]["finish_reason"].as_str().unwrap(), "{id}: finish_reason");
    }
}

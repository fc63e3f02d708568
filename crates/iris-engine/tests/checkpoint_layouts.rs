//! The same tiny Qwen2-VL re-saved in the other layouts a user may point Iris at — sharded with an
//! index, `model.language_model.*` / `model.visual.*` names (transformers >= 4.52), an untied
//! `lm_head.weight`, a flat (original Qwen) config.json — must give the fixture's greedy tokens.

use candle_core::{Device, Tensor};
use iris_engine::Engine;
use iris_models::LoadOptions;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

mod common;

/// Writes the fixture model to `out` in the new naming, sharded in two, with an explicit head.
fn resave(src: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    // nested config -> flat (original Qwen form), untied
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut flat = cfg.as_object().unwrap().clone();
    for (k, v) in cfg["text_config"].as_object().unwrap() {
        flat.insert(k.clone(), v.clone());
    }
    flat.remove("text_config");
    flat.insert("tie_word_embeddings".into(), Value::Bool(false));
    std::fs::write(out.join("config.json"), serde_json::to_string(&flat).unwrap()).unwrap();

    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let head = tensors["model.embed_tokens.weight"].clone();
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors.into_iter().chain([("lm_head.weight".to_string(), head)]) {
        let (new, shard) = if let Some(rest) = name.strip_prefix("visual.") {
            (format!("model.visual.{rest}"), 0)
        } else if let Some(rest) = name.strip_prefix("model.") {
            (format!("model.language_model.{rest}"), 1)
        } else {
            (name, 1)
        };
        let file = format!("model-0000{}-of-00002.safetensors", shard + 1);
        weight_map.insert(new.clone(), Value::String(file));
        shards[shard].insert(new, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(shard, out.join(format!("model-0000{}-of-00002.safetensors", i + 1))).unwrap();
    }
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string()).unwrap();
}

#[test]
fn sharded_renamed_untied_flat_checkpoint_gives_the_same_tokens() {
    let dir = common::fixture_dir();
    let out = std::env::temp_dir().join(format!("iris-layout-{}", std::process::id()));
    resave(&dir.join("model"), &out);
    let engine = Engine::load(&out, &LoadOptions::new(candle_core::DType::F32, Device::Cpu)).unwrap();
    assert!(engine.model.unconsumed_tensors().is_empty(), "{:?}", engine.model.unconsumed_tensors());
    let cases = common::cases();
    for case in cases["cases"].as_array().unwrap().iter().take(2) {
        let req = common::greedy(&case["request"]["messages"], 16);
        let got = engine.generate(&req, &mut |_| {}).unwrap();
        let want: Vec<u32> = case["generation"]["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(got.token_ids, want, "{}", case["id"]);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

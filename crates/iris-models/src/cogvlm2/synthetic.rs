//! The real CogVLM2-Llama3-19B architecture (config.json of spec §1.1) and its checkpoint tensor
//! layout (§2.1–2.2), for random-weight full-size checkpoints used by benchmarks. The
//! `rotary_emb.inv_freq` buffers are left out: the loader falls back to the base-500000 formula.

use super::config::CogVlmConfig;
use crate::api::{Init, SyntheticPreset, TensorSpec};
use serde_json::json;
use std::path::Path;

const STD: f32 = 0.02;

pub fn config_19b() -> serde_json::Value {
    json!({
        "architectures": ["CogVLMForCausalLM"],
        "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "template_version": "chat",
        "initializer_range": 0.02, "bos_token_id": 128000, "eos_token_id": [128001, 128009], "pad_token_id": 128002,
        "vocab_size": 128256, "hidden_act": "silu", "use_cache": true,
        "vision_config": {"dropout_prob": 0.0, "hidden_act": "gelu", "in_channels": 3, "num_hidden_layers": 63,
            "hidden_size": 1792, "patch_size": 14, "num_heads": 16, "intermediate_size": 15360,
            "layer_norm_eps": 1e-06, "num_positions": 9217, "image_size": 1344}
    })
}

pub fn tensor_specs(cfg: &CogVlmConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| out.push(TensorSpec { name, shape, init });
    let normal = Init::Normal { std: STD };
    let (zero, one) = (Init::Constant(0.0), Init::Constant(1.0));
    let t = &cfg.text;
    let (c, inter) = (t.hidden_size, t.intermediate_size);
    push("model.embed_tokens.weight".into(), vec![t.vocab_size, c], normal);
    for i in 0..t.num_hidden_layers {
        let l = format!("model.layers.{i}");
        push(format!("{l}.input_layernorm.weight"), vec![c], one);
        push(format!("{l}.post_attention_layernorm.weight"), vec![c], one);
        for expert in ["language", "vision"] {
            push(format!("{l}.self_attn.{expert}_expert_query_key_value.weight"), vec![t.qkv_dim(), c], normal);
            push(format!("{l}.self_attn.{expert}_expert_dense.weight"), vec![c, c], normal);
            push(format!("{l}.mlp.{expert}_mlp.gate_proj.weight"), vec![inter, c], normal);
            push(format!("{l}.mlp.{expert}_mlp.up_proj.weight"), vec![inter, c], normal);
            push(format!("{l}.mlp.{expert}_mlp.down_proj.weight"), vec![c, inter], normal);
        }
        push(format!("{l}.self_attn.vision_expert_query_key_value.bias"), vec![t.qkv_dim()], zero);
    }
    push("model.norm.weight".into(), vec![c], one);
    push("lm_head.weight".into(), vec![t.vocab_size, c], normal);
    let v = &cfg.vision;
    let (e, p) = (v.hidden_size, v.patch_size);
    let pe = "model.vision.patch_embedding";
    push(format!("{pe}.proj.weight"), vec![e, v.in_channels, p, p], normal);
    push(format!("{pe}.proj.bias"), vec![e], zero);
    push(format!("{pe}.cls_embedding"), vec![1, e], normal);
    push(format!("{pe}.position_embedding.weight"), vec![v.num_positions, e], normal);
    for j in 0..v.num_hidden_layers {
        let l = format!("model.vision.transformer.layers.{j}");
        for (n, o, inp) in [("attention.query_key_value", 3 * e, e), ("attention.dense", e, e), ("mlp.fc1", v.intermediate_size, e), ("mlp.fc2", e, v.intermediate_size)] {
            push(format!("{l}.{n}.weight"), vec![o, inp], normal);
            push(format!("{l}.{n}.bias"), vec![o], zero);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            push(format!("{l}.{n}.weight"), vec![e], one);
            push(format!("{l}.{n}.bias"), vec![e], zero);
        }
    }
    push("model.vision.conv.weight".into(), vec![e, e, 2, 2], normal);
    push("model.vision.conv.bias".into(), vec![e], zero);
    let lp = "model.vision.linear_proj";
    push(format!("{lp}.linear_proj.weight"), vec![c, e], normal);
    push(format!("{lp}.norm1.weight"), vec![c], one);
    push(format!("{lp}.norm1.bias"), vec![c], zero);
    push(format!("{lp}.gate_proj.weight"), vec![inter, c], normal);
    push(format!("{lp}.dense_h_to_4h.weight"), vec![inter, c], normal);
    push(format!("{lp}.dense_4h_to_h.weight"), vec![c, inter], normal);
    push("model.vision.boi".into(), vec![1, 1, c], normal);
    push("model.vision.eoi".into(), vec![1, 1, c], normal);
    out
}

pub fn synthetic_presets() -> Vec<SyntheticPreset> {
    let config_json = config_19b();
    let cfg = CogVlmConfig::from_value(&config_json, Path::new("cogvlm2-19b")).expect("built-in preset is valid");
    vec![SyntheticPreset {
        name: "cogvlm2-19b",
        tensors: tensor_specs(&cfg),
        config_json,
        // the official file was not available (spec §1.3); these are its evidenced sampling values
        generation_config_json: json!({"bos_token_id": 128000, "eos_token_id": [128001, 128009], "pad_token_id": 128002,
            "do_sample": true, "temperature": 0.6, "top_p": 0.9}),
        preprocessor_config_json: None,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_has_the_parameter_count_of_the_official_checkpoint() {
        let p = &synthetic_presets()[0];
        let params: usize = p.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        // spec §2.3: 19,503,105,280 real parameters (the 32 x 64 inv_freq buffers excluded)
        assert_eq!(params, 19_503_105_280);
        // 1221 index entries minus the 32 inv_freq buffers
        assert_eq!(p.tensors.len(), 1221 - 32);
    }
}

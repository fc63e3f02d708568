//! Real Qwen2-VL architectures (2B/7B/72B-Instruct configs from spec §1) and their checkpoint
//! tensor layout (§2.1), for random-weight full-size checkpoints used by benchmarks.
//! Initialisation follows transformers' `_init_weights`: normal(0, 0.02) matrices, zero biases,
//! unit norms.

use super::config::Qwen2VlConfig;
use crate::api::{Init, SyntheticPreset, TensorSpec};
use serde_json::json;
use std::path::Path;

const STD: f32 = 0.02;

fn flat_config(hidden: usize, inter: usize, layers: usize, heads: usize, kv: usize, vocab: usize, tie: bool) -> serde_json::Value {
    json!({
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie, "hidden_act": "silu", "torch_dtype": "bfloat16",
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
            "hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2}
    })
}

pub fn presets() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("qwen2-vl-2b", flat_config(1536, 8960, 28, 12, 2, 151936, true)),
        ("qwen2-vl-7b", flat_config(3584, 18944, 28, 28, 4, 152064, false)),
        ("qwen2-vl-72b", flat_config(8192, 29568, 80, 64, 8, 152064, false)),
    ]
}

pub fn tensor_specs(cfg: &Qwen2VlConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| out.push(TensorSpec { name, shape, init });
    let normal = Init::Normal { std: STD };
    let (zero, one) = (Init::Constant(0.0), Init::Constant(1.0));
    let v = &cfg.vision;
    let e = v.embed_dim;
    push("visual.patch_embed.proj.weight".into(), vec![e, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size], normal);
    for i in 0..v.depth {
        let b = format!("visual.blocks.{i}");
        for n in ["norm1", "norm2"] {
            push(format!("{b}.{n}.weight"), vec![e], one);
            push(format!("{b}.{n}.bias"), vec![e], zero);
        }
        for (n, o, inp) in [("attn.qkv", 3 * e, e), ("attn.proj", e, e), ("mlp.fc1", v.mlp_dim(), e), ("mlp.fc2", e, v.mlp_dim())] {
            push(format!("{b}.{n}.weight"), vec![o, inp], normal);
            push(format!("{b}.{n}.bias"), vec![o], zero);
        }
    }
    let merged = e * v.spatial_merge_size * v.spatial_merge_size;
    push("visual.merger.ln_q.weight".into(), vec![e], one);
    push("visual.merger.ln_q.bias".into(), vec![e], zero);
    for (n, o, inp) in [("mlp.0", merged, merged), ("mlp.2", v.hidden_size, merged)] {
        push(format!("visual.merger.{n}.weight"), vec![o, inp], normal);
        push(format!("visual.merger.{n}.bias"), vec![o], zero);
    }
    let t = &cfg.text;
    let (c, hd) = (t.hidden_size, t.head_dim());
    let (q, kv) = (t.num_attention_heads * hd, t.num_key_value_heads * hd);
    push("model.embed_tokens.weight".into(), vec![t.vocab_size, c], normal);
    for i in 0..t.num_hidden_layers {
        let l = format!("model.layers.{i}");
        push(format!("{l}.input_layernorm.weight"), vec![c], one);
        push(format!("{l}.post_attention_layernorm.weight"), vec![c], one);
        for (n, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            push(format!("{l}.self_attn.{n}.weight"), vec![o, c], normal);
            push(format!("{l}.self_attn.{n}.bias"), vec![o], zero);
        }
        push(format!("{l}.self_attn.o_proj.weight"), vec![c, q], normal);
        push(format!("{l}.mlp.gate_proj.weight"), vec![t.intermediate_size, c], normal);
        push(format!("{l}.mlp.up_proj.weight"), vec![t.intermediate_size, c], normal);
        push(format!("{l}.mlp.down_proj.weight"), vec![c, t.intermediate_size], normal);
    }
    push("model.norm.weight".into(), vec![c], one);
    if !t.tie_word_embeddings {
        push("lm_head.weight".into(), vec![t.vocab_size, c], normal);
    }
    out
}

pub fn synthetic_presets() -> Vec<SyntheticPreset> {
    presets()
        .into_iter()
        .map(|(name, config_json)| {
            let cfg = Qwen2VlConfig::from_value(&config_json, Path::new(name)).expect("built-in preset is valid");
            SyntheticPreset {
                name,
                tensors: tensor_specs(&cfg),
                config_json,
                generation_config_json: json!({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                    "do_sample": true, "top_k": 1, "top_p": 0.001, "temperature": 0.01, "repetition_penalty": 1.0}),
                preprocessor_config_json: Some(json!({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": crate::image::CLIP_MEAN, "image_std": crate::image::CLIP_STD,
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"})),
            }
        })
        .collect()
}

//! In-situ quantization end to end on the tiny fixtures (q4k falls back to q8_0 there: the tiny
//! widths are not multiples of 256). Teacher-forced on the reference's greedy tokens, every step's
//! logits of the q8_0 model are compared with the dense f32 model's (which match the reference,
//! see the parity tests): the logit error stays bounded and the argmax agrees on most steps
//! (each disagreement is printed with the reference's top-2 gap, which it can only beat by
//! having a logit error of at least half that gap).
//!
//! Free-running greedy text is not compared, because it cannot match: the fixtures' random
//! weights have std 0.2 on 64-wide layers (gain ~1.6 per linear), so q8_0's 0.54% RMS weight
//! error grows to 2-7% of the logit scale already at the prefill step, which uses f32 activations
//! and weights decoded bit-exactly like ggml's (see `iris-nn` quant tests), while the reference's
//! top-1/top-2 gaps go down to 0.014 on logits of 34. Real checkpoints are measured with
//! `iris bench` instead (BENCHMARKS.md).

use candle_core::{DType, Device};
use iris_engine::accuracy::{compare_steps, step_logits};
use iris_engine::{Engine, GenerateRequest};
use iris_models::{LoadOptions, PromptOptions};
use iris_nn::WeightFormat;
use serde_json::Value;

mod common;
use common::u32s;

fn load(fixture: &str, format: Option<WeightFormat>) -> Engine {
    load_with(fixture, LoadOptions { language_format: format, vision_format: format, ..LoadOptions::new(DType::F32, Device::Cpu) })
}

fn load_with(fixture: &str, opts: LoadOptions) -> Engine {
    Engine::load(&common::fixture(fixture).join("model"), &opts).unwrap()
}

fn cases(fixture: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(common::fixture(fixture).join("cases.json")).unwrap()).unwrap();
    match v {
        Value::Array(a) => a,
        v => v["cases"].as_array().unwrap().clone(),
    }
}

/// Teacher-forces every fixture case through the dense f32 model and the model with `format`
/// weights; returns (steps, steps whose argmax agrees, largest logit error relative to the
/// logits' scale), printing each disagreement.
fn against_f32(fixture: &str, dense: &Engine, other: &Engine, format: &str) -> (usize, usize, f32) {
    let dir = common::fixture(fixture);
    let (mut steps, mut agree, mut worst_rel) = (0, 0, 0f32);
    for case in cases(fixture) {
        let id = case["id"].as_str().unwrap();
        let request = &case["request"];
        let gen = &case["generation"];
        let tokens = u32s(if gen["token_ids"].is_null() { &gen["output_ids"] } else { &gen["token_ids"] });
        let template = request["template_version"].as_str().map(String::from);
        let req = GenerateRequest { prompt_options: PromptOptions { template }, ..common::greedy_in(&dir, &request["messages"], tokens.len()) };
        let forced = |engine: &Engine| step_logits(engine, &req, Some(&tokens), tokens.len()).unwrap().logits;
        for (i, step) in compare_steps(&forced(dense), &forced(other)).iter().enumerate() {
            worst_rel = worst_rel.max(step.relative_error());
            steps += 1;
            agree += step.agrees() as usize;
            if !step.agrees() {
                println!("{fixture} {id} step {i}: {format} argmax differs; reference top-2 gap {} vs max logit error {}", step.reference_gap, step.max_abs_error);
            }
            assert_eq!(step.reference_top1 as u32, tokens[i], "{fixture} {id} step {i}: the dense model should follow the reference");
        }
    }
    println!("{fixture}: {format} vs f32 teacher-forced: argmax agrees on {agree}/{steps} steps, max relative logit error {worst_rel:e}");
    (steps, agree, worst_rel)
}

#[test]
fn q8_0_logits_track_f32_and_agree_on_most_steps() {
    for fixture in ["qwen2-vl-tiny", "cogvlm2-tiny"] {
        let dense = load(fixture, None);
        let quant = load(fixture, Some(WeightFormat::Q8_0));
        let (q, f) = (quant.model.info().weight_bytes, dense.model.info().weight_bytes);
        println!("{fixture}: q8_0 weights {q} bytes, dense f32 {f} ({:.2}x)", q as f64 / f as f64);
        assert!(q * 3 < f, "{fixture}: q8_0 weights should be under 1/3 of f32");
        let (steps, agree, worst_rel) = against_f32(fixture, &dense, &quant, "q8_0");
        assert!(worst_rel < 0.15, "{fixture}: q8_0 logits off by {worst_rel} of their scale");
        assert!(agree * 10 >= steps * 8, "{fixture}: argmax agrees on only {agree}/{steps} steps");
    }
}

/// The fixtures' weights are bf16 values, so bf16 storage holds them exactly, and f16 storage
/// too wherever they lie in f16's normal range: what differs from f32 is only that many-row
/// products (the prompt, the vision tower) round their activations to bf16 where the CPU has the
/// AVX512-BF16 GEMM (`iris_nn::bf16_gemm`, bf16 weights) or AMX (`iris_nn::amx`, both; the
/// attention products then are bf16 too). Elsewhere the weights are widened and the logits equal
/// f32's.
#[test]
fn bf16_and_f16_weights_track_f32() {
    for fixture in ["qwen2-vl-tiny", "cogvlm2-tiny"] {
        let dense = load(fixture, None);
        for (format, name) in [(WeightFormat::BF16, "bf16"), (WeightFormat::F16, "f16")] {
            let half = load(fixture, Some(format));
            let (h, f) = (half.model.info().weight_bytes, dense.model.info().weight_bytes);
            assert!(h * 2 <= f + f / 50, "{fixture}: {name} weights {h} bytes should be about half of f32's {f}");
            let (steps, agree, worst_rel) = against_f32(fixture, &dense, &half, name);
            println!("{fixture}: {name}: bf16 GEMM {}, AMX {}", iris_nn::bf16_gemm::available(), iris_nn::amx::available());
            assert!(worst_rel < 0.05, "{fixture}: {name} logits off by {worst_rel} of their scale");
            assert!(agree * 10 >= steps * 9, "{fixture}: {name}: argmax agrees on only {agree}/{steps} steps");
        }
    }
}

/// Dense f32 weights with the KV cache stored as f16 (what `--kv-dtype auto` picks under
/// quantized weights) and as bf16: each cached K and V value is rounded once, when stored.
#[test]
fn narrow_kv_caches_track_f32() {
    for fixture in ["qwen2-vl-tiny", "cogvlm2-tiny"] {
        let dense = load(fixture, None);
        for (kv, bound) in [(DType::F16, 0.01), (DType::BF16, 0.05)] {
            let narrow = load_with(fixture, LoadOptions { kv_dtype: Some(kv), ..LoadOptions::new(DType::F32, Device::Cpu) });
            assert_eq!(narrow.model.info().kv_bytes_per_token * 2, dense.model.info().kv_bytes_per_token);
            let (steps, agree, worst_rel) = against_f32(fixture, &dense, &narrow, &format!("{kv:?} KV cache"));
            assert!(worst_rel < bound, "{fixture}: {kv:?} KV cache: logits off by {worst_rel} of their scale");
            assert!(agree * 10 >= steps * 9, "{fixture}: {kv:?} KV cache: argmax agrees on only {agree}/{steps} steps");
        }
    }
}

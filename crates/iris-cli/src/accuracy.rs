//! `iris bench --accuracy`: how close a quantized (or 16-bit) load of a model stays to dense f32
//! on the benchmark question. The f32 model decodes greedily, recording each step's logits; the
//! candidate then replays exactly those tokens (teacher forcing), so every step compares the two
//! models on the same context. Reported: top-1 agreement per step, the largest logit error
//! relative to the logit scale, and, where the top-1 differs, how close the reference was to a tie.

use crate::bench::{bench_request, format_name, BenchArgs};
use anyhow::{Context, Result};
use candle_core::DType;
use iris_engine::accuracy::{compare_steps, step_logits};
use iris_engine::Engine;
use iris_models::LoadOptions;
use serde_json::json;
use std::path::Path;

pub fn run(args: &BenchArgs, dir: &Path, candidate: &LoadOptions, image: Option<(usize, usize)>, model_name: &str) -> Result<()> {
    let (req, image_path) = bench_request(args, image)?;
    let result = compare(args, dir, candidate, &req, model_name);
    let _ = std::fs::remove_file(&image_path);
    let report = result?;
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let text = |key: &str| report[key].as_str().unwrap_or("").to_string();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    println!("model        {model_name}: language {}, vision {} (dtype {}) against dense f32", text("language_format"), text("vision_format"), text("dtype"));
    println!("steps        {} (prompt {} tokens, image {})", count(&report["steps"]), count(&report["prompt_tokens"]), args.image);
    println!("top-1 agrees {} of {} steps", count(&report["top1_agreements"]), count(&report["steps"]));
    println!("logit error  max {:.4} of the logit scale, mean {:.4}", number(&report["max_relative_logit_error"]), number(&report["mean_relative_logit_error"]));
    for d in report["disagreements"].as_array().into_iter().flatten() {
        println!("  step {:>3}: reference top-2 gap {:.4}, max logit error {:.4}", count(&d["step"]), number(&d["reference_gap"]), number(&d["max_abs_error"]));
    }
    Ok(())
}

fn compare(args: &BenchArgs, dir: &Path, candidate: &LoadOptions, req: &iris_engine::GenerateRequest, model_name: &str) -> Result<serde_json::Value> {
    // one model resident at a time: the f32 reference is dropped before the candidate loads
    // dense f32 throughout, the KV cache included: the candidate's cache rounding is part of
    // what is measured
    let reference_opts = LoadOptions { dtype: DType::F32, language_format: None, vision_format: None, kv_dtype: None, ..candidate.clone() };
    let reference = {
        let engine = Engine::load(dir, &reference_opts).with_context(|| format!("loading {model_name} in f32"))?;
        step_logits(&engine, req, None, args.new_tokens)?
    };
    let engine = Engine::load(dir, candidate).with_context(|| format!("loading {model_name}"))?;
    let replay = step_logits(&engine, req, Some(&reference.tokens), reference.tokens.len())?;
    let steps = compare_steps(&reference.logits, &replay.logits);
    let n = steps.len().max(1) as f64;
    let disagreements: Vec<_> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.agrees())
        .map(|(i, s)| json!({"step": i, "reference_gap": s.reference_gap, "max_abs_error": s.max_abs_error, "reference_token": s.reference_top1, "candidate_token": s.candidate_top1}))
        .collect();
    Ok(json!({
        "model": model_name,
        "dtype": format!("{:?}", candidate.dtype).to_lowercase(),
        "language_format": format_name(candidate.language_format),
        "vision_format": format_name(candidate.vision_format),
        "image": args.image,
        "prompt_tokens": reference.prompt_tokens,
        "steps": steps.len(),
        "top1_agreements": steps.iter().filter(|s| s.agrees()).count(),
        "max_relative_logit_error": steps.iter().map(|s| s.relative_error()).fold(0f32, f32::max),
        "mean_relative_logit_error": steps.iter().map(|s| s.relative_error() as f64).sum::<f64>() / n,
        "per_step_relative_logit_error": steps.iter().map(|s| s.relative_error()).collect::<Vec<_>>(),
        "disagreements": disagreements,
    }))
}

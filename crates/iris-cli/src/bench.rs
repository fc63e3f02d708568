//! `iris bench`: load time, vision encode, prefill and decode speed, time to first token and
//! peak memory of one image question, on a checkpoint or on random weights of a real
//! architecture generated in memory (`--synthetic`, no download and no weight file).
//! One timed run after loading; the numbers are those of that run. A streaming read of memory
//! (`iris_nn::bandwidth`) before loading and after the run gives the bandwidth roofline that
//! decode is a fraction of.

use crate::args::PrecisionArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use iris_engine::checkpoint::resolve_model;
use iris_engine::messages::parse_messages;
use iris_engine::weight_plan::{available_memory, plan, plan_for_checkpoint};
use iris_engine::{Engine, GenerateRequest};
use iris_models::image::{save_image, RgbImage};
use iris_models::synthetic_presets;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Checkpoint directory or Hugging Face repo id.
    #[arg(long, conflicts_with = "synthetic", required_unless_present = "synthetic")]
    pub model: Option<String>,
    /// Random weights of a real architecture, made in memory: qwen2-vl-2b, qwen2-vl-7b,
    /// qwen2-vl-72b, cogvlm2-19b.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Tokenizer files for --synthetic (tokenizer.json, tokenizer_config.json, chat_template.json),
    /// e.g. ../shared/tokenizers/qwen2-vl.
    #[arg(long, requires = "synthetic")]
    pub tokenizer_dir: Option<PathBuf>,
    /// Image size WxH, or `none` for a text-only question.
    #[arg(long, default_value = "448x448")]
    pub image: String,
    /// Words in the question (about one token each).
    #[arg(long, default_value_t = 30)]
    pub prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Submit this many copies of the question at once to the continuous-batching scheduler
    /// (as `iris serve` runs it) and report the aggregate decode rate of the batch (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), conflicts_with = "accuracy")]
    pub concurrent: u16,
    /// Measure accuracy instead of speed: decode --new-tokens greedily with dense f32 weights,
    /// replay those tokens with the chosen --quant / --dtype, and report each step's top-1
    /// agreement and logit error (the reference does not stop at end-of-sequence tokens).
    #[arg(long)]
    pub accuracy: bool,
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn parse_size(s: &str) -> Result<Option<(usize, usize)>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok(Some((w, h))),
        _ => bail!("--image {s}: expected WIDTHxHEIGHT (e.g. 448x448) or none"),
    }
}

/// A smooth colour pattern (a flat image would make every patch identical).
fn test_image(w: usize, h: usize) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) * 127 / (w + h)) as u8]);
        }
    }
    RgbImage::new(w, h, data)
}

/// A scratch checkpoint directory with the preset's configs and the tokenizer, no weights.
fn synthetic_dir(preset_name: &str, tokenizer_dir: Option<&Path>) -> Result<(PathBuf, usize)> {
    let presets = synthetic_presets();
    let Some(preset) = presets.iter().find(|p| p.name == preset_name) else {
        bail!("unknown --synthetic `{preset_name}` (known: {})", presets.iter().map(|p| p.name).collect::<Vec<_>>().join(", "));
    };
    let Some(tok) = tokenizer_dir else { bail!("--synthetic needs --tokenizer-dir (a directory with the family's tokenizer.json)") };
    let dir = std::env::temp_dir().join(format!("iris-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let write = |name: &str, v: &serde_json::Value| std::fs::write(dir.join(name), v.to_string()).with_context(|| dir.join(name).display().to_string());
    write("config.json", &preset.config_json)?;
    // no EOS: random weights must not end the timed decode early
    let mut gen = preset.generation_config_json.clone();
    gen["eos_token_id"] = json!([]);
    write("generation_config.json", &gen)?;
    if let Some(pre) = &preset.preprocessor_config_json {
        write("preprocessor_config.json", pre)?;
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.json"] {
        let src = tok.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).with_context(|| src.display().to_string())?;
        } else if f == "tokenizer.json" {
            bail!("{}: missing", src.display());
        }
    }
    let params = preset.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    Ok((dir, params))
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let image = parse_size(&args.image)?;
    let p = &args.precision;
    let (dir, opts, model_name, scratch) = match (&args.model, &args.synthetic) {
        (Some(m), _) => {
            let dir = resolve_model(m)?;
            let opts = p.options_from(plan_for_checkpoint(&dir, p.dtype(), p.quant, p.quant_vision)?);
            (dir, opts, m.clone(), false)
        }
        (None, Some(preset)) => {
            let (dir, params) = synthetic_dir(preset, args.tokenizer_dir.as_deref())?;
            let mut opts = p.options_from(plan(params, p.dtype(), p.quant, p.quant_vision, available_memory()));
            opts.synthetic_seed = Some(args.seed);
            (dir, opts, format!("synthetic {preset}"), true)
        }
        (None, None) => bail!("give --model DIR or --synthetic PRESET"),
    };
    let result = if args.accuracy {
        crate::accuracy::run(&args, &dir, &opts, image, &model_name)
    } else if args.concurrent > 1 {
        crate::bench_batch::run(&args, &dir, &opts, image, &model_name, args.concurrent.into())
    } else {
        run(&args, &dir, &opts, image, &model_name)
    };
    if scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// A weight format as reported: its name, or `dense` (weights kept in the compute dtype).
pub fn format_name(format: Option<iris_nn::WeightFormat>) -> String {
    format.map(|f| f.to_string()).unwrap_or_else(|| "dense".into())
}

/// The benchmark question (`--prompt-tokens` words, with the generated `--image` if any) as a
/// greedy request, and the scratch path of its image file (for the caller to remove).
pub fn bench_request(args: &BenchArgs, image: Option<(usize, usize)>) -> Result<(GenerateRequest, PathBuf)> {
    const WORDS: [&str; 10] = [" apple", " river", " house", " green", " small", " music", " table", " light", " water", " story"];
    let question: String = "Describe".to_string() + &(0..args.prompt_tokens.saturating_sub(1)).map(|i| WORDS[i % WORDS.len()]).collect::<String>();
    let mut content = Vec::new();
    // a scratch file, never inside the (possibly read-only) checkpoint directory
    let image_path = std::env::temp_dir().join(format!("iris-bench-image-{}.png", std::process::id()));
    if let Some((w, h)) = image {
        save_image(&test_image(w, h), &image_path)?;
        content.push(json!({"type": "image", "image": image_path.display().to_string()}));
    }
    content.push(json!({"type": "text", "text": question}));
    let messages = json!([{"role": "user", "content": content}]);
    Ok((GenerateRequest::greedy(parse_messages(&messages, None)?, args.new_tokens), image_path))
}

/// Forgets this process's peak RSS so far (`VmHWM`), so the bandwidth probe's buffer before
/// loading does not count as the model's memory. `false` where the kernel refuses (pre-4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This machine's memory read bandwidth now, in GB/s; `None` (reported as not measured) where
/// the probe's buffer cannot be mapped.
fn read_bandwidth() -> Option<f64> {
    iris_nn::bandwidth::read_bandwidth_gb_per_s(iris_nn::bandwidth::PROBE_BYTES, 3).ok()
}

fn run(args: &BenchArgs, dir: &Path, opts: &iris_models::LoadOptions, image: Option<(usize, usize)>, model_name: &str) -> Result<()> {
    // memory bandwidth moves by tens of percent within minutes on shared machines: measure it
    // before loading and after the run, and state decode against the higher of the two
    let bandwidth_before = if reset_peak_rss() { read_bandwidth() } else { None };
    if bandwidth_before.is_some() && !reset_peak_rss() {
        bail!("could not reset the peak RSS after the bandwidth probe");
    }
    let t0 = Instant::now();
    let engine = Engine::load(dir, opts).with_context(|| format!("loading {model_name}"))?;
    let load_s = t0.elapsed().as_secs_f64();

    let (req, image_path) = bench_request(args, image)?;
    let out = engine.generate(&req, &mut |_| {});
    let _ = std::fs::remove_file(&image_path);
    let out = out?;

    let t = &out.timings;
    let info = engine.model.info();
    let prompt_tokens = out.prompt_token_ids.len();
    let ttft_ms = t.preprocess_ms + t.vision_ms + t.prefill_ms;
    let prefill_tps = prompt_tokens as f64 / (t.prefill_ms / 1e3);
    let decode_gbps = info.decode_bytes_per_token as f64 * t.decode_tokens_per_s / 1e9;
    let peak = peak_rss_bytes().unwrap_or(0);
    // after the peak was read: the probe's buffer must not count as the model's memory
    let bandwidth_after = read_bandwidth();
    let bandwidth = bandwidth_before.into_iter().chain(bandwidth_after).reduce(f64::max);
    let roofline_fraction = bandwidth.map(|b| decode_gbps / b);
    // the cache a decode step reads, averaged over the run (the context grows by one per token)
    let kv_read_per_token = info.kv_bytes_per_token as f64 * (prompt_tokens as f64 + out.token_ids.len() as f64 / 2.0);
    let roofline_fraction_with_kv = bandwidth.map(|b| (info.decode_bytes_per_token as f64 + kv_read_per_token) * t.decode_tokens_per_s / 1e9 / b);
    let report = with_setup(model_name, info, opts, json!({
        "image": args.image,
        "prompt_tokens": prompt_tokens,
        "new_tokens": out.token_ids.len(),
        "load_s": load_s,
        "preprocess_ms": t.preprocess_ms,
        "vision_ms": t.vision_ms,
        "prefill_ms": t.prefill_ms,
        "prefill_tokens_per_s": prefill_tps,
        "ttft_ms": ttft_ms,
        "decode_tokens_per_s": t.decode_tokens_per_s,
        "peak_rss_bytes": peak,
        "weight_bytes": info.weight_bytes,
        "decode_bytes_per_token": info.decode_bytes_per_token,
        "decode_weight_gb_per_s": decode_gbps,
        "read_bandwidth_gb_per_s": bandwidth,
        "read_bandwidth_before_gb_per_s": bandwidth_before,
        "read_bandwidth_after_gb_per_s": bandwidth_after,
        "decode_roofline_fraction": roofline_fraction,
        "kv_dtype": format!("{:?}", info.kv_dtype).to_lowercase(),
        "kv_bytes_per_token": info.kv_bytes_per_token,
        "decode_kv_bytes_per_token": kv_read_per_token,
        "decode_roofline_fraction_with_kv": roofline_fraction_with_kv,
    }));
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let gb = |b: f64| b / 1e9;
    print_setup(&report);
    println!("prompt           {prompt_tokens} tokens (image {}), {} new tokens", args.image, out.token_ids.len());
    println!("load             {load_s:.2} s");
    println!("vision encode    {:.0} ms", t.vision_ms);
    println!("prefill          {:.0} ms ({prefill_tps:.1} tokens/s)", t.prefill_ms);
    println!("time to first    {ttft_ms:.0} ms");
    println!("decode           {:.2} tokens/s ({:.1} GB/s of weights)", t.decode_tokens_per_s, decode_gbps);
    println!("weights resident {:.2} GB; read per token {:.2} GB", gb(info.weight_bytes as f64), gb(info.decode_bytes_per_token as f64));
    println!("KV cache         {}, {:.0} KB per token; read per decoded token {:.3} GB (average)", report["kv_dtype"].as_str().unwrap_or(""), info.kv_bytes_per_token as f64 / 1e3, gb(kv_read_per_token));
    let rate = |b: Option<f64>| b.map_or("not measured".to_string(), |b| format!("{b:.1} GB/s"));
    println!("memory read      {} before loading, {} after the run", rate(bandwidth_before), rate(bandwidth_after));
    if let (Some(b), Some(fraction)) = (bandwidth, roofline_fraction) {
        let roofline_tps = b * 1e9 / info.decode_bytes_per_token.max(1) as f64;
        println!("roofline         {roofline_tps:.1} tokens/s at {b:.1} GB/s; decode at {:.0}% of it ({:.0}% counting the KV cache)", 100.0 * fraction, 100.0 * roofline_fraction_with_kv.unwrap_or(0.0));
    }
    println!("peak RSS         {:.2} GB", gb(peak as f64));
    Ok(())
}

/// `fields` after the fields naming what ran: model, family, compute dtype, weight formats,
/// quantized kernel and threads.
pub(crate) fn with_setup(model_name: &str, info: &iris_models::ModelInfo, opts: &iris_models::LoadOptions, fields: serde_json::Value) -> serde_json::Value {
    let mut report = json!({
        "model": model_name,
        "family": info.family,
        "dtype": format!("{:?}", info.dtype).to_lowercase(),
        "language_format": format_name(opts.language_format),
        "vision_format": format_name(opts.vision_format),
        "quantized_kernel": format!("{:?}", iris_nn::quant::kernels::Kernel::best()),
        "threads": rayon_threads(),
    });
    if let (Some(report), serde_json::Value::Object(fields)) = (report.as_object_mut(), fields) {
        report.extend(fields);
    }
    report
}

/// The table's first lines: the fields `with_setup` put in `report`.
pub(crate) fn print_setup(report: &serde_json::Value) {
    let text = |key: &str| report[key].as_str().unwrap_or("").to_string();
    println!("model            {} ({}, {} compute)", text("model"), text("family"), text("dtype"));
    println!("weights          language {}, vision {}; kernel {}, {} threads", text("language_format"), text("vision_format"), text("quantized_kernel"), report["threads"]);
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX))
}

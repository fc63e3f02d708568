//! `iris bench --concurrent N`: N copies of the benchmark question submitted at once to the
//! continuous-batching scheduler `iris serve` runs (`iris_engine::scheduler`), so every decode
//! step is one forward of N rows and the weights are read once for all of them. Reports the
//! aggregate decode rate while all N sequences decode, the decode steps per second and the weight
//! bandwidth they amount to, each sequence's own rate, and the first and last time to first token.

use crate::bench::{bench_request, with_setup, BenchArgs};
use anyhow::{bail, Context, Result};
use iris_engine::scheduler::{Job, SchedulerConfig, SchedulerHandle, SeqEvent};
use iris_engine::Engine;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// What one sequence's sink reports: its index, when, and whether it produced a token, finished
/// (with its own decode rate) or failed.
enum Event {
    Token(usize, Instant),
    Done(usize, Instant, f64),
    Failed(usize, String),
}

pub fn run(args: &BenchArgs, dir: &Path, opts: &iris_models::LoadOptions, image: Option<(usize, usize)>, model_name: &str, concurrent: usize) -> Result<()> {
    let t0 = Instant::now();
    let engine = Arc::new(Engine::load(dir, opts).with_context(|| format!("loading {model_name}"))?);
    let load_s = t0.elapsed().as_secs_f64();
    let info = engine.model.info().clone();
    let (req, image_path) = bench_request(args, image)?;
    let prepared = engine.prepare(&req);
    let _ = std::fs::remove_file(&image_path);
    let (prompt, media) = prepared?;
    let prompt_tokens = prompt.token_ids.len();
    // every sequence's whole context reserved at once, whatever the default budget
    let kv_budget = concurrent * (prompt_tokens + args.new_tokens + 1) * info.kv_bytes_per_token;
    let config = SchedulerConfig { max_running: concurrent, max_waiting: concurrent, kv_budget_bytes: kv_budget.max(SchedulerConfig::default().kv_budget_bytes), ..Default::default() };
    let (scheduler, thread) = SchedulerHandle::start(engine.clone(), config);
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for seq in 0..concurrent {
        let tx = tx.clone();
        let job = Job {
            prompt: prompt.clone(),
            media: media.clone(),
            sampling: req.sampling.clone(),
            max_new_tokens: args.new_tokens,
            stop: vec![],
            top_logprobs: None,
            cancel: Arc::new(AtomicBool::new(false)),
            sink: Box::new(move |ev: SeqEvent| {
                let now = Instant::now();
                let event = match ev {
                    SeqEvent::Token(_) => Event::Token(seq, now),
                    SeqEvent::Done(s) => Event::Done(seq, now, s.decode_tokens_per_s),
                    SeqEvent::Failed(e) => Event::Failed(seq, e),
                };
                tx.send(event).is_ok()
            }),
        };
        scheduler.submit(job).map_err(|e| anyhow::anyhow!("sequence {seq}: {e}"))?;
    }
    drop(tx);
    // [sequence] token times, end time, own decode rate
    let mut tokens: Vec<Vec<Instant>> = vec![Vec::new(); concurrent];
    let mut done: Vec<Option<(Instant, f64)>> = vec![None; concurrent];
    while done.iter().any(Option::is_none) {
        match rx.recv().context("the scheduler stopped before every sequence finished")? {
            Event::Token(seq, at) => tokens[seq].push(at),
            Event::Done(seq, at, rate) => done[seq] = Some((at, rate)),
            Event::Failed(seq, e) => bail!("sequence {seq} failed: {e}"),
        }
    }
    scheduler.drain(std::time::Duration::ZERO);
    drop(scheduler);
    let _ = thread.join();

    let first_tokens: Vec<Instant> = tokens.iter().filter_map(|t| t.first().copied()).collect();
    if first_tokens.len() < concurrent {
        bail!("a sequence finished without a token");
    }
    let all_decoding = *first_tokens.iter().max().expect("at least one sequence");
    let end = done.iter().flatten().map(|(at, _)| *at).max().expect("at least one sequence");
    // tokens produced while every sequence was past its first token
    let window_tokens: usize = tokens.iter().map(|t| t.iter().filter(|&&at| at > all_decoding).count()).sum();
    let window_s = end.duration_since(all_decoding).as_secs_f64();
    let aggregate = window_tokens as f64 / window_s;
    let steps_per_s = aggregate / concurrent as f64;
    let weight_gbps = steps_per_s * info.decode_bytes_per_token as f64 / 1e9;
    let mut own: Vec<f64> = done.iter().flatten().map(|(_, rate)| *rate).collect();
    own.sort_by(f64::total_cmp);
    let ms = |at: Instant| at.duration_since(start).as_secs_f64() * 1e3;
    let report = with_setup(model_name, &info, opts, json!({
        "image": args.image,
        "concurrent": concurrent,
        "prompt_tokens": prompt_tokens,
        "new_tokens": tokens.iter().map(Vec::len).sum::<usize>(),
        "load_s": load_s,
        "ttft_first_ms": ms(*first_tokens.iter().min().expect("at least one sequence")),
        "ttft_last_ms": ms(all_decoding),
        "wall_s": end.duration_since(start).as_secs_f64(),
        "decode_tokens_per_s": aggregate,
        "decode_steps_per_s": steps_per_s,
        "decode_tokens_per_s_per_sequence_median": own[own.len() / 2],
        "decode_weight_gb_per_s": weight_gbps,
        "decode_bytes_per_token": info.decode_bytes_per_token,
        "weight_bytes": info.weight_bytes,
        "peak_rss_bytes": crate::bench::peak_rss_bytes().unwrap_or(0),
    }));
    if args.json {
        println!("{report}");
        return Ok(());
    }
    crate::bench::print_setup(&report);
    println!("sequences        {concurrent} at once, {prompt_tokens} prompt tokens each (image {}), {} new tokens in all", args.image, report["new_tokens"]);
    println!("load             {load_s:.2} s");
    println!("time to first    {:.0} ms (first sequence), {:.0} ms (last)", report["ttft_first_ms"].as_f64().unwrap_or(0.0), report["ttft_last_ms"].as_f64().unwrap_or(0.0));
    println!("decode           {aggregate:.2} tokens/s in all, {steps_per_s:.2} steps/s ({weight_gbps:.1} GB/s of weights); {:.2} tokens/s per sequence (median)", own[own.len() / 2]);
    println!("peak RSS         {:.2} GB", report["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e9);
    Ok(())
}

//! Continuous batching gives the unbatched answers: the fixture conversations (images of different
//! sizes, two images, a video, text only) submitted together to the scheduler, with prefill chunks
//! small enough that prompts are split and interleave with other sequences' decode steps, produce
//! exactly the greedy tokens of `Engine::generate` run one at a time (which the parity tests tie to
//! the reference). Also: the batched forward against one-sequence forwards, KV admission,
//! cancellation freeing resources, the encoder cache on a repeated image, and the idle hook.

use candle_core::{DType, Device};
use iris_engine::generate::{encode_media_spans, prefill};
use iris_engine::scheduler::{IdleHook, Job, SchedulerConfig, SchedulerHandle, SeqEvent, SeqSummary, SubmitError};
use iris_engine::{Engine, GenerateRequest, SamplingParams};
use iris_models::{LoadOptions, PromptOptions, StepInput};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common;

fn load(name: &str) -> (Arc<Engine>, Vec<(String, GenerateRequest)>) {
    let dir = common::fixture(name);
    let engine = Engine::load(&dir.join("model"), &LoadOptions::new(DType::F32, Device::Cpu)).unwrap();
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let list = cases.get("cases").unwrap_or(&cases).as_array().unwrap().clone();
    let reqs = list
        .iter()
        .map(|c| {
            let template = c["request"]["template_version"].as_str().map(String::from);
            let req = GenerateRequest { prompt_options: PromptOptions { template }, ..common::greedy_in(&dir, &c["request"]["messages"], 16) };
            (c["id"].as_str().unwrap().to_string(), req)
        })
        .collect();
    (Arc::new(engine), reqs)
}

struct Outcome {
    tokens: Vec<u32>,
    text: String,
    summary: Option<SeqSummary>,
    error: Option<String>,
}

fn job(engine: &Engine, req: &GenerateRequest, tx: mpsc::Sender<(usize, SeqEvent)>, n: usize, cancel: Arc<AtomicBool>) -> Job {
    let (prompt, media) = engine.prepare(req).unwrap();
    Job {
        prompt,
        media,
        sampling: req.sampling.clone(),
        max_new_tokens: req.max_new_tokens,
        stop: req.stop.clone(),
        top_logprobs: None,
        cancel,
        sink: Box::new(move |ev| tx.send((n, ev)).is_ok()),
    }
}

/// Submits every request at once and collects each one's outcome.
fn run_batched(engine: &Arc<Engine>, reqs: &[&GenerateRequest], config: SchedulerConfig) -> (Vec<Outcome>, SchedulerHandle) {
    let (handle, _thread) = SchedulerHandle::start(engine.clone(), config);
    let (tx, rx) = mpsc::channel();
    for (n, req) in reqs.iter().enumerate() {
        handle.submit(job(engine, req, tx.clone(), n, Arc::new(AtomicBool::new(false)))).unwrap();
    }
    drop(tx);
    let mut out: Vec<Outcome> = reqs.iter().map(|_| Outcome { tokens: vec![], text: String::new(), summary: None, error: None }).collect();
    for (n, ev) in rx {
        match ev {
            SeqEvent::Token(step) => {
                out[n].tokens.extend(step.token);
                out[n].text.push_str(&step.text);
            }
            SeqEvent::Done(s) => out[n].summary = Some(s),
            SeqEvent::Failed(e) => out[n].error = Some(e),
        }
        if out.iter().all(|o| o.summary.is_some() || o.error.is_some()) {
            break;
        }
    }
    (out, handle)
}

fn assert_batched_equals_unbatched(name: &str) {
    let (engine, reqs) = load(name);
    let solo: Vec<_> = reqs.iter().map(|(_, r)| engine.generate(r, &mut |_| {}).unwrap()).collect();
    // 7 prompt tokens per step: every prompt is split into chunks, cutting through its image and
    // video spans, and the chunks share steps with other sequences' decode tokens
    let config = SchedulerConfig { step_tokens: 7, ..SchedulerConfig::default() };
    let (batched, handle) = run_batched(&engine, &reqs.iter().map(|(_, r)| r).collect::<Vec<_>>(), config);
    for (((id, _), want), got) in reqs.iter().zip(&solo).zip(&batched) {
        assert!(got.error.is_none(), "{name} {id}: {:?}", got.error);
        let s = got.summary.as_ref().unwrap();
        assert_eq!(got.tokens, want.token_ids, "{name} {id}: batched tokens differ from unbatched");
        assert_eq!(got.text, want.text, "{name} {id}: streamed text");
        assert_eq!(s.text, want.text, "{name} {id}: final text");
        assert_eq!(s.finish, want.finish_reason, "{name} {id}");
        assert_eq!(s.prompt_tokens, want.prompt_token_ids.len(), "{name} {id}");
        assert_eq!(s.completion_tokens, want.token_ids.len(), "{name} {id}");
    }
    let stats = handle.stats();
    let steps = stats.steps.load(Ordering::SeqCst);
    let tokens = stats.batched_tokens.load(Ordering::SeqCst);
    println!("{name}: {} requests in {steps} batched steps ({tokens} tokens, {:.1} per step)", reqs.len(), tokens as f64 / steps as f64);
    let decode_only: usize = solo.iter().map(|o| o.token_ids.len()).sum();
    assert!(steps < decode_only, "sequences shared steps ({steps} steps for {decode_only} decode tokens)");
    wait_until(|| stats.kv_reserved_bytes.load(Ordering::SeqCst) == 0 && stats.running.load(Ordering::SeqCst) == 0);
}

fn wait_until(cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for the scheduler");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn qwen2_vl_batched_equals_unbatched_with_mixed_media() {
    assert_batched_equals_unbatched("qwen2-vl-tiny");
}

#[test]
fn cogvlm2_batched_equals_unbatched() {
    assert_batched_equals_unbatched("cogvlm2-tiny");
}

#[test]
fn batched_forward_matches_one_sequence_forwards() {
    for name in ["qwen2-vl-tiny", "cogvlm2-tiny"] {
        let (engine, reqs) = load(name);
        let model = engine.model.as_ref();
        // every prompt prefilled on its own, then one batched decode step over all of them
        // against the same step taken sequence by sequence
        let mut caches = Vec::new();
        let mut last = Vec::new();
        for (_, req) in &reqs {
            let (prompt, media) = engine.prepare(req).unwrap();
            let embeds = encode_media_spans(model, &prompt, &media).unwrap();
            let mut cache = model.new_cache();
            let logits = prefill(model, &prompt, &embeds, &mut cache).unwrap();
            let token = iris_engine::sampler::argmax(&logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()) as u32;
            last.push((token, prompt.positions.slice(cache.len(), 1)));
            caches.push(cache);
        }
        let tokens: Vec<[u32; 1]> = last.iter().map(|(t, _)| [*t]).collect();
        let steps: Vec<StepInput> = tokens
            .iter()
            .zip(&last)
            .map(|(tok, (_, pos))| StepInput::decode(tok, pos))
            .collect();
        let mut solo_caches = caches.clone();
        let solo: Vec<_> = steps.iter().zip(solo_caches.iter_mut()).map(|(s, c)| model.forward(s, c).unwrap()).collect();
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let batched = model.forward_batch(&steps, &mut refs).unwrap();
        for (i, (a, b)) in batched.iter().zip(&solo).enumerate() {
            let (d, r) = common::rel_err(a, b);
            println!("{name} sequence {i}: batched vs single forward max|diff| = {d:e} (relative {r:e})");
            assert!(r <= 1e-5, "{name} sequence {i}: relative {r}");
        }
        assert!(caches.iter().zip(&solo_caches).all(|(a, b)| a.len() == b.len()));
    }
}

#[test]
fn admission_refuses_what_cannot_fit_and_cancellation_frees_the_sequence() {
    let (engine, reqs) = load("qwen2-vl-tiny");
    let req = &reqs[0].1;
    let kv_per_token = engine.model.info().kv_bytes_per_token;
    let (tx, rx) = mpsc::channel();

    // a KV budget of 10 tokens cannot hold a 47-token prompt: refused at submission, named
    let small = SchedulerConfig { kv_budget_bytes: 10 * kv_per_token, ..SchedulerConfig::default() };
    let (handle, _t) = SchedulerHandle::start(engine.clone(), small);
    let err = handle.submit(job(&engine, req, tx.clone(), 0, Arc::new(AtomicBool::new(false)))).unwrap_err();
    assert!(matches!(err, SubmitError::TooLarge(_)) && err.to_string().contains("KV"), "{err}");

    let none_waiting = SchedulerConfig { max_waiting: 0, ..SchedulerConfig::default() };
    let (handle, _t) = SchedulerHandle::start(engine.clone(), none_waiting);
    assert!(matches!(handle.submit(job(&engine, req, tx.clone(), 0, Arc::new(AtomicBool::new(false)))), Err(SubmitError::QueueFull { .. })));

    // a client that goes away after two tokens: the sequence is dropped and its KV released
    let (handle, _t) = SchedulerHandle::start(engine.clone(), SchedulerConfig::default());
    let long = GenerateRequest { max_new_tokens: 200, sampling: SamplingParams::default(), ..req.clone() };
    let cancel = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, cancel2) = (seen.clone(), cancel.clone());
    let mut j = job(&engine, &long, tx.clone(), 0, cancel.clone());
    j.sink = Box::new(move |ev| {
        if matches!(ev, SeqEvent::Token(_)) && seen2.fetch_add(1, Ordering::SeqCst) == 1 {
            cancel2.store(true, Ordering::SeqCst);
        }
        true
    });
    handle.submit(j).unwrap();
    let stats = handle.stats();
    wait_until(|| seen.load(Ordering::SeqCst) >= 2);
    wait_until(|| stats.running.load(Ordering::SeqCst) == 0 && stats.kv_reserved_bytes.load(Ordering::SeqCst) == 0);
    let tokens_seen = seen.load(Ordering::SeqCst);
    assert!(tokens_seen < 10, "dropped promptly after cancellation ({tokens_seen} tokens)");

    // the server keeps serving: the same request again completes
    let (out, _) = run_batched(&engine, &[req], SchedulerConfig::default());
    assert!(out[0].summary.is_some());
    drop(rx);
}

#[test]
fn repeated_image_reuses_the_encoder_output() {
    let (engine, reqs) = load("qwen2-vl-tiny");
    let (_, req) = reqs.iter().find(|(id, _)| id == "c8_large_image").unwrap();
    let (handle, _t) = SchedulerHandle::start(engine.clone(), SchedulerConfig::default());
    let (tx, rx) = mpsc::channel();
    let mut summaries = Vec::new();
    for n in 0..2 {
        handle.submit(job(&engine, req, tx.clone(), n, Arc::new(AtomicBool::new(false)))).unwrap();
        loop {
            if let (_, SeqEvent::Done(s)) = rx.recv().unwrap() {
                summaries.push(s);
                break;
            }
        }
    }
    println!("first turn: vision {:.1} ms, ttft {:.1} ms; second: vision {:.1} ms, ttft {:.1} ms", summaries[0].vision_ms, summaries[0].ttft_ms, summaries[1].vision_ms, summaries[1].ttft_ms);
    assert_eq!((summaries[0].cached_media, summaries[1].cached_media), (0, 1));
    assert_eq!(summaries[0].text, summaries[1].text);
    assert_eq!(handle.stats().encoder_cache_hits.load(Ordering::SeqCst), 1);
}

#[test]
fn the_idle_hook_runs_once_when_the_work_runs_out() {
    let (engine, reqs) = load("qwen2-vl-tiny");
    let idle = Arc::new(AtomicUsize::new(0));
    let counter = idle.clone();
    let hook = IdleHook(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let config = SchedulerConfig { on_idle: Some(hook), ..SchedulerConfig::default() };
    let (out, handle) = run_batched(&engine, &[&reqs[0].1, &reqs[1].1], config);
    assert!(out.iter().all(|o| o.summary.is_some()));
    wait_until(|| idle.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(100));
    // once per idle period, not per step or per finished sequence
    assert_eq!(idle.load(Ordering::SeqCst), 1, "after {} steps", handle.stats().steps.load(Ordering::SeqCst));
}

//! Continuous batching on one model thread. Requests wait in a bounded queue and are admitted
//! between steps while their KV cache fits the memory budget (a request that could never fit is
//! refused at submission). Each step encodes at most one media item (reusing the encoder cache),
//! then runs ONE batched forward holding a decode token for every running sequence plus prompt
//! chunks of sequences still in prefill (at most `step_tokens` prompt tokens per step, cutting
//! through media items where needed), so long prompts do not stall running streams. A sequence whose client
//! has gone is dropped at the next step and its cache freed. Same policy as vLLM's scheduler with
//! chunked prefill, with whole-sequence KV reservation instead of paging.

use crate::decoding::{DecodeStep, Decoding};
use crate::encoder_cache::{media_key, EncoderCache};
use crate::generate::{box_reference, chunk_end, prompt_step, Engine, FinishReason};
use crate::sampler::SamplingParams;
use candle_core::Tensor;
use iris_models::{GroundingBox, PreparedMedia, PromptInputs, StepInput};
use iris_nn::KvCache;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Sequences decoded together.
    pub max_running: usize,
    /// Requests waiting for admission before new ones are refused.
    pub max_waiting: usize,
    /// KV cache bytes all admitted sequences may reserve together.
    pub kv_budget_bytes: usize,
    /// Prompt tokens prefilled per step, over all sequences.
    pub step_tokens: usize,
    pub encoder_cache_bytes: usize,
    /// Run on the model thread each time the scheduler runs out of work, before it blocks.
    pub on_idle: Option<IdleHook>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { max_running: 8, max_waiting: 64, kv_budget_bytes: 2 << 30, step_tokens: 512, encoder_cache_bytes: 512 << 20, on_idle: None }
    }
}

/// What the embedding program does when the server goes idle, e.g. hand the allocator's cached
/// pages back to the kernel (the engine itself does not know the allocator).
#[derive(Clone)]
pub struct IdleHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for IdleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleHook")
    }
}

/// A prepared request (see `Engine::prepare`) and where its output goes.
pub struct Job {
    pub prompt: PromptInputs,
    pub media: Vec<PreparedMedia>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    pub top_logprobs: Option<usize>,
    /// Set by the front end when the client has gone.
    pub cancel: Arc<AtomicBool>,
    /// Receives the sequence's events; returns false once nobody listens (the sequence is dropped).
    pub sink: Box<dyn FnMut(SeqEvent) -> bool + Send>,
}

#[derive(Debug, Clone)]
pub enum SeqEvent {
    /// One sampled token (its text may be empty while held back or mid-character).
    Token(DecodeStep),
    Done(SeqSummary),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct SeqSummary {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub text: String,
    pub boxes: Vec<GroundingBox>,
    /// Media items whose encoder output came from the cache.
    pub cached_media: usize,
    pub queue_ms: f64,
    pub vision_ms: f64,
    /// From submission to the first token.
    pub ttft_ms: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {waiting} requests are waiting; retry later")]
    QueueFull { waiting: usize },
    #[error("{0}")]
    TooLarge(String),
    #[error("the server is shutting down")]
    Stopped,
}

/// Live counters for metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_reserved_bytes: AtomicUsize,
    pub steps: AtomicUsize,
    pub batched_tokens: AtomicUsize,
    pub encoder_cache_hits: AtomicUsize,
    pub encoder_cache_misses: AtomicUsize,
}

enum Command {
    Submit(Box<Job>, Instant),
    /// Refuse new work, finish what runs until the deadline, then fail the rest.
    Drain(Instant),
}

#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
    stats: Arc<SchedulerStats>,
    config: SchedulerConfig,
    kv_bytes_per_token: usize,
    max_context: usize,
    draining: Arc<AtomicBool>,
}

impl SchedulerHandle {
    /// Starts the model thread.
    pub fn start(engine: Arc<Engine>, config: SchedulerConfig) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SchedulerStats::default());
        let info = engine.model.info().clone();
        let handle = Self { tx, stats: stats.clone(), config: config.clone(), kv_bytes_per_token: info.kv_bytes_per_token, max_context: info.max_context, draining: Arc::new(AtomicBool::new(false)) };
        let thread = std::thread::Builder::new()
            .name("iris-scheduler".into())
            .spawn(move || Scheduler::new(engine, config, stats).run(rx))
            .expect("spawning the scheduler thread");
        (handle, thread)
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// `QueueFull` when no job could be queued now.
    pub fn check_queue(&self) -> Result<(), SubmitError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped);
        }
        let waiting = self.stats.waiting.load(Ordering::SeqCst);
        if waiting >= self.config.max_waiting {
            return Err(SubmitError::QueueFull { waiting });
        }
        Ok(())
    }

    /// Queues a job, or says why not without queueing it.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let tokens = job_tokens(&job, self.max_context);
        let need = tokens * self.kv_bytes_per_token;
        if need > self.config.kv_budget_bytes {
            return Err(SubmitError::TooLarge(format!(
                "the request needs a KV cache of {tokens} tokens ({} prompt + up to {} new) = {} MiB, over the server's KV budget of {} MiB; lower max_tokens or send fewer/smaller images",
                job.prompt.token_ids.len(),
                tokens - job.prompt.token_ids.len(),
                need >> 20,
                self.config.kv_budget_bytes >> 20
            )));
        }
        self.check_queue()?;
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        self.tx.send(Command::Submit(Box::new(job), Instant::now())).map_err(|_| {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }

    /// Stops admitting; running sequences get until `grace` to finish, then end with an error.
    pub fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Drain(Instant::now() + grace));
    }
}

/// Tokens a job may occupy: its prompt and every token it may generate, within the context.
fn job_tokens(job: &Job, max_context: usize) -> usize {
    job.prompt.token_ids.len().saturating_add(job.max_new_tokens).min(max_context)
}

struct Sequence {
    job: Job,
    submitted: Instant,
    admitted: Instant,
    reserved_bytes: usize,
    cache: KvCache,
    /// `(prompt offset, [len, C])` of the media encoded and not yet prefilled, in span order.
    media_embeds: Vec<(usize, Tensor)>,
    /// Media spans encoded so far.
    media_encoded: usize,
    cached_media: usize,
    vision_ms: f64,
    /// Prompt tokens in the cache.
    prefilled: usize,
    decoding: Decoding,
    /// The last sampled token, fed at the next step.
    pending: Option<u32>,
    first_token: Option<Instant>,
}

impl Sequence {
    fn media_done(&self) -> bool {
        self.media_encoded == self.job.prompt.media_spans.len()
    }

    fn emit(&mut self, ev: SeqEvent) -> bool {
        (self.job.sink)(ev) && !self.job.cancel.load(Ordering::Relaxed)
    }
}

struct Scheduler {
    engine: Arc<Engine>,
    config: SchedulerConfig,
    stats: Arc<SchedulerStats>,
    waiting: VecDeque<(Box<Job>, Instant)>,
    running: Vec<Sequence>,
    encoder_cache: EncoderCache,
    kv_reserved: usize,
    drain_deadline: Option<Instant>,
}

impl Scheduler {
    fn new(engine: Arc<Engine>, config: SchedulerConfig, stats: Arc<SchedulerStats>) -> Self {
        let encoder_cache = EncoderCache::new(config.encoder_cache_bytes);
        Self { engine, config, stats, waiting: VecDeque::new(), running: Vec::new(), encoder_cache, kv_reserved: 0, drain_deadline: None }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut stepped_since_idle = false;
        loop {
            // block only when idle
            if self.running.is_empty() && self.waiting.is_empty() {
                if self.drain_deadline.is_some() {
                    return;
                }
                if std::mem::take(&mut stepped_since_idle) {
                    if let Some(hook) = &self.config.on_idle {
                        (hook.0)();
                    }
                }
                match rx.recv() {
                    Ok(cmd) => self.take(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.take(cmd);
            }
            if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
                self.fail_all("the server is shutting down");
                return;
            }
            self.drop_cancelled();
            self.admit();
            if self.running.is_empty() {
                continue;
            }
            stepped_since_idle = true;
            // a bug in one step must not take the server down: fail the batch, keep serving
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                tracing::error!("scheduler step panicked: {msg}");
                self.fail_running(&format!("internal error: {msg}"));
            }
            self.stats.running.store(self.running.len(), Ordering::SeqCst);
        }
    }

    fn take(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(job, t) => self.waiting.push_back((job, t)),
            Command::Drain(deadline) => self.drain_deadline = Some(deadline),
        }
    }

    fn reservation(&self, job: &Job) -> (usize, usize) {
        let info = self.engine.model.info();
        let tokens = job_tokens(job, info.max_context);
        (tokens, tokens * info.kv_bytes_per_token)
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some((job, _)) = self.waiting.front() else { break };
            let (tokens, bytes) = self.reservation(job);
            if self.kv_reserved + bytes > self.config.kv_budget_bytes && !self.running.is_empty() {
                break;
            }
            let (job, submitted) = self.waiting.pop_front().expect("front exists");
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            if job.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let decoding = self.engine.decoding(&job.prompt.token_ids, job.sampling.clone(), job.max_new_tokens, job.stop.clone(), job.top_logprobs);
            let info = self.engine.model.info();
            self.kv_reserved += bytes;
            self.stats.kv_reserved_bytes.store(self.kv_reserved, Ordering::SeqCst);
            let cache = KvCache::with_reserved(info.num_layers, tokens).stored_as(info.kv_dtype);
            self.running.push(Sequence {
                job: *job,
                submitted,
                admitted: Instant::now(),
                reserved_bytes: bytes,
                cache,
                media_embeds: Vec::new(),
                media_encoded: 0,
                cached_media: 0,
                vision_ms: 0.0,
                prefilled: 0,
                decoding,
                pending: None,
                first_token: None,
            });
        }
        self.stats.running.store(self.running.len(), Ordering::SeqCst);
    }

    fn release(&mut self, seq: &Sequence) {
        self.kv_reserved -= seq.reserved_bytes;
        self.stats.kv_reserved_bytes.store(self.kv_reserved, Ordering::SeqCst);
    }

    /// Drops cancelled sequences and waiting jobs, so dead requests hold neither KV nor queue slots.
    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running).into_iter().partition(|s| s.job.cancel.load(Ordering::Relaxed));
        self.running = kept;
        for s in gone {
            self.release(&s);
        }
        let before = self.waiting.len();
        self.waiting.retain(|(job, _)| !job.cancel.load(Ordering::Relaxed));
        self.stats.waiting.fetch_sub(before - self.waiting.len(), Ordering::SeqCst);
    }

    fn fail_running(&mut self, msg: &str) {
        for mut s in std::mem::take(&mut self.running) {
            s.emit(SeqEvent::Failed(msg.to_string()));
            self.release(&s);
        }
        self.stats.running.store(0, Ordering::SeqCst);
    }

    fn fail_all(&mut self, msg: &str) {
        self.fail_running(msg);
        for (mut job, _) in std::mem::take(&mut self.waiting) {
            (job.sink)(SeqEvent::Failed(msg.to_string()));
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.stats.running.store(0, Ordering::SeqCst);
    }

    /// Encodes the next media item of the first sequence that still needs one.
    fn encode_one(&mut self) -> Result<(), (usize, String)> {
        let Some(i) = self.running.iter().position(|s| !s.media_done()) else { return Ok(()) };
        let t0 = Instant::now();
        let seq = &self.running[i];
        let span = seq.job.prompt.media_spans[seq.media_encoded];
        let media = &seq.job.media[span.media_index];
        let key = media_key(media).map_err(|e| (i, e.to_string()))?;
        let (embeds, hit) = match self.encoder_cache.get(&key) {
            Some(e) => (e, true),
            None => {
                let e = iris_nn::on_compute_pool(|| self.engine.model.encode_media(media)).map_err(|e| (i, e.to_string()))?;
                // the encode's freed activations are not needed by the steps that follow
                crate::memory::release_cached_memory();
                self.encoder_cache.insert(key, e.clone());
                (e, false)
            }
        };
        let counter = if hit { &self.stats.encoder_cache_hits } else { &self.stats.encoder_cache_misses };
        counter.fetch_add(1, Ordering::Relaxed);
        let seq = &mut self.running[i];
        seq.cached_media += hit as usize;
        seq.media_embeds.push((span.start, embeds));
        seq.media_encoded += 1;
        seq.vision_ms += t0.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn step(&mut self) {
        if let Err((i, msg)) = self.encode_one() {
            let mut seq = self.running.remove(i);
            seq.emit(SeqEvent::Failed(msg));
            self.release(&seq);
            return;
        }
        // (sequence index, token range of its prompt or None for a decode token)
        let mut plan: Vec<(usize, Option<(usize, usize)>)> = Vec::new();
        let mut budget = self.config.step_tokens;
        for (i, s) in self.running.iter().enumerate() {
            if s.pending.is_some() {
                plan.push((i, None));
            } else if s.media_done() && s.prefilled < s.job.prompt.token_ids.len() && budget > 0 {
                let end = chunk_end(&s.job.prompt, s.prefilled, budget);
                budget = budget.saturating_sub(end - s.prefilled);
                plan.push((i, Some((s.prefilled, end))));
            }
        }
        if plan.is_empty() {
            return;
        }
        let positions: Vec<Vec<Vec<i64>>> = plan
            .iter()
            .map(|&(i, range)| {
                let s = &self.running[i];
                match range {
                    Some((a, b)) => s.job.prompt.positions.slice(a, b - a),
                    None => s.job.prompt.positions.slice(s.cache.len(), 1),
                }
            })
            .collect();
        let pending: Vec<[u32; 1]> = plan.iter().map(|&(i, _)| [self.running[i].pending.unwrap_or(0)]).collect();
        let mut caches: Vec<KvCache> = plan.iter().map(|&(i, _)| std::mem::replace(&mut self.running[i].cache, KvCache::new(0))).collect();
        let result = (|| -> crate::Result<Vec<Tensor>> {
            let steps = plan
                .iter()
                .zip(&positions)
                .zip(&pending)
                .map(|((&(i, range), pos), tok)| {
                    let s = &self.running[i];
                    match range {
                        Some((a, b)) => prompt_step(&s.job.prompt, a, b, pos, &s.media_embeds),
                        None => Ok(StepInput::decode(tok, pos)),
                    }
                })
                .collect::<crate::Result<Vec<_>>>()?;
            let tokens: usize = steps.iter().map(|s| s.token_ids.len()).sum();
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            self.stats.batched_tokens.fetch_add(tokens, Ordering::Relaxed);
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            Ok(iris_nn::on_compute_pool(|| self.engine.model.forward_batch(&steps, &mut refs))?)
        })();
        for (&(i, _), cache) in plan.iter().zip(caches) {
            self.running[i].cache = cache;
        }
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("model step failed: {e}");
                let mut failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
                failed.sort_unstable();
                for &i in failed.iter().rev() {
                    let mut seq = self.running.remove(i);
                    seq.emit(SeqEvent::Failed(msg.clone()));
                    self.release(&seq);
                }
                return;
            }
        };
        let mut finished = Vec::new();
        for (&(i, range), logits) in plan.iter().zip(logits) {
            let s = &mut self.running[i];
            match range {
                Some((_, end)) => {
                    s.prefilled = end;
                    if end < s.job.prompt.token_ids.len() {
                        continue;
                    }
                    s.media_embeds.clear();
                }
                None => s.pending = None,
            }
            match self.advance(i, &logits) {
                Ok(true) => finished.push(i),
                Ok(false) => {}
                Err(msg) => {
                    self.running[i].emit(SeqEvent::Failed(msg));
                    finished.push(i);
                }
            }
        }
        finished.sort_unstable();
        for &i in finished.iter().rev() {
            let seq = self.running.remove(i);
            self.release(&seq);
        }
    }

    /// Samples one token for sequence `i`; true when it is finished (or its client gone).
    fn advance(&mut self, i: usize, logits: &Tensor) -> Result<bool, String> {
        let engine = self.engine.clone();
        let s = &mut self.running[i];
        let values = logits.flatten_all().and_then(|l| l.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        // Decoding's token limit is already clamped to the context, so the last token is never fed
        let step = s.decoding.step(&values, &engine.tokenizer).map_err(|e| e.to_string())?;
        s.first_token.get_or_insert_with(Instant::now);
        let finish = step.finish;
        s.pending = step.token.filter(|_| finish.is_none());
        if !s.emit(SeqEvent::Token(step)) {
            return Ok(true);
        }
        let Some(finish) = finish else { return Ok(false) };
        let now = Instant::now();
        let first = s.first_token.unwrap_or(now);
        let n = s.decoding.token_ids().len();
        let decode_s = now.duration_since(first).as_secs_f64();
        let text = s.decoding.text().to_string();
        let boxes = box_reference(&s.job.media).map(|m| engine.model.parse_boxes(&text, m.orig_hw)).unwrap_or_default();
        let summary = SeqSummary {
            finish,
            prompt_tokens: s.job.prompt.token_ids.len(),
            completion_tokens: n,
            text,
            boxes,
            cached_media: s.cached_media,
            queue_ms: s.admitted.duration_since(s.submitted).as_secs_f64() * 1e3,
            vision_ms: s.vision_ms,
            ttft_ms: first.duration_since(s.submitted).as_secs_f64() * 1e3,
            decode_tokens_per_s: if n > 1 && decode_s > 0.0 { (n - 1) as f64 / decode_s } else { 0.0 },
        };
        s.emit(SeqEvent::Done(summary));
        Ok(true)
    }
}

//! Server metrics in the Prometheus text exposition format (version 0.0.4): requests by status,
//! tokens in and out, queue depth and running sequences (read live from the scheduler), KV and
//! encoder-cache use, and histograms of time to first token and time per output token. The format
//! is a few lines of text, so it is written directly rather than through a metrics crate.

use iris_engine::scheduler::SchedulerStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bucket upper bounds in seconds.
const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const TPOT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", self.count, self.sum, self.count);
    }
}

pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub stream_errors: AtomicU64,
    pub ttft: Mutex<Histogram>,
    pub tpot: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            ttft: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            tpot: Mutex::new(Histogram::new(TPOT_BUCKETS)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // a panic elsewhere must not stop metrics
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn request(&self, status: u16) {
        *lock(&self.requests).entry(status).or_default() += 1;
    }

    pub fn observe_ttft(&self, seconds: f64) {
        lock(&self.ttft).observe(seconds);
    }

    pub fn observe_tpot(&self, seconds: f64) {
        lock(&self.tpot).observe(seconds);
    }

    pub fn render(&self, s: &SchedulerStats) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP iris_requests_total Chat completion requests by HTTP status.\n# TYPE iris_requests_total counter");
        for (status, n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "iris_requests_total{{status=\"{status}\"}} {n}");
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(&mut out, "iris_prompt_tokens_total", "Prompt tokens of finished requests (image tokens included).", self.prompt_tokens.load(Ordering::Relaxed));
        counter(&mut out, "iris_completion_tokens_total", "Generated tokens.", self.completion_tokens.load(Ordering::Relaxed));
        counter(&mut out, "iris_stream_errors_total", "Streams that ended with an error chunk.", self.stream_errors.load(Ordering::Relaxed));
        let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        gauge(&mut out, "iris_queue_depth", "Requests waiting for admission.", load(&s.waiting));
        gauge(&mut out, "iris_running_sequences", "Sequences being prefilled or decoded.", load(&s.running));
        gauge(&mut out, "iris_kv_reserved_bytes", "KV cache bytes reserved by running sequences.", load(&s.kv_reserved_bytes));
        counter(&mut out, "iris_scheduler_steps_total", "Batched forward steps.", load(&s.steps) as u64);
        counter(&mut out, "iris_scheduler_tokens_total", "Tokens through batched forward steps.", load(&s.batched_tokens) as u64);
        counter(&mut out, "iris_encoder_cache_hits_total", "Media items whose vision encoding was reused.", load(&s.encoder_cache_hits) as u64);
        counter(&mut out, "iris_encoder_cache_misses_total", "Media items encoded.", load(&s.encoder_cache_misses) as u64);
        lock(&self.ttft).render(&mut out, "iris_time_to_first_token_seconds", "From request arrival to the first generated token.");
        lock(&self.tpot).render(&mut out, "iris_time_per_output_token_seconds", "Between consecutive generated tokens of a sequence.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 3.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 1\nx_bucket{le=\"2\"} 2\nx_bucket{le=\"+Inf\"} 3\nx_sum 5\nx_count 3"), "{s}");
    }
}

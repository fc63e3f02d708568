//! A sequence's events as an OpenAI Server-Sent-Events stream: a first chunk with the assistant
//! role, a chunk per piece of text (and per token when logprobs are asked for), a final chunk
//! with `finish_reason` (plus our `boxes` and `timings`), a usage chunk when
//! `stream_options.include_usage`, then `[DONE]`. A failure mid-stream becomes an `error` chunk
//! before `[DONE]`. Dropping the stream (the client went away) cancels the sequence.

use crate::openai::{self, CompletionMeta};
use crate::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use iris_engine::scheduler::SeqEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// Marks the sequence cancelled when the response that owns it is dropped.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct StreamState {
    st: Arc<AppState>,
    rx: UnboundedReceiver<SeqEvent>,
    _guard: CancelOnDrop,
    meta: CompletionMeta,
    include_usage: bool,
    ready: VecDeque<Event>,
    done: bool,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

impl StreamState {
    fn take(&mut self, ev: Option<SeqEvent>) {
        match ev {
            Some(SeqEvent::Token(step)) => {
                let logprobs = step.logprob.as_ref().filter(|_| step.token.is_some()).map(|lp| json!({"content": [openai::logprob_entry(&self.st.engine.tokenizer, lp)]}));
                if !step.text.is_empty() || logprobs.is_some() {
                    self.ready.push_back(data(&openai::chunk(&self.meta, json!({"content": step.text}), logprobs, None)));
                }
            }
            Some(SeqEvent::Done(s)) => {
                let mut last = openai::chunk(&self.meta, json!({}), None, Some(s.finish.as_str()));
                last["boxes"] = json!(s.boxes);
                last["timings"] = openai::timings(&s);
                self.ready.push_back(data(&last));
                if self.include_usage {
                    let mut usage = openai::chunk(&self.meta, json!({}), None, None);
                    usage["choices"] = json!([]);
                    usage["usage"] = openai::usage(&s);
                    self.ready.push_back(data(&usage));
                }
                self.finish();
            }
            Some(SeqEvent::Failed(msg)) => self.fail(msg),
            None => self.fail("the sequence ended without a result".into()),
        }
    }

    fn fail(&mut self, message: String) {
        self.st.metrics.stream_errors.fetch_add(1, Ordering::Relaxed);
        self.ready.push_back(data(&json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})));
        self.finish();
    }

    fn finish(&mut self) {
        self.ready.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

pub fn completion_stream(st: Arc<AppState>, rx: UnboundedReceiver<SeqEvent>, guard: CancelOnDrop, meta: CompletionMeta, include_usage: bool) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = data(&openai::chunk(&meta, json!({"role": "assistant", "content": ""}), None, None));
    let state = StreamState { st, rx, _guard: guard, meta, include_usage, ready: VecDeque::from([first]), done: false };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.ready.pop_front() {
                return Some((Ok(ev), s));
            }
            if s.done {
                return None;
            }
            let ev = s.rx.recv().await;
            s.take(ev);
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

//! HTTP routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics` and
//! the web page at `/`. A chat request is read under the body limit, checked field by field,
//! prepared (media fetched under the server's access rules, decoded under the pixel limit, prompt
//! built) on a blocking thread, then handed to the scheduler; the reply streams its events.

use crate::error::ApiError;
use crate::openai::{self, parse_chat_request, ChatRequest, CompletionMeta};
use crate::sse::{completion_stream, CancelOnDrop};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iris_engine::messages::{parse_messages_with, LocalMedia, MediaAccess};
use iris_engine::scheduler::{Job, SeqEvent};
use iris_engine::{EngineError, GenerateRequest};
use iris_models::image::DecodeLimits;
use iris_models::{PreparedMedia, PromptInputs, PromptOptions};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const INDEX_HTML: &str = include_str!("web/index.html");

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(api)
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response() })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn require_api_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.config.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            st.metrics.request(401);
            let msg = if given.is_none() { "missing API key: send `Authorization: Bearer KEY`" } else { "invalid API key" };
            return ApiError::new(StatusCode::UNAUTHORIZED, msg).with_code("invalid_api_key").into_response();
        }
    }
    next.run(req).await
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let info = st.engine.model.info();
    Json(json!({"object": "list", "data": [{
        "id": st.config.model_name, "object": "model", "created": st.created, "owned_by": "iris",
        "family": info.family, "max_model_len": info.max_context, "supports_video": info.supports_video,
        "max_media_per_conversation": info.max_media_per_conversation,
    }]}))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render(st.scheduler.stats()))
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let arrived = Instant::now();
    match chat(st.clone(), body, arrived).await {
        Ok(resp) => {
            st.metrics.request(200);
            resp
        }
        Err(e) => {
            st.metrics.request(e.status.as_u16());
            tracing::debug!("chat completion refused ({}): {}", e.status, e.message);
            e.into_response()
        }
    }
}

/// Reads the body up to the limit. An oversized body is still read (and dropped, up to a bound)
/// before the 413, so the client sees the answer instead of a connection reset mid-upload.
async fn read_body(st: &AppState, body: Body) -> Result<Value, ApiError> {
    use futures_util::StreamExt;
    let limit = st.config.max_body_bytes;
    let drain_bound = limit.saturating_mul(4).max(64 << 20);
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        seen += chunk.len();
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        } else if seen > drain_bound {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over the limit of {} MiB (--max-body-mb)", limit >> 20)).with_code("body_too_large"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")).with_code("invalid_json"))
}

async fn chat(st: Arc<AppState>, body: Body, arrived: Instant) -> Result<Response, ApiError> {
    let req = parse_chat_request(&read_body(&st, body).await?)?;
    if let Some(m) = req.model.as_deref().filter(|m| *m != st.config.model_name) {
        return Err(ApiError { param: Some("model".into()), ..ApiError::bad_request(format!("model `{m}` is not served here; this server serves `{}`", st.config.model_name)).with_code("model_not_found") });
    }
    let sampling = st.engine.defaults.sampling_with(&req.sampling).map_err(ApiError::bad_request)?;
    // refuse before decoding any media when the queue is already full (submit checks again)
    st.scheduler.check_queue()?;
    let (prompt, media) = {
        // the permit lives in the blocking task: a client that leaves mid-decode still holds it
        let slot = st.prepare_slots.clone().acquire_owned().await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
        let (st2, req2) = (st.clone(), req.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            prepare(&st2, &req2)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("request preparation failed: {e}")))??
    };
    let meta = CompletionMeta {
        id: format!("chatcmpl-{:016x}{:08x}", rand_id(), arrived.elapsed().subsec_nanos()),
        created: crate::unix_seconds(),
        model: st.config.model_name.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let st_sink = st.clone();
    let mut last_token: Option<Instant> = None;
    let job = Job {
        prompt,
        media,
        sampling,
        max_new_tokens: req.max_tokens.unwrap_or(st.config.default_max_tokens),
        stop: req.stop.clone(),
        top_logprobs: req.top_logprobs,
        cancel: cancel.clone(),
        sink: Box::new(move |ev: SeqEvent| {
            match &ev {
                SeqEvent::Token(_) => {
                    let now = Instant::now();
                    match last_token {
                        None => st_sink.metrics.observe_ttft(now.duration_since(arrived).as_secs_f64()),
                        Some(t) => st_sink.metrics.observe_tpot(now.duration_since(t).as_secs_f64()),
                    }
                    last_token = Some(now);
                }
                SeqEvent::Done(s) => {
                    st_sink.metrics.prompt_tokens.fetch_add(s.prompt_tokens as u64, Ordering::Relaxed);
                    st_sink.metrics.completion_tokens.fetch_add(s.completion_tokens as u64, Ordering::Relaxed);
                }
                SeqEvent::Failed(_) => {}
            }
            tx.send(ev).is_ok()
        }),
    };
    st.scheduler.submit(job)?;
    let guard = CancelOnDrop(cancel);
    if req.stream {
        return Ok(completion_stream(st, rx, guard, meta, req.include_usage).into_response());
    }
    whole_completion(&st, rx, guard, meta).await
}

/// Collects a sequence's events into one `chat.completion`.
async fn whole_completion(st: &AppState, mut rx: tokio::sync::mpsc::UnboundedReceiver<SeqEvent>, _guard: CancelOnDrop, meta: CompletionMeta) -> Result<Response, ApiError> {
    let mut logprobs: Option<Vec<Value>> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            SeqEvent::Token(step) => {
                if let Some(lp) = step.logprob.as_ref().filter(|_| step.token.is_some()) {
                    logprobs.get_or_insert_with(Vec::new).push(openai::logprob_entry(&st.engine.tokenizer, lp));
                }
            }
            SeqEvent::Done(summary) => return Ok(Json(openai::completion(&meta, &summary, logprobs)).into_response()),
            SeqEvent::Failed(msg) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)),
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the sequence ended without a result"))
}

/// Media access, decode and prompt building for one request (blocking: file reads, downloads,
/// image and video decoding).
fn prepare(st: &AppState, req: &ChatRequest) -> Result<(PromptInputs, Vec<PreparedMedia>), ApiError> {
    let cfg = &st.config;
    let fetch = |url: &str| fetch_remote(url, cfg.remote_max_bytes, cfg.remote_timeout);
    let access = MediaAccess {
        base_dir: cfg.media_dir.as_deref(),
        local: match &cfg.media_dir {
            Some(dir) => LocalMedia::Under(dir),
            None => LocalMedia::Denied,
        },
        fetch: if cfg.allow_remote_media { Some(&fetch) } else { None },
    };
    let conversation = parse_messages_with(&req.messages, &access)?;
    // sampling and limits travel in the scheduler's job; preparation needs only the media rules
    let gen = GenerateRequest {
        media_options: req.media,
        prompt_options: PromptOptions { template: req.template.clone() },
        decode_limits: DecodeLimits { max_pixels: cfg.max_image_pixels },
        ..GenerateRequest::greedy(conversation, 0)
    };
    Ok(st.engine.prepare(&gen)?)
}

/// Downloads a media URL: at most `max_bytes`, within `timeout`, following 3 redirects.
fn fetch_remote(url: &str, max_bytes: usize, timeout: std::time::Duration) -> iris_engine::Result<Vec<u8>> {
    let too_large = || EngineError::TooLarge(format!("{url}: the download is over the limit of {} MiB", max_bytes >> 20));
    let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(3).build();
    let resp = agent.get(url).call().map_err(|e| EngineError::Request(format!("{url}: download failed: {e}")))?;
    if resp.header("Content-Length").and_then(|l| l.parse::<usize>().ok()).is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let mut data = Vec::new();
    resp.into_reader().take(max_bytes as u64 + 1).read_to_end(&mut data).map_err(|e| EngineError::Request(format!("{url}: download failed: {e}")))?;
    if data.len() > max_bytes {
        return Err(too_large());
    }
    Ok(data)
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

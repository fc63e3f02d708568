//! `iris serve`: an OpenAI-compatible HTTP server (chat completions streamed over SSE or whole,
//! models, health, Prometheus metrics) and a web chat page, over the engine's continuous-batching
//! scheduler. HTTP handlers only parse, check and prepare requests (media decode and prompt
//! building run on blocking threads, a few at a time); all model compute runs on the scheduler's
//! thread. Never names a model family.

pub mod error;
pub mod metrics;
pub mod openai;
mod routes;
mod sse;

use iris_engine::scheduler::{SchedulerConfig, SchedulerHandle};
use iris_engine::Engine;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id clients pass as `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Bearer token required on `/v1/*` when set.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Images (and video frames) over this many pixels are refused from their header, before
    /// any pixel is decoded.
    pub max_image_pixels: u64,
    /// Local paths and `file://` URLs are read only inside this directory.
    pub media_dir: Option<PathBuf>,
    /// Fetch `http(s)` media URLs, up to `remote_max_bytes` within `remote_timeout`.
    pub allow_remote_media: bool,
    pub remote_max_bytes: usize,
    pub remote_timeout: Duration,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// On shutdown, how long running sequences may take to finish.
    pub shutdown_grace: Duration,
    /// Requests whose media are decoded at the same time (bounds decode memory).
    pub max_concurrent_prepare: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_name: "iris".into(),
            api_key: None,
            max_body_bytes: 32 << 20,
            max_image_pixels: 50_000_000,
            media_dir: None,
            allow_remote_media: false,
            remote_max_bytes: 20 << 20,
            remote_timeout: Duration::from_secs(10),
            default_max_tokens: 1024,
            shutdown_grace: Duration::from_secs(30),
            max_concurrent_prepare: 4,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub scheduler: SchedulerHandle,
    pub config: ServerConfig,
    pub metrics: metrics::Metrics,
    prepare_slots: Arc<tokio::sync::Semaphore>,
    created: u64,
}

/// Serves on `listener` until `shutdown` resolves, then stops admitting, lets running sequences
/// finish (up to the grace period) and returns.
pub async fn serve(listener: tokio::net::TcpListener, engine: Arc<Engine>, mut config: ServerConfig, scheduler: SchedulerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    if let Some(dir) = &config.media_dir {
        config.media_dir = Some(dir.canonicalize().map_err(|e| std::io::Error::new(e.kind(), format!("--media-dir {}: {e}", dir.display())))?);
    }
    let (handle, thread) = SchedulerHandle::start(engine.clone(), scheduler);
    let grace = config.shutdown_grace;
    let state = Arc::new(AppState {
        engine,
        scheduler: handle.clone(),
        prepare_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_prepare.max(1))),
        config,
        metrics: metrics::Metrics::default(),
        created: unix_seconds(),
    });
    let app = routes::router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing running sequences (up to {grace:?})");
            handle.drain(grace);
        })
        .await;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

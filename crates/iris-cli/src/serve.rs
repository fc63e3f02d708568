//! `iris serve`: loads the model once and serves the OpenAI-compatible API and the web page until
//! SIGINT/SIGTERM (see the iris-server crate).

use crate::args::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use iris_engine::checkpoint::resolve_model;
use iris_engine::scheduler::{IdleHook, SchedulerConfig};
use iris_engine::weight_plan::available_memory;
use iris_engine::Engine;
use iris_server::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 to serve the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from IRIS_API_KEY).
    #[arg(long, env = "IRIS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model id clients pass (default: the --model argument).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest request body accepted, in MiB (413 above).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Largest image or video frame accepted, in pixels, checked from the header before decoding
    /// (413 above).
    #[arg(long, default_value_t = 50_000_000)]
    pub max_image_pixels: u64,
    /// Directory whose files requests may name by path or file:// URL (default: none).
    #[arg(long)]
    pub media_dir: Option<PathBuf>,
    /// Fetch http(s) image and video URLs (off by default).
    #[arg(long)]
    pub allow_remote_media: bool,
    /// Largest remote media download, in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_remote_mb: usize,
    /// Sequences decoded together in one batched step.
    #[arg(long, default_value_t = 8)]
    pub max_running: usize,
    /// Requests waiting for admission before new ones get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// KV cache budget of all sequences, in MiB (default: half the memory available after
    /// loading, at most 16 GiB).
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// Prompt tokens prefilled per step (long prompts are split so running streams keep flowing).
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Memory for cached vision-encoder outputs (multi-turn questions about one image), in MiB.
    #[arg(long, default_value_t = 512)]
    pub encoder_cache_mb: usize,
    /// max_tokens of a request that gives none.
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: usize,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let dir = resolve_model(&a.model.model)?;
    let engine = Engine::load(&dir, &a.model.load_options(&dir)?).with_context(|| format!("loading {}", dir.display()))?;
    let kv_budget = match a.kv_cache_mb {
        Some(mb) => mb << 20,
        None => (available_memory().unwrap_or(8 << 30) as usize / 2).min(16 << 30),
    };
    let scheduler = SchedulerConfig {
        max_running: a.max_running.max(1),
        max_waiting: a.max_queue,
        kv_budget_bytes: kv_budget,
        step_tokens: a.prefill_chunk.max(1),
        encoder_cache_bytes: a.encoder_cache_mb << 20,
        on_idle: Some(IdleHook(Arc::new(crate::release_cached_memory))),
    };
    let config = ServerConfig {
        model_name: a.served_model_name.unwrap_or_else(|| a.model.model.clone()),
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_mb << 20,
        max_image_pixels: a.max_image_pixels,
        media_dir: a.media_dir,
        allow_remote_media: a.allow_remote_media,
        remote_max_bytes: a.max_remote_mb << 20,
        default_max_tokens: a.default_max_tokens,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port)).await.with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let info = engine.model.info();
        eprintln!(
            "iris serve: {} ({}) listening on http://{addr} (KV budget {} MiB, {} sequences per step)",
            config.model_name,
            info.family,
            kv_budget >> 20,
            scheduler.max_running
        );
        iris_server::serve(listener, Arc::new(engine), config, scheduler, iris_server::shutdown_signal()).await?;
        eprintln!("iris serve: stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

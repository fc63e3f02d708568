//! `iris`: run vision-language models (Qwen2-VL, ...) from the command line.

mod accuracy;
mod args;
mod bench;
mod bench_batch;
mod chat;
mod make_checkpoint;
mod run;
mod serve;

use clap::{Parser, Subcommand};

// glibc returns large freed blocks to the kernel, so every activation buffer was faulted in and
// zeroed afresh (21% of vision-tower time in `clear_page`); mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the pages mimalloc keeps for reuse back to the kernel. mimalloc purges a thread's freed
/// pages only when that thread allocates again, so after a burst of requests the idle compute
/// threads kept their activation pages: the server's RSS stayed ~100 MiB above its baseline for
/// good. `iris serve` calls this when its scheduler runs out of work.
pub fn release_cached_memory() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the shared arenas.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    unsafe { libmimalloc_sys::mi_collect(true) };
    tracing::debug!("idle: released the allocator's cached pages");
}

#[derive(Parser)]
#[command(name = "iris", version, about = "Fast, exact vision-language model inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one question about images, streaming the answer to stdout.
    Run(run::RunArgs),
    /// Interactive multi-turn chat (`/image PATH`, `/reset`, `/quit`).
    Chat(chat::ChatArgs),
    /// Serve the OpenAI-compatible API and the web chat page (continuous batching).
    Serve(serve::ServeArgs),
    /// Measure load, vision, prefill and decode speed and peak memory (table or --json).
    Bench(bench::BenchArgs),
    /// Write a full-size random-weight checkpoint of a real architecture (for benchmarks).
    MakeCheckpoint(make_checkpoint::MakeCheckpointArgs),
}

/// candle asks for its thread count before every matmul, and unless `RAYON_NUM_THREADS` is set it
/// counts physical cores by reading `/proc/cpuinfo` each time: ~900 reads in a 16-token run,
/// 7% of Qwen2-VL-2B q4k decode time. Pinning the variable to the count candle would compute
/// keeps its choice and makes the lookup free. Runs first, while the process has one thread.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
}

/// mimalloc's option `purge_delay` (v3's `mi_option_purge_delay`; the Rust bindings name no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Lets mimalloc keep freed pages for 10 s (its default is 1 s) unless `MIMALLOC_PURGE_DELAY`
/// says otherwise, and has the engine release them after each phase of a request
/// (`iris_engine::memory`). CogVLM2's 1344² vision layers take ~1.6 s, so with the default each
/// layer's freed activation buffers (~1 GB) were purged and the next layer faulted in and zeroed
/// fresh ones: a 10 s delay measured its vision encode 6% faster (BENCHMARKS.md). Runs first,
/// before anything is allocated on another thread.
fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    iris_engine::memory::set_release_hook(iris_engine::scheduler::IdleHook(std::sync::Arc::new(release_cached_memory)));
}

fn main() {
    fix_thread_count();
    configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IRIS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Serve(a) => serve::serve(a),
        Command::Bench(a) => bench::bench(a),
        Command::MakeCheckpoint(a) => make_checkpoint::make_checkpoint(a),
    };
    if let Err(e) = result {
        // one readable line: the whole cause chain
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

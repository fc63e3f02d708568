//! `iris`: run vision-language models (Qwen2-VL, ...) from the command line.

mod args;
mod bench;
mod chat;
mod make_checkpoint;
mod run;
mod serve;

use clap::{Parser, Subcommand};

// glibc returns large freed blocks to the kernel, so every activation buffer was faulted in and
// zeroed afresh (21% of vision-tower time in `clear_page`); mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h; not exported by the crate).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns freed pages to the kernel 10 ms after the last free; a vision layer or a
/// prefill chunk takes longer than that, so each one re-faulted and re-zeroed the previous one's
/// activation buffers. Keeping them for a second made prefill 13% faster (44 -> 50 tok/s,
/// Qwen2-VL-2B q4k) for ~0.1 GB more peak RSS. The option is set only if it still holds
/// mimalloc's documented default, i.e. the index above names the option we mean.
fn keep_freed_pages_for_a_second() {
    // SAFETY: plain getters/setters of mimalloc's global options.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000);
        }
    }
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

fn main() {
    keep_freed_pages_for_a_second();
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

//! `iris`: run vision-language models (Qwen2-VL, ...) from the command line.

mod accuracy;
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

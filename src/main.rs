//! The `mvserve` command line: a thin layer that parses arguments and calls into the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;
mod cli_eval;
mod cli_store;
mod cli_train;

// Tensor buffers of several MB are allocated and freed every layer; glibc returns them to the
// kernel each time (page faults and zeroing on every op), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mvserve",
    version,
    about = "Multi-tenant text-to-video retrieval with MV-Adapters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the L2-normalised embedding of a text, an image or a video as JSON (optionally adapted).
    Embed(cli::EmbedArgs),
    /// Create, inspect and import MV-Adapter files.
    #[command(subcommand)]
    Adapter(cli::AdapterCommand),
    /// Benchmarks that print machine-readable numbers.
    #[command(subcommand)]
    Bench(cli::BenchCommand),
    /// Run the HTTP server (text-to-video search over every task).
    Serve(cli::ServeArgs),
    /// Decode and sample a video as the server would; print container, codec, timing and the
    /// sampled timestamps (or the typed error) as JSON. Exits 1 when the video is refused.
    Probe(cli::ProbeArgs),
    /// Train a task's adapter on video-caption pairs (frozen backbone); a checkpoint each epoch.
    Train(cli_train::TrainArgs),
    /// Write synthetic captioned clips (moving, appearing, growing shapes; two events in order)
    /// as H.264 MP4 files and a captions.jsonl.
    Synth(cli_eval::SynthArgs),
    /// Inspect and repair task stores offline (`store check DIR [--repair]`).
    #[command(subcommand)]
    Store(cli_store::StoreCommand),
    /// Retrieval metrics of a test set (R@1/5/10, MdR, MnR, both directions), zero-shot or with
    /// an adapter.
    Eval(cli_eval::EvalArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Embed(args) => cli::embed(args),
        Command::Adapter(cmd) => cli::adapter(cmd),
        Command::Bench(cmd) => cli::bench(cmd),
        Command::Serve(args) => cli::serve(args),
        Command::Probe(args) => cli::probe(args),
        Command::Train(args) => cli_train::train(args),
        Command::Synth(args) => cli_eval::synth(args),
        Command::Eval(args) => cli_eval::eval(args),
        Command::Store(cmd) => cli_store::store(cmd),
    }
}

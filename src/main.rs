//! The `mvserve` command line: a thin layer that parses arguments and calls into the library.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

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
    /// Print the L2-normalised embedding of a text or an image as JSON.
    Embed(cli::EmbedArgs),
    /// Benchmarks that print machine-readable numbers.
    #[command(subcommand)]
    Bench(cli::BenchCommand),
    /// Run the HTTP server (text-to-video search over every task).
    Serve(cli::ServeArgs),
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
        Command::Bench(cmd) => cli::bench(cmd),
        Command::Serve(args) => cli::serve(args),
    }
}

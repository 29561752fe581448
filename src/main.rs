//! The `mvserve` command line: a thin layer that parses arguments and calls into the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mvserve",
    version,
    about = "Multi-tenant text-to-video retrieval with MV-Adapters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Decode and sample a video as the server would; print container, codec, timing and the
    /// sampled timestamps (or the typed error) as JSON. Exits 1 when the video is refused.
    Probe {
        file: std::path::PathBuf,
        /// Frames to sample (F).
        #[arg(long, default_value_t = 12)]
        frames: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Probe { file, frames }) => {
            let spec = mvserve::media::SampleSpec {
                frames,
                ..Default::default()
            };
            let report = mvserve::media::probe(&file, &spec, &Default::default());
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serialisable")
            );
            std::process::exit(if report.ok { 0 } else { 1 });
        }
        None => {}
    }
}

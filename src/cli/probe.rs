//! `mvserve probe FILE`: decode and sample a video as the server would and print the report.

use anyhow::Result;
use clap::Args;
use mvserve::media::{DecodeStrategy, SampleSpec, DEFAULT_FRAMES};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The video file.
    pub file: PathBuf,
    /// Frames to sample (F).
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    pub frames: usize,
    /// Decode every frame from the start instead of seeking to the chosen ones (the baseline the
    /// seeking decoder is compared with; same frames, more work).
    #[arg(long)]
    pub sequential: bool,
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let spec = SampleSpec {
        frames: args.frames,
        ..Default::default()
    };
    let strategy = if args.sequential {
        DecodeStrategy::Sequential
    } else {
        DecodeStrategy::Seek
    };
    let report = mvserve::media::probe(&args.file, &spec, &Default::default(), strategy);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

//! `mvserve synth`: synthetic captioned clips for training and tests.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder: videos/NNNNN.mp4 and captions.jsonl are written into it.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of clips (contrast groups of four).
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frame width in pixels (even).
    #[arg(long, default_value_t = 96)]
    pub width: u32,
    /// Frame height in pixels (even).
    #[arg(long, default_value_t = 96)]
    pub height: u32,
    #[arg(long, default_value_t = 4)]
    pub fps: u32,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 8)]
    pub seconds: u32,
    /// H.264 quantiser (0 best, 51 worst).
    #[arg(long, default_value_t = 20)]
    pub qp: u8,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let spec = mvserve::synth::SynthSpec {
        n: a.n,
        seed: a.seed,
        width: a.width,
        height: a.height,
        fps: a.fps,
        seconds: a.seconds,
        qp: a.qp,
    };
    let t0 = std::time::Instant::now();
    let clips = mvserve::synth::generate(&spec, &a.out)
        .with_context(|| format!("generating into {}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes: u64 = clips.iter().map(|c| c.bytes).sum();
    println!(
        "{} clips ({} groups, {}x{}, {} fps, {} s) in {:.2} s ({:.1} clips/s), {} bytes of video; captions in {}",
        clips.len(),
        clips.last().map_or(0, |c| c.group + 1),
        spec.width,
        spec.height,
        spec.fps,
        spec.seconds,
        secs,
        clips.len() as f64 / secs,
        bytes,
        a.out.join("captions.jsonl").display()
    );
    Ok(())
}

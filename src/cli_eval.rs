//! Argument types and glue of `mvserve synth` and `mvserve eval`: parse, call the library, print.

use anyhow::{Context, Result};
use clap::Args;
use mvserve::eval::data::{load, Dataset, DatasetFormat};
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

pub fn synth(a: SynthArgs) -> Result<()> {
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

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: crate::cli::ModelArgs,
    /// The test set.
    #[command(flatten)]
    pub dataset: DataArgs,
    /// A task's adapter file (default: none, zero-shot CLIP with meanP).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Frames per video without an adapter (an adapter fixes it to its own).
    #[arg(long, default_value_t = 12)]
    pub frames: usize,
    /// Padded text length in tokens without an adapter (an adapter fixes it to its own).
    #[arg(long, default_value_t = mvserve::backbone::DEFAULT_TEXT_LEN)]
    pub text_len: usize,
    /// Videos per vision forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Evaluate only the first N videos (and their captions).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which dataset to read (`eval` and `train`).
#[derive(Args, Debug)]
pub struct DataArgs {
    /// The annotation file: a jsonl of {"video": PATH, "caption": TEXT} lines, MSR-VTT csv/json,
    /// MSVD tsv, DiDeMo or ActivityNet json.
    #[arg(long)]
    pub data: PathBuf,
    /// The annotation format (detected from the file when left out): jsonl, msrvtt-csv,
    /// msrvtt-json, msvd, didemo, activitynet.
    #[arg(long)]
    pub format: Option<String>,
    /// Where the video files are (default: the annotation file's folder).
    #[arg(long)]
    pub video_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The format (given, or detected from the file) and the dataset.
    pub fn load(&self) -> Result<(DatasetFormat, Dataset)> {
        let format = match self.format.as_deref() {
            Some(f) => f.parse::<DatasetFormat>()?,
            None => DatasetFormat::detect(&self.data)?,
        };
        let ds = load(&self.data, Some(format), self.video_dir.as_deref())
            .with_context(|| format!("reading {}", self.data.display()))?;
        Ok((format, ds))
    }
}

pub fn eval(a: EvalArgs) -> Result<()> {
    use mvserve::eval::{run::run, EvalOptions};
    let (_, mut ds) = a.dataset.load()?;
    if let Some(n) = a.limit {
        ds.videos.truncate(n);
    }
    let backbone = a.model.load()?;
    let loaded = match &a.adapter {
        Some(p) => Some(mvserve::embed::load_adapter(p, &backbone.clip)?),
        None => None,
    };
    let e = mvserve::embed::Embedder::new(
        &backbone,
        loaded.as_ref().map(|(_, ad)| ad),
        a.text_len,
        a.frames,
    );
    tracing::info!(
        dataset = %ds.name, videos = ds.videos.len(), captions = ds.num_captions(),
        adapter = loaded.as_ref().map_or("none (zero-shot)", |(f, _)| f.digest()),
        frames = e.frames(), "evaluating"
    );
    let opts = EvalOptions {
        video_batch: a.batch,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let progress = |done: usize, total: usize| tracing::debug!(done, total, "videos embedded");
    let report = run(&e, &ds, &opts, &progress)?;
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        "evaluated {} videos",
        report.videos
    );
    let json = serde_json::to_string(&report)?;
    if let Some(out) = &a.out {
        std::fs::write(out, format!("{json}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{report}");
    }
    Ok(())
}

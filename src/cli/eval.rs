//! `mvserve eval`: retrieval metrics of a test set, zero-shot or through a task's adapter.

use super::{DataArgs, ModelArgs, PrecisionArgs};
use anyhow::{Context, Result};
use clap::Args;
use mvserve::backbone::DEFAULT_TEXT_LEN;
use mvserve::eval::EvalOptions;
use mvserve::media::DEFAULT_FRAMES;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// The test set.
    #[command(flatten)]
    pub dataset: DataArgs,
    /// A task's adapter file (default: none, zero-shot CLIP with meanP).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Frames per video without an adapter (an adapter fixes it to its own).
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    pub frames: usize,
    /// Padded text length in tokens without an adapter (an adapter fixes it to its own).
    #[arg(long, default_value_t = DEFAULT_TEXT_LEN)]
    pub text_len: usize,
    /// Videos per vision forward pass.
    #[arg(long, default_value_t = EvalOptions::default().video_batch)]
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

pub fn run(a: EvalArgs) -> Result<()> {
    let (_, mut ds) = a.dataset.load()?;
    if let Some(n) = a.limit {
        ds.videos.truncate(n);
    }
    let backbone = a.model.load_at(a.precision.precision)?;
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
    let report = mvserve::eval::run::run(&e, &ds, &opts, &progress)?;
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

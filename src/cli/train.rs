//! `mvserve train`: reads a dataset with `eval::data`, trains a task's adapter with
//! `train::Trainer`, and prints where the checkpoint went. No training logic lives here.

use super::{DataArgs, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use mvserve::adapter::Tying;
use mvserve::train::{state_path, AdamWConfig, FrameCache, TrainConfig, TrainData, Trainer};
use std::path::PathBuf;

fn defaults() -> TrainConfig {
    TrainConfig::default()
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The training pairs.
    #[command(flatten)]
    pub dataset: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The task the adapter is for (recorded in the file).
    #[arg(long)]
    pub task: String,
    /// The adapter file, rewritten after every epoch; the resume state goes beside it
    /// (`FILE.train-state`).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = defaults().epochs)]
    pub epochs: usize,
    /// Pairs per batch (in-batch negatives).
    #[arg(long, default_value_t = defaults().batch)]
    pub batch: usize,
    /// Peak learning rate (5e-6 is the authors' for CLIP ViT-B; a small random backbone needs
    /// far more).
    #[arg(long, default_value_t = defaults().lr)]
    pub lr: f64,
    /// Fraction of the updates spent warming up.
    #[arg(long, default_value_t = defaults().warmup)]
    pub warmup: f64,
    /// Decoupled weight decay on the weight matrices.
    #[arg(long, default_value_t = defaults().adamw.weight_decay)]
    pub weight_decay: f64,
    /// Largest global gradient norm (0: no clipping).
    #[arg(long, default_value_t = defaults().clip_norm)]
    pub clip_norm: f64,
    /// Frames per video (default 12; 32 for paragraph datasets).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Padded text length in tokens (default 32; 64 for paragraph datasets).
    #[arg(long)]
    pub words: Option<usize>,
    /// Train without temporal adaptation: a per-frame down/up video adapter (ablation).
    #[arg(long)]
    pub no_temporal: bool,
    /// The adapter's output scale (the authors' 0.1; a small random test backbone needs 1).
    #[arg(long, default_value_t = defaults().scale)]
    pub scale: f64,
    /// Cross Modality Tying.
    #[arg(long, value_enum, default_value_t = defaults().tying)]
    pub tying: Tying,
    /// Seeds the adapter's initial values and the order of pairs.
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Continue the run saved in --out (same settings and data).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh even though --out exists.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// The decoded-frame cache (default: $XDG_CACHE_HOME/mvserve/frames or ~/.cache/mvserve/frames).
    #[arg(long, env = "MVSERVE_FRAME_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let (format, ds) = a.dataset.load()?;
    let missing = ds.missing_videos().len();
    if missing > 0 {
        tracing::warn!(
            missing,
            "videos named by the data file do not exist; left out"
        );
    }
    if a.out.exists() && !a.resume && !a.overwrite {
        bail!(
            "{} exists: pass --resume to continue its run or --overwrite to start afresh",
            a.out.display()
        );
    }
    // Checked before the first epoch, not found at the end of it: the first checkpoint goes
    // into this folder.
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the folder of --out, {}", dir.display()))?;
    }
    let base = TrainConfig::for_format(format);
    let config = TrainConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup,
        adamw: AdamWConfig {
            weight_decay: a.weight_decay,
            ..base.adamw
        },
        clip_norm: a.clip_norm,
        seed: a.seed,
        frames: a.frames.unwrap_or(base.frames),
        words: a.words.unwrap_or(base.words),
        temporal: !a.no_temporal,
        tying: a.tying,
        scale: a.scale,
    };
    config.validate()?;
    let backbone = a.model.load()?;
    let cache = FrameCache::new(
        a.cache_dir.unwrap_or_else(FrameCache::default_dir),
        config.sample_spec(&backbone),
        Default::default(),
    );
    let data = TrainData {
        name: ds.name.clone(),
        videos: ds.videos.iter().map(|v| v.path.clone()).collect(),
        pairs: ds.pairs(),
    };
    let mut trainer = if a.resume {
        if !a.out.exists() || !state_path(&a.out).exists() {
            bail!(
                "--resume needs {} and {}",
                a.out.display(),
                state_path(&a.out).display()
            );
        }
        Trainer::resume(&backbone, &a.task, config, &data, &cache, &a.out)?
    } else {
        Trainer::new(&backbone, &a.task, config, &data, &cache)?
    };
    eprintln!(
        "training {} on {} pairs ({} videos decoded, the rest from {}; {} left out), {} updates",
        a.task,
        trainer.pair_count(),
        trainer.decoded_videos(),
        cache.dir().display(),
        trainer.skipped().len(),
        trainer.total_steps()
    );
    trainer.run(&a.out)?;
    let file = mvserve::adapter::AdapterFile::read(&a.out)?;
    let last = trainer.history().last();
    println!(
        "{}",
        serde_json::json!({
            "out": a.out, "digest": file.digest(), "params": file.param_count(),
            "epochs": trainer.epochs_done(), "loss": last.map(|s| s.loss),
            "pairs_per_s": last.map(|s| s.pairs_per_s),
        })
    );
    Ok(())
}

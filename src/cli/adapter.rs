//! `mvserve adapter new|inspect|import`: write, show and convert MV-Adapter files.

use super::ModelArgs;
use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use mvserve::adapter::import::{import, read_checkpoint, ImportOptions};
use mvserve::adapter::{
    clip_param_count, AdapterConfig, AdapterFile, AdapterInit, AdapterMeta, BackboneDims,
    TaskAdapter, Tying,
};
use mvserve::backbone::{Backbone, ModelSource, DEFAULT_TEXT_LEN};
use mvserve::media::DEFAULT_FRAMES;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AdapterCommand {
    /// Write a new adapter for a backbone (the authors' init: the identity, plain CLIP).
    New(AdapterNewArgs),
    /// Show an adapter file: task, config, size, digest, whether it fits a backbone.
    Inspect {
        file: PathBuf,
        /// A backbone to check the adapter against.
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a checkpoint in the authors' parameter names (.bin/.pth or safetensors).
    Import {
        checkpoint: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        task: String,
        #[arg(long)]
        out: PathBuf,
        /// down_in or down_out, when the checkpoint cannot tell.
        #[arg(long, value_enum)]
        tying: Option<Tying>,
        #[arg(long, default_value_t = 2)]
        heads: usize,
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
    },
}

/// How a new adapter starts.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Init {
    /// The authors' init: a zero up-projection, so the adapter is the identity (plain CLIP).
    Zero,
    /// Everything random.
    Random,
}

impl From<Init> for AdapterInit {
    fn from(i: Init) -> Self {
        match i {
            Init::Zero => AdapterInit::Authors,
            Init::Random => AdapterInit::Random,
        }
    }
}

#[derive(Args, Debug)]
pub struct AdapterNewArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Init::Zero)]
    pub init: Init,
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    pub frames: usize,
    #[arg(long, default_value_t = DEFAULT_TEXT_LEN)]
    pub words: usize,
    /// Cross Modality Tying.
    #[arg(long, value_enum, default_value_t = Tying::DownIn)]
    pub tying: Tying,
    /// Tied layers, comma separated (default: the last two).
    #[arg(long, value_delimiter = ',')]
    pub tied_layers: Option<Vec<usize>>,
    /// Turn off the per-frame calibration (ablation).
    #[arg(long)]
    pub no_temporal: bool,
    /// Also drop the video adapter's cross-frame part (TRM, cc, positional table): per-frame
    /// down/up only (needs --no-temporal).
    #[arg(long, requires = "no_temporal")]
    pub no_video_trm: bool,
}

pub fn run(cmd: AdapterCommand) -> Result<()> {
    match cmd {
        AdapterCommand::New(a) => {
            let b = a.model.load()?;
            let dims = BackboneDims::of(&b.clip.config);
            let mut config = AdapterConfig::standard(dims, a.frames, a.words, a.tying);
            if let Some(t) = a.tied_layers {
                config.tied_layers = t;
            }
            config.temporal = !a.no_temporal;
            config.video_trm = !a.no_video_trm;
            config.validate()?;
            let tensors = TaskAdapter::init_tensors(&config, a.init.into(), &Device::Cpu)?;
            let meta = AdapterMeta {
                task: a.task,
                backbone: b.clip.id.clone(),
                config,
                metrics: None,
                backbone_params: Some(clip_param_count(&b.clip.config) as u64),
            };
            let f = AdapterFile::new(meta, tensors)?;
            f.write(&a.out)?;
            println!(
                "{} ({} parameters, digest {})",
                a.out.display(),
                f.param_count(),
                f.digest()
            );
            Ok(())
        }
        AdapterCommand::Inspect {
            file,
            model_dir,
            json,
        } => {
            let f = AdapterFile::read(&file).with_context(|| format!("{}", file.display()))?;
            let mut backbone_params = f.meta.backbone_params;
            let fits = match &model_dir {
                Some(d) => {
                    let b = Backbone::load(&ModelSource::Dir(d.clone()), &Device::Cpu)?;
                    backbone_params = Some(clip_param_count(&b.clip.config) as u64);
                    Some(
                        f.check_backbone(&b.clip.id, &BackboneDims::of(&b.clip.config))
                            .map_err(|e| e.to_string()),
                    )
                }
                None => None,
            };
            let params = f.param_count();
            let pct = backbone_params.map(|n| 100.0 * params as f64 / n as f64);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "task": f.meta.task, "backbone": f.meta.backbone, "config": f.meta.config,
                        "metrics": f.meta.metrics, "params": params, "percent_of_backbone": pct,
                        "size_bytes": f.size(), "digest": f.digest(),
                        "fits": fits.as_ref().map(|r| r.is_ok()),
                        "fit_error": fits.as_ref().and_then(|r| r.as_ref().err()),
                    })
                );
            } else {
                let c = &f.meta.config;
                println!("task:       {}", f.meta.task);
                println!(
                    "backbone:   {} (weights {})",
                    f.meta.backbone.name, f.meta.backbone.digest
                );
                println!(
                    "config:     width {}, heads {}, scale {}, {} frames, {} words, tying {:?} in {:?}, temporal {}, video TRM {}",
                    c.width, c.heads, c.scale, c.frames, c.words, c.tying, c.tied_layers, c.temporal, c.video_trm
                );
                println!(
                    "layers:     vision {:?}, text {:?}",
                    c.vision_layers, c.text_layers
                );
                match pct {
                    Some(p) => println!("parameters: {params} ({p:.2}% of the backbone)"),
                    None => println!("parameters: {params}"),
                }
                println!("size:       {} bytes", f.size());
                println!("digest:     {}", f.digest());
                if let Some(m) = &f.meta.metrics {
                    println!("metrics:    {m}");
                }
                match &fits {
                    Some(Ok(())) => println!("fits:       yes"),
                    Some(Err(e)) => println!("fits:       no ({e})"),
                    None => println!("fits:       unknown (give --model-dir)"),
                }
            }
            Ok(())
        }
        AdapterCommand::Import {
            checkpoint,
            model,
            task,
            out,
            tying,
            heads,
            scale,
        } => {
            let b = model.load()?;
            let opts = ImportOptions {
                tying,
                heads,
                scale,
            };
            let ckpt = read_checkpoint(&checkpoint)?;
            let (config, tensors) = import(ckpt, BackboneDims::of(&b.clip.config), &opts)?;
            let meta = AdapterMeta {
                task,
                backbone: b.clip.id.clone(),
                config,
                metrics: None,
                backbone_params: Some(clip_param_count(&b.clip.config) as u64),
            };
            let f = AdapterFile::new(meta, tensors)?;
            f.write(&out)?;
            println!(
                "{} ({} parameters, digest {})",
                out.display(),
                f.param_count(),
                f.digest()
            );
            Ok(())
        }
    }
}

//! `mvserve embed`: the embedding of one text, image, video file or folder of frames, as JSON.

use super::{ModelArgs, PrecisionArgs};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;
use mvserve::backbone::{preprocess, DEFAULT_TEXT_LEN};
use mvserve::embed::{load_adapter, Embedder};
use mvserve::media::DEFAULT_FRAMES;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Text to embed.
    #[arg(long, conflicts_with_all = ["image", "video"])]
    pub text: Option<String>,
    /// Image file to embed (JPEG, PNG or GIF; the first frame).
    #[arg(long, conflicts_with = "video")]
    pub image: Option<PathBuf>,
    /// A video file (decoded and sampled at 1 fps by the media module), or a directory of frame
    /// images (sorted by name; F sampled uniformly); frames are meanP pooled.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Padded text length in tokens (an adapter fixes it to its own).
    #[arg(long, default_value_t = DEFAULT_TEXT_LEN)]
    pub text_len: usize,
    /// Frames per video without an adapter (an adapter fixes it to its own).
    #[arg(long, default_value_t = DEFAULT_FRAMES)]
    pub frames: usize,
    /// A task's adapter file: applied to the text, image or video.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let backbone = args.model.load_at(args.precision.precision)?;
    let clip = &backbone.clip;
    let loaded = match &args.adapter {
        Some(p) => {
            let (f, a) = load_adapter(p, clip)?;
            tracing::info!(task = %f.meta.task, digest = %f.digest(), "adapter loaded");
            Some(a)
        }
        None => None,
    };
    let e = Embedder::new(&backbone, loaded.as_ref(), args.text_len, args.frames);
    let s = e.image_size();
    let emb = match (&args.text, &args.image, &args.video) {
        (Some(text), None, None) => e.texts(&[text])?,
        (None, Some(path), None) => {
            let img = image::open(path)
                .with_context(|| format!("reading image {}", path.display()))?
                .to_rgb8();
            let pixels = Tensor::from_vec(
                preprocess::preprocess(&img, s as u32),
                (1, 3, s, s),
                &clip.device,
            )?;
            e.images(&pixels)?
        }
        (None, None, Some(path)) if path.is_dir() => e.frame_dir(path)?,
        (None, None, Some(path)) => {
            let frames = mvserve::media::load_video(path, &e.sample_spec(), &Default::default())
                .with_context(|| format!("video {}", path.display()))?;
            e.decoded(&[&frames])?
        }
        _ => bail!("give exactly one of --text, --image or --video"),
    };
    let v: Vec<f32> = emb.squeeze(0)?.to_vec1()?;
    println!("{}", serde_json::json!({ "embedding": v }));
    Ok(())
}

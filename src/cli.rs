//! Argument types and the small glue behind each `mvserve` subcommand. Each command parses, calls
//! the library, and prints; no model or storage logic lives here.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use mvserve::backbone::{
    l2_normalize, preprocess, Backbone, ModelSource, DEFAULT_MODEL_ID, DEFAULT_TEXT_LEN,
};
use std::path::PathBuf;

/// Where the CLIP backbone comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local Hugging Face CLIP directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "MVSERVE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// A Hugging Face hub id, used when --model-dir is not given (cache first, then download).
    #[arg(long, env = "MVSERVE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model_dir {
            Some(d) => ModelSource::Dir(d.clone()),
            None => ModelSource::Hub(self.model.clone()),
        }
    }

    pub fn load(&self) -> Result<Backbone> {
        let t0 = std::time::Instant::now();
        let b = Backbone::load(&self.source(), &Device::Cpu)?;
        tracing::info!(model = %b.files.name, digest = %b.clip.id.digest, ms = t0.elapsed().as_millis() as u64, "backbone loaded");
        Ok(b)
    }
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to embed.
    #[arg(long, conflicts_with = "image")]
    pub text: Option<String>,
    /// Image file to embed (JPEG, PNG or GIF; the first frame).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Padded text length in tokens.
    #[arg(long, default_value_t = DEFAULT_TEXT_LEN)]
    pub text_len: usize,
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    let backbone = args.model.load()?;
    let emb = match (&args.text, &args.image) {
        (Some(text), None) => backbone.embed_texts(&[text], args.text_len, None)?,
        (None, Some(path)) => {
            let img = image::open(path)
                .with_context(|| format!("reading image {}", path.display()))?
                .to_rgb8();
            let s = backbone.clip.config.vision_config.image_size as u32;
            let pixels = candle_core::Tensor::from_vec(
                preprocess::preprocess(&img, s),
                (1, 3, s as usize, s as usize),
                &Device::Cpu,
            )?;
            l2_normalize(&backbone.clip.vision.forward(&pixels, None, false)?.embeds)?
        }
        _ => bail!("give exactly one of --text or --image"),
    };
    let v: Vec<f32> = emb.squeeze(0)?.to_vec1()?;
    println!("{}", serde_json::json!({ "embedding": v }));
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Vision and text tower speed with full-size random ViT-B/32 weights.
    Backbone {
        /// Images per batch.
        #[arg(long, default_value_t = 12)]
        batch: usize,
        /// Timed iterations (the best is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Compute dtype: f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
}

pub fn bench(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Backbone {
            batch,
            iters,
            dtype,
            json,
        } => {
            let dtype = match dtype.as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => bail!("unknown dtype {other:?} (f32, f16 or bf16)"),
            };
            let clip = mvserve::bench::random_vit_b_32(dtype, &Device::Cpu)?;
            let r = mvserve::bench::backbone(&clip, batch, iters)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"images_per_s": r.images_per_s, "gflops_per_s": r.gflops_per_s, "text_ms_32": r.text_ms_32})
                );
            } else {
                println!(
                    "ViT-B/32 {} batch {}: {:.2} images/s, {:.1} GFLOP/s; text (1 x 32 tokens): {:.2} ms",
                    r.dtype, r.batch, r.images_per_s, r.gflops_per_s, r.text_ms_32
                );
            }
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where tasks keep their vectors, uploads and thumbnails.
    #[arg(long, env = "MVSERVE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The watched folder of `<task>.safetensors` adapter files.
    #[arg(long, env = "MVSERVE_ADAPTERS_DIR", default_value = "./adapters")]
    pub adapters_dir: PathBuf,
    /// Port to listen on (0: any free port; the address is printed as `listening on ADDR`).
    #[arg(long, env = "MVSERVE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. Default: 127.0.0.1 without --auth-file, 0.0.0.0 with it. A
    /// non-loopback address needs --auth-file.
    #[arg(long, env = "MVSERVE_BIND")]
    pub bind: Option<std::net::IpAddr>,
    /// JSON file of API keys (see the README); without it, auth is off and only localhost is served.
    #[arg(long, env = "MVSERVE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Largest accepted video file, in MiB.
    #[arg(long, env = "MVSERVE_MAX_UPLOAD_MB", default_value_t = 256)]
    pub max_upload_mb: u64,
    /// Frames sampled per video (built-in task).
    #[arg(long, env = "MVSERVE_FRAMES", default_value_t = 12)]
    pub frames: usize,
    /// Longest accepted video, in seconds.
    #[arg(long, env = "MVSERVE_MAX_VIDEO_SECONDS", default_value_t = 1800.0)]
    pub max_video_seconds: f64,
    /// Most texts per encoder batch.
    #[arg(long, env = "MVSERVE_MAX_TEXT_BATCH", default_value_t = 32)]
    pub max_text_batch: usize,
    /// Most videos per encoder batch.
    #[arg(long, env = "MVSERVE_MAX_VIDEO_BATCH", default_value_t = 4)]
    pub max_video_batch: usize,
    /// How long a batch waits for more jobs, in milliseconds.
    #[arg(long, env = "MVSERVE_MAX_WAIT_MS", default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Text jobs that may wait before queries get 503.
    #[arg(long, env = "MVSERVE_TEXT_QUEUE", default_value_t = 256)]
    pub text_queue: usize,
    /// Video jobs that may wait before uploads get 503.
    #[arg(long, env = "MVSERVE_VIDEO_QUEUE", default_value_t = 32)]
    pub video_queue: usize,
    /// Videos decoded at once.
    #[arg(long, env = "MVSERVE_DECODE_WORKERS", default_value_t = 2)]
    pub decode_workers: usize,
    /// Whole-request timeout in seconds.
    #[arg(long, env = "MVSERVE_REQUEST_TIMEOUT_S", default_value_t = 300)]
    pub request_timeout_s: u64,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let config = mvserve::server::ServeConfig {
        model: args.model.source(),
        data_dir: args.data_dir,
        adapters_dir: args.adapters_dir,
        bind: args.bind,
        port: args.port,
        auth_file: args.auth_file,
        max_upload_bytes: args.max_upload_mb << 20,
        frames: args.frames,
        max_video_seconds: args.max_video_seconds,
        decode_workers: args.decode_workers,
        encoder: mvserve::encode::EncoderConfig {
            max_text_batch: args.max_text_batch,
            max_video_batch: args.max_video_batch,
            max_wait: std::time::Duration::from_millis(args.max_wait_ms),
            text_queue: args.text_queue,
            video_queue: args.video_queue,
        },
        request_timeout: std::time::Duration::from_secs(args.request_timeout_s),
        ..Default::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(mvserve::server::serve(config))
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The video file.
    pub file: PathBuf,
    /// Frames to sample (F).
    #[arg(long, default_value_t = 12)]
    pub frames: usize,
}

pub fn probe(args: ProbeArgs) -> Result<()> {
    let spec = mvserve::media::SampleSpec {
        frames: args.frames,
        ..Default::default()
    };
    let report = mvserve::media::probe(&args.file, &spec, &Default::default());
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

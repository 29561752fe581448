//! Argument types and the small glue behind each `mvserve` subcommand. Each command parses, calls
//! the library, and prints; no model or storage logic lives here.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_core::{DType, Device};
use clap::{Args, Subcommand};
use mvserve::adapter::import::{import, read_checkpoint, ImportOptions};
use mvserve::adapter::{
    clip_param_count, AdapterConfig, AdapterFile, AdapterInit, AdapterMeta, BackboneDims,
    TaskAdapter, Tying,
};
use mvserve::backbone::{
    preprocess, Backbone, DeviceSpec, ModelSource, DEFAULT_MODEL_ID, DEFAULT_TEXT_LEN,
};
use mvserve::embed::{load_adapter, Embedder};
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
    /// Where the backbone computes: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "MVSERVE_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model_dir {
            Some(d) => ModelSource::Dir(d.clone()),
            None => ModelSource::Hub(self.model.clone()),
        }
    }

    /// Opens `--device` (an error says what is missing: the `cuda` feature or a usable GPU).
    pub fn device(&self) -> Result<Device> {
        Ok(self.device.open()?)
    }

    /// Loads the backbone on `--device`.
    pub fn load(&self) -> Result<Backbone> {
        let device = self.device()?;
        let t0 = std::time::Instant::now();
        let b = Backbone::load(&self.source(), &device)?;
        tracing::info!(model = %b.files.name, digest = %b.clip.id.digest, device = %self.device, ms = t0.elapsed().as_millis() as u64, "backbone loaded");
        Ok(b)
    }
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    #[arg(long, default_value_t = 12)]
    pub frames: usize,
    /// A task's adapter file: applied to the text, image or video.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// Reads a directory of frame images: F indices `linspace(0, n-1, F)` rounded down when there are
/// more, all of them when fewer. Returns (F', 3, S, S) pixels with F' <= F.
fn frames_from_dir(
    dir: &std::path::Path,
    frames: usize,
    size: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png", "gif"].contains(&e.to_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} has no frame images (jpg, png, gif)", dir.display());
    }
    let n = paths.len();
    let picked: Vec<&PathBuf> = if n <= frames {
        paths.iter().collect()
    } else {
        (0..frames)
            .map(|i| {
                &paths[(i as f64 * (n - 1) as f64 / (frames - 1).max(1) as f64).floor() as usize]
            })
            .collect()
    };
    let mut data = Vec::with_capacity(picked.len() * 3 * size * size);
    for p in &picked {
        let img = image::open(p)
            .with_context(|| format!("reading frame {}", p.display()))?
            .to_rgb8();
        data.extend(preprocess::preprocess(&img, size as u32));
    }
    Ok(Tensor::from_vec(
        data,
        (picked.len(), 3, size, size),
        device,
    )?)
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    let backbone = args.model.load()?;
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
        (None, None, Some(path)) => {
            if path.is_dir() {
                let pixels = frames_from_dir(path, e.frames(), s, &clip.device)?;
                let mask = Tensor::ones((1, pixels.dim(0)?), DType::F32, &clip.device)?;
                e.videos(&pixels, &mask)?
            } else {
                let frames =
                    mvserve::media::load_video(path, &e.sample_spec(), &Default::default())
                        .with_context(|| format!("video {}", path.display()))?;
                e.decoded(&[&frames])?
            }
        }
        _ => bail!("give exactly one of --text, --image or --video"),
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
        /// cpu, cuda or cuda:N.
        #[arg(long, env = "MVSERVE_DEVICE", default_value = "cpu")]
        device: DeviceSpec,
        /// Also time the CPU in the same process (same batch, f32) and print the ratio.
        #[arg(long)]
        compare_cpu: bool,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Runs the same random full-size ViT-B/32 and a random adapter on the CPU and on --device
    /// and compares the L2-normalised embeddings (plain image and text, adapted video and text).
    /// With --device cpu the second run takes the composite ops a GPU uses. Exits 1 when a
    /// difference exceeds --tolerance.
    Parity {
        /// cpu, cuda or cuda:N.
        #[arg(long, env = "MVSERVE_DEVICE", default_value = "cpu")]
        device: DeviceSpec,
        /// Largest accepted absolute difference of any embedding element.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
        /// Images through the plain vision tower.
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// 12-frame videos through the adapter.
        #[arg(long, default_value_t = 2)]
        videos: usize,
        /// Texts (plain and adapted).
        #[arg(long, default_value_t = 8)]
        texts: usize,
        /// A Hugging Face config.json to use instead of ViT-B/32 (random weights either way).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_dtype(dtype: &str) -> Result<DType> {
    Ok(match dtype {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype {other:?} (f32, f16 or bf16)"),
    })
}

/// Side of the square sgemm that `bench backbone` times as the machine's reference rate.
const SGEMM_N: usize = 2048;

pub fn bench(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Backbone {
            batch,
            iters,
            dtype,
            device,
            compare_cpu,
            json,
        } => {
            let dtype = parse_dtype(&dtype)?;
            let run = |spec: DeviceSpec, dtype: DType| -> Result<mvserve::bench::BackboneBench> {
                let clip = mvserve::bench::random_vit_b_32(dtype, &spec.open()?)?;
                Ok(mvserve::bench::backbone(&clip, batch, iters)?)
            };
            // The machine's own sgemm rate through the same kernel, measured before and after the
            // backbone so a burst of load from elsewhere shows as a gap between the two.
            let sgemm = || mvserve::backbone::kernels::sgemm_gflops(SGEMM_N, 3);
            let on_cpu = matches!(device, DeviceSpec::Cpu);
            let sgemm_before = on_cpu.then(sgemm);
            let r = run(device, dtype)?;
            let sgemm_after = on_cpu.then(sgemm);
            let peak = sgemm_before.zip(sgemm_after).map(|(a, b)| a.max(b));
            // The baseline is the CPU as it serves: f32 with the fused kernels.
            let cpu = match compare_cpu {
                true => Some(run(DeviceSpec::Cpu, DType::F32)?),
                false => None,
            };
            let ratio = cpu.as_ref().map(|c| r.images_per_s / c.images_per_s);
            if json {
                let mut j = serde_json::json!({"device": device.to_string(), "batch": batch, "dtype": r.dtype, "images_per_s": r.images_per_s, "gflops_per_s": r.gflops_per_s, "text_ms_32": r.text_ms_32});
                if let (Some(p), Some(a), Some(b)) = (peak, sgemm_before, sgemm_after) {
                    j["gemm_kernel"] = mvserve::backbone::kernels::gemm_kernel().into();
                    j["sgemm_n"] = SGEMM_N.into();
                    j["sgemm_gflops_per_s"] = p.into();
                    j["sgemm_before_after"] = serde_json::json!([a, b]);
                    j["of_sgemm"] = (r.gflops_per_s / p).into();
                }
                if let (Some(c), Some(x)) = (&cpu, ratio) {
                    j["cpu_dtype"] = c.dtype.clone().into();
                    j["cpu_images_per_s"] = c.images_per_s.into();
                    j["cpu_text_ms_32"] = c.text_ms_32.into();
                    j["speedup_vs_cpu"] = x.into();
                }
                println!("{j}");
            } else {
                let line = |dev: &str, r: &mvserve::bench::BackboneBench| {
                    println!(
                        "ViT-B/32 {} batch {} on {dev}: {:.2} images/s, {:.1} GFLOP/s; text (1 x 32 tokens): {:.2} ms",
                        r.dtype, r.batch, r.images_per_s, r.gflops_per_s, r.text_ms_32
                    )
                };
                line(&device.to_string(), &r);
                if let Some(p) = peak {
                    println!(
                        "sgemm {SGEMM_N}^3 through gemm ({}): {p:.1} GFLOP/s; backbone at {:.2} of it",
                        mvserve::backbone::kernels::gemm_kernel(),
                        r.gflops_per_s / p
                    );
                }
                if let (Some(c), Some(x)) = (&cpu, ratio) {
                    line("cpu", c);
                    println!("{device} / cpu: {x:.2}x images/s");
                }
            }
            Ok(())
        }
        BenchCommand::Parity {
            device,
            tolerance,
            images,
            videos,
            texts,
            config,
        } => {
            let clip_config = match &config {
                Some(p) => mvserve::backbone::ClipConfig::from_file(p)?,
                None => mvserve::backbone::ClipConfig::vit_b_32(),
            };
            let spec = mvserve::bench::parity::ParitySpec {
                images,
                videos,
                texts,
                ..Default::default()
            };
            let r = mvserve::bench::parity::device_parity(&clip_config, &device.open()?, &spec)?;
            let ok = r.max() <= tolerance;
            println!(
                "{}",
                serde_json::json!({"report": r, "max": r.max(), "tolerance": tolerance, "ok": ok})
            );
            if !ok {
                bail!(
                    "{device} differs from the CPU by {} (tolerance {tolerance})",
                    r.max()
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
    /// gRPC port, served beside HTTP on the same address (0: any free port; the address is printed
    /// as `grpc listening on ADDR` after the HTTP line).
    #[arg(long, env = "MVSERVE_GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// Serve HTTP only (the env var takes 1/0, true/false, yes/no, on/off).
    #[arg(
        long,
        env = "MVSERVE_NO_GRPC",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_grpc: bool,
    /// Serve `/metrics` alone on this port too, without a key (for Prometheus; with --auth-file
    /// the API's `/metrics` needs an admin key). Same address as HTTP; 0: any free port, printed
    /// as `metrics listening on ADDR` after the other listeners.
    #[arg(long, env = "MVSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Address to listen on. Default: 127.0.0.1 without --auth-file, 0.0.0.0 with it. A
    /// non-loopback address needs --auth-file.
    #[arg(long, env = "MVSERVE_BIND")]
    pub bind: Option<std::net::IpAddr>,
    /// JSON file of API keys (see the README); without it, auth is off and only localhost is served.
    #[arg(long, env = "MVSERVE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Largest accepted video file, in MiB (the request body limit follows from it).
    #[arg(long, env = "MVSERVE_MAX_UPLOAD_MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_upload_mb: u64,
    /// Uploads read or processed at once; more get 503 before their body is read.
    #[arg(long, env = "MVSERVE_MAX_CONCURRENT_UPLOADS", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_concurrent_uploads: u64,
    /// Open HTTP connections; at the cap new ones wait in the kernel's backlog.
    #[arg(long, env = "MVSERVE_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "MVSERVE_HEADER_TIMEOUT_S", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_s: u64,
    /// Seconds an upload may send nothing before it is refused with 408.
    #[arg(long, env = "MVSERVE_IDLE_TIMEOUT_S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_s: u64,
    /// What this process does: `all` (everything, the default), `query` (stateless search
    /// replicas) or `indexer` (uploads, deletes, re-embedding; one per deployment). `query` and
    /// `indexer` need a milvus:// store.
    #[arg(long, env = "MVSERVE_ROLE", value_enum, default_value_t = mvserve::server::role::Role::All)]
    pub role: mvserve::server::role::Role,
    /// Where vectors live: `embedded` (this process's data dir) or
    /// `milvus://HOST:PORT[/DATABASE][?prefix=NAME_&consistency=eventual|strong&timeout_ms=N]`;
    /// the Milvus token comes from MVSERVE_MILVUS_TOKEN.
    #[arg(long, env = "MVSERVE_STORE", default_value = "embedded")]
    pub store: String,
    /// With a milvus:// store: the directory shared by every replica for uploads, thumbnails and
    /// adapter copies (a ReadWriteMany volume). Default: the data dir.
    #[arg(long, env = "MVSERVE_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
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
    /// Query embeddings cached per task generation (a repeated query skips the text tower);
    /// 0 turns the cache off.
    #[arg(long, env = "MVSERVE_QUERY_CACHE", default_value_t = 1024)]
    pub query_cache: usize,
    /// Videos decoded at once.
    #[arg(long, env = "MVSERVE_DECODE_WORKERS", default_value_t = 2)]
    pub decode_workers: usize,
    /// Whole-request timeout in seconds.
    #[arg(long, env = "MVSERVE_REQUEST_TIMEOUT_S", default_value_t = 300)]
    pub request_timeout_s: u64,
    /// Adapters kept in memory; the least recently used unpinned one is evicted past this and
    /// reloads on its next request.
    #[arg(long, env = "MVSERVE_MAX_LOADED_ADAPTERS", default_value_t = 64)]
    pub max_loaded_adapters: usize,
    /// Tasks whose adapters are never evicted (repeat, or comma-separated).
    #[arg(long = "pin", env = "MVSERVE_PINNED_TASKS", value_delimiter = ',')]
    pub pinned: Vec<String>,
    /// Quiet time in ms after the last change to a file in the adapters folder before it is read.
    #[arg(long, env = "MVSERVE_WATCH_DEBOUNCE_MS", default_value_t = 100)]
    pub watch_debounce_ms: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before the process stops.
    #[arg(long, env = "MVSERVE_DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub drain_timeout_s: u64,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let token = std::env::var("MVSERVE_MILVUS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let store =
        mvserve::server::role::StoreSpec::parse(&args.store, token).map_err(anyhow::Error::msg)?;
    mvserve::server::role::files_root(args.role, &store, &args.data_dir, args.blob_dir.as_deref())
        .map_err(anyhow::Error::msg)?;
    let config = mvserve::server::ServeConfig {
        role: args.role,
        store,
        blob_dir: args.blob_dir,
        model: args.model.source(),
        device: args.model.device,
        data_dir: args.data_dir,
        adapters_dir: args.adapters_dir,
        bind: args.bind,
        port: args.port,
        grpc_port: (!args.no_grpc).then_some(args.grpc_port),
        metrics_port: args.metrics_port,
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
            query_cache_per_task: args.query_cache,
            ..Default::default()
        },
        request_timeout: std::time::Duration::from_secs(args.request_timeout_s),
        adapter_cache: mvserve::registry::adapters::CacheConfig {
            capacity: args.max_loaded_adapters.max(1),
            pinned: args.pinned.into_iter().collect(),
        },
        watch_debounce: std::time::Duration::from_millis(args.watch_debounce_ms),
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_s),
        max_concurrent_uploads: args.max_concurrent_uploads as usize,
        max_connections: args.max_connections as usize,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_s),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout_s),
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
    /// Decode every frame from the start instead of seeking to the chosen ones (the baseline the
    /// seeking decoder is compared with; same frames, more work).
    #[arg(long)]
    pub sequential: bool,
}

pub fn probe(args: ProbeArgs) -> Result<()> {
    use mvserve::media::DecodeStrategy;
    let spec = mvserve::media::SampleSpec {
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
        #[arg(long)]
        tying: Option<String>,
        #[arg(long, default_value_t = 2)]
        heads: usize,
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
    },
}

#[derive(Args, Debug)]
pub struct AdapterNewArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub out: PathBuf,
    /// zero: the authors' init (zero up-projection, the identity); random: everything random.
    #[arg(long, default_value = "zero")]
    pub init: String,
    #[arg(long, default_value_t = 12)]
    pub frames: usize,
    #[arg(long, default_value_t = 32)]
    pub words: usize,
    /// down_in, down_out, kronecker or none.
    #[arg(long, default_value = "down_in")]
    pub tying: String,
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

pub fn adapter(cmd: AdapterCommand) -> Result<()> {
    match cmd {
        AdapterCommand::New(a) => {
            let init = match a.init.as_str() {
                "zero" => AdapterInit::Authors,
                "random" => AdapterInit::Random,
                o => bail!("unknown --init {o:?} (zero or random)"),
            };
            let b = a.model.load()?;
            let dims = BackboneDims::of(&b.clip.config);
            let mut config =
                AdapterConfig::standard(dims, a.frames, a.words, Tying::parse(&a.tying)?);
            if let Some(t) = a.tied_layers {
                config.tied_layers = t;
            }
            config.temporal = !a.no_temporal;
            config.video_trm = !a.no_video_trm;
            config.validate()?;
            let tensors = TaskAdapter::init_tensors(&config, init, &Device::Cpu)?;
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
                tying: tying.as_deref().map(Tying::parse).transpose()?,
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

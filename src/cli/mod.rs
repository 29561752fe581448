//! The `mvserve` command line: one file per subcommand, each holding its argument types and the
//! glue that parses, calls the library and prints. Owns the flags, their defaults (each taken from
//! the library's own default, never written again here) and the argument groups several
//! subcommands share ([`ModelArgs`], [`DeviceArgs`], [`DataArgs`]). No model, media or storage
//! logic lives here.

mod adapter;
mod bench;
mod embed;
mod eval;
mod probe;
mod serve;
mod store;
mod synth;
mod train;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use mvserve::backbone::{Backbone, DeviceSpec, ModelSource, Precision, DEFAULT_MODEL_ID};
use mvserve::eval::data::{Dataset, DatasetFormat};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mvserve",
    version,
    about = "Multi-tenant text-to-video retrieval with MV-Adapters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the L2-normalised embedding of a text, an image or a video as JSON (optionally adapted).
    Embed(embed::EmbedArgs),
    /// Create, inspect and import MV-Adapter files.
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// Benchmarks that print machine-readable numbers.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run the HTTP server (text-to-video search over every task).
    Serve(serve::ServeArgs),
    /// Decode and sample a video as the server would; print container, codec, timing and the
    /// sampled timestamps (or the typed error) as JSON. Exits 1 when the video is refused.
    Probe(probe::ProbeArgs),
    /// Train a task's adapter on video-caption pairs (frozen backbone); a checkpoint each epoch.
    Train(train::TrainArgs),
    /// Write synthetic captioned clips (moving, appearing, growing shapes; two events in order)
    /// as H.264 MP4 files and a captions.jsonl.
    Synth(synth::SynthArgs),
    /// Inspect and repair task stores offline (`store check DIR [--repair]`).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Retrieval metrics of a test set (R@1/5/10, MdR, MnR, both directions), zero-shot or with
    /// an adapter.
    Eval(eval::EvalArgs),
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Embed(args) => embed::run(args),
        Command::Adapter(cmd) => adapter::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Serve(args) => serve::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Train(args) => train::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Store(cmd) => store::run(cmd),
    }
}

/// Where a backbone computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where the backbone computes: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, env = "MVSERVE_DEVICE", default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
}

impl DeviceArgs {
    /// Opens `--device` (an error says what is missing: the `cuda` feature or a usable GPU).
    pub fn open(&self) -> Result<Device> {
        Ok(self.device.open()?)
    }
}

/// The backbone's precision on the CPU (`serve`, `embed`, `eval`).
#[derive(Args, Debug, Clone)]
pub struct PrecisionArgs {
    /// f32, or int8: the encoders' linear layers as int8 products (CPU with AVX-512 VNNI only;
    /// refused at startup elsewhere). Embeddings within cosine 0.999 of f32.
    #[arg(long, env = "MVSERVE_PRECISION", default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// Where the CLIP backbone comes from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local Hugging Face CLIP directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "MVSERVE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// A Hugging Face hub id, used when --model-dir is not given (cache first, then download).
    #[arg(long, env = "MVSERVE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match &self.model_dir {
            Some(d) => ModelSource::Dir(d.clone()),
            None => ModelSource::Hub(self.model.clone()),
        }
    }

    /// Loads the backbone on `--device`, in f32.
    pub fn load(&self) -> Result<Backbone> {
        self.load_at(Precision::F32)
    }

    /// Loads the backbone on `--device` at `precision` (int8 is checked against the CPU here,
    /// before any work).
    pub fn load_at(&self, precision: Precision) -> Result<Backbone> {
        let device = self.device.open()?;
        let t0 = std::time::Instant::now();
        let mut b = Backbone::load(&self.source(), &device)?;
        b.set_precision(precision)?;
        tracing::info!(model = %b.files.name, digest = %b.clip.id.digest, device = %self.device.device, %precision, ms = t0.elapsed().as_millis() as u64, "backbone loaded");
        Ok(b)
    }
}

/// Which dataset to read (`eval` and `train`).
#[derive(Args, Debug)]
pub struct DataArgs {
    /// The annotation file: a jsonl of {"video": PATH, "caption": TEXT} lines, MSR-VTT csv/json,
    /// MSVD tsv, DiDeMo or ActivityNet json.
    #[arg(long)]
    pub data: PathBuf,
    /// The annotation format (detected from the file when left out; any case, as before).
    #[arg(long, value_enum, ignore_case = true)]
    pub format: Option<DatasetFormat>,
    /// Where the video files are (default: the annotation file's folder).
    #[arg(long)]
    pub video_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The format (given, or detected from the file) and the dataset.
    pub fn load(&self) -> Result<(DatasetFormat, Dataset)> {
        let format = match self.format {
            Some(f) => f,
            None => DatasetFormat::detect(&self.data)?,
        };
        let ds = mvserve::eval::data::load(&self.data, Some(format), self.video_dir.as_deref())
            .with_context(|| format!("reading {}", self.data.display()))?;
        Ok((format, ds))
    }
}

//! `mvserve serve`: the server's flags and their mapping onto [`ServeConfig`]. Every default is
//! `ServeConfig::default()`'s (through [`defaults`]), so the library states each one once; a new
//! flag is a field here and a line in [`ServeArgs::config`].

use super::{ModelArgs, PrecisionArgs};
use anyhow::Result;
use clap::Args;
use mvserve::server::role::{files_root, Role, StoreSpec};
use mvserve::server::ServeConfig;
use std::path::PathBuf;
use std::time::Duration;

fn defaults() -> ServeConfig {
    ServeConfig::default()
}

/// Bytes in a MiB (`--max-upload-mb`).
const MIB_SHIFT: u32 = 20;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Where tasks keep their vectors, uploads and thumbnails.
    #[arg(long, env = "MVSERVE_DATA_DIR", default_value_os_t = defaults().data_dir)]
    pub data_dir: PathBuf,
    /// The watched folder of `<task>.safetensors` adapter files.
    #[arg(long, env = "MVSERVE_ADAPTERS_DIR", default_value_os_t = defaults().adapters_dir)]
    pub adapters_dir: PathBuf,
    /// Port to listen on (0: any free port; the address is printed as `listening on ADDR`).
    #[arg(long, env = "MVSERVE_PORT", default_value_t = defaults().port)]
    pub port: u16,
    /// gRPC port, served beside HTTP on the same address (0: any free port; the address is printed
    /// as `grpc listening on ADDR` after the HTTP line).
    #[arg(long, env = "MVSERVE_GRPC_PORT", default_value_t = mvserve::server::DEFAULT_GRPC_PORT)]
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
    #[arg(long, env = "MVSERVE_MAX_UPLOAD_MB", default_value_t = defaults().max_upload_bytes >> MIB_SHIFT,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_upload_mb: u64,
    /// Largest image or video a search by example (`POST /search`) may send, in MiB.
    #[arg(long, env = "MVSERVE_MAX_EXAMPLE_MB", default_value_t = defaults().max_example_bytes >> MIB_SHIFT,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_example_mb: u64,
    /// Searches by example read or processed at once (their own slots, not the uploads'); more
    /// get 503 before their body is read.
    #[arg(long, env = "MVSERVE_MAX_CONCURRENT_EXAMPLES", default_value_t = defaults().max_concurrent_examples as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_concurrent_examples: u64,
    /// Uploads read or processed at once; more get 503 before their body is read.
    #[arg(long, env = "MVSERVE_MAX_CONCURRENT_UPLOADS", default_value_t = defaults().max_concurrent_uploads as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_concurrent_uploads: u64,
    /// Open HTTP connections; at the cap new ones wait in the kernel's backlog.
    #[arg(long, env = "MVSERVE_MAX_CONNECTIONS", default_value_t = defaults().max_connections as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, env = "MVSERVE_HEADER_TIMEOUT_S", default_value_t = defaults().header_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_s: u64,
    /// Seconds an upload may send nothing before it is refused with 408.
    #[arg(long, env = "MVSERVE_IDLE_TIMEOUT_S", default_value_t = defaults().idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_s: u64,
    /// What this process does: `all` (everything), `query` (stateless search replicas) or
    /// `indexer` (uploads, deletes, re-embedding; one per deployment). `query` and `indexer`
    /// need a milvus:// store.
    #[arg(long, env = "MVSERVE_ROLE", value_enum, default_value_t = defaults().role)]
    pub role: Role,
    /// Where vectors live: `embedded` (this process's data dir) or
    /// `milvus://HOST:PORT[/DATABASE][?prefix=NAME_&consistency=eventual|strong&timeout_ms=N]`;
    /// the Milvus token comes from MVSERVE_MILVUS_TOKEN.
    #[arg(long, env = "MVSERVE_STORE", default_value = "embedded")]
    pub store: String,
    /// With a milvus:// store: the directory every replica shares for uploads, thumbnails and
    /// adapter copies (a ReadWriteMany volume). Default: the data dir.
    #[arg(long, env = "MVSERVE_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Frames sampled per video (built-in task).
    #[arg(long, env = "MVSERVE_FRAMES", default_value_t = defaults().frames)]
    pub frames: usize,
    /// Moments: index videos at least --segment-min-seconds long as overlapping segments of this
    /// many seconds (hop: half of it), one vector each, so hits say where in the video they are.
    /// 0: off (one vector per video).
    #[arg(long, env = "MVSERVE_SEGMENT_SECONDS", default_value_t = defaults().segment_seconds,
          value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub segment_seconds: u32,
    /// With --segment-seconds: videos shorter than this many seconds stay one vector.
    #[arg(long, env = "MVSERVE_SEGMENT_MIN_SECONDS", default_value_t = defaults().segment_min_seconds)]
    pub segment_min_seconds: f64,
    /// With --segment-seconds: the most memory (MiB) segmenting one video may take, estimated
    /// from its frame size and length before decoding; a video over it stays one vector. Videos
    /// are segmented one at a time.
    #[arg(long, env = "MVSERVE_SEGMENT_MAX_MB", default_value_t = defaults().segment_max_bytes >> MIB_SHIFT)]
    pub segment_max_mb: u64,
    /// With --segment-seconds: how many seconds decoding one video's 1-fps frames may take (the
    /// work grows with its length); past it the upload is refused (422 corrupt_media, timed
    /// out). Keep it under --request-timeout-s, which also covers encoding the segments.
    #[arg(long, env = "MVSERVE_SEGMENT_MAX_DECODE_SECONDS",
          default_value_t = defaults().segment_decode_time.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub segment_max_decode_seconds: u64,
    /// Longest accepted video, in seconds.
    #[arg(long, env = "MVSERVE_MAX_VIDEO_SECONDS", default_value_t = defaults().max_video_seconds)]
    pub max_video_seconds: f64,
    /// Most texts per encoder batch.
    #[arg(long, env = "MVSERVE_MAX_TEXT_BATCH", default_value_t = defaults().encoder.max_text_batch)]
    pub max_text_batch: usize,
    /// Most videos per encoder batch.
    #[arg(long, env = "MVSERVE_MAX_VIDEO_BATCH", default_value_t = defaults().encoder.max_video_batch)]
    pub max_video_batch: usize,
    /// How long a batch waits for more jobs, in milliseconds.
    #[arg(long, env = "MVSERVE_MAX_WAIT_MS", default_value_t = defaults().encoder.max_wait.as_millis() as u64)]
    pub max_wait_ms: u64,
    /// Text jobs that may wait before queries get 503.
    #[arg(long, env = "MVSERVE_TEXT_QUEUE", default_value_t = defaults().encoder.text_queue)]
    pub text_queue: usize,
    /// Video jobs that may wait before uploads get 503.
    #[arg(long, env = "MVSERVE_VIDEO_QUEUE", default_value_t = defaults().encoder.video_queue)]
    pub video_queue: usize,
    /// Query embeddings cached per task generation (a repeated query skips the text tower);
    /// 0 turns the cache off.
    #[arg(long, env = "MVSERVE_QUERY_CACHE", default_value_t = defaults().encoder.query_cache_per_task)]
    pub query_cache: usize,
    /// Videos decoded at once.
    #[arg(long, env = "MVSERVE_DECODE_WORKERS", default_value_t = defaults().decode_workers)]
    pub decode_workers: usize,
    /// Whole-request timeout in seconds.
    #[arg(long, env = "MVSERVE_REQUEST_TIMEOUT_S", default_value_t = defaults().request_timeout.as_secs())]
    pub request_timeout_s: u64,
    /// Adapters kept in memory; the least recently used unpinned one is evicted past this and
    /// reloads on its next request.
    #[arg(long, env = "MVSERVE_MAX_LOADED_ADAPTERS", default_value_t = defaults().adapter_cache.capacity)]
    pub max_loaded_adapters: usize,
    /// Tasks whose adapters are never evicted (repeat, or comma-separated).
    #[arg(long = "pin", env = "MVSERVE_PINNED_TASKS", value_delimiter = ',')]
    pub pinned: Vec<String>,
    /// Quiet time in ms after the last change to a file in the adapters folder before it is read.
    #[arg(long, env = "MVSERVE_WATCH_DEBOUNCE_MS", default_value_t = defaults().watch_debounce.as_millis() as u64)]
    pub watch_debounce_ms: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before the process stops.
    #[arg(long, env = "MVSERVE_DRAIN_TIMEOUT_S", default_value_t = defaults().drain_timeout.as_secs())]
    pub drain_timeout_s: u64,
}

impl ServeArgs {
    /// The server's configuration: what the flags set, the library's defaults for the rest.
    /// Fails on a store URL that does not parse or a role that does not fit the store.
    pub fn config(self) -> Result<ServeConfig> {
        let d = defaults();
        let token = std::env::var("MVSERVE_MILVUS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let store = StoreSpec::parse(&self.store, token).map_err(anyhow::Error::msg)?;
        files_root(self.role, &store, &self.data_dir, self.blob_dir.as_deref())
            .map_err(anyhow::Error::msg)?;
        if !(self.segment_min_seconds.is_finite() && self.segment_min_seconds >= 0.0) {
            anyhow::bail!("--segment-min-seconds must be a number of seconds, 0 or more");
        }
        Ok(ServeConfig {
            role: self.role,
            store,
            blob_dir: self.blob_dir,
            model: self.model.source(),
            device: self.model.device.device,
            precision: self.precision.precision,
            data_dir: self.data_dir,
            adapters_dir: self.adapters_dir,
            bind: self.bind,
            port: self.port,
            grpc_port: (!self.no_grpc).then_some(self.grpc_port),
            metrics_port: self.metrics_port,
            auth_file: self.auth_file,
            max_upload_bytes: self.max_upload_mb << MIB_SHIFT,
            max_example_bytes: self.max_example_mb << MIB_SHIFT,
            max_concurrent_examples: self.max_concurrent_examples as usize,
            frames: self.frames,
            segment_seconds: self.segment_seconds,
            segment_min_seconds: self.segment_min_seconds,
            segment_max_bytes: self.segment_max_mb << MIB_SHIFT,
            segment_decode_time: Duration::from_secs(self.segment_max_decode_seconds),
            max_video_seconds: self.max_video_seconds,
            decode_workers: self.decode_workers,
            encoder: mvserve::encode::EncoderConfig {
                max_text_batch: self.max_text_batch,
                max_video_batch: self.max_video_batch,
                max_wait: Duration::from_millis(self.max_wait_ms),
                text_queue: self.text_queue,
                video_queue: self.video_queue,
                query_cache_per_task: self.query_cache,
                ..d.encoder
            },
            request_timeout: Duration::from_secs(self.request_timeout_s),
            adapter_cache: mvserve::registry::adapters::CacheConfig {
                capacity: self.max_loaded_adapters.max(1),
                pinned: self.pinned.into_iter().collect(),
            },
            watch_debounce: Duration::from_millis(self.watch_debounce_ms),
            drain_timeout: Duration::from_secs(self.drain_timeout_s),
            max_concurrent_uploads: self.max_concurrent_uploads as usize,
            max_connections: self.max_connections as usize,
            header_timeout: Duration::from_secs(self.header_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            ..d
        })
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(mvserve::server::serve(args.config()?))
}

//! The server: configuration, start-up, the HTTP router with its middleware (request ids, tracing,
//! timeouts, auth, metrics), the gRPC listener beside it, and graceful shutdown of both. The
//! operations live in [`service`] and [`upload`]; [`api`] (HTTP) and [`grpc`] only parse, call
//! them and map typed errors ([`ApiError`]) at the edge.
//!
//! Start-up binds first and answers `/healthz` at once; the backbone loads in the background and
//! `/readyz` (and every task endpoint) answers 503 until it is ready (gRPC: UNAVAILABLE, and the
//! health service says NOT_SERVING for `mvserve.v1.MvServe`).

pub mod api;
pub mod auth;
pub mod error;
pub mod example;
pub mod fields;
pub mod grpc;
pub mod ingest;
pub mod listen;
pub mod local;
pub mod metrics;
pub mod moments;
pub mod multipart;
pub mod openapi;
pub mod role;
pub mod routes;
pub mod service;
pub mod upload;

use crate::adapter::BackboneDims;
use crate::backbone::{Backbone, DeviceSpec, ModelSource, Precision, DEFAULT_TEXT_LEN};
use crate::encode::{ClipModel, Encoder, EncoderConfig};
use crate::registry::adapters::{AdapterCache, CacheConfig, FileLoader};
use crate::registry::follow::Follower;
use crate::registry::reembed::{ReembedError, Reembedder};
use crate::registry::watch::{watch, AdapterWatcher, Outcome};
use crate::registry::{now_s, ModelInfo, Registry, CLIP_TASK};
use crate::store::milvus::MilvusBackend;
use crate::store::{EmbeddedBackend, StoreBackend, StoreConfig};
use anyhow::{bail, Context, Result};
use auth::{AuthConfig, Caller, Need, Scope};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
pub use error::ApiError;
use ingest::VideoDecoder;
use metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The HTTP port when none is given.
pub const DEFAULT_PORT: u16 = 8080;
/// The gRPC port when none is given (gRPC's customary one).
pub const DEFAULT_GRPC_PORT: u16 = 50051;

/// Everything `mvserve serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model: ModelSource,
    /// Where the backbone (and every adapter) computes.
    pub device: DeviceSpec,
    /// The backbone's precision on the CPU (int8: the encoders' linear layers; both towers).
    pub precision: Precision,
    pub data_dir: PathBuf,
    pub adapters_dir: PathBuf,
    /// `None`: 127.0.0.1 without auth, 0.0.0.0 with auth.
    pub bind: Option<std::net::IpAddr>,
    pub port: u16,
    /// The gRPC port (0: any free port); `None`: no gRPC listener.
    pub grpc_port: Option<u16>,
    /// A port that serves `/metrics` alone, without a key (for Prometheus); `None`: none.
    pub metrics_port: Option<u16>,
    pub auth_file: Option<PathBuf>,
    /// Largest accepted video file.
    pub max_upload_bytes: u64,
    /// Largest image or video a search by example (`POST /search`) may send.
    pub max_example_bytes: u64,
    /// Searches by example being read or processed at once; more get 503 before their body is
    /// read. Their own slots, not the uploads': a query never waits for indexing to free one.
    pub max_concurrent_examples: usize,
    /// Most videos in one `POST /index`.
    pub max_videos_per_request: usize,
    /// Frames sampled per video for the built-in task.
    pub frames: usize,
    /// Moments: videos at least `segment_min_seconds` long are indexed as segments of this many
    /// seconds overlapping by half, one vector each (`store::moments`); 0: off.
    pub segment_seconds: u32,
    /// Videos shorter than this stay one vector even with `segment_seconds` on.
    pub segment_min_seconds: f64,
    /// The most memory one video's segmenting may take (its 1-fps frames as preprocessing crops
    /// and the frame being decoded, estimated from its size and length before decoding); a video
    /// over it stays one vector. One video is segmented at a time, so this bounds segmenting's
    /// memory in all.
    pub segment_max_bytes: u64,
    /// How long decoding one video's 1-fps timeline may take. Its work grows with the video's
    /// length (a candidate every second, each decoded from its key frame), so it has its own
    /// budget rather than the per-upload one (`media::MediaLimits::max_wall_time`, 60 s).
    pub segment_decode_time: Duration,
    /// Videos decoded at once; more wait, up to `decode_queue`, then 503.
    pub decode_workers: usize,
    pub decode_queue: usize,
    pub encoder: EncoderConfig,
    pub request_timeout: Duration,
    pub max_video_seconds: f64,
    /// How many adapters stay loaded, and which tasks are pinned.
    pub adapter_cache: CacheConfig,
    /// Quiet time after the last event for a file in `adapters/` before it is read.
    pub watch_debounce: Duration,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before the process stops.
    pub drain_timeout: Duration,
    /// `POST /index` requests being read or processed at once; more get 503 before their body
    /// is read.
    pub max_concurrent_uploads: usize,
    /// Open HTTP connections; at the cap new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long an upload may send nothing before it is refused (408).
    pub idle_timeout: Duration,
    /// What this process does in a deployment.
    pub role: role::Role,
    /// Where the vectors live.
    pub store: role::StoreSpec,
    /// Generation files (uploads, thumbnails, adapter copies) shared by every replica of a
    /// distributed deployment; `None`: under `data_dir`.
    pub blob_dir: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: ModelSource::Hub(crate::backbone::DEFAULT_MODEL_ID.to_string()),
            device: DeviceSpec::Cpu,
            precision: Precision::F32,
            data_dir: "data".into(),
            adapters_dir: "adapters".into(),
            bind: None,
            port: DEFAULT_PORT,
            grpc_port: Some(DEFAULT_GRPC_PORT),
            metrics_port: None,
            auth_file: None,
            max_upload_bytes: 256 << 20,
            max_example_bytes: 32 << 20,
            max_concurrent_examples: 4,
            max_videos_per_request: 16,
            frames: crate::media::DEFAULT_FRAMES,
            segment_seconds: 0,
            segment_min_seconds: 60.0,
            segment_max_bytes: 1 << 30,
            decode_workers: 2,
            decode_queue: 16,
            encoder: EncoderConfig::default(),
            request_timeout: Duration::from_secs(300),
            max_video_seconds: 1800.0,
            adapter_cache: CacheConfig::default(),
            watch_debounce: Duration::from_millis(100),
            segment_decode_time: Duration::from_secs(240),
            drain_timeout: Duration::from_secs(30),
            max_concurrent_uploads: 8,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            role: role::Role::All,
            store: role::StoreSpec::Embedded,
            blob_dir: None,
        }
    }
}

/// What exists once the backbone is loaded.
pub struct Core {
    pub registry: Arc<Registry>,
    pub encoder: Encoder,
    pub adapters: Arc<AdapterCache>,
    /// Watches `adapters/` for as long as the core lives (not on query replicas).
    _watcher: Option<AdapterWatcher>,
    /// On a query replica: follows the generations the indexer serves.
    pub follower: Option<Arc<Follower>>,
    /// Held by the one process that writes to a shared store.
    _writer_lock: Option<std::fs::File>,
}

pub struct AppState {
    pub config: ServeConfig,
    pub core: OnceLock<Arc<Core>>,
    pub metrics: Arc<Metrics>,
    pub auth: Option<AuthConfig>,
    pub decoder: Arc<dyn VideoDecoder>,
    /// Decodes running or waiting (bounded: `decode_workers + decode_queue`).
    pub decode_admission: Semaphore,
    /// Decodes running.
    pub decode_slots: Arc<Semaphore>,
    /// Uploads being read or processed (`max_concurrent_uploads`).
    pub upload_slots: Arc<Semaphore>,
    /// Searches by example being read or processed (`max_concurrent_examples`).
    pub example_slots: Arc<Semaphore>,
    pub tmp_dir: PathBuf,
}

impl AppState {
    pub fn core(&self) -> Result<Arc<Core>, ApiError> {
        self.core.get().cloned().ok_or_else(ApiError::not_ready)
    }

    /// A place among the decoders, for uploads and examples alike: admission to the bounded
    /// queue (503 with `Retry-After: retry_s` when it is full), then one of the
    /// `--decode-workers` slots, waited for. Hold both until the decode ends.
    pub async fn decode_slot(
        &self,
        retry_s: u64,
    ) -> Result<
        (
            tokio::sync::SemaphorePermit<'_>,
            tokio::sync::OwnedSemaphorePermit,
        ),
        ApiError,
    > {
        let admitted = self
            .decode_admission
            .try_acquire()
            .map_err(|_| ApiError::overloaded("too many videos waiting to be decoded", retry_s))?;
        let slot = self
            .decode_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("decoder closed"))?;
        Ok((admitted, slot))
    }
}

/// Request ids: a process-unique counter, sent back in `x-request-id`.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("req-{n:08x}"))
            .ok()
            .map(RequestId::new)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    let header = axum::http::HeaderName::from_static("x-request-id");
    let body_limit = multipart::max_body_bytes(
        state.config.max_videos_per_request,
        state.config.max_upload_bytes,
    );
    let mut router = Router::new();
    for route in routes::table() {
        let (path, handler) = route.into_parts();
        router = router.route(path, handler);
    }
    router
        // Only `POST /index` and `POST /search` read a body; this limit follows from
        // --max-upload-mb (and `multipart` checks a declared Content-Length against it before
        // reading). An example (`POST /search`) is held to --max-example-mb as it arrives.
        .layer(axum::extract::DefaultBodyLimit::max(
            usize::try_from(body_limit).unwrap_or(usize::MAX),
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth_mw))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics_mw))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id = %id, method = %req.method(), uri = %req.uri())
                },
            )
            // Access log at info; error statuses are explained by the handler's own log line.
            .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO))
            .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, Counter::default()))
        .with_state(state)
}

/// Counts requests, latency and error codes by matched route.
async fn metrics_mw(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .inc();
    m.http_latency
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(t0.elapsed().as_secs_f64());
    if let Some(code) = resp.extensions().get::<error::ErrorCode>() {
        m.errors.with_label_values(&[code.0]).inc();
    }
    resp
}

/// The task a request is about, from its path or its `task` query parameter.
fn request_task(req: &Request) -> Option<String> {
    let segs: Vec<&str> = req.uri().path().split('/').collect();
    match segs.as_slice() {
        ["", "videos", task, ..] | ["", "tasks", task] => Some(task.to_string()),
        _ => req.uri().query().and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == "task").then(|| api::percent_decode(v))
            })
        }),
    }
}

/// With auth on: checks the request's key against what its route needs. With auth off: refuses
/// requests not addressed to localhost or sent from another origin ([`local`]). Either way it
/// names the [`Caller`] in the request's extensions for handlers that show only what it may read.
async fn auth_mw(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if state.auth.is_none() {
        if let Err(e) = local::check(req.headers(), req.uri()) {
            return e.into_response();
        }
        req.extensions_mut().insert(Caller::Local);
        return next.run(req).await;
    }
    let path = req.uri().path();
    // Probes stay open for orchestrators; the page holds no data (its API calls carry the key).
    // `/metrics` is not among them: its labels name every task (serve it to Prometheus on
    // `--metrics-port`). The OpenAPI document holds no data.
    if matches!(path, "/" | "/openapi.json" | "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let key = {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        service::api_key(header("authorization"), header("x-api-key")).map(str::to_string)
    };
    // A search by example is a POST that only reads: the same right as `GET /search`.
    let reads = req.method() == Method::GET
        || req.method() == Method::HEAD
        || (req.method() == Method::POST && path == "/search");
    let scope = if reads { Scope::Read } else { Scope::Write };
    let task = request_task(&req);
    let need = match (&task, path) {
        (_, "/tasks") => Need::AnyKey,
        // Before the task rule: `/metrics?task=x` must not pass as a read of task x.
        (_, "/metrics") => Need::Admin,
        (Some(t), _) => Need::Task(t, scope),
        (None, _) => Need::Admin,
    };
    match service::authorize(&state, key.as_deref(), need) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The router of `--metrics-port`: `/metrics` alone, no key (it is meant for a scraper on a
/// network the operator controls); with auth off the same localhost rules as the API apply.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(api::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            local_mw,
        ))
        .with_state(state)
}

async fn local_mw(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.auth.is_none() {
        if let Err(e) = local::check(req.headers(), req.uri()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// How long a re-embedding waits before it queues again behind live uploads (a video batch takes
/// longer, so this is a short poll, not a back-off).
const REEMBED_RETRY: Duration = Duration::from_millis(50);

/// Re-embeds stored uploads for the registry: decode with the server's decoder, encode through the
/// encoder like any upload (so it shares batches and queues with live traffic).
struct ServerReembedder {
    decoder: Arc<dyn VideoDecoder>,
    encoder: Encoder,
    runtime: tokio::runtime::Handle,
}

impl Reembedder for ServerReembedder {
    fn embed(
        &self,
        model: &Arc<dyn crate::encode::TaskModel>,
        original: &std::path::Path,
    ) -> Result<Vec<f32>, ReembedError> {
        let size = self.encoder.backbone().image_size;
        let d = self
            .decoder
            .decode(original, model.frames(), size)
            .map_err(|e| ReembedError::Decode(Box::new(e)))?;
        // The video queue may be full of live uploads: wait and retry rather than fail.
        loop {
            let r = self.runtime.block_on(self.encoder.encode_video(
                model.clone(),
                d.pixels.clone(),
                d.mask.clone(),
            ));
            match r {
                Err(crate::encode::EncodeError::Overloaded(_)) => std::thread::sleep(REEMBED_RETRY),
                r => return Ok(r?),
            }
        }
    }

    fn embed_spans(
        &self,
        model: &Arc<dyn crate::encode::TaskModel>,
        original: &std::path::Path,
        spans: &[(f64, f64)],
    ) -> Result<Vec<Vec<f32>>, ReembedError> {
        let size = self.encoder.backbone().image_size;
        let timeline = self
            .decoder
            .decode_timeline(original, model.frames(), size)
            .map_err(|e| ReembedError::Decode(Box::new(e)))?;
        let job = moments::embed_spans(&self.encoder, model, &timeline, spans);
        Ok(self.runtime.block_on(job)?)
    }
}

/// Loads the backbone, opens the built-in task, and starts the encoder.
fn load_core(
    config: &ServeConfig,
    device: &candle_core::Device,
    metrics: Arc<Metrics>,
    decoder: Arc<dyn VideoDecoder>,
    runtime: tokio::runtime::Handle,
) -> Result<Core> {
    let t0 = Instant::now();
    let mut backbone = Backbone::load(&config.model, device).context("loading the backbone")?;
    backbone
        .set_precision(config.precision)
        .context("setting the backbone's precision")?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(model = %backbone.files.name, digest = %backbone.clip.id.digest, device = %config.device, precision = %config.precision, ms = load_ms as u64, "backbone loaded");
    let dim = backbone.clip.config.projection_dim;
    let digest = format!("clip:{}", backbone.clip.id.digest);
    // Adapters are built on the backbone's device (their tensors meet its activations).
    let adapters = AdapterCache::new(
        &config.data_dir.join("adapter-cache"),
        device.clone(),
        config.adapter_cache.clone(),
        Some(metrics.clone()),
    )
    .context("preparing the adapter cache")?;
    let loader = Arc::new(FileLoader {
        cache: adapters.clone(),
        backbone: backbone.clip.id.clone(),
        dims: BackboneDims::of(&backbone.clip.config),
    });
    let encoder = Encoder::start(backbone, config.encoder.clone(), Some(metrics.clone()));
    let files_root = role::files_root(
        config.role,
        &config.store,
        &config.data_dir,
        config.blob_dir.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let backend: Arc<dyn StoreBackend> = match &config.store {
        role::StoreSpec::Embedded => Arc::new(EmbeddedBackend::new(
            &files_root,
            dim,
            StoreConfig::default(),
        )),
        role::StoreSpec::Milvus(url) => Arc::new(
            MilvusBackend::new(url.clone(), dim, StoreConfig::default())
                .map_err(anyhow::Error::msg)?,
        ),
    };
    wait_for_store(backend.as_ref());
    std::fs::create_dir_all(&files_root)
        .with_context(|| format!("creating {}", files_root.display()))?;
    // The embedded store locks each store directory itself; a shared store needs one writer for
    // the whole deployment.
    let writer_lock = match (&config.store, config.role.writes()) {
        (role::StoreSpec::Milvus(_), true) => {
            Some(crate::store::lock_dir(&files_root).map_err(|e| {
                anyhow::anyhow!(
                    "{e}: another indexer uses this blob directory; a deployment runs exactly one"
                )
            })?)
        }
        _ => None,
    };
    let registry = Arc::new(Registry::with_backend(&files_root, backend));
    let model = Arc::new(ClipModel {
        digest: digest.clone(),
        text_len: DEFAULT_TEXT_LEN,
        frames: config.frames,
    });
    let info = ModelInfo {
        kind: "builtin".into(),
        digest,
        parameters: 0,
        file_bytes: 0,
        file: None,
        loaded_at: now_s(),
        load_ms,
        frames: config.frames,
        text_len: DEFAULT_TEXT_LEN,
    };
    if config.role == role::Role::Query {
        let follower = Arc::new(Follower::new(
            registry.clone(),
            loader.clone(),
            (model, info),
        ));
        if let Err(e) = follower.sync_all() {
            tracing::warn!(error = %e, "could not follow the served tasks yet");
        }
        follower.clone().spawn(FOLLOW_EVERY);
        tracing::info!(
            tasks = registry.len(),
            "query replica following the indexer"
        );
        return Ok(Core {
            registry,
            encoder,
            adapters,
            _watcher: None,
            follower: Some(follower),
            _writer_lock: None,
        });
    }
    registry.set_reembedder(Arc::new(ServerReembedder {
        decoder,
        encoder: encoder.clone(),
        runtime,
    }));
    let gen = registry.open_generation(CLIP_TASK, 0, model, info)?;
    tracing::info!(task = CLIP_TASK, videos = ?gen.store.count().ok(), "task ready");
    registry.install(CLIP_TASK, gen)?;

    // Watch before scanning so a file dropped in meanwhile is not missed (applying one twice is
    // a no-op: same digest).
    let on_outcome = {
        let metrics = metrics.clone();
        Arc::new(move |_: &str, o: &Outcome, waited: Duration| metrics.adapter_update(o, waited))
    };
    let watcher = watch(
        registry.clone(),
        loader.clone(),
        &config.adapters_dir,
        config.watch_debounce,
        on_outcome,
    )
    .with_context(|| format!("watching {}", config.adapters_dir.display()))?;
    for (task, outcome) in registry.scan(loader.as_ref(), &config.adapters_dir) {
        metrics.adapter_update(&outcome, Duration::ZERO);
        tracing::info!(task, ?outcome, "adapter file at start");
    }
    sweep_segments(registry.clone());
    Ok(Core {
        registry,
        encoder,
        adapters,
        _watcher: Some(watcher),
        follower: None,
        _writer_lock: writer_lock,
    })
}

/// Removes, in the background, the segments a crash left behind in every task (see
/// [`moments::sweep`]); the indexer's job, once at start, since only a crash leaves them.
fn sweep_segments(registry: Arc<Registry>) {
    let run = move || {
        for name in registry.names() {
            let Some(task) = registry.get(&name) else {
                continue;
            };
            match moments::sweep(&task) {
                Ok(0) => {}
                Ok(n) => tracing::info!(task = name, removed = n, "removed orphaned segments"),
                Err(e) => tracing::warn!(task = name, error = %e, "could not sweep segments"),
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("segment-sweep".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "could not start the segment sweep");
    }
}

/// How often a query replica looks for tasks added or removed (searches resolve their task's
/// generation themselves, every time).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Blocks until the store answers: the server is up (`/healthz`) but not ready (`/readyz` 503)
/// meanwhile, and becomes ready by itself when a remote store comes back.
fn wait_for_store(backend: &dyn StoreBackend) {
    let mut tries = 0u64;
    while let Err(e) = backend.check_available() {
        if tries.is_multiple_of(10) {
            tracing::warn!(store = backend.kind(), error = %e, "waiting for the vector store");
        }
        tries += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs `mvserve serve` until SIGINT/SIGTERM, then drains requests and stops.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let auth = match &config.auth_file {
        Some(p) => Some(AuthConfig::load(p)?),
        None => None,
    };
    let ip = match (config.bind, &auth) {
        (Some(ip), None) if !ip.is_loopback() => bail!(
            "refusing to listen on {ip} without authentication: give --auth-file, or bind to a loopback address"
        ),
        (Some(ip), _) => ip,
        (None, None) => std::net::Ipv4Addr::LOCALHOST.into(),
        (None, Some(_)) => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    if auth.is_none() {
        tracing::warn!("no --auth-file: authentication is off, listening on localhost only");
    }
    // Before binding: a missing GPU (or a build without CUDA) is a start-up error, not a server
    // that never becomes ready.
    let device = config.device.open()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let tmp_dir = config.data_dir.join("tmp");
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir)?;
    let metrics = Arc::new(Metrics::new());
    let decoder = Arc::new(ingest::MediaDecoder {
        limits: crate::media::MediaLimits {
            max_bytes: config.max_upload_bytes,
            max_duration_s: config.max_video_seconds,
            ..Default::default()
        },
        fps: 1.0,
        timeline_gate: parking_lot::Mutex::new(()),
        timeline_wall_time: config.segment_decode_time,
    });
    let state = Arc::new(AppState {
        decode_admission: Semaphore::new(config.decode_workers + config.decode_queue),
        decode_slots: Arc::new(Semaphore::new(config.decode_workers.max(1))),
        upload_slots: Arc::new(Semaphore::new(config.max_concurrent_uploads.max(1))),
        example_slots: Arc::new(Semaphore::new(config.max_concurrent_examples.max(1))),
        config: config.clone(),
        core: OnceLock::new(),
        metrics: metrics.clone(),
        auth,
        decoder,
        tmp_dir,
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, config.port))
        .await
        .with_context(|| format!("binding {ip}:{}", config.port))?;
    let bind_extra = |port: Option<u16>, what: &'static str| async move {
        match port {
            Some(port) => tokio::net::TcpListener::bind(SocketAddr::new(ip, port))
                .await
                .map(Some)
                .with_context(|| format!("binding {ip}:{port} for {what}")),
            None => Ok(None),
        }
    };
    let grpc_listener = bind_extra(config.grpc_port, "gRPC").await?;
    let metrics_listener = bind_extra(config.metrics_port, "metrics").await?;
    // The addresses go to stdout, HTTP first, then gRPC, then metrics: tests and scripts read them
    // to find the ports.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("listening on {addr}");
    if let Some(l) = &grpc_listener {
        let addr = l.local_addr()?;
        tracing::info!(%addr, "grpc listening");
        println!("grpc listening on {addr}");
    }
    if let Some(l) = &metrics_listener {
        let addr = l.local_addr()?;
        tracing::info!(%addr, "metrics listening");
        println!("metrics listening on {addr}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let grpc = match grpc_listener {
        Some(l) => Some(grpc::start(state.clone(), l, stopped()).await),
        None => None,
    };

    let loader = {
        let state = state.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let core = load_core(
                &state.config,
                &device,
                state.metrics.clone(),
                state.decoder.clone(),
                runtime,
            )?;
            let _ = state.core.set(Arc::new(core));
            tracing::info!("ready");
            Ok(())
        })
    };
    let limits = listen::ConnLimits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
    };
    if let Some(l) = metrics_listener {
        tokio::spawn(listen::serve(
            l,
            metrics_router(state.clone()),
            limits,
            stopped(),
        ));
    }
    let app = router(state.clone());
    let server = tokio::spawn(listen::serve(listener, app, limits, stopped()));
    // A backbone that fails to load ends the process.
    loader.await??;
    if let Some((health, _)) = &grpc {
        grpc::set_ready(health).await;
    }
    let drained = async {
        server.await?;
        if let Some((_, handle)) = grpc {
            handle.await?.context("serving gRPC")?;
        }
        Ok::<_, anyhow::Error>(())
    };
    // A client that stalls mid-request must not hold the process forever: after the signal,
    // requests get `drain_timeout` to finish. Acknowledged writes are already durable (the WAL is
    // synced before every 2xx), so stopping then loses nothing that was confirmed.
    let deadline = async {
        stopped().await;
        tokio::time::sleep(state.config.drain_timeout).await;
    };
    tokio::select! {
        r = drained => {
            r?;
            tracing::info!("draining done; stopping the encoder");
        }
        _ = deadline => tracing::warn!(
            seconds = state.config.drain_timeout.as_secs_f64(),
            "requests still in flight after the drain timeout; stopping anyway"
        ),
    }
    if let Some(core) = state.core.get() {
        core.encoder.shutdown();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal: draining requests");
}

//! The batching encoder: one worker thread owns the backbone; text and video jobs from every task
//! wait in two bounded queues; the worker cuts a batch (up to `max_batch` jobs, waiting at most
//! `max_wait` for more), runs each block of the tower once for the whole batch and applies every
//! sample's own adapter inside the block, grouped by task (`adapter::MixedHook`).
//!
//! Owns: the queues (capacity, overload), batch cutting, dropping jobs whose caller has gone,
//! tokenization of queries. Frame embeddings are pooled by [`pool_frames`], the meanP that
//! training and `embed` use. Does not own: which adapter a task
//! uses (a [`TaskModel`] comes with each job, from the registry), video decoding (`media`), storage.

mod query_cache;

pub use query_cache::{QueryCache, QueryCacheStats};

use crate::adapter::{pool_frames, AdapterError, MixedHook};
use crate::backbone::{l2_normalize, Backbone, BackboneError, BlockHook, TextBatch};
use candle_core::{DType, Tensor};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the encoder needs to know about one task's model (a generation of its adapter).
pub trait TaskModel: Send + Sync {
    /// Identifies the embedding space: recorded with every vector.
    fn digest(&self) -> &str;
    /// Padded text length L of this task's queries.
    fn text_len(&self) -> usize;
    /// Frame slots F per video.
    fn frames(&self) -> usize;
    /// The hook for the text tower (`None`: plain CLIP).
    fn text_hook(&self) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>>;
    /// The hook for the vision tower over `n` videos of F frames each (rows are frames, video-major);
    /// `mask` is (n, F) in u8 (1 = real frame).
    fn video_hook(&self, mask: &Tensor) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>>;
    /// Makes the model ready to encode (an evicted adapter reloads). Callers run it off the
    /// encoder thread before queueing, so a reload does not stall other tasks' batches.
    fn prepare(&self) -> candle_core::Result<()> {
        Ok(())
    }
    /// Whether [`TaskModel::prepare`] has work to do.
    fn needs_prepare(&self) -> bool {
        false
    }
}

/// The built-in zero-shot task: plain CLIP, meanP over frames.
pub struct ClipModel {
    pub digest: String,
    pub text_len: usize,
    pub frames: usize,
}

impl TaskModel for ClipModel {
    fn digest(&self) -> &str {
        &self.digest
    }
    fn text_len(&self) -> usize {
        self.text_len
    }
    fn frames(&self) -> usize {
        self.frames
    }
    fn text_hook(&self) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>> {
        Ok(None)
    }
    fn video_hook(&self, _mask: &Tensor) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>> {
        Ok(None)
    }
}

/// Why a job got no embedding. Cloned to every job of a failed batch, so sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncodeError {
    #[error("the {0} queue is full")]
    Overloaded(&'static str),
    #[error("the encoder has stopped")]
    Stopped,
    /// Frames that do not fit the task's model (a caller's mistake; nothing underneath failed).
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("bad input: {0}")]
    Untokenizable(#[source] Arc<BackboneError>),
    #[error("encoding failed: {0}")]
    Failed(#[source] Arc<candle_core::Error>),
    #[error("encoding failed: loading the task's adapter: {0}")]
    AdapterLoad(#[source] Arc<candle_core::Error>),
    /// The rows of a mixed batch did not fit the tasks' hooks (a bug in batch cutting).
    #[error("encoding failed: {0}")]
    Hook(#[source] Arc<AdapterError>),
    #[error("encoding failed: {0}")]
    Panicked(#[source] Arc<tokio::task::JoinError>),
}

impl From<candle_core::Error> for EncodeError {
    fn from(e: candle_core::Error) -> Self {
        EncodeError::Failed(Arc::new(e))
    }
}

type Reply = oneshot::Sender<Result<Vec<f32>, EncodeError>>;

struct TextJob {
    model: Arc<dyn TaskModel>,
    text: String,
    reply: Reply,
    queued: Instant,
}

struct VideoJob {
    model: Arc<dyn TaskModel>,
    /// (F, 3, S, S) preprocessed frames.
    pixels: Vec<f32>,
    mask: Vec<bool>,
    reply: Reply,
    queued: Instant,
}

/// Batching limits and queue capacities.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    /// Most texts in one batch.
    pub max_text_batch: usize,
    /// Most videos in one batch.
    pub max_video_batch: usize,
    /// How long the first job of a batch waits for company.
    pub max_wait: Duration,
    /// Waiting text jobs beyond which `encode_text` answers `Overloaded`.
    pub text_queue: usize,
    /// Waiting video jobs beyond which `encode_video` answers `Overloaded`.
    pub video_queue: usize,
    /// Query embeddings cached per embedding space (task generation); 0 turns the cache off.
    pub query_cache_per_task: usize,
    /// Embedding spaces the query cache keeps (least recently used dropped first).
    pub query_cache_tasks: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            max_text_batch: 32,
            max_video_batch: 4,
            max_wait: Duration::from_millis(2),
            text_queue: 256,
            video_queue: 32,
            query_cache_per_task: 1024,
            query_cache_tasks: 256,
        }
    }
}

/// Observes what the worker does (metrics live in the server).
pub trait EncodeObserver: Send + Sync {
    fn batch(&self, kind: &'static str, jobs: usize, tasks: usize, seconds: f64);
    fn queue_wait(&self, kind: &'static str, seconds: f64);
    fn dropped(&self, kind: &'static str);
}

struct NoObserver;
impl EncodeObserver for NoObserver {
    fn batch(&self, _: &'static str, _: usize, _: usize, _: f64) {}
    fn queue_wait(&self, _: &'static str, _: f64) {}
    fn dropped(&self, _: &'static str) {}
}

#[derive(Default)]
struct Queues {
    text: VecDeque<TextJob>,
    video: VecDeque<VideoJob>,
}

struct Shared {
    queues: Mutex<Queues>,
    wake: Condvar,
    stop: AtomicBool,
    config: EncoderConfig,
}

/// Handle to the encoder worker; cheap to clone. The worker stops when the last handle is dropped
/// or on [`Encoder::shutdown`] (jobs still queued are answered `Stopped`).
#[derive(Clone)]
pub struct Encoder {
    shared: Arc<Shared>,
    queries: Arc<QueryCache>,
    info: Arc<BackboneInfo>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What callers need to know about the backbone without touching it.
#[derive(Clone, Debug)]
pub struct BackboneInfo {
    pub name: String,
    pub digest: String,
    pub image_size: usize,
    pub projection_dim: usize,
}

impl Encoder {
    /// Moves the backbone onto its own worker thread.
    pub fn start(
        backbone: Backbone,
        config: EncoderConfig,
        observer: Option<Arc<dyn EncodeObserver>>,
    ) -> Encoder {
        let info = Arc::new(BackboneInfo {
            name: backbone.files.name.clone(),
            digest: backbone.clip.id.digest.clone(),
            image_size: backbone.clip.config.vision_config.image_size,
            projection_dim: backbone.clip.config.projection_dim,
        });
        let queries = Arc::new(QueryCache::new(
            config.query_cache_per_task,
            config.query_cache_tasks,
        ));
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            config,
        });
        let obs = observer.unwrap_or_else(|| Arc::new(NoObserver));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || worker(backbone, s, obs))
            .expect("spawning the encoder thread");
        Encoder {
            shared,
            queries,
            info,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    pub fn backbone(&self) -> &BackboneInfo {
        &self.info
    }

    /// (text, video) jobs waiting.
    pub fn queue_depths(&self) -> (usize, usize) {
        let q = self.shared.queues.lock();
        (q.text.len(), q.video.len())
    }

    /// Hits and misses of the query-embedding cache.
    pub fn query_cache_stats(&self) -> QueryCacheStats {
        self.queries.stats()
    }

    /// The L2-normalised embedding of a query through `model`; a query seen before in the same
    /// embedding space (digest, text length) comes from the cache without a backbone pass.
    pub async fn encode_text(
        &self,
        model: Arc<dyn TaskModel>,
        text: &str,
    ) -> Result<Vec<f32>, EncodeError> {
        let (digest, text_len) = (model.digest().to_string(), model.text_len());
        if let Some(v) = self.queries.get(&digest, text_len, text) {
            return Ok(v.to_vec());
        }
        let v = self.encode_text_uncached(model, text).await?;
        self.queries.put(&digest, text_len, text, &v);
        Ok(v)
    }

    async fn encode_text_uncached(
        &self,
        model: Arc<dyn TaskModel>,
        text: &str,
    ) -> Result<Vec<f32>, EncodeError> {
        prepare(&model).await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.queues.lock();
            self.check_open()?;
            if q.text.len() >= self.shared.config.text_queue {
                return Err(EncodeError::Overloaded("text"));
            }
            q.text.push_back(TextJob {
                model,
                text: text.to_string(),
                reply: tx,
                queued: Instant::now(),
            });
        }
        self.shared.wake.notify_one();
        rx.await.unwrap_or(Err(EncodeError::Stopped))
    }

    /// The L2-normalised video embedding of (F, 3, S, S) frames through `model`.
    pub async fn encode_video(
        &self,
        model: Arc<dyn TaskModel>,
        pixels: Vec<f32>,
        mask: Vec<bool>,
    ) -> Result<Vec<f32>, EncodeError> {
        let s = self.info.image_size;
        let f = model.frames();
        if mask.len() != f || pixels.len() != f * 3 * s * s || !mask.iter().any(|&m| m) {
            return Err(EncodeError::BadInput(format!(
                "expected {f} frames of 3x{s}x{s} with at least one real frame, got {} mask slots and {} values",
                mask.len(),
                pixels.len()
            )));
        }
        prepare(&model).await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.queues.lock();
            self.check_open()?;
            if q.video.len() >= self.shared.config.video_queue {
                return Err(EncodeError::Overloaded("video"));
            }
            q.video.push_back(VideoJob {
                model,
                pixels,
                mask,
                reply: tx,
                queued: Instant::now(),
            });
        }
        self.shared.wake.notify_one();
        rx.await.unwrap_or(Err(EncodeError::Stopped))
    }

    fn check_open(&self) -> Result<(), EncodeError> {
        if self.shared.stop.load(Ordering::Acquire) {
            Err(EncodeError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Finishes the batch in progress, answers queued jobs `Stopped`, and joins the worker.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// Runs `model.prepare()` on a blocking thread when it has work to do (an evicted adapter), so
/// the reload neither blocks the async runtime nor stalls the encoder thread.
async fn prepare(model: &Arc<dyn TaskModel>) -> Result<(), EncodeError> {
    if !model.needs_prepare() {
        return Ok(());
    }
    let m = model.clone();
    tokio::task::spawn_blocking(move || m.prepare())
        .await
        .map_err(|e| EncodeError::Panicked(Arc::new(e)))?
        .map_err(|e| EncodeError::AdapterLoad(Arc::new(e)))
}

enum Batch {
    Text(Vec<TextJob>),
    Video(Vec<VideoJob>),
}

fn worker(backbone: Backbone, shared: Arc<Shared>, obs: Arc<dyn EncodeObserver>) {
    let cfg = shared.config.clone();
    loop {
        let batch = {
            let mut q = shared.queues.lock();
            while q.text.is_empty() && q.video.is_empty() {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                shared.wake.wait(&mut q);
            }
            if shared.stop.load(Ordering::Acquire) {
                q.text.clear();
                q.video.clear();
                return;
            }
            // Texts first (cheap, latency-bound); wait up to max_wait for a fuller batch.
            let deadline = Instant::now() + cfg.max_wait;
            loop {
                let full = if !q.text.is_empty() {
                    q.text.len() >= cfg.max_text_batch
                } else {
                    q.video.len() >= cfg.max_video_batch
                };
                if full || shared.stop.load(Ordering::Acquire) {
                    break;
                }
                if shared.wake.wait_until(&mut q, deadline).timed_out() {
                    break;
                }
            }
            if !q.text.is_empty() {
                let n = q.text.len().min(cfg.max_text_batch);
                Batch::Text(q.text.drain(..n).collect())
            } else {
                let n = q.video.len().min(cfg.max_video_batch);
                Batch::Video(q.video.drain(..n).collect())
            }
        };
        match batch {
            Batch::Text(jobs) => run_text(&backbone, jobs, obs.as_ref()),
            Batch::Video(jobs) => run_video(&backbone, jobs, obs.as_ref()),
        }
    }
}

fn model_key(m: &Arc<dyn TaskModel>) -> usize {
    Arc::as_ptr(m) as *const () as usize
}

/// Sorts jobs so that each task's jobs are contiguous (stable: arrival order within a task).
fn group<J>(mut jobs: Vec<J>, model: impl Fn(&J) -> &Arc<dyn TaskModel>) -> Vec<J> {
    jobs.sort_by_key(|j| model_key(model(j)));
    jobs
}

/// Contiguous runs of one model: (first job index, job count).
fn runs<J>(jobs: &[J], model: impl Fn(&J) -> &Arc<dyn TaskModel>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        match out.last_mut() {
            Some((s, n)) if model_key(model(&jobs[*s])) == model_key(model(j)) => *n += 1,
            _ => out.push((i, 1)),
        }
    }
    out
}

/// Drops the jobs whose client has gone before they cost compute, and records how long the
/// others waited in their queue.
fn live_jobs<J>(
    jobs: Vec<J>,
    kind: &'static str,
    obs: &dyn EncodeObserver,
    reply_and_queued: impl Fn(&J) -> (&Reply, Instant),
) -> Vec<J> {
    jobs.into_iter()
        .filter(|j| {
            let (reply, queued) = reply_and_queued(j);
            if reply.is_closed() {
                obs.dropped(kind);
                return false;
            }
            obs.queue_wait(kind, queued.elapsed().as_secs_f64());
            true
        })
        .collect()
}

/// Per run of one model: (first row, rows, that model's hook).
type HookGroup<'a> = (usize, usize, Option<Box<dyn BlockHook + 'a>>);

/// One hook for a batch that mixes tasks: each run's rows go through its own model's hook.
fn mixed<'a>(groups: &'a [HookGroup<'a>]) -> Result<MixedHook<'a>, EncodeError> {
    MixedHook::new(
        groups
            .iter()
            .map(|(start, n, h)| (*start..*start + *n, h.as_deref()))
            .collect(),
    )
    .map_err(|e| EncodeError::Hook(Arc::new(e)))
}

fn run_text(backbone: &Backbone, jobs: Vec<TextJob>, obs: &dyn EncodeObserver) {
    let mut jobs = live_jobs(jobs, "text", obs, |j| (&j.reply, j.queued));
    if jobs.is_empty() {
        return;
    }
    let t0 = Instant::now();
    // Texts of one forward share a padded length (an adapter's positional table fixes it), so
    // jobs are ordered by length first, then by model.
    jobs.sort_by_key(|j| (j.model.text_len(), model_key(&j.model)));
    let runs = runs(&jobs, |j| &j.model);
    let result = (|| -> Result<Vec<Vec<f32>>, EncodeError> {
        let dev = &backbone.clip.device;
        let mut out = Vec::with_capacity(jobs.len());
        let mut r = 0;
        while r < runs.len() {
            let len = jobs[runs[r].0].model.text_len();
            let r_end = (r..runs.len())
                .find(|&i| jobs[runs[i].0].model.text_len() != len)
                .unwrap_or(runs.len());
            let first = runs[r].0;
            let last = runs[r_end - 1].0 + runs[r_end - 1].1;
            let part = &jobs[first..last];
            let tokens = part
                .iter()
                .map(|j| backbone.tokenizer.encode(&j.text, len))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| EncodeError::Untokenizable(Arc::new(e)))?;
            // Cut after the longest EOT: same embeddings, less work (see `TextBatch`).
            let (ids, eot) = TextBatch::new(&tokens).into_tensors(dev)?;
            let mut groups = Vec::with_capacity(r_end - r);
            for &(s, n) in &runs[r..r_end] {
                groups.push((s - first, n, jobs[s].model.text_hook()?));
            }
            let hook = mixed(&groups)?;
            let enc = backbone.clip.text.forward(&ids, &eot, Some(&hook), false)?;
            let emb = l2_normalize(&enc.embeds.to_dtype(DType::F32)?)?;
            out.extend(emb.to_vec2::<f32>()?);
            r = r_end;
        }
        Ok(out)
    })();
    obs.batch("text", jobs.len(), runs.len(), t0.elapsed().as_secs_f64());
    answer(jobs.into_iter().map(|j| j.reply), result);
}

fn run_video(backbone: &Backbone, jobs: Vec<VideoJob>, obs: &dyn EncodeObserver) {
    let jobs = live_jobs(jobs, "video", obs, |j| (&j.reply, j.queued));
    if jobs.is_empty() {
        return;
    }
    let t0 = Instant::now();
    let jobs = group(jobs, |j| &j.model);
    let runs = runs(&jobs, |j| &j.model);
    let result = (|| -> Result<Vec<Vec<f32>>, EncodeError> {
        let s = backbone.clip.config.vision_config.image_size;
        let per = 3 * s * s;
        let dev = &backbone.clip.device;
        let slots: usize = jobs.iter().map(|j| j.mask.len()).sum();
        let mut pixels = Vec::with_capacity(slots * per);
        // Per run: its mask (n, F), and for each of its n * F slots the tower row pooling reads.
        let mut masks = Vec::with_capacity(runs.len());
        let mut slot_rows = Vec::with_capacity(runs.len());
        let mut groups = Vec::with_capacity(runs.len());
        let mut row = 0;
        for &(first, n) in &runs {
            let f = jobs[first].model.frames();
            let part = &jobs[first..first + n];
            let m: Vec<u8> = part
                .iter()
                .flat_map(|j| j.mask.iter().map(|&b| b as u8))
                .collect();
            let mask = Tensor::from_vec(m, (n, f), dev)?;
            let hook = jobs[first].model.video_hook(&mask)?;
            let start = row;
            let mut rows = Vec::with_capacity(n * f);
            if hook.is_some() {
                // An adapter sees all F slots of a video (its temporal parts mix them).
                for j in part {
                    pixels.extend_from_slice(&j.pixels);
                }
                rows.extend((start..start + n * f).map(|r| r as u32));
                row += n * f;
            } else {
                // Without a hook every frame goes through the tower alone, so padded slots are
                // not run at all (a 7 s clip costs 7 frames, not F); pooling masks them out and
                // reads the video's first real row in their place.
                for j in part {
                    let first_real = row as u32;
                    for (k, &real) in j.mask.iter().enumerate() {
                        if real {
                            pixels.extend_from_slice(&j.pixels[k * per..(k + 1) * per]);
                            rows.push(row as u32);
                            row += 1;
                        } else {
                            rows.push(first_real);
                        }
                    }
                }
            }
            groups.push((start, row - start, hook));
            masks.push(mask);
            slot_rows.push(rows);
        }
        let pixels = Tensor::from_vec(pixels, (row, 3, s, s), dev)
            .and_then(|t| t.to_dtype(backbone.clip.vision_dtype()))?;
        let hook = mixed(&groups)?;
        let out = backbone.clip.vision.forward(&pixels, Some(&hook), false)?;
        let embeds = out.embeds.to_dtype(DType::F32)?;
        let mut vecs = Vec::with_capacity(jobs.len());
        for (rows, mask) in slot_rows.into_iter().zip(&masks) {
            let n = rows.len();
            let idx = Tensor::from_vec(rows, n, dev)?;
            let e = embeds.index_select(&idx, 0)?;
            // The pooling training and `embed` use, so a task serves the space it was trained in.
            let pooled = pool_frames(&e, mask)?;
            vecs.extend(pooled.to_vec2::<f32>()?);
        }
        Ok(vecs)
    })();
    obs.batch("video", jobs.len(), runs.len(), t0.elapsed().as_secs_f64());
    answer(jobs.into_iter().map(|j| j.reply), result);
}

fn answer(replies: impl Iterator<Item = Reply>, result: Result<Vec<Vec<f32>>, EncodeError>) {
    match result {
        Ok(vecs) => {
            for (r, v) in replies.zip(vecs) {
                let _ = r.send(Ok(v));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "encode batch failed");
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

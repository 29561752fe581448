//! Adapter tasks at run time: the loader that turns a `<task>.safetensors` file into a task model,
//! the [`TaskModel`] of an adapter task, and the LRU that bounds how many adapters keep their
//! tensors in memory.
//!
//! Owns: validating a file against the loaded backbone before it can be swapped in, the
//! content-addressed copy of every live adapter (`<data-dir>/adapter-cache/<digest>.safetensors`)
//! that an evicted adapter reloads from, and the eviction rule (least recently used first; pinned
//! tasks never). Does not own: the adapter math or file format (`adapter`), which generation a
//! task serves (`Registry`), batching (`encode`).
//!
//! Why a copy: the file in `adapters/` can be replaced at any moment, but an old generation keeps
//! answering with its own adapter until its successor is re-embedded. Reloading from the copy,
//! named by its digest and checked against it, can never bring back the wrong embedding space.

use super::watch::AdapterLoader;
use super::{now_s, ModelInfo};
use crate::adapter::{AdapterError, AdapterFile, BackboneDims, TaskAdapter};
use crate::backbone::{BackboneId, BlockHook};
use crate::encode::TaskModel;
use candle_core::{Device, Tensor};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Told about loads and evictions (the server's Prometheus metrics).
pub trait CacheObserver: Send + Sync {
    fn loaded(&self, task: &str, seconds: f64);
    fn evicted(&self, task: &str);
    /// Adapters now holding their tensors in memory.
    fn resident(&self, count: usize);
}

struct NoObserver;
impl CacheObserver for NoObserver {
    fn loaded(&self, _: &str, _: f64) {}
    fn evicted(&self, _: &str) {}
    fn resident(&self, _: usize) {}
}

/// How many adapters stay loaded and which tasks are never evicted.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Adapters holding tensors in memory; more are evicted least recently used first. Pinned
    /// tasks do not make room: with more pinned tasks than slots, the cache runs over.
    pub capacity: usize,
    pub pinned: BTreeSet<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            pinned: BTreeSet::new(),
        }
    }
}

struct Entry {
    task: String,
    adapter: Arc<TaskAdapter>,
    last_used: u64,
}

#[derive(Default)]
struct State {
    tick: u64,
    /// Loaded adapters by file digest.
    loaded: HashMap<String, Entry>,
    /// Live `AdapterModel`s per digest: the copy on disk goes when the last one does.
    live: HashMap<String, usize>,
}

/// The bounded set of loaded adapters (the first tier) over their copies on disk (the second).
pub struct AdapterCache {
    config: CacheConfig,
    device: Device,
    dir: PathBuf,
    state: Mutex<State>,
    observer: Arc<dyn CacheObserver>,
}

impl AdapterCache {
    /// Uses `dir` for the adapter copies; copies left by an earlier run are removed (no model is
    /// live yet; the files in `adapters/` are the source of truth).
    pub fn new(
        dir: &Path,
        device: Device,
        config: CacheConfig,
        observer: Option<Arc<dyn CacheObserver>>,
    ) -> std::io::Result<Arc<Self>> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Self {
            config,
            device,
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            observer: observer.unwrap_or_else(|| Arc::new(NoObserver)),
        }))
    }

    fn copy_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.safetensors"))
    }

    /// Adapters holding tensors in memory now.
    pub fn resident(&self) -> usize {
        self.state.lock().loaded.len()
    }

    /// Whether the adapter with this digest holds its tensors in memory.
    pub fn is_resident(&self, digest: &str) -> bool {
        self.state.lock().loaded.contains_key(digest)
    }

    fn insert(&self, task: &str, digest: &str, adapter: Arc<TaskAdapter>) -> Arc<TaskAdapter> {
        let mut s = self.state.lock();
        s.tick += 1;
        let tick = s.tick;
        let adapter = s
            .loaded
            .entry(digest.to_string())
            .and_modify(|e| e.last_used = tick)
            .or_insert_with(|| Entry {
                task: task.to_string(),
                adapter,
                last_used: tick,
            })
            .adapter
            .clone();
        while s.loaded.len() > self.config.capacity {
            let victim = s
                .loaded
                .iter()
                .filter(|(d, e)| *d != digest && !self.config.pinned.contains(&e.task))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| d.clone());
            let Some(victim) = victim else {
                tracing::warn!(
                    capacity = self.config.capacity,
                    loaded = s.loaded.len(),
                    "every loaded adapter is pinned or in use: running over the LRU capacity"
                );
                break;
            };
            if let Some(e) = s.loaded.remove(&victim) {
                tracing::info!(task = %e.task, digest = %victim, "adapter evicted");
                self.observer.evicted(&e.task);
            }
        }
        self.observer.resident(s.loaded.len());
        adapter
    }

    /// The loaded adapter of `model`, reloading it from its copy when it was evicted.
    fn get(&self, model: &AdapterModel) -> Result<Arc<TaskAdapter>, AdapterError> {
        {
            let mut s = self.state.lock();
            s.tick += 1;
            let tick = s.tick;
            if let Some(e) = s.loaded.get_mut(&model.digest) {
                e.last_used = tick;
                return Ok(e.adapter.clone());
            }
        }
        // Load outside the lock: other tasks keep being served meanwhile.
        let t0 = Instant::now();
        let path = self.copy_path(&model.digest);
        let file = AdapterFile::read(&path)?;
        if file.digest() != model.digest {
            return Err(AdapterError::BadConfig(format!(
                "the cached copy of adapter {} changed on disk (digest now {})",
                model.digest,
                file.digest()
            )));
        }
        let adapter = Arc::new(file.adapter(&self.device)?);
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(task = %model.task, ms = seconds * 1e3, "evicted adapter reloaded");
        self.observer.loaded(&model.task, seconds);
        Ok(self.insert(&model.task, &model.digest, adapter))
    }

    fn acquire(&self, digest: &str) {
        *self
            .state
            .lock()
            .live
            .entry(digest.to_string())
            .or_default() += 1;
    }

    fn release(&self, digest: &str) {
        let mut s = self.state.lock();
        let Some(n) = s.live.get_mut(digest) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            s.live.remove(digest);
            s.loaded.remove(digest);
            self.observer.resident(s.loaded.len());
            let _ = std::fs::remove_file(self.copy_path(digest));
        }
    }
}

/// The model of a task defined by an adapter file. Cheap: the tensors live in the cache.
pub struct AdapterModel {
    task: String,
    digest: String,
    frames: usize,
    text_len: usize,
    cache: Arc<AdapterCache>,
}

impl AdapterModel {
    /// The adapter's tensors, loading them when evicted (the first use after an eviction pays
    /// the load; later ones do not).
    pub fn adapter(&self) -> Result<Arc<TaskAdapter>, AdapterError> {
        self.cache.get(self)
    }
}

impl Drop for AdapterModel {
    fn drop(&mut self) {
        self.cache.release(&self.digest);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn candle_err(e: AdapterError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Owns its adapter for the length of one batch, so an eviction meanwhile cannot pull it away.
struct TextHookOwned {
    adapter: Arc<TaskAdapter>,
    len: usize,
}

impl BlockHook for TextHookOwned {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let hook = self.adapter.text_hook(self.len).map_err(candle_err)?;
        hook.after_mlp(layer, f)
    }
}

struct VideoHookOwned {
    adapter: Arc<TaskAdapter>,
    mask: Tensor,
}

impl BlockHook for VideoHookOwned {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let hook = self.adapter.video_hook(&self.mask).map_err(candle_err)?;
        hook.after_mlp(layer, f)
    }
}

impl TaskModel for AdapterModel {
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
        let adapter = self.adapter().map_err(candle_err)?;
        Ok(Some(Box::new(TextHookOwned {
            adapter,
            len: self.text_len,
        })))
    }
    fn video_hook(&self, mask: &Tensor) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>> {
        let adapter = self.adapter().map_err(candle_err)?;
        Ok(Some(Box::new(VideoHookOwned {
            adapter,
            mask: mask.clone(),
        })))
    }
    fn prepare(&self) -> candle_core::Result<()> {
        self.adapter().map(|_| ()).map_err(candle_err)
    }
    fn needs_prepare(&self) -> bool {
        !self.cache.is_resident(&self.digest)
    }
}

/// Reads `<task>.safetensors` files for the registry: full validation, backbone match, tensors
/// built on the backbone's device, a content-addressed copy kept for reloads.
pub struct FileLoader {
    pub cache: Arc<AdapterCache>,
    pub backbone: BackboneId,
    pub dims: BackboneDims,
}

impl FileLoader {
    /// Errors name the file relative to the adapters folder (it lies directly inside it): they
    /// reach clients through `/tasks`, which must not learn the server's paths.
    fn load_file(&self, task: &str, path: &Path) -> Result<(AdapterModel, ModelInfo), String> {
        let t0 = Instant::now();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{task}.safetensors"));
        // Validate the bytes we keep: copy first, then read the copy, so the file in adapters/
        // changing under us cannot make the copy differ from what was checked.
        // Unique per load: the start-up scan and the watcher may read the same file at once.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.cache.dir.join(format!(".{task}.{n}.tmp"));
        std::fs::copy(path, &tmp).map_err(|e| format!("reading {name}: {e}"))?;
        let t_copy = t0.elapsed();
        let mut t_read = t_copy;
        let checked = (|| {
            let file = AdapterFile::read(&tmp)?;
            t_read = t0.elapsed();
            file.check_backbone(&self.backbone, &self.dims)?;
            let adapter = file.adapter(&self.cache.device)?;
            Ok::<_, AdapterError>((file, adapter))
        })();
        let t_tensors = t0.elapsed();
        let (file, adapter) = match checked {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(match e {
                    // The path in it is the copy's, under the data folder.
                    AdapterError::Io(_, io) => format!("reading {name}: {io}"),
                    e => format!("{name}: {e}"),
                });
            }
        };
        let digest = file.digest().to_string();
        // Count this model as live before its copy lands, so that the last holder of the same
        // digest going away meanwhile cannot delete the copy under it.
        self.cache.acquire(&digest);
        // A plain rename, not `store::durable`: the cache's copies are this run's working files
        // (removed at start, see `AdapterCache::new`), so a crash needs nothing of them.
        if let Err(e) = std::fs::rename(&tmp, self.cache.copy_path(&digest)) {
            let _ = std::fs::remove_file(&tmp);
            self.cache.release(&digest);
            return Err(format!("keeping a copy of {name}: {e}"));
        }
        if file.meta.task != task {
            tracing::info!(task, file_task = %file.meta.task, "the file name sets the task; the task recorded inside differs");
        }
        let config = &file.meta.config;
        let model = AdapterModel {
            task: task.to_string(),
            digest: digest.clone(),
            frames: config.frames,
            text_len: config.words,
            cache: self.cache.clone(),
        };
        self.cache.insert(task, &digest, Arc::new(adapter));
        let seconds = t0.elapsed().as_secs_f64();
        tracing::debug!(
            task,
            copy_ms = ms(t_copy),
            validate_ms = ms(t_read - t_copy),
            tensors_ms = ms(t_tensors - t_read),
            total_ms = seconds * 1e3,
            "adapter file loaded"
        );
        self.cache.observer.loaded(task, seconds);
        let info = ModelInfo {
            kind: "adapter".into(),
            digest,
            parameters: file.param_count(),
            file_bytes: file.size(),
            file: Some(name),
            loaded_at: now_s(),
            load_ms: seconds * 1e3,
            frames: config.frames,
            text_len: config.words,
        };
        Ok((model, info))
    }
}

impl AdapterLoader for FileLoader {
    fn load(&self, task: &str, path: &Path) -> Result<(Arc<dyn TaskModel>, ModelInfo), String> {
        let (model, info) = self.load_file(task, path)?;
        Ok((Arc::new(model), info))
    }

    fn keep_copy(&self, digest: &str, dst: &Path) -> Result<(), String> {
        let src = self.cache.copy_path(digest);
        // A hard link shares the cache copy's bytes (never written in place: a new load of the
        // same digest renames a new file over the name) instead of copying 14 MB; it is made
        // durable the same way. Where no link can be made (another file system), a copy.
        let tmp = dst.with_extension("link.tmp");
        let _ = std::fs::remove_file(&tmp);
        let kept = match std::fs::hard_link(&src, &tmp) {
            Ok(()) => crate::store::durable::persist(&tmp, dst),
            Err(_) => crate::store::durable::copy_file(&src, dst),
        };
        kept.map_err(|e| format!("keeping a copy of adapter {digest}: {e}"))
    }
}

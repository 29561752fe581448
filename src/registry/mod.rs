//! The set of tasks the server answers for.
//!
//! Owns: which tasks exist, each task's current generation (the model that embeds its queries and
//! videos plus the store that holds the vectors that model produced), the swap from one generation
//! to the next, and the on-disk layout `<data-dir>/tasks/<task>/gen-<n>/` with a `CURRENT` file.
//! Does not own: encoding (`encode`), HTTP, or the vector store's internals (`store`).
//!
//! A generation never mixes embedding spaces: its store only holds vectors of its own model digest,
//! and an adapter task's generation keeps a copy of the adapter that made them
//! (`gen-<n>/adapter.safetensors`), so that after a restart with a changed adapter file the old
//! generation can keep answering while its videos are re-embedded. Readers take an
//! `Arc<Generation>` and keep using it even if the task is swapped meanwhile; a replaced
//! generation's directory is removed once the last reader lets go of it, and at start every
//! generation but the recorded one (replaced ones, and half-built ones a crash left) is removed.

pub mod adapters;
pub mod follow;
pub mod reembed;
pub mod watch;

use crate::encode::TaskModel;
use crate::store::{EmbeddedBackend, StoreBackend, StoreConfig, StoreError, VectorStore};
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The name of the built-in zero-shot task (no adapter).
pub const CLIP_TASK: &str = "clip";
/// A generation's own copy of the adapter its vectors were made with.
pub const ADAPTER_COPY: &str = "adapter.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid task name {0:?} (1-64 characters of a-z, A-Z, 0-9, '-', '_')")]
    BadName(String),
    #[error("store of task {task}: {source}")]
    Store {
        task: String,
        #[source]
        source: StoreError,
    },
    /// A query replica could not load the adapter a generation was made with.
    #[error("adapter of task {task}: {why}")]
    Adapter { task: String, why: String },
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `/tasks` shows about a task's model.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// "builtin" for `clip`, else "adapter".
    pub kind: String,
    pub digest: String,
    pub parameters: usize,
    pub file_bytes: u64,
    pub file: Option<String>,
    /// Seconds since the Unix epoch when it was loaded.
    pub loaded_at: f64,
    pub load_ms: f64,
    pub frames: usize,
    pub text_len: usize,
}

/// One model of a task and the vectors it produced.
pub struct Generation {
    pub number: u64,
    pub model: Arc<dyn TaskModel>,
    pub store: Arc<dyn VectorStore>,
    pub info: ModelInfo,
}

/// A task: its current generation, swapped atomically.
pub struct Task {
    pub name: String,
    current: RwLock<Arc<Generation>>,
    /// The last file that failed to load for this task (shown by `/tasks`); cleared by a good load.
    last_error: RwLock<Option<String>>,
    /// Writers (index, delete) hold it shared ([`Task::write_guard`]); a re-embedding cutover
    /// holds it exclusively for its last catch-up pass, so no acknowledged write is left behind
    /// in the old generation.
    write_gate: RwLock<()>,
    /// The generation being re-embedded, if any.
    pending: parking_lot::Mutex<Option<u64>>,
}

impl Task {
    fn new(name: &str, generation: Arc<Generation>) -> Arc<Task> {
        Arc::new(Task {
            name: name.to_string(),
            current: RwLock::new(generation),
            last_error: RwLock::new(None),
            write_gate: RwLock::new(()),
            pending: parking_lot::Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.read().clone()
    }

    /// Held by a write (an upload's commit, a delete) for as long as it writes to the current
    /// generation: a cutover waits for it, and no write starts during a cutover's last pass.
    pub fn write_guard(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.write_gate.read()
    }

    /// Held by a clean-up that must see no write while it decides (the sweep of segments a
    /// crash left behind): waits for the writes in flight, and no write starts meanwhile.
    pub fn exclusive_guard(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.write_gate.write()
    }

    /// Why the last adapter file for this task was refused (or its re-embedding failed), until
    /// a good one is loaded.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().clone()
    }

    /// The generation being re-embedded, if any.
    pub fn pending(&self) -> Option<u64> {
        *self.pending.lock()
    }
}

/// A count for a task's status, `None` (logged) when the store cannot answer.
fn counted(task: &str, what: &str, n: Result<usize, crate::store::StoreError>) -> Option<usize> {
    n.map_err(|e| tracing::warn!(task, error = %e, "could not count a task's {what}"))
        .ok()
}

/// `GET /tasks` entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskStatus {
    pub task: String,
    #[schema(value_type = String)]
    pub state: &'static str,
    pub generation: u64,
    pub pending_generation: Option<u64>,
    /// Videos stored (a video indexed as segments counts once); `null` when the store cannot be
    /// asked right now.
    pub videos: Option<usize>,
    /// Vectors stored: one per video, one per segment of a video indexed as segments; `null`
    /// when the store cannot be asked right now.
    pub vectors: Option<usize>,
    pub model: ModelInfo,
    pub last_error: Option<String>,
}

pub struct Registry {
    data_dir: PathBuf,
    backend: Arc<dyn StoreBackend>,
    tasks: RwLock<BTreeMap<String, Arc<Task>>>,
    /// Adapter files that failed to load for a task that is not being served: task -> why.
    rejected: RwLock<BTreeMap<String, String>>,
    /// Re-embeds a task's stored videos when its adapter changes ([`Registry::set_reembedder`]).
    reembedder: RwLock<Option<Arc<dyn reembed::Reembedder>>>,
}

/// Task names are path components and URL segments: keep them boring.
pub fn valid_task_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Registry {
    /// A registry on the embedded store under `data_dir`.
    pub fn new(data_dir: &Path, dim: usize, store_config: StoreConfig) -> Registry {
        let backend = Arc::new(EmbeddedBackend::new(data_dir, dim, store_config));
        Registry::with_backend(data_dir, backend)
    }

    /// A registry whose generation directories (blobs, adapter copies) live under `data_dir` and
    /// whose vectors live in `backend`.
    pub fn with_backend(data_dir: &Path, backend: Arc<dyn StoreBackend>) -> Registry {
        Registry {
            data_dir: data_dir.to_path_buf(),
            backend,
            tasks: RwLock::new(BTreeMap::new()),
            rejected: RwLock::new(BTreeMap::new()),
            reembedder: RwLock::new(None),
        }
    }

    /// Sets what re-embeds a task's videos when its adapter changes; without one, a new adapter
    /// for a task that holds videos is refused.
    pub fn set_reembedder(&self, reembedder: Arc<dyn reembed::Reembedder>) {
        *self.reembedder.write() = Some(reembedder);
    }

    /// Adapter files that failed to load for a task that is not being served: task -> why.
    pub fn rejected(&self) -> BTreeMap<String, String> {
        self.rejected.read().clone()
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    pub fn task_dir(&self, task: &str) -> PathBuf {
        self.data_dir.join("tasks").join(task)
    }

    pub fn generation_dir(&self, task: &str, number: u64) -> PathBuf {
        self.task_dir(task).join(format!("gen-{number}"))
    }

    /// Removes every generation directory of `task` but `keep`: replaced generations a crash kept
    /// from being removed, and half-built ones a crash left mid re-embedding (never served).
    pub fn prune_generations(&self, task: &str, keep: u64) {
        match self.backend.generations(task) {
            Ok(held) => {
                for n in held.into_iter().filter(|n| *n != keep) {
                    if let Err(e) = self.backend.discard(task, n) {
                        tracing::warn!(task, generation = n, error = %e, "could not discard an unused generation");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(task, error = %e, "could not list the generations of a task")
            }
        }
        let Ok(entries) = std::fs::read_dir(self.task_dir(task)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if n != keep {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => tracing::info!(
                        task,
                        generation = n,
                        "removed a generation that is not served"
                    ),
                    Err(err) => {
                        tracing::warn!(task, generation = n, error = %err, "could not remove an unused generation")
                    }
                }
            }
        }
    }

    /// The generation of `task` the backend serves, if any.
    pub fn recorded_generation(&self, task: &str) -> Result<Option<u64>, RegistryError> {
        self.backend
            .served(task)
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })
    }

    fn write_current(&self, task: &str, number: u64) -> Result<(), RegistryError> {
        self.backend
            .serve(task, number)
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })
    }

    /// The backend holding the vectors (`embedded` or `milvus`).
    pub fn backend(&self) -> &Arc<dyn StoreBackend> {
        &self.backend
    }

    /// Opens generation `number` of `task` as it is, to read it (its adapter may differ from
    /// every loaded one).
    pub fn open_existing(
        &self,
        task: &str,
        number: u64,
    ) -> Result<Arc<dyn VectorStore>, RegistryError> {
        self.backend
            .open(task, number, &self.generation_dir(task, number), None)
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })
    }

    /// Opens (creating it if needed) generation `number` of `task`.
    pub fn open_generation(
        &self,
        task: &str,
        number: u64,
        model: Arc<dyn TaskModel>,
        info: ModelInfo,
    ) -> Result<Generation, RegistryError> {
        if !valid_task_name(task) {
            return Err(RegistryError::BadName(task.to_string()));
        }
        let dir = self.generation_dir(task, number);
        std::fs::create_dir_all(&dir).map_err(|source| RegistryError::Io {
            path: dir.clone(),
            source,
        })?;
        let store = self
            .backend
            .open(task, number, &dir, Some(model.digest()))
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })?;
        Ok(Generation {
            number,
            model,
            store,
            info,
        })
    }

    /// Makes `generation` the task's current one (creating the task if new) and records it on disk.
    /// Returns the generation it replaced.
    pub fn install(
        &self,
        task: &str,
        generation: Generation,
    ) -> Result<Option<Arc<Generation>>, RegistryError> {
        self.write_current(task, generation.number)?;
        let generation = Arc::new(generation);
        let mut tasks = self.tasks.write();
        match tasks.get(task) {
            Some(t) => {
                *t.last_error.write() = None;
                Ok(Some(std::mem::replace(&mut *t.current.write(), generation)))
            }
            None => {
                tasks.insert(task.to_string(), Task::new(task, generation));
                Ok(None)
            }
        }
    }

    /// Opens generation `number` of `task` empty: whatever a crash left in its directory (a
    /// re-embedding that never finished) is discarded first.
    pub fn fresh_generation(
        &self,
        task: &str,
        number: u64,
        model: Arc<dyn TaskModel>,
        info: ModelInfo,
    ) -> Result<Generation, RegistryError> {
        let dir = self.generation_dir(task, number);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(
                task,
                generation = number,
                "discarded a half-built generation"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RegistryError::Io { path: dir, source }),
        }
        self.backend
            .discard(task, number)
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })?;
        self.open_generation(task, number, model, info)
    }

    /// Answers `task` from `generation` in this process only (a query replica following the
    /// backend): the served generation is not recorded and the replaced one is not retired,
    /// both being the indexer's to do.
    pub fn adopt(&self, task: &str, generation: Arc<Generation>) {
        let mut tasks = self.tasks.write();
        match tasks.get(task) {
            Some(t) => *t.current.write() = generation,
            None => {
                tasks.insert(task.to_string(), Task::new(task, generation));
            }
        }
    }

    /// Replaces `task`'s generation with `generation` if `task` is still the one in service (a
    /// task removed or re-added meanwhile is not brought back). The replaced generation is
    /// removed from disk once its last reader is done. Returns whether it was installed.
    pub fn cutover(&self, task: &Arc<Task>, generation: Generation) -> Result<bool, RegistryError> {
        // Held (shared) across the swap so that a removal cannot slip in between check and swap.
        let tasks = self.tasks.read();
        if !tasks.get(&task.name).is_some_and(|t| Arc::ptr_eq(t, task)) {
            generation.store.retire();
            return Ok(false);
        }
        self.write_current(&task.name, generation.number)?;
        let old = std::mem::replace(&mut *task.current.write(), Arc::new(generation));
        old.store.retire();
        *task.last_error.write() = None;
        drop(tasks);
        Ok(true)
    }

    /// Removes a task from service (its data stays on disk). Returns the task if it existed.
    pub fn remove(&self, task: &str) -> Option<Arc<Task>> {
        self.tasks.write().remove(task)
    }

    pub fn get(&self, task: &str) -> Option<Arc<Task>> {
        self.tasks.read().get(task).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.tasks.read().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.tasks.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.read().is_empty()
    }

    pub fn status(&self, task: &str) -> Option<TaskStatus> {
        let t = self.get(task)?;
        let g = t.current();
        let last_error = t.last_error();
        let pending = t.pending();
        Some(TaskStatus {
            task: t.name.clone(),
            state: if pending.is_some() {
                "serving (re-embedding into a new generation)"
            } else if last_error.is_some() {
                "serving (last update rejected)"
            } else {
                "serving"
            },
            pending_generation: pending,
            generation: g.number,
            videos: counted(&t.name, "videos", g.store.count_videos()),
            vectors: counted(&t.name, "vectors", g.store.count()),
            model: g.info.clone(),
            last_error,
        })
    }

    pub fn statuses(&self) -> Vec<TaskStatus> {
        self.names().iter().filter_map(|n| self.status(n)).collect()
    }
}

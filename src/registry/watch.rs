//! The watched adapter folder: `<task>.safetensors` files become tasks, replaced files swap the
//! task's model, removed files take the task out of service (its data stays on disk).
//!
//! Owns: scanning at start, the `notify` watcher with a short debounce, and the rules of a swap (a
//! file that fails to load is logged and shown in `/tasks`, never replaces a good model; an
//! unchanged digest is a no-op; a task that holds videos is not swapped until re-embedding exists,
//! see below). Does not own reading or validating adapter files: that is an [`AdapterLoader`]
//! (the `adapter` module's `AdapterFile`, plugged in by the server).
//!
//! A new adapter for a task that holds videos starts a background re-embedding into a new
//! generation (`reembed`); without a configured re-embedder it is refused and the old keeps serving.

use super::{valid_task_name, ModelInfo, Registry, CLIP_TASK};
use crate::encode::TaskModel;
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads and validates one adapter file against the loaded backbone.
pub trait AdapterLoader: Send + Sync {
    fn load(&self, task: &str, path: &Path) -> Result<(Arc<dyn TaskModel>, ModelInfo), String>;
}

/// What happened to one file, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Added {
        generation: u64,
    },
    Swapped {
        generation: u64,
    },
    /// The task holds videos: they are being re-embedded into this generation in the background;
    /// the old one answers until the cutover.
    Reembedding {
        generation: u64,
    },
    Unchanged,
    Removed,
    Rejected(String),
    Ignored,
}

/// The task a path in the adapter folder names, if it is an adapter file.
pub fn task_of_path(path: &Path) -> Option<String> {
    if path.extension()? != "safetensors" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    valid_task_name(stem).then(|| stem.to_string())
}

impl Registry {
    /// Loads `path` as task `task`'s model, or removes the task when the file is gone.
    pub fn apply_file(
        self: &Arc<Self>,
        loader: &dyn AdapterLoader,
        task: &str,
        path: &Path,
    ) -> Outcome {
        if task == CLIP_TASK {
            let m = format!(
                "{} would shadow the built-in task clip; ignored",
                path.display()
            );
            tracing::warn!("{m}");
            self.rejected.write().insert(task.to_string(), m.clone());
            return Outcome::Rejected(m);
        }
        if !path.exists() {
            self.rejected.write().remove(task);
            return match self.remove(task) {
                Some(_) => {
                    tracing::info!(task, "adapter file removed: task out of service");
                    Outcome::Removed
                }
                None => Outcome::Ignored,
            };
        }
        let reject = |m: String| {
            tracing::warn!(task, file = %path.display(), error = %m, "adapter rejected");
            match self.get(task) {
                Some(t) => *t.last_error.write() = Some(m.clone()),
                None => {
                    self.rejected.write().insert(task.to_string(), m.clone());
                }
            }
            Outcome::Rejected(m)
        };
        let (model, info) = match loader.load(task, path) {
            Ok(x) => x,
            Err(m) => return reject(m),
        };
        let existing = self.get(task);
        let next = match &existing {
            Some(t) => {
                let cur = t.current();
                if cur.model.digest() == model.digest() {
                    *t.last_error.write() = None;
                    return Outcome::Unchanged;
                }
                if !cur.store.is_empty() {
                    let Some(embedder) = self.reembedder.read().clone() else {
                        return reject(format!(
                            "task holds {} videos and no re-embedder is configured; generation {} keeps serving",
                            cur.store.len(),
                            cur.number
                        ));
                    };
                    let next = cur.number + 1;
                    {
                        let mut p = t.pending.lock();
                        if let Some(n) = *p {
                            return reject(format!(
                                "generation {n} is still being re-embedded; try again when it is done"
                            ));
                        }
                        *p = Some(next);
                    }
                    let gen = match self.open_generation(task, next, model, info) {
                        Ok(g) => g,
                        Err(e) => {
                            *t.pending.lock() = None;
                            return reject(e.to_string());
                        }
                    };
                    super::reembed::start(self.clone(), t.clone(), gen, embedder);
                    return Outcome::Reembedding { generation: next };
                }
                cur.number + 1
            }
            None => match self.recorded_generation(task) {
                // A task coming back: reuse its generation if the model is the same, else start anew.
                Some(n) => {
                    let dir = self.task_dir(task).join(format!("gen-{n}"));
                    let same =
                        crate::store::TaskStore::open(&dir, self.dim, self.store_config.clone())
                            .ok()
                            .map(|s| s.digest().is_none_or(|d| d == model.digest()))
                            .unwrap_or(false);
                    if same {
                        n
                    } else {
                        n + 1
                    }
                }
                None => 0,
            },
        };
        let gen = match self.open_generation(task, next, model, info) {
            Ok(g) => g,
            Err(e) => return reject(e.to_string()),
        };
        match self.install(task, gen) {
            Ok(None) => {
                self.rejected.write().remove(task);
                tracing::info!(task, generation = next, "task added");
                Outcome::Added { generation: next }
            }
            Ok(Some(_old)) => {
                tracing::info!(task, generation = next, "adapter swapped");
                Outcome::Swapped { generation: next }
            }
            Err(e) => reject(e.to_string()),
        }
    }

    /// Loads every adapter file in `dir` (at start).
    pub fn scan(
        self: &Arc<Self>,
        loader: &dyn AdapterLoader,
        dir: &Path,
    ) -> Vec<(String, Outcome)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Some(task) = task_of_path(&p) {
                let o = self.apply_file(loader, &task, &p);
                out.push((task, o));
            }
        }
        out
    }
}

/// Called after each file change is applied (metrics, logs), with the time since the first
/// event for the file (the debounce included: what an operator waits for).
pub type OnOutcome = Arc<dyn Fn(&str, &Outcome, Duration) + Send + Sync>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct AdapterWatcher {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

/// Watches `dir` and applies every change to `registry` on a background thread. Events are
/// debounced (`debounce` after the last event for a file) so a file being written is read once.
pub fn watch(
    registry: Arc<Registry>,
    loader: Arc<dyn AdapterLoader>,
    dir: &Path,
    debounce: Duration,
    on_outcome: OnOutcome,
) -> notify::Result<AdapterWatcher> {
    std::fs::create_dir_all(dir).map_err(notify::Error::io)?;
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            // Reading a file (ours included: loading it) raises access events, and a chmod raises
            // metadata ones; neither changes the adapter, and reacting to our own reads would loop.
            if matches!(
                ev.kind,
                EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
            ) {
                return;
            }
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let thread = std::thread::Builder::new()
        .name("adapter-watch".into())
        .spawn(move || {
            let mut pending: BTreeMap<PathBuf, Instant> = BTreeMap::new();
            loop {
                let timeout = if pending.is_empty() {
                    Duration::from_secs(3600)
                } else {
                    debounce
                };
                match rx.recv_timeout(timeout) {
                    Ok(p) => {
                        pending.entry(p).or_insert_with(Instant::now);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        for (p, since) in std::mem::take(&mut pending) {
                            if let Some(task) = task_of_path(&p) {
                                let o = registry.apply_file(loader.as_ref(), &task, &p);
                                on_outcome(&task, &o, since.elapsed());
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(AdapterWatcher {
        _watcher: watcher,
        _thread: thread,
    })
}

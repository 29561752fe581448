//! The watched adapter folder: `<task>.safetensors` files become tasks, replaced files swap the
//! task's model, removed files take the task out of service (its data stays on disk).
//!
//! Owns: scanning at start, the `notify` watcher with a short debounce, and the rules of a swap (a
//! file that fails to load is logged and shown in `/tasks`, never replaces a good model; an
//! unchanged digest is a no-op; an empty task swaps under its write gate; a task that holds videos
//! is re-embedded first, see below; a task whose file changed while the server was down comes back
//! serving its old generation while it is re-embedded). Does not own reading or validating
//! adapter files: that is an [`AdapterLoader`] (the `adapter` module's `AdapterFile`, plugged in
//! by the server).
//!
//! A new adapter for a task that holds videos starts a background re-embedding into a new
//! generation (`reembed`); without a configured re-embedder it is refused and the old keeps serving.

use super::{valid_task_name, Generation, ModelInfo, Registry, Task, ADAPTER_COPY, CLIP_TASK};
use crate::encode::TaskModel;
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads and validates one adapter file against the loaded backbone.
pub trait AdapterLoader: Send + Sync {
    fn load(&self, task: &str, path: &Path) -> Result<(Arc<dyn TaskModel>, ModelInfo), String>;
    /// Writes the validated bytes of the loaded adapter `digest` to `dst` (durably), so that a
    /// generation keeps the adapter its vectors were made with.
    fn keep_copy(&self, digest: &str, dst: &Path) -> Result<(), String>;
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
        let outcome = match self.get(task) {
            Some(t) => self.swap(loader, &t, model, info),
            None => self.bring_up(loader, task, model, info),
        };
        match outcome {
            Ok(o) => {
                if matches!(o, Outcome::Added { .. } | Outcome::Reembedding { .. }) {
                    self.rejected.write().remove(task);
                }
                o
            }
            Err(m) => reject(m),
        }
    }

    /// Opens generation `number` for `model`, with the generation's own copy of the adapter.
    fn adapter_generation(
        &self,
        loader: &dyn AdapterLoader,
        task: &str,
        number: u64,
        fresh: bool,
        model: Arc<dyn TaskModel>,
        info: ModelInfo,
    ) -> Result<Generation, String> {
        let digest = model.digest().to_string();
        let t0 = Instant::now();
        let gen = match fresh {
            true => self.fresh_generation(task, number, model, info),
            false => self.open_generation(task, number, model, info),
        }
        .map_err(|e| e.to_string())?;
        let t1 = t0.elapsed();
        let copy = self.generation_dir(task, number).join(ADAPTER_COPY);
        if !copy.exists() {
            loader.keep_copy(&digest, &copy)?;
        }
        tracing::debug!(
            task,
            generation = number,
            open_ms = t1.as_secs_f64() * 1e3,
            copy_ms = (t0.elapsed() - t1).as_secs_f64() * 1e3,
            "generation opened with its adapter copy"
        );
        Ok(gen)
    }

    /// A new model for a task in service: an empty task swaps at once (under the write gate, so
    /// that no upload lands in the old generation meanwhile); one that holds videos is
    /// re-embedded into the next generation in the background.
    fn swap(
        self: &Arc<Self>,
        loader: &dyn AdapterLoader,
        t: &Arc<Task>,
        model: Arc<dyn TaskModel>,
        info: ModelInfo,
    ) -> Result<Outcome, String> {
        let task = t.name.as_str();
        if t.current().model.digest() == model.digest() {
            *t.last_error.write() = None;
            return Ok(Outcome::Unchanged);
        }
        {
            let mut p = t.pending.lock();
            if let Some(n) = *p {
                return Err(format!(
                    "generation {n} is still being re-embedded; try again when it is done"
                ));
            }
            let gate = t.write_gate.write();
            let cur = t.current();
            let next = cur.number + 1;
            if cur.store.count().map_err(|e| e.to_string())? == 0 {
                let gen = self.adapter_generation(loader, task, next, true, model, info)?;
                let installed = self.cutover(t, gen).map_err(|e| e.to_string())?;
                drop(gate);
                tracing::info!(task, generation = next, installed, "adapter swapped");
                return Ok(Outcome::Swapped { generation: next });
            }
            *p = Some(next);
        }
        let cur = t.current();
        let next = cur.number + 1;
        let Some(embedder) = self.reembedder.read().clone() else {
            *t.pending.lock() = None;
            return Err(format!(
                "task holds {} videos and no re-embedder is configured; generation {} keeps serving",
                cur.store.count().map_err(|e| e.to_string())?,
                cur.number
            ));
        };
        let gen = match self.adapter_generation(loader, task, next, true, model, info) {
            Ok(g) => g,
            Err(e) => {
                *t.pending.lock() = None;
                return Err(e);
            }
        };
        super::reembed::start(self.clone(), t.clone(), gen, embedder);
        Ok(Outcome::Reembedding { generation: next })
    }

    /// A task coming into service (at start, or its file added again). Its recorded generation
    /// is reused when it holds nothing or vectors of this model. When it holds vectors of another
    /// model (the file changed while the server was down, or a crash cut a re-embedding short),
    /// the old generation serves with its own adapter copy while the videos are re-embedded, so
    /// no video drops out of search; without a usable copy the videos are carried over before the
    /// task comes into service.
    fn bring_up(
        self: &Arc<Self>,
        loader: &dyn AdapterLoader,
        task: &str,
        model: Arc<dyn TaskModel>,
        info: ModelInfo,
    ) -> Result<Outcome, String> {
        let Some(n) = self.recorded_generation(task).map_err(|e| e.to_string())? else {
            let gen = self.adapter_generation(loader, task, 0, true, model, info)?;
            self.install(task, gen).map_err(|e| e.to_string())?;
            tracing::info!(task, generation = 0, "task added");
            return Ok(Outcome::Added { generation: 0 });
        };
        self.prune_generations(task, n);
        let held = self
            .open_existing(task, n)
            .and_then(|s| {
                s.digest().map_err(|source| super::RegistryError::Store {
                    task: task.to_string(),
                    source,
                })
            })
            .map_err(|e| format!("generation {n}: {e}"))?;
        let Some(old_digest) = held.filter(|d| d != model.digest()) else {
            let gen = self.adapter_generation(loader, task, n, false, model, info)?;
            self.install(task, gen).map_err(|e| e.to_string())?;
            tracing::info!(task, generation = n, "task added");
            return Ok(Outcome::Added { generation: n });
        };
        let copy = self.generation_dir(task, n).join(ADAPTER_COPY);
        let old_model =
            loader
                .load(task, &copy)
                .and_then(|(m, i)| match m.digest() == old_digest {
                    true => Ok((m, i)),
                    false => Err(format!("its adapter copy has digest {}", m.digest())),
                });
        match old_model {
            Ok((old_model, old_info)) => {
                let gen = self
                    .open_generation(task, n, old_model, old_info)
                    .map_err(|e| e.to_string())?;
                self.install(task, gen).map_err(|e| e.to_string())?;
                tracing::info!(task, generation = n, "task added with the adapter its videos were made with; re-embedding for the new file");
                let t = self.get(task).ok_or("the task left service meanwhile")?;
                self.swap(loader, &t, model, info)
            }
            Err(why) => {
                tracing::warn!(task, generation = n, %why, "the adapter of the stored videos cannot be loaded; carrying them over before the task is served");
                let embedder = self.reembedder.read().clone().ok_or(
                    "the task holds videos of another adapter and no re-embedder is configured",
                )?;
                let old = self
                    .open_existing(task, n)
                    .map_err(|e| format!("generation {n}: {e}"))?;
                let gen = self.adapter_generation(loader, task, n + 1, true, model, info)?;
                if let Err(failures) =
                    super::reembed::carry_over(old.as_ref(), &gen, embedder.as_ref())
                {
                    gen.store.retire();
                    return Err(format!(
                        "{} videos of generation {n} could not be re-embedded ({}); the task stays out of service",
                        failures.len(),
                        failures.join("; ")
                    ));
                }
                self.install(task, gen).map_err(|e| e.to_string())?;
                old.retire();
                tracing::info!(task, generation = n + 1, "videos carried over; task added");
                Ok(Outcome::Added { generation: n + 1 })
            }
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
/// event for the file (the debounce included, when it applied: what an operator waits for).
pub type OnOutcome = Arc<dyn Fn(&str, &Outcome, Duration) + Send + Sync>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct AdapterWatcher {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

/// How a path in the folder changed.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Change {
    /// Renamed into place: the file is whole (a rename is atomic), so it is loaded at once.
    Arrived,
    /// Created, written, removed or renamed away: it may still be being written, so it is loaded
    /// once no event has come for it for the debounce.
    Touched,
}

/// How each event kind is handled: `None` for the ones that never change an adapter.
fn change_of(kind: &EventKind) -> Option<Change> {
    match kind {
        // Reading a file (ours included: loading it) raises access events, and a chmod raises
        // metadata ones; neither changes the adapter, and reacting to our own reads would loop.
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Change::Arrived),
        _ => Some(Change::Touched),
    }
}

/// The paths a watcher event names, with how each changed.
fn changes(ev: notify::Event) -> Vec<(PathBuf, Change)> {
    let Some(change) = change_of(&ev.kind) else {
        return Vec::new();
    };
    match ev.kind {
        // [from, to] of one rename: the source is gone, the destination arrived (inotify also
        // reports each alone; the watcher thread folds the repeats).
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if ev.paths.len() == 2 => {
            let mut p = ev.paths.into_iter();
            let from = p.next().map(|f| (f, Change::Touched));
            let to = p.next().map(|t| (t, Change::Arrived));
            from.into_iter().chain(to).collect()
        }
        _ => ev.paths.into_iter().map(|p| (p, change)).collect(),
    }
}

/// The files waiting for their debounce, and when each was first and last touched.
struct Debounce {
    delay: Duration,
    pending: BTreeMap<PathBuf, (Instant, Instant)>,
}

impl Debounce {
    /// How long the thread may sleep before the next file is due.
    fn wait(&self, now: Instant) -> Duration {
        self.pending
            .values()
            .map(|(_, last)| (*last + self.delay).saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Notes one change; returns when the file was first seen if it is to be loaded now.
    fn note(&mut self, path: PathBuf, change: Change, now: Instant) -> Option<(PathBuf, Instant)> {
        match change {
            Change::Arrived => {
                // What was pending for the path is superseded by the whole file now there.
                let first = self.pending.remove(&path).map_or(now, |(first, _)| first);
                Some((path, first))
            }
            Change::Touched => {
                self.pending
                    .entry(path)
                    .and_modify(|(_, last)| *last = now)
                    .or_insert((now, now));
                None
            }
        }
    }

    /// The files whose debounce ran out by `now`, with when each was first seen.
    fn due(&mut self, now: Instant) -> Vec<(PathBuf, Instant)> {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (_, last))| *last + self.delay <= now)
            .map(|(p, _)| p.clone())
            .collect();
        due.into_iter()
            .filter_map(|p| self.pending.remove(&p).map(|(first, _)| (p, first)))
            .collect()
    }
}

/// Watches `dir` and applies every change to `registry` on a background thread. A file renamed
/// into the folder is loaded as soon as its event arrives; any other change (a file created or
/// written in place, removed, renamed away) waits until `debounce` has passed without an event
/// for that file, so a file being written is read once, whole.
pub fn watch(
    registry: Arc<Registry>,
    loader: Arc<dyn AdapterLoader>,
    dir: &Path,
    debounce: Duration,
    on_outcome: OnOutcome,
) -> notify::Result<AdapterWatcher> {
    std::fs::create_dir_all(dir).map_err(notify::Error::io)?;
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Change)>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            for c in changes(ev) {
                let _ = tx.send(c);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let thread = std::thread::Builder::new()
        .name("adapter-watch".into())
        .spawn(move || {
            let mut debounce = Debounce {
                delay: debounce,
                pending: BTreeMap::new(),
            };
            let apply = |path: &Path, first: Instant| {
                if let Some(task) = task_of_path(path) {
                    let waited_ms = first.elapsed().as_secs_f64() * 1e3;
                    tracing::debug!(task, waited_ms, "applying a change of the adapter folder");
                    let o = registry.apply_file(loader.as_ref(), &task, path);
                    on_outcome(&task, &o, first.elapsed());
                }
            };
            loop {
                let mut now_ready: Vec<(PathBuf, Instant)> = Vec::new();
                match rx.recv_timeout(debounce.wait(Instant::now())) {
                    Ok((p, c)) => {
                        // Take every event already queued with it, so one rename (reported
                        // twice) is loaded once.
                        let mut batch = vec![(p, c)];
                        batch.extend(rx.try_iter());
                        let now = Instant::now();
                        for (p, c) in batch {
                            if let Some((p, first)) = debounce.note(p, c, now) {
                                if !now_ready.iter().any(|(q, _)| *q == p) {
                                    now_ready.push((p, first));
                                }
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                for (p, first) in now_ready {
                    apply(&p, first);
                }
                for (p, first) in debounce.due(Instant::now()) {
                    apply(&p, first);
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(AdapterWatcher {
        _watcher: watcher,
        _thread: thread,
    })
}

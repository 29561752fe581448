//! Re-embedding a task into a new generation when its adapter changes.
//!
//! Owns: copying every stored video (original upload, thumbnail, meta) of the current generation
//! into the new one with a vector from the new model, catching up with writes that land meanwhile,
//! and the cutover. A video that fails to re-embed is retried; one that keeps failing stops the
//! cutover (the old generation keeps serving) rather than silently leaving the video out. The old generation answers every query until the new one is complete; the last
//! catch-up pass runs with the task's write gate held, so the swap loses no acknowledged write.
//! Does not own how a video becomes a vector: that is a [`Reembedder`] (decode + encode, from the
//! server).

use super::{Generation, Registry, Task};
use crate::encode::TaskModel;
use crate::store::BlobKind;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Turns a stored original upload into a vector of `model` (decode, then encode).
pub trait Reembedder: Send + Sync {
    fn embed(&self, model: &Arc<dyn TaskModel>, original: &Path) -> Result<Vec<f32>, String>;
}

static COPY_SEQ: AtomicU64 = AtomicU64::new(0);

/// Tries per video before it is left out of the new generation.
const MAX_ATTEMPTS: u32 = 3;

/// Copies `src` to a fresh file under `tmp` (same file system as the stores) for `put_blob`.
fn copy_for_put(tmp: &Path, src: &Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(tmp)?;
    let n = COPY_SEQ.fetch_add(1, Ordering::Relaxed);
    let dst = tmp.join(format!("reembed-{}-{n}", std::process::id()));
    std::fs::copy(src, &dst)?;
    std::fs::File::open(&dst)?.sync_all()?;
    Ok(dst)
}

/// One pass: brings `new` up to date with `old`. `done` maps id -> the `added_ms` of the old
/// record it was made from. Returns how many ids changed.
fn sync_pass(
    registry: &Registry,
    old: &Generation,
    new: &Generation,
    done: &mut HashMap<String, u64>,
    embedder: &dyn Reembedder,
    attempts: &mut HashMap<String, u32>,
    failures: &mut Vec<String>,
) -> usize {
    let mut changed = 0;
    let ids = old.store.ids();
    for id in &ids {
        let Some(rec) = old.store.get(id) else {
            continue;
        };
        if done.get(id) == Some(&rec.added_ms) {
            continue;
        }
        changed += 1;
        let result = (|| -> Result<(), String> {
            let orig = old
                .store
                .blob_path(id, BlobKind::Original)
                .ok_or("the original upload is missing")?;
            let vector = embedder.embed(&new.model, &orig)?;
            let tmp = registry.tmp_dir();
            for kind in BlobKind::ALL {
                if let Some(src) = old.store.blob_path(id, kind) {
                    let copy = copy_for_put(&tmp, &src).map_err(|e| e.to_string())?;
                    new.store
                        .put_blob(id, kind, &copy)
                        .map_err(|e| e.to_string())?;
                }
            }
            new.store
                .add(id, &vector, new.model.digest(), rec.meta.clone())
                .map_err(|e| e.to_string())
        })();
        match result {
            Ok(()) => {
                done.insert(id.clone(), rec.added_ms);
            }
            // The original decoded once already, so a failure is most likely transient (a queue
            // full of live uploads, a slow decode under load): later passes try again, and only
            // a video that fails every time is left out of the new generation.
            Err(e) if *attempts.entry(id.clone()).or_default() + 1 < MAX_ATTEMPTS => {
                *attempts.get_mut(id).expect("inserted above") += 1;
                tracing::warn!(id, error = %e, "re-embedding a video failed; will retry");
            }
            Err(e) => {
                tracing::error!(id, error = %e, "re-embedding a video failed {MAX_ATTEMPTS} times; it is left out");
                done.insert(id.clone(), rec.added_ms);
                failures.push(format!("{id}: {e}"));
            }
        }
    }
    let live: std::collections::HashSet<&String> = ids.iter().collect();
    let gone: Vec<String> = done.keys().filter(|k| !live.contains(k)).cloned().collect();
    for id in gone {
        changed += 1;
        let _ = new.store.delete(&id);
        done.remove(&id);
    }
    changed
}

/// Starts re-embedding `task` into `new` on a background thread; cuts over when complete.
pub fn start(
    registry: Arc<Registry>,
    task: Arc<Task>,
    new: Generation,
    embedder: Arc<dyn Reembedder>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("reembed-{}", task.name))
        .spawn(move || {
            let t0 = std::time::Instant::now();
            let old = task.current();
            let mut done = HashMap::new();
            let mut attempts = HashMap::new();
            let mut failures = Vec::new();
            let mut pass = |done: &mut HashMap<String, u64>| {
                sync_pass(&registry, &old, &new, done, embedder.as_ref(), &mut attempts, &mut failures)
            };
            // Passes without the gate until one changes little, then the last ones with it
            // (retrying what failed, so a transient failure does not drop a video).
            for _ in 0..5 {
                if pass(&mut done) <= 2 {
                    break;
                }
            }
            let number = new.number;
            let gate = task.write_gate.write();
            for _ in 0..MAX_ATTEMPTS {
                if pass(&mut done) == 0 {
                    break;
                }
            }
            if !failures.is_empty() {
                // Cutting over would drop these videos from search: keep the complete old
                // generation instead, and say which videos stopped the update.
                drop(gate);
                let dir = registry.task_dir(&task.name).join(format!("gen-{number}"));
                drop(new);
                let _ = std::fs::remove_dir_all(&dir);
                *task.pending.lock() = None;
                let m = format!(
                    "the new adapter was not installed: {} videos could not be re-embedded ({}); generation {} keeps serving. Delete or re-upload them, then replace the file again",
                    failures.len(),
                    failures.join("; "),
                    old.number
                );
                tracing::error!(task = %task.name, generation = number, "{m}");
                *task.last_error.write() = Some(m);
                return;
            }
            let videos = new.store.len();
            let result = registry.install(&task.name, new);
            drop(gate);
            *task.pending.lock() = None;
            match result {
                Ok(_) => {
                    tracing::info!(task = %task.name, generation = number, videos, ms = t0.elapsed().as_millis() as u64, "re-embedded; cut over")
                }
                Err(e) => {
                    tracing::error!(task = %task.name, error = %e, "cutover failed; the old generation keeps serving");
                    *task.last_error.write() = Some(e.to_string());
                }
            }
        })
        .expect("spawning the re-embedding thread")
}

//! Re-embedding a task into a new generation when its adapter changes.
//!
//! Owns: copying every stored video (original upload, thumbnail, meta) of the current generation
//! into the new one with a vector from the new model (the files through the store's
//! `copy_blobs_from`, which owns their durability), catching up with writes that land meanwhile,
//! and the cutover. A video that fails to re-embed (or a delete that fails to carry over) is
//! retried; one that keeps failing stops the cutover (the old generation keeps serving) rather
//! than silently leaving the video out or bringing a deleted one back. The old generation answers
//! every query until the new one is complete; the last catch-up pass runs with the task's write
//! gate held, so the swap loses no acknowledged write. A task taken out of service meanwhile (its
//! adapter file removed) is not brought back: the finished generation is discarded.
//! Does not own how a video becomes a vector: that is a [`Reembedder`] (decode + encode, from the
//! server).

use super::{Generation, Registry, Task};
use crate::encode::{EncodeError, TaskModel};
use crate::store::{moments, BlobKind, BlobVersion, NewRecord, StoreError, VectorStore};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Turns a stored original upload into a vector of `model` (decode, then encode).
pub trait Reembedder: Send + Sync {
    fn embed(&self, model: &Arc<dyn TaskModel>, original: &Path) -> Result<Vec<f32>, ReembedError>;
    /// One vector per span (seconds from the start) of a video stored as moments
    /// (`store::moments`), in order.
    fn embed_spans(
        &self,
        _model: &Arc<dyn TaskModel>,
        _original: &Path,
        _spans: &[(f64, f64)],
    ) -> Result<Vec<Vec<f32>>, ReembedError> {
        Err(ReembedError::Decode(
            "this re-embedder cannot cut videos into segments".into(),
        ))
    }
}

/// Why one video could not be carried over. Its text is what `last_error` shows, so each variant
/// reads as its source does.
#[derive(Debug, thiserror::Error)]
pub enum ReembedError {
    #[error("the original upload is missing")]
    MissingOriginal,
    /// The original did not decode (the decoder is the server's, so its error type is too).
    #[error(transparent)]
    Decode(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tries per video before it stops the cutover.
const MAX_ATTEMPTS: u32 = 3;
/// Passes without the write gate before the gated ones.
const UNGATED_PASSES: usize = 5;
/// A pass that changes at most this many videos is close enough to take the gate for the rest.
const SETTLED: usize = 2;

/// The state of one carry-over from an old store into a new generation.
struct CarryOver<'a> {
    old: &'a dyn VectorStore,
    new: &'a Generation,
    embedder: &'a dyn Reembedder,
    /// id -> the `added_ms` of the old record it was made from.
    done: HashMap<String, u64>,
    attempts: HashMap<String, u32>,
    failures: Vec<String>,
}

impl CarryOver<'_> {
    fn copy_one(&self, id: &str, meta: serde_json::Value) -> Result<(), ReembedError> {
        let orig = self
            .old
            .blob_path(id, BlobKind::Original)?
            .ok_or(ReembedError::MissingOriginal)?;
        // A video stored as moments keeps its segments: the same spans, the same upload token.
        let layout = moments::Layout::of(&meta);
        let vectors = match &layout {
            Some(l) => self
                .embedder
                .embed_spans(&self.new.model, &orig, &l.spans)?,
            None => vec![self.embedder.embed(&self.new.model, &orig)?],
        };
        let blobs = BlobVersion::fresh();
        // The store copies the files (durably, beside their place) from the old generation.
        self.new.store.copy_blobs_from(self.old, id, blobs)?;
        let records = match &layout {
            Some(l) => moments::records(id, meta, blobs, l, vectors),
            None => vectors
                .into_iter()
                .map(|vector| NewRecord {
                    id: id.to_string(),
                    vector,
                    meta: meta.clone(),
                    blobs,
                })
                .collect(),
        };
        // An earlier pass may have copied an upload of this id with more segments.
        let before = self.new.store.get(id)?;
        let stale = moments::stale_keys(id, before.as_ref().map(|r| &r.meta), records.len());
        self.new
            .store
            .add_records(self.new.model.digest(), records)?;
        for key in stale {
            self.new.store.delete(&key)?;
        }
        Ok(())
    }

    /// Counts a failed try of `id`; after [`MAX_ATTEMPTS`] it is recorded as a failure that
    /// stops the cutover. Returns whether it may be tried again.
    fn failed(&mut self, id: &str, e: ReembedError) -> bool {
        let n = self.attempts.entry(id.to_string()).or_default();
        *n += 1;
        if *n < MAX_ATTEMPTS {
            tracing::warn!(id, error = %e, "carrying a video over failed; will retry");
            true
        } else {
            tracing::error!(id, error = %e, "carrying a video over failed {MAX_ATTEMPTS} times");
            self.failures.push(format!("{id}: {e}"));
            false
        }
    }

    /// One pass: brings the new generation up to date with the old store. Returns how many ids
    /// changed.
    fn pass(&mut self) -> usize {
        let mut changed = 0;
        let ids = match self.old.ids() {
            Ok(ids) => ids,
            // The old store cannot be listed (a remote one unreachable): count it as one failed
            // try of the whole pass, so that it stops the cutover rather than skipping videos.
            Err(e) => {
                self.failed("<listing the old generation>", e.into());
                return 1;
            }
        };
        // Segments are carried over with their video's record.
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| !moments::is_segment_key(id))
            .collect();
        for id in &ids {
            let rec = match self.old.get(id) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    changed += 1;
                    self.failed(id, e.into());
                    continue;
                }
            };
            if self.done.get(id) == Some(&rec.added_ms) {
                continue;
            }
            changed += 1;
            match self.copy_one(id, rec.meta) {
                Ok(()) => {
                    self.done.insert(id.clone(), rec.added_ms);
                }
                // The original decoded once already, so a failure is most likely transient (a
                // queue full of live uploads, a slow decode under load): later passes try again.
                Err(e) => {
                    if !self.failed(id, e) {
                        self.done.insert(id.clone(), rec.added_ms);
                    }
                }
            }
        }
        let live: std::collections::HashSet<&String> = ids.iter().collect();
        let gone: Vec<String> = self
            .done
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for id in gone {
            changed += 1;
            // A delete that does not reach the new generation would bring the video back at the
            // cutover: it is retried, and one that keeps failing stops the cutover.
            match moments::delete_video(self.new.store.as_ref(), &id) {
                Ok(_) => {
                    self.done.remove(&id);
                }
                Err(e) => {
                    if !self.failed(&id, e.into()) {
                        self.done.remove(&id);
                    }
                }
            }
        }
        changed
    }

    /// Runs gated passes until one changes nothing (or the tries run out).
    fn finish(&mut self) {
        for _ in 0..MAX_ATTEMPTS {
            if self.pass() == 0 {
                break;
            }
        }
    }
}

/// Copies every video of `old` into `new` in this thread, with nothing else writing to either
/// (a task that is not in service yet). Returns the videos that could not be carried over.
pub fn carry_over(
    old: &dyn VectorStore,
    new: &Generation,
    embedder: &dyn Reembedder,
) -> Result<(), Vec<String>> {
    let mut c = CarryOver {
        old,
        new,
        embedder,
        done: HashMap::new(),
        attempts: HashMap::new(),
        failures: Vec::new(),
    };
    c.finish();
    match c.failures.is_empty() {
        true => Ok(()),
        false => Err(c.failures),
    }
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
            let number = new.number;
            let mut c = CarryOver {
                old: old.store.as_ref(),
                new: &new,
                embedder: embedder.as_ref(),
                done: HashMap::new(),
                attempts: HashMap::new(),
                failures: Vec::new(),
            };
            // Passes without the gate until one changes little, then the last ones with it.
            for _ in 0..UNGATED_PASSES {
                if c.pass() <= SETTLED {
                    break;
                }
            }
            let gate = task.write_gate.write();
            c.finish();
            let failures = std::mem::take(&mut c.failures);
            drop(c);
            if !failures.is_empty() {
                // Cutting over would drop these videos from search (or bring deleted ones back):
                // keep the complete old generation instead, and say which videos stopped it.
                drop(gate);
                new.store.retire();
                drop(new);
                *task.pending.lock() = None;
                let m = format!(
                    "the new adapter was not installed: {} videos could not be carried over ({}); generation {} keeps serving. Delete or re-upload them, then replace the file again",
                    failures.len(),
                    failures.join("; "),
                    old.number
                );
                tracing::error!(task = %task.name, generation = number, "{m}");
                *task.last_error.write() = Some(m);
                return;
            }
            let videos = new.store.count().unwrap_or_default();
            let result = registry.cutover(&task, new);
            drop(gate);
            *task.pending.lock() = None;
            match result {
                Ok(true) => {
                    tracing::info!(task = %task.name, generation = number, videos, ms = t0.elapsed().as_millis() as u64, "re-embedded; cut over")
                }
                Ok(false) => {
                    tracing::info!(task = %task.name, generation = number, "re-embedded, but the task left service meanwhile; discarded")
                }
                Err(e) => {
                    tracing::error!(task = %task.name, error = %e, "cutover failed; the old generation keeps serving");
                    *task.last_error.write() = Some(e.to_string());
                }
            }
        })
        .expect("spawning the re-embedding thread")
}

//! The per-task vector store: durable ids, vectors, metadata and blobs, and search over them.
//!
//! Owns one directory per task: the write-ahead log (`wal`, the source of truth), snapshots
//! derived from it (`snapshot`), the in-memory index with exact and HNSW search (`index`) and
//! the video files (`blob`). Modelled on Qdrant: every change is logged and fsynced before it is
//! acknowledged; snapshots are written beside and renamed into place; opening loads the newest
//! intact snapshot and replays the log after it. One store holds vectors of one adapter digest.
//! Does not own embedding, adapters, or which tasks exist (`encode`, `registry`).
//!
//! Concurrency: any number of searches run in parallel with one writer. Slow work (building the
//! HNSW graph, compaction, snapshots) runs on background threads and never blocks searches;
//! until a graph is ready, search falls back to the exact scan.

mod backend;
mod blob;
mod check;
mod codec;
mod config;
pub mod durable;
mod filter;
mod index;
pub mod milvus;
mod snapshot;
mod wal;

use std::collections::HashSet;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use thiserror::Error;

pub use backend::{EmbeddedBackend, StoreBackend, VectorStore};
pub use blob::BlobKind;
pub use check::{check, repair, CheckReport, RepairReport};
pub use config::{ConfigError, StoreConfig, MAX_HNSW_M};
pub use filter::{Filter, FilterError};
pub use index::dot;
use index::{new_graph, normalize, Index};
use wal::{Op, Wal};

/// How many snapshots to keep; the older one (and the log after it) is the fallback if the
/// newest cannot be read.
const KEEP_SNAPSHOTS: usize = 2;
/// Graph builds insert in chunks so that closing the store can interrupt them.
const BUILD_CHUNK: usize = 4096;
/// A rebuild copies newly added slots outside the locks until at most this many are left.
const CATCH_UP_UNDER_LOCK: usize = 256;
/// 10 ms apart: 1 s in all.
const LOCK_RETRIES: usize = 100;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] io::Error),
    #[error("invalid store config: {0}")]
    Config(#[from] ConfigError),
    #[error("vector has dimension {got}, store expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("vector is zero or has non-finite values")]
    InvalidVector,
    #[error("id must be non-empty")]
    EmptyId,
    #[error("adapter digest must be non-empty")]
    EmptyDigest,
    #[error("store holds vectors of adapter {store}, got one from {got}")]
    DigestMismatch { store: String, got: String },
    #[error("store data is damaged: {0}")]
    Corrupt(String),
    /// Refused before anything was written: the log could not read the record back as given.
    #[error("the record cannot be stored: {0}")]
    Unstorable(String),
    #[error("an earlier write failed; reopen the store to recover from its log")]
    Poisoned,
    #[error("store directory {0} is open in another process or handle")]
    Locked(PathBuf),
    /// A remote backend could not be reached or did not answer in time; nothing was changed
    /// that was acknowledged. Retry later.
    #[error("the vector store is unavailable: {0}")]
    Unavailable(String),
    /// A remote backend answered and refused the request.
    #[error("the vector store refused the request: {0}")]
    Backend(String),
    /// The generation asked for does not exist in the backend.
    #[error("generation {0} does not exist in the vector store")]
    MissingGeneration(String),
}

/// Which version of an id's blobs (original upload, thumbnail) a record owns. A re-upload writes
/// its files under a fresh version, so until its log record is durable the old record still has
/// its own files; the old version is removed once the new record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobVersion(u64);

impl BlobVersion {
    /// Records without versioned blobs (vectors added without files, and stores written before
    /// versions existed).
    pub const UNVERSIONED: BlobVersion = BlobVersion(0);

    /// A version no other upload will pick (random, so two uploads of one id never share one).
    pub fn fresh() -> BlobVersion {
        BlobVersion(rand::random::<u64>().max(1))
    }

    /// The version as a backend stores it.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(v: u64) -> BlobVersion {
        BlobVersion(v)
    }
}

/// What the store keeps about a live id.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub adapter_digest: String,
    /// Milliseconds since the Unix epoch when the vector was added.
    pub added_ms: u64,
    pub blobs: BlobVersion,
    pub meta: serde_json::Value,
}

/// One vector to add, with the blob version its files were put under.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub meta: serde_json::Value,
    pub blobs: BlobVersion,
}

/// One search result; `score` is the dot product of unit vectors (cosine similarity).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub meta: serde_json::Value,
}

/// How `search_with` should search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Exact below `exact_threshold` live vectors, HNSW at or above it once the graph is ready.
    Auto,
    /// Always the exact scan.
    Exact,
    /// The HNSW graph with this `ef_search`; exact when no graph is built.
    Graph { ef_search: usize },
}

struct Writer {
    wal: Wal,
    since_snapshot: u64,
    last_snapshot_seq: u64,
}

struct Inner {
    dir: PathBuf,
    blob_root: PathBuf,
    dim: usize,
    config: StoreConfig,
    /// Serialises writers; taken before `index` whenever both are needed.
    writer: Mutex<Writer>,
    index: RwLock<Index>,
    rebuild_lock: Mutex<()>,
    rebuild_pending: AtomicBool,
    snapshot_lock: Mutex<()>,
    snapshot_pending: AtomicBool,
    closing: AtomicBool,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Set once nothing will read this store again (a replaced generation): the directory is
    /// removed when the last handle is gone.
    remove_when_closed: AtomicBool,
    /// Held for the store's lifetime: two processes appending to one log would corrupt it.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.remove_when_closed.load(Ordering::Acquire) {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => tracing::info!(dir = %self.dir.display(), "removed a retired store"),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a retired store")
                }
            }
        }
    }
}

/// One task's store. `Send + Sync`: share it behind an `Arc`.
pub struct TaskStore {
    inner: Arc<Inner>,
}

pub(crate) use durable::sync_dir;

/// Takes the directory's lock. Retries for a moment: a handle closed just now can still be held
/// by a child process forked elsewhere in this process that has not reached `exec` yet.
pub fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let lock = File::create(dir.join("LOCK"))?;
    for _ in 0..LOCK_RETRIES {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(10)),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    Err(StoreError::Locked(dir.to_path_buf()))
}

/// Test-only fault injection: directories whose next deletes fail, with how many are left.
/// Checked behind an atomic so that the write path pays nothing while none is set.
static FAIL_DELETES: Mutex<Vec<(PathBuf, u32)>> = Mutex::new(Vec::new());
static ANY_FAILPOINT: AtomicBool = AtomicBool::new(false);

/// Makes the next `n` deletes in the store at `dir` fail with an I/O error before anything is
/// written, so tests can drive the paths that handle a failed delete (a re-embedding's carry-over,
/// say). Not for production use.
#[doc(hidden)]
pub fn fail_next_deletes(dir: &Path, n: u32) {
    let mut f = FAIL_DELETES.lock();
    f.retain(|(d, _)| d != dir);
    f.push((dir.to_path_buf(), n));
    ANY_FAILPOINT.store(true, Ordering::Release);
}

fn injected_delete_failure(dir: &Path) -> Result<(), StoreError> {
    if !ANY_FAILPOINT.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut f = FAIL_DELETES.lock();
    match f.iter_mut().find(|(d, n)| d == dir && *n > 0) {
        Some((_, n)) => {
            *n -= 1;
            Err(StoreError::Io(io::Error::other("injected delete failure")))
        }
        None => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TaskStore {
    /// Opens (or creates) the store in `dir` for `dim`-dimensional vectors: loads the newest
    /// intact snapshot, replays the log after it (dropping a torn tail), and removes blobs of ids
    /// that are not live. A graph, when needed, is built in the background.
    pub fn open(dir: &Path, dim: usize, config: StoreConfig) -> Result<TaskStore, StoreError> {
        config.validate()?;
        if dim == 0 {
            return Err(StoreError::Dimension {
                expected: 1,
                got: 0,
            });
        }
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;

        let mut idx = Index::new(dim);
        let mut snap_seq = 0;
        if let Some(snap) = snapshot::load_newest(dir)? {
            if snap.dim != dim {
                return Err(StoreError::Dimension {
                    expected: dim,
                    got: snap.dim,
                });
            }
            snap_seq = snap.seq;
            let digest = snap.digest.unwrap_or_default();
            for r in snap.records {
                idx.insert(&r.id, &digest, r.added_ms, r.blobs, &r.vector, r.meta);
            }
        }
        let wal = Wal::open(dir, snap_seq, |seq, op| replay(&mut idx, seq, op))?;
        let blob_root = dir.join("blobs");
        let live: HashSet<(String, u64)> = idx
            .entries
            .iter()
            .map(|(k, e)| (k.to_string(), e.blobs))
            .collect();
        let swept = blob::sweep(&blob_root, &live)?;
        if swept > 0 {
            tracing::info!(dir = %dir.display(), swept, "removed blobs of ids that are not live");
        }
        tracing::info!(dir = %dir.display(), len = idx.len(), seq = wal.last_seq(), "store opened");

        let since_snapshot = wal.last_seq() - snap_seq;
        let store = TaskStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                blob_root,
                dim,
                config,
                writer: Mutex::new(Writer {
                    wal,
                    since_snapshot,
                    last_snapshot_seq: snap_seq,
                }),
                index: RwLock::new(idx),
                rebuild_lock: Mutex::new(()),
                rebuild_pending: AtomicBool::new(false),
                snapshot_lock: Mutex::new(()),
                snapshot_pending: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                background: Mutex::new(Vec::new()),
                remove_when_closed: AtomicBool::new(false),
                _lock: lock,
            }),
        };
        store.inner.schedule_maintenance();
        Ok(store)
    }

    pub fn dim(&self) -> usize {
        self.inner.dim
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Adds or replaces `id`. Returns only after the log record is fsynced.
    pub fn add(
        &self,
        id: &str,
        vector: &[f32],
        adapter_digest: &str,
        meta: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.add_batch(adapter_digest, vec![(id.to_owned(), vector.to_vec(), meta)])
    }

    /// Adds or replaces many ids with one fsync; all or none are accepted.
    pub fn add_batch(
        &self,
        adapter_digest: &str,
        items: Vec<(String, Vec<f32>, serde_json::Value)>,
    ) -> Result<(), StoreError> {
        let records = items
            .into_iter()
            .map(|(id, vector, meta)| NewRecord {
                id,
                vector,
                meta,
                blobs: BlobVersion::UNVERSIONED,
            })
            .collect();
        self.add_records(adapter_digest, records)
    }

    /// Adds or replaces many ids, each with the blob version its files were put under, with one
    /// fsync; all or none are accepted. Returns only after the log record is fsynced; a replaced
    /// record's blobs of another version are removed after that.
    pub fn add_records(
        &self,
        adapter_digest: &str,
        items: Vec<NewRecord>,
    ) -> Result<(), StoreError> {
        if adapter_digest.is_empty() {
            return Err(StoreError::EmptyDigest);
        }
        let added_ms = now_ms();
        let mut ops = Vec::with_capacity(items.len());
        for NewRecord {
            id,
            mut vector,
            meta,
            blobs,
        } in items
        {
            if id.is_empty() {
                return Err(StoreError::EmptyId);
            }
            self.check_dim(vector.len())?;
            if !normalize(&mut vector) {
                return Err(StoreError::InvalidVector);
            }
            ops.push(Op::Add {
                id,
                digest: adapter_digest.to_owned(),
                added_ms,
                blobs: blobs.0,
                vector,
                meta,
            });
        }
        if ops.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut w = inner.writer.lock();
        {
            let idx = inner.index.read();
            if let Some(d) = idx.digest.as_deref().filter(|d| *d != adapter_digest) {
                return Err(StoreError::DigestMismatch {
                    store: d.to_owned(),
                    got: adapter_digest.to_owned(),
                });
            }
        }
        w.wal.append(&ops)?;
        w.since_snapshot += ops.len() as u64;
        let mut superseded = Vec::new();
        let (graph, new_slots) = {
            let mut idx = inner.index.write();
            let mut slots = Vec::with_capacity(ops.len());
            for op in ops {
                if let Op::Add {
                    id,
                    digest,
                    added_ms,
                    blobs,
                    vector,
                    meta,
                } = op
                {
                    if let Some(old) = idx.entries.get(id.as_str()) {
                        if old.blobs != blobs {
                            superseded.push((id.clone(), old.blobs));
                        }
                    }
                    let slot = idx.insert(&id, &digest, added_ms, blobs, &vector, meta);
                    slots.push((slot, vector));
                }
            }
            (idx.graph.clone(), slots)
        };
        for (id, version) in superseded {
            if let Err(e) = blob::remove(&inner.blob_root, &id, version) {
                // The replace is durable; the next open sweeps what is left.
                tracing::warn!(id, error = %e, "could not remove the blobs of a replaced record");
            }
        }
        // Outside the index lock so that searches go on; `writer` keeps rebuilds from swapping
        // the graph meanwhile. Until inserted, the new slots are just not found by the graph.
        if let Some(g) = graph {
            let data: Vec<(&[f32], usize)> =
                new_slots.iter().map(|(s, v)| (v.as_slice(), *s)).collect();
            if data.len() == 1 {
                g.insert_slice(data[0]);
            } else {
                g.parallel_insert_slice(&data);
            }
        }
        drop(w);
        inner.schedule_maintenance();
        Ok(())
    }

    /// Deletes `id`; `Ok(false)` when it was not there. Its blobs are removed once the delete
    /// record is durable.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let mut w = inner.writer.lock();
        let Some(version) = inner.index.read().entries.get(id).map(|e| e.blobs) else {
            return Ok(false);
        };
        injected_delete_failure(&inner.dir)?;
        w.wal.append(&[Op::Delete { id: id.to_owned() }])?;
        w.since_snapshot += 1;
        inner.index.write().remove(id);
        if let Err(e) = blob::remove(&inner.blob_root, id, version) {
            // The delete is durable; the next open sweeps what is left.
            tracing::warn!(id, error = %e, "could not remove blobs of a deleted id");
        }
        drop(w);
        inner.schedule_maintenance();
        Ok(true)
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        let idx = self.inner.index.read();
        let e = idx.entries.get(id)?;
        Some(Record {
            id: id.to_owned(),
            adapter_digest: idx.digest.clone().unwrap_or_default(),
            added_ms: e.added_ms,
            blobs: BlobVersion(e.blobs),
            meta: e.meta.clone(),
        })
    }

    /// The stored (L2-normalised) vector of `id`.
    pub fn vector(&self, id: &str) -> Option<Vec<f32>> {
        let idx = self.inner.index.read();
        let e = idx.entries.get(id)?;
        Some(idx.vector(e.slot).to_vec())
    }

    pub fn len(&self) -> usize {
        self.inner.index.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The adapter digest of the stored vectors; `None` when the store is empty.
    pub fn digest(&self) -> Option<String> {
        self.inner.index.read().digest.clone()
    }

    /// Live ids, in no particular order.
    pub fn ids(&self) -> Vec<String> {
        let idx = self.inner.index.read();
        idx.entries.keys().map(|k| k.to_string()).collect()
    }

    /// The `k` best hits for `query` (normalised here), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, StoreError> {
        self.search_with(query, k, SearchMode::Auto)
    }

    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Hit>, StoreError> {
        self.search_filtered(query, k, mode, None)
    }

    /// `search_with` restricted to records whose meta passes `filter` (see `filter`): still the
    /// `k` best of those whenever `k` of them exist.
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        mode: SearchMode,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, StoreError> {
        self.check_dim(query.len())?;
        let mut q = query.to_vec();
        if !normalize(&mut q) {
            return Err(StoreError::InvalidVector);
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let cfg = &self.inner.config;
        let idx = self.inner.index.read();
        let ef = match mode {
            SearchMode::Exact => None,
            SearchMode::Auto if idx.len() < cfg.exact_threshold => None,
            SearchMode::Auto => Some(cfg.ef_search),
            SearchMode::Graph { ef_search } => Some(ef_search),
        };
        let found = match filter {
            // `Index::search_filtered` plans exact scan vs graph from the filter's selectivity.
            Some(f) => {
                let small = match mode {
                    SearchMode::Graph { .. } => 0, // the graph first, however few pass
                    _ => cfg.exact_threshold,
                };
                idx.search_filtered(&q, k, ef, small, f)
            }
            None => ef
                .and_then(|ef| idx.search_graph(&q, k, ef))
                .unwrap_or_else(|| idx.search_exact(&q, k)),
        };
        Ok(found
            .into_iter()
            .filter_map(|(slot, score)| {
                let id = &idx.slots[slot].id;
                let e = idx.entries.get(id)?;
                Some(Hit {
                    id: id.to_string(),
                    score,
                    meta: e.meta.clone(),
                })
            })
            .collect())
    }

    /// Whether an HNSW graph is built and in use for searches above the threshold.
    pub fn has_graph(&self) -> bool {
        self.inner.index.read().graph.is_some()
    }

    /// Blocks until background graph builds and compactions have finished.
    pub fn wait_for_maintenance(&self) {
        while self.inner.rebuild_pending.load(Ordering::Acquire)
            || self.inner.snapshot_pending.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes a snapshot of the current state and drops log segments and snapshots that are no
    /// longer needed. Returns the log sequence number the snapshot covers.
    pub fn snapshot(&self) -> Result<u64, StoreError> {
        self.inner.snapshot()
    }

    /// Rebuilds the index now, in this thread: drops tombstones and builds the graph when the
    /// store is at or above the exact threshold.
    pub fn compact(&self) -> Result<(), StoreError> {
        self.inner.rebuild();
        Ok(())
    }

    /// Moves a finished temporary file into place as `id`'s blob of `kind` under `version`
    /// (fsynced, renamed, directory fsynced). Call before adding the record that owns `version`;
    /// blobs no live record owns are removed by [`TaskStore::discard_blobs`] or on the next open.
    pub fn put_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src_tmp_file: &Path,
    ) -> Result<(), StoreError> {
        blob::put(&self.inner.blob_root, id, version, kind, src_tmp_file)
    }

    /// Removes blobs put under `version` for a record that was never added (a failed upload);
    /// the live record's own version is left alone.
    pub fn discard_blobs(&self, id: &str, version: BlobVersion) -> Result<(), StoreError> {
        let _w = self.inner.writer.lock();
        let live = self.inner.index.read().entries.get(id).map(|e| e.blobs);
        if live == Some(version.0) {
            return Ok(());
        }
        blob::remove(&self.inner.blob_root, id, version.0)
    }

    /// The path of the live record's blob of `kind`, when both exist.
    pub fn blob_path(&self, id: &str, kind: BlobKind) -> Option<PathBuf> {
        let version = self.inner.index.read().entries.get(id)?.blobs;
        let p = blob::path_for(&self.inner.blob_root, id, version, kind);
        p.is_file().then_some(p)
    }

    /// Marks the store as no longer needed (a generation that was replaced): its directory is
    /// removed once the last handle to it is dropped, so readers that still hold it finish first.
    pub fn remove_when_closed(&self) {
        self.inner.remove_when_closed.store(true, Ordering::Release);
    }

    fn check_dim(&self, got: usize) -> Result<(), StoreError> {
        if got != self.inner.dim {
            return Err(StoreError::Dimension {
                expected: self.inner.dim,
                got,
            });
        }
        Ok(())
    }
}

impl Drop for TaskStore {
    fn drop(&mut self) {
        // Background work holds the directory lock through `Inner`; finish it so that the
        // store can be reopened as soon as this handle is gone.
        self.inner.closing.store(true, Ordering::Release);
        let handles = std::mem::take(&mut *self.inner.background.lock());
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Applies one replayed log record. A record that `add`/`delete` would have refused means the
/// log is not what this store wrote.
fn replay(idx: &mut Index, seq: u64, op: Op) -> Result<(), StoreError> {
    match op {
        Op::Add {
            id,
            digest,
            added_ms,
            blobs,
            vector,
            meta,
        } => {
            if vector.len() != idx.dim {
                return Err(StoreError::Dimension {
                    expected: idx.dim,
                    got: vector.len(),
                });
            }
            if idx.digest.as_deref().is_some_and(|d| d != digest) {
                return Err(StoreError::Corrupt(format!(
                    "record {seq}: adapter digest {digest} in a store of {:?}",
                    idx.digest
                )));
            }
            idx.insert(&id, &digest, added_ms, blobs, &vector, meta);
        }
        Op::Delete { id } => {
            idx.remove(&id);
        }
    }
    Ok(())
}

impl Inner {
    /// Starts background work that the current state calls for; cheap when there is none.
    fn schedule_maintenance(self: &Arc<Self>) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let (need_graph, need_compact) = {
            let idx = self.index.read();
            (
                idx.graph.is_none() && idx.len() >= self.config.exact_threshold,
                idx.dead > 0 && idx.tombstone_fraction() > self.config.compact_tombstone_fraction,
            )
        };
        if (need_graph || need_compact) && !self.rebuild_pending.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            self.spawn(move || {
                me.rebuild();
                me.rebuild_pending.store(false, Ordering::Release);
            });
        }
        let every = self.config.snapshot_every;
        let need_snapshot = every > 0 && self.writer.lock().since_snapshot >= every;
        if need_snapshot && !self.snapshot_pending.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            self.spawn(move || {
                if let Err(e) = me.snapshot() {
                    tracing::error!(dir = %me.dir.display(), error = %e, "snapshot failed");
                }
                me.snapshot_pending.store(false, Ordering::Release);
            });
        }
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let mut bg = self.background.lock();
        bg.retain(|h| !h.is_finished());
        bg.push(std::thread::spawn(f));
    }

    fn snapshot(&self) -> Result<u64, StoreError> {
        let _one = self.snapshot_lock.lock();
        let (seq, bytes) = {
            let mut w = self.writer.lock();
            let seq = w.wal.last_seq();
            if seq == w.last_snapshot_seq {
                return Ok(seq);
            }
            let idx = self.index.read();
            let mut recs: Vec<_> = idx
                .entries
                .iter()
                .map(|(id, e)| snapshot::SnapRef {
                    id,
                    added_ms: e.added_ms,
                    blobs: e.blobs,
                    meta: &e.meta,
                    vector: idx.vector(e.slot),
                })
                .collect();
            // Slot order, so that a reload lays vectors out as they were added.
            recs.sort_by_key(|r| idx.entries[r.id].slot);
            let bytes = snapshot::encode(seq, self.dim, idx.digest.as_deref(), &recs);
            drop(idx);
            w.wal.rotate()?;
            w.since_snapshot = 0;
            w.last_snapshot_seq = seq;
            (seq, bytes)
        };
        snapshot::write(&self.dir, seq, &bytes)?;
        if let Some(oldest_kept) = snapshot::prune(&self.dir, KEEP_SNAPSHOTS)? {
            wal::remove_covered(&self.dir, oldest_kept)?;
        }
        tracing::debug!(dir = %self.dir.display(), seq, bytes = bytes.len(), "snapshot written");
        Ok(seq)
    }

    /// Renumbers the live slots densely (dropping tombstones) and builds a fresh graph over them
    /// when the store is at or above the threshold, while searches use the old state; only the
    /// final swap takes the locks.
    fn rebuild(&self) {
        let _one = self.rebuild_lock.lock();
        let want_graph = self.index.read().len() >= self.config.exact_threshold;
        let mut copied: Vec<usize> = Vec::new();
        let mut scanned = 0;
        let graph = want_graph.then(|| {
            new_graph(
                self.config.hnsw_m,
                self.config.ef_construction,
                self.index.read().len(),
            )
        });
        // Copy and insert in rounds outside the locks; adds keep appending meanwhile.
        loop {
            let (start, batch) = {
                let idx = self.index.read();
                let start = copied.len();
                for s in scanned..idx.slots.len() {
                    if idx.slots[s].alive {
                        copied.push(s);
                    }
                }
                scanned = idx.slots.len();
                let batch: Vec<f32> = copied[start..]
                    .iter()
                    .flat_map(|&s| idx.vector(s).iter().copied())
                    .collect();
                (start, batch)
            };
            let n_new = copied.len() - start;
            if let Some(g) = &graph {
                for (c, chunk) in batch.chunks(BUILD_CHUNK * self.dim).enumerate() {
                    if self.closing.load(Ordering::Acquire) {
                        return;
                    }
                    let base = start + c * BUILD_CHUNK;
                    let data: Vec<(&[f32], usize)> = chunk
                        .chunks_exact(self.dim)
                        .enumerate()
                        .map(|(i, v)| (v, base + i))
                        .collect();
                    g.parallel_insert_slice(&data);
                }
            }
            if n_new <= CATCH_UP_UNDER_LOCK {
                break;
            }
        }
        // Swap: with the writer held, nothing is appended while the last slots are moved over.
        let _w = self.writer.lock();
        let mut idx = self.index.write();
        for s in scanned..idx.slots.len() {
            if idx.slots[s].alive {
                copied.push(s);
            }
        }
        let mut fresh = Index::new(self.dim);
        fresh.digest = idx.digest.clone();
        fresh.slots.reserve(copied.len());
        fresh.vectors.reserve(copied.len() * self.dim);
        let mut late = Vec::new();
        for (new_slot, &old) in copied.iter().enumerate() {
            let slot = idx.slots[old].clone();
            if old >= scanned {
                late.push(new_slot);
            }
            if !slot.alive {
                // Deleted or replaced while the graph was built: already in the graph, so it
                // stays a tombstone until the next rebuild.
                fresh.dead += 1;
            }
            fresh.vectors.extend_from_slice(idx.vector(old));
            fresh.slots.push(slot);
        }
        fresh.entries = std::mem::take(&mut idx.entries);
        for (new_slot, s) in fresh.slots.iter().enumerate() {
            if s.alive {
                if let Some(e) = fresh.entries.get_mut(&s.id) {
                    e.slot = new_slot;
                }
            }
        }
        if let Some(g) = &graph {
            for &s in &late {
                g.insert_slice((fresh.vector(s), s));
            }
        }
        fresh.graph = graph.map(Arc::new);
        tracing::debug!(
            dir = %self.dir.display(),
            live = fresh.len(),
            dropped = idx.slots.len() - fresh.slots.len(),
            graph = fresh.graph.is_some(),
            "index rebuilt"
        );
        *idx = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn task_store_is_send_sync() {
        assert_send_sync::<TaskStore>();
    }
}

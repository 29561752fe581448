//! One task's embedded store: its state and its API.
//!
//! Owns [`TaskStore`] (open, add, delete, get, search, blobs, the maintenance entry points) and
//! the state behind it (`Inner`, `Writer`): the log writer, the index and the flags the
//! background work shares. Its fields are visible to the store's own modules only. Does not own
//! the background threads and snapshots (`maintenance`), the index rebuild (`rebuild`), the file
//! formats (`wal`, `snapshot`, `blob`) or the search itself (`index`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use super::blob::Placement;
use super::failpoint::injected_delete_failure;
use super::index::{normalize, Index};
use super::lock::lock_dir;
use super::wal::{Op, Wal};
use super::{
    blob, snapshot, BlobKind, BlobVersion, Filter, Hit, NewRecord, Record, SearchMode, StoreConfig,
    StoreError,
};

pub(super) struct Writer {
    pub(super) wal: Wal,
    pub(super) since_snapshot: u64,
    pub(super) last_snapshot_seq: u64,
}

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    blob_root: PathBuf,
    pub(super) dim: usize,
    pub(super) config: StoreConfig,
    /// Serialises writers; taken before `index` whenever both are needed.
    pub(super) writer: Mutex<Writer>,
    pub(super) index: RwLock<Index>,
    pub(super) rebuild_lock: Mutex<()>,
    pub(super) rebuild_pending: AtomicBool,
    pub(super) snapshot_lock: Mutex<()>,
    pub(super) snapshot_pending: AtomicBool,
    pub(super) closing: AtomicBool,
    /// Whether filtered searches may use the payload index (always kept up to date); off only to
    /// measure the walk over every record's meta against it.
    use_payload_index: AtomicBool,
    /// Whether unfiltered graph searches walk without the tombstone predicate; off by default
    /// (see `Index::search_graph`), on only to measure what the predicate costs.
    plain_graph_search: AtomicBool,
    pub(super) background: Mutex<Vec<JoinHandle<()>>>,
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
                use_payload_index: AtomicBool::new(true),
                plain_graph_search: AtomicBool::new(false),
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
            let data: Vec<(usize, &[f32])> =
                new_slots.iter().map(|(s, v)| (*s, v.as_slice())).collect();
            if let Err(e) = g.insert(&data) {
                // The add is durable and searchable exactly; the graph misses it until the next
                // rebuild, which the dropped graph makes the next maintenance round start.
                tracing::error!(dir = %inner.dir.display(), error = %e, "graph insert failed");
                inner.index.write().graph = None;
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

    /// How many live ids pass `keep`, without copying them out.
    pub fn count_ids(&self, keep: impl Fn(&str) -> bool) -> usize {
        let idx = self.inner.index.read();
        idx.entries.keys().filter(|k| keep(k)).count()
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
                let payload = self.inner.use_payload_index.load(Ordering::Relaxed);
                idx.search_filtered(&q, k, ef, small, f, payload)
            }
            None => ef
                .and_then(|ef| {
                    let plain = self.inner.plain_graph_search.load(Ordering::Relaxed);
                    idx.search_graph(&q, k, ef, plain)
                })
                .unwrap_or_else(|| idx.search_exact(&q, k)),
        };
        Ok(found
            .into_iter()
            .filter_map(|(slot, score)| {
                let id = idx.slot_id(slot);
                let e = idx.entries.get(id)?;
                Some(Hit {
                    id: id.to_string(),
                    score,
                    meta: e.meta.clone(),
                })
            })
            .collect())
    }

    /// Turns the payload index off (or back on) for filtered searches, which then evaluate the
    /// filter on every record's meta: for benchmarks and tests that compare the two.
    #[doc(hidden)]
    pub fn set_payload_index(&self, on: bool) {
        self.inner.use_payload_index.store(on, Ordering::Relaxed);
    }

    /// Lets unfiltered graph searches walk without the tombstone predicate (tombstones dropped
    /// from the answer afterwards, so it may return fewer than `k` hits): for benchmarks that
    /// measure what the predicate costs.
    #[doc(hidden)]
    pub fn set_plain_graph_search(&self, on: bool) {
        self.inner.plain_graph_search.store(on, Ordering::Relaxed);
    }

    /// Bytes held by the HNSW graph (links and its own copy of the vectors), if one is built:
    /// for benchmarks that compare the graph's memory.
    #[doc(hidden)]
    pub fn graph_memory_bytes(&self) -> Option<usize> {
        self.inner
            .index
            .read()
            .graph
            .as_ref()
            .map(|g| g.memory_bytes())
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
    /// The fsync of `src_tmp_file` is this method's: callers need not (and should not) fsync it.
    pub fn put_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src_tmp_file: &Path,
    ) -> Result<(), StoreError> {
        blob::put(
            &self.inner.blob_root,
            id,
            version,
            kind,
            src_tmp_file,
            Placement::Move,
        )
    }

    /// Copies `src` (left as it is: another generation's blob, say) into place as `id`'s blob of
    /// `kind` under `version`, as durably as [`TaskStore::put_blob`] and with the same rules.
    pub fn copy_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src: &Path,
    ) -> Result<(), StoreError> {
        blob::put(
            &self.inner.blob_root,
            id,
            version,
            kind,
            src,
            Placement::Copy,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn task_store_is_send_sync() {
        assert_send_sync::<TaskStore>();
    }
}

//! Background work of the embedded store: deciding what is due, running it off the request
//! threads, and writing snapshots.
//!
//! Owns when a graph build, a compaction or a snapshot starts (`schedule_maintenance`), the
//! threads they run on (joined when the store closes), and the snapshot step: encode the live
//! records under the locks, rotate the log, write outside them, prune old snapshots and the log
//! they cover. Does not own the rebuild itself (`rebuild`) or the snapshot format (`snapshot`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::task::Inner;
use super::{snapshot, wal, StoreError};

/// How many snapshots to keep; the older one (and the log after it) is the fallback if the
/// newest cannot be read.
const KEEP_SNAPSHOTS: usize = 2;

impl Inner {
    /// Starts background work that the current state calls for; cheap when there is none.
    pub(super) fn schedule_maintenance(self: &Arc<Self>) {
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

    pub(super) fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let mut bg = self.background.lock();
        bg.retain(|h| !h.is_finished());
        bg.push(std::thread::spawn(f));
    }

    pub(super) fn snapshot(&self) -> Result<u64, StoreError> {
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
}

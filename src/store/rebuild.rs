//! The embedded store's index rebuild: dropping tombstones and building the HNSW graph while
//! searches go on.
//!
//! Owns the copy-and-insert rounds outside the locks and the final swap under them. Does not own
//! when a rebuild runs (`maintenance`) or the index structure (`index`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::graph::Graph;
use super::index::Index;
use super::task::Inner;

/// Graph builds insert in chunks so that closing the store can interrupt them.
const BUILD_CHUNK: usize = 4096;
/// A rebuild copies newly added slots outside the locks until at most this many are left.
const CATCH_UP_UNDER_LOCK: usize = 256;

impl Inner {
    /// Renumbers the live slots densely (dropping tombstones) and builds a fresh graph over them
    /// when the store is at or above the threshold, while searches use the old state; only the
    /// final swap takes the locks.
    pub(super) fn rebuild(&self) {
        let _one = self.rebuild_lock.lock();
        let want_graph = self.index.read().len() >= self.config.exact_threshold;
        let mut copied: Vec<usize> = Vec::new();
        let mut scanned = 0;
        let mut graph = None;
        if want_graph {
            let (m, efc, n) = (
                self.config.hnsw_m,
                self.config.ef_construction,
                self.index.read().len(),
            );
            match Graph::new(self.dim, m, efc, n) {
                Ok(g) => graph = Some(g),
                // The store goes on with exact search; the next rebuild tries again.
                Err(e) => tracing::error!(dir = %self.dir.display(), error = %e, "no HNSW graph"),
            }
        }
        // Copy and insert in rounds outside the locks; adds keep appending meanwhile.
        loop {
            let (start, batch) = {
                let idx = self.index.read();
                let start = copied.len();
                for s in scanned..idx.slot_count() {
                    if idx.is_alive(s) {
                        copied.push(s);
                    }
                }
                scanned = idx.slot_count();
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
                    let data: Vec<(usize, &[f32])> = chunk
                        .chunks_exact(self.dim)
                        .enumerate()
                        .map(|(i, v)| (base + i, v))
                        .collect();
                    if let Err(e) = g.insert(&data) {
                        tracing::error!(dir = %self.dir.display(), error = %e, "HNSW build failed");
                        return;
                    }
                }
            }
            if n_new <= CATCH_UP_UNDER_LOCK {
                break;
            }
        }
        // Swap: with the writer held, nothing is appended while the last slots are moved over.
        let _w = self.writer.lock();
        let mut idx = self.index.write();
        for s in scanned..idx.slot_count() {
            if idx.is_alive(s) {
                copied.push(s);
            }
        }
        let mut fresh = Index::new(self.dim);
        fresh.digest = idx.digest.clone();
        fresh.vectors.reserve(copied.len() * self.dim);
        let mut late = Vec::new();
        for (new_slot, &old) in copied.iter().enumerate() {
            let alive = idx.is_alive(old);
            if old >= scanned {
                late.push(new_slot);
            }
            if !alive {
                // Deleted or replaced while the graph was built: already in the graph, so it
                // stays a tombstone until the next rebuild.
                fresh.dead += 1;
            }
            fresh.vectors.extend_from_slice(idx.vector(old));
            fresh.push_slot(idx.slot_id(old).clone(), alive);
        }
        fresh.entries = std::mem::take(&mut idx.entries);
        fresh.take_payload(&mut idx, &copied);
        fresh.point_entries_at_slots();
        let data: Vec<(usize, &[f32])> = late.iter().map(|&s| (s, fresh.vector(s))).collect();
        let graph = graph.and_then(|g| match g.insert(&data) {
            Ok(()) => Some(g),
            // A graph missing these slots would never find them: search exactly instead, and
            // the next maintenance round builds the graph again.
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "HNSW build failed");
                None
            }
        });
        fresh.graph = graph.map(Arc::new);
        tracing::debug!(
            dir = %self.dir.display(),
            live = fresh.len(),
            dropped = idx.slot_count() - fresh.slot_count(),
            graph = fresh.graph.is_some(),
            "index rebuilt"
        );
        *idx = fresh;
    }
}

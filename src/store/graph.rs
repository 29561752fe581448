//! The HNSW graph over one index's slots, on usearch (Unum's C++ HNSW behind `cxx`).
//!
//! Owns the graph's settings (inner product on f32, `M`, `ef_construction`), growing its
//! capacity, the cap on calls inside usearch at once, and a search that honours a per-query
//! `ef` and a keep predicate. A graph key is the store's slot number; the graph never forgets a
//! slot (the store's tombstones are skipped by the predicate, and a rebuild makes a new graph).
//! Does not own the vectors of record, tombstones or locking of the index (`index`, `task`).
//!
//! The distance is the store's own `dot` (AVX2+FMA chosen at run time) handed to usearch as its
//! metric, so usearch is built without its `numkong` C kernels (BENCHMARKS.md "usearch in place
//! of hnsw_rs": the same queries/s, a faster build, 6 minutes less of a clean build).
//!
//! Why usearch rather than hnsw_rs (BENCHMARKS.md "hnsw_rs against faiss"): with a filter,
//! hnsw_rs 0.3.5 drops HNSW's stopping rule and pays a SipHash map insert, `Arc` clones and
//! allocations per visited node; usearch applies the predicate only to what it keeps (as faiss's
//! `IDSelector` does), so the walk stops as early as an unfiltered one, and it keeps per-thread
//! visited sets and heaps that are reused across queries.

use parking_lot::{Condvar, Mutex, RwLock};
use thiserror::Error;
use usearch::{Index as Usearch, IndexOptions, MetricKind, ScalarKind};

use super::index::dot;

/// Calls that may be inside usearch at once. usearch keeps one search/insert context (visited
/// set, heaps, a query buffer) per "thread" reserved up front and fails a call that finds none
/// free; `Gate` holds further callers back instead. A context costs about `dim * 4` bytes plus
/// what its heaps grow to, so 256 of them are cheap against the graph.
const CONTEXTS: usize = 256;

/// Why a graph call failed: usearch's own message (out of memory, mostly).
#[derive(Debug, Error)]
#[error("hnsw graph: {0}")]
pub(crate) struct GraphError(String);

impl From<cxx::Exception> for GraphError {
    fn from(e: cxx::Exception) -> Self {
        GraphError(e.what().to_owned())
    }
}

pub(crate) struct Graph {
    index: Usearch,
    /// `reserve` reallocates usearch's node table, which a concurrent search or insert would
    /// read: searches and inserts hold this for reading, growing holds it for writing.
    grow: RwLock<()>,
    gate: Gate,
}

impl Graph {
    /// An empty graph of `dim`-d unit vectors with room for `capacity` slots (it grows as needed).
    pub(crate) fn new(
        dim: usize,
        m: usize,
        ef_construction: usize,
        capacity: usize,
    ) -> Result<Self, GraphError> {
        let options = IndexOptions {
            dimensions: dim,
            // Distance 1 - dot: the vectors are L2-normalised, so this ranks like cosine.
            metric: MetricKind::IP,
            quantization: ScalarKind::F32,
            connectivity: m,
            expansion_add: ef_construction,
            // usearch searches with max(this, wanted) (index.hpp, `index_gt::search` in 2.26.6);
            // `search` asks for `ef` results, so 1 here makes the per-query `ef` the candidate
            // list size (0 would mean its default, 64).
            expansion_search: 1,
            multi: false,
        };
        let mut index = Usearch::new(&options)?;
        // The distance is the store's own dot product (AVX2+FMA chosen at run time), not
        // usearch's: built without its `numkong` feature (BENCHMARKS.md "usearch in place of
        // hnsw_rs": that C build was the largest unit of a clean build), usearch's own kernel is
        // compiled for baseline x86-64 (SSE2, one accumulator).
        index.change_metric::<f32>(Box::new(move |a: *const f32, b: *const f32| {
            // SAFETY: usearch calls its metric with two vectors of the index's `dim` f32s: stored
            // ones and queries, whose length its `add` and `search` check against `dim`.
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a, dim),
                    std::slice::from_raw_parts(b, dim),
                )
            };
            1.0 - dot(a, b)
        }));
        index.reserve_capacity_and_threads(capacity.max(1024), CONTEXTS)?;
        Ok(Graph {
            index,
            grow: RwLock::new(()),
            gate: Gate::new(CONTEXTS),
        })
    }

    /// Slots in the graph.
    pub(crate) fn len(&self) -> usize {
        self.index.size()
    }

    /// Inserts each `(slot, vector)`, one after another; safe beside searches.
    ///
    /// One at a time although usearch allows concurrent inserts: concurrent inserts into
    /// usearch 2.26.6 leave some nodes without any link to them, so no search finds them
    /// (measured: 17 of 24,000 points, 3,000 32-d points per graph at M 8, unreachable at any
    /// `ef` after parallel inserts on 2 threads, none after the same inserts one by one, and none
    /// in faiss; BENCHMARKS.md "usearch in place of hnsw_rs"). A store must find every record, so
    /// the build pays for it (100k clustered vectors: 73 s one at a time against 56.5 s on 2
    /// threads in an earlier run under other load).
    pub(crate) fn insert(&self, items: &[(usize, &[f32])]) -> Result<(), GraphError> {
        self.ensure_capacity(self.len() + items.len())?;
        items
            .iter()
            .try_for_each(|&(slot, v)| self.insert_one(slot, v))
    }

    fn insert_one(&self, slot: usize, v: &[f32]) -> Result<(), GraphError> {
        let added = {
            let _g = self.grow.read();
            let _c = self.gate.enter();
            self.index.add(slot as u64, v)
        };
        match added {
            Ok(()) => Ok(()),
            // Another inserter took the room reserved for this one: grow and try once more.
            Err(_) if self.len() >= self.index.capacity() => {
                self.ensure_capacity(self.len() + 1)?;
                let _g = self.grow.read();
                let _c = self.gate.enter();
                Ok(self.index.add(slot as u64, v)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Grows the capacity to at least `n` slots, by half again at least so that one-by-one
    /// inserts do not reallocate each time (a slot of capacity is ~24 bytes without its vector).
    fn ensure_capacity(&self, n: usize) -> Result<(), GraphError> {
        let cap = self.index.capacity();
        if n <= cap {
            return Ok(());
        }
        let _g = self.grow.write();
        let cap = self.index.capacity();
        if n > cap {
            self.index
                .reserve_capacity_and_threads(n.max(cap + cap / 2), CONTEXTS)?;
        }
        Ok(())
    }

    /// The `ef` best slots for `q` (unit length) that `keep` lets through, best first, from a
    /// walk with a candidate list of `ef`. `keep` is asked only about nodes good enough to be
    /// kept, so the walk stops where an unfiltered one would; `None` skips the call altogether.
    pub(crate) fn search(
        &self,
        q: &[f32],
        ef: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Vec<usize>, GraphError> {
        let _g = self.grow.read();
        let _c = self.gate.enter();
        let found = match keep {
            Some(keep) => self
                .index
                .filtered_search(q, ef, |key: u64| keep(key as usize))?,
            None => self.index.search(q, ef)?,
        };
        Ok(found.keys.into_iter().map(|k| k as usize).collect())
    }
}

/// A counting gate: at most `cap` holders at once, others wait. Hand-written because std has no
/// blocking semaphore and it is a dozen lines over parking_lot (already a dependency).
struct Gate {
    inside: Mutex<usize>,
    freed: Condvar,
    cap: usize,
}

impl Gate {
    fn new(cap: usize) -> Self {
        Gate {
            inside: Mutex::new(0),
            freed: Condvar::new(),
            cap,
        }
    }

    fn enter(&self) -> GatePass<'_> {
        let mut n = self.inside.lock();
        while *n >= self.cap {
            self.freed.wait(&mut n);
        }
        *n += 1;
        GatePass(self)
    }
}

struct GatePass<'a>(&'a Gate);

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut n = self.0.inside.lock();
        *n -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    #[test]
    fn grows_past_its_capacity_and_finds_each_point() {
        let dim = 16;
        let g = Graph::new(dim, 8, 32, 1).unwrap();
        let vs: Vec<Vec<f32>> = (0..3000).map(|i| unit(i, dim)).collect();
        // One by one past the initial 1024, then a parallel batch.
        for (i, v) in vs[..1500].iter().enumerate() {
            g.insert(&[(i, v.as_slice())]).unwrap();
        }
        let rest: Vec<(usize, &[f32])> = (1500..3000).map(|i| (i, vs[i].as_slice())).collect();
        g.insert(&rest).unwrap();
        assert_eq!(g.len(), 3000);
        for i in (0..3000).step_by(97) {
            assert_eq!(g.search(&vs[i], 32, None).unwrap()[0], i);
        }
    }

    #[test]
    fn keep_filters_results_and_ef_bounds_them() {
        let dim = 16;
        let g = Graph::new(dim, 8, 32, 100).unwrap();
        let vs: Vec<Vec<f32>> = (0..500).map(|i| unit(i, dim)).collect();
        let items: Vec<(usize, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i, &v[..])).collect();
        g.insert(&items).unwrap();
        let even = |s: usize| s.is_multiple_of(2);
        let found = g.search(&vs[3], 20, Some(&even)).unwrap();
        assert_eq!(found.len(), 20);
        assert!(found.iter().all(|s| s.is_multiple_of(2)));
        assert!(!found.contains(&3));
        assert_eq!(g.search(&vs[3], 7, None).unwrap().len(), 7);
    }

    /// Every point is reachable: searching for a stored vector finds that vector first, at an
    /// `ef` far below the graph's size. Fails with usearch's concurrent inserts (see `insert`).
    #[test]
    fn every_inserted_point_is_found_by_searching_for_itself() {
        let (dim, n) = (32, 3000);
        for round in 0..2u64 {
            let g = Graph::new(dim, 8, 32, n).unwrap();
            let vs: Vec<Vec<f32>> = (0..n as u64)
                .map(|i| unit(round * 100_000 + i + 1, dim))
                .collect();
            let items: Vec<(usize, &[f32])> =
                vs.iter().enumerate().map(|(i, v)| (i, &v[..])).collect();
            g.insert(&items).unwrap();
            let missed: Vec<usize> = (0..n)
                .filter(|&i| g.search(&vs[i], 400, None).unwrap()[0] != i)
                .collect();
            assert!(missed.is_empty(), "round {round}: not found: {missed:?}");
        }
    }

    /// The distance usearch walks with is the store's dot product (`new` replaces usearch's own
    /// metric): with a candidate list as long as the graph the walk reaches every node, so its
    /// order must be the exact order by dot product, best first.
    #[test]
    fn a_walk_as_wide_as_the_graph_ranks_by_the_stores_dot_product() {
        let dim = 24;
        let n = 400;
        let g = Graph::new(dim, 8, 64, n).unwrap();
        let vs: Vec<Vec<f32>> = (0..n as u64).map(|i| unit(i, dim)).collect();
        let items: Vec<(usize, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i, &v[..])).collect();
        g.insert(&items).unwrap();
        for seed in [10_001, 10_002, 10_003] {
            let q = unit(seed, dim);
            let mut exact: Vec<usize> = (0..n).collect();
            exact.sort_by(|&a, &b| dot(&q, &vs[b]).total_cmp(&dot(&q, &vs[a])));
            assert_eq!(g.search(&q, n, None).unwrap()[..20], exact[..20]);
        }
    }
}

//! The HNSW graph over one index's slots, walking an f16 copy of the vectors.
//!
//! Owns the graph's layout (each node's f16 vector, its key, its links on every layer), inserting
//! (one at a time, beside searches), growing, and a search that honours a per-query `ef` and a
//! keep predicate. A graph key is the store's slot number; the graph never forgets a slot (the
//! store's tombstones are skipped by the predicate, and a rebuild makes a new graph). Does not own
//! the vectors of record, tombstones or locking of the index (`index`, `task`), nor the final
//! scores: the index rescores what the graph finds in f32 (`f16dot` owns the error bound).
//!
//! Why our own graph rather than a crate's (BENCHMARKS.md "Our own graph"): a walk's time is
//! mostly waiting for neighbours' vectors to come from memory. This walk first marks a node's
//! unvisited neighbours, then fetches the next one's vector while computing the current one's
//! distance, so several fetches are in flight at once, as faiss's walk does. usearch 2.26.6
//! (the crate before this) computes one distance at a time through a metric callback; its C++
//! search has a prefetch hook, but its dense index and Rust binding pass a no-op. hnsw_rs pays a
//! hash-map insert and allocations per visited node. The algorithm is HNSW's (Malkov and
//! Yashunin, 2018: layers drawn with probability m^-l, best-first walks, the neighbour-selection
//! heuristic); the memory layout and concurrency are this module's.
//!
//! Concurrency: inserts take turns (`inserting`); searches run beside them without locks on
//! layer 0. A node's vector and key are written before any link to it is stored (Release), and a
//! walk reads links with Acquire, so a walk only reaches nodes whose vectors are complete, and a
//! vector is never written again once linked. A link list being rewritten may be read half old,
//! half new; every id in it is a complete node either way. Growing reallocates, so it takes
//! `nodes` for writing; searches and inserts hold it for reading.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use thiserror::Error;

use super::f16dot::{self as f16, Dot};

/// The highest layer a node may be drawn for (at m = 16 a node reaches it with probability
/// 16^-16: never; the cap only bounds a pathological draw).
const MAX_LEVEL: usize = 16;

/// Why a graph call failed.
#[derive(Debug, Error)]
#[error("hnsw graph: {0}")]
pub(crate) struct GraphError(String);

pub(crate) struct Graph {
    dim: usize,
    /// Links per node on layers above 0; layer 0 keeps `2 * m` (the paper's advice).
    m: usize,
    ef_construction: usize,
    /// 1 / ln(m): a node reaches layer l with probability m^-l.
    level_scale: f64,
    dot: Dot,
    nodes: RwLock<Nodes>,
    /// Held by the one insert at a time; the state of the layer draw (SplitMix64), so that the
    /// same inserts build the same graph.
    inserting: Mutex<u64>,
    /// The entry node and its (the graph's top) layer; `None` while empty.
    entry: RwLock<Option<(u32, usize)>>,
    /// Walk scratch (visited bits, heaps), reused across calls: one per call in flight at most.
    walks: Mutex<Vec<Walk>>,
}

/// Node storage, by internal id (insertion order).
struct Nodes {
    dim: usize,
    cap: usize,
    /// Words per node in `links0`: the count and `2m` ids.
    stride0: usize,
    /// Nodes whose insert has finished (`Graph::len`).
    len: AtomicUsize,
    /// `cap * dim` f16 bits. Atomics only so that an insert can write its own node's vector
    /// through a shared reference beside walks reading others; walks read them as plain `u16`s
    /// (see the module doc for why that never races).
    vectors: Vec<AtomicU16>,
    /// The store's slot number of each node.
    keys: Vec<AtomicU64>,
    /// Layer 0, `1 + 2m` per node: the count, then the ids.
    links0: Vec<AtomicU32>,
    /// Layers 1 and up (`[layer - 1]`); empty for the ~(1 - 1/m) of nodes on layer 0 only.
    upper: Vec<Mutex<Vec<Vec<u32>>>>,
}

impl Nodes {
    /// Node `i`'s vector as f16 bits.
    fn vector(&self, i: u32) -> &[u16] {
        let start = i as usize * self.dim;
        assert!(start + self.dim <= self.vectors.len());
        // SAFETY: in bounds (checked above); `AtomicU16` has `u16`'s layout. The range is only
        // read here, and nothing writes it meanwhile: a node's vector is written once, by its
        // insert, before any link to it is stored with Release, and readers reach it through
        // links loaded with Acquire (or are that insert).
        unsafe {
            std::slice::from_raw_parts(self.vectors.as_ptr().cast::<u16>().add(start), self.dim)
        }
    }

    fn key(&self, i: u32) -> usize {
        self.keys[i as usize].load(Ordering::Relaxed) as usize
    }

    /// Replaces `out` with node `i`'s links on `layer`.
    fn links(&self, i: u32, layer: usize, out: &mut Vec<u32>) {
        out.clear();
        if layer == 0 {
            let stride = self.stride0;
            let base = i as usize * stride;
            let n = (self.links0[base].load(Ordering::Acquire) as usize).min(stride - 1);
            out.extend((0..n).map(|j| self.links0[base + 1 + j].load(Ordering::Acquire)));
        } else if let Some(l) = self.upper[i as usize].lock().get(layer - 1) {
            out.extend_from_slice(l);
        }
    }

    /// Sets node `i`'s links on `layer`: ids first, then the count, so that a reader of the new
    /// count reads ids at least as new.
    fn set_links(&self, i: u32, layer: usize, ids: &[u32]) {
        if layer == 0 {
            let stride = self.stride0;
            let base = i as usize * stride;
            debug_assert!(ids.len() < stride);
            for (j, &id) in ids.iter().enumerate() {
                self.links0[base + 1 + j].store(id, Ordering::Release);
            }
            self.links0[base].store(ids.len() as u32, Ordering::Release);
        } else {
            let mut upper = self.upper[i as usize].lock();
            upper[layer - 1].clear();
            upper[layer - 1].extend_from_slice(ids);
        }
    }
}

/// A node and its distance (`1 - dot`) to what is being looked for; ordered by distance.
#[derive(Clone, Copy, Debug)]
struct Near {
    d: f32,
    node: u32,
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.d.total_cmp(&other.d).then(self.node.cmp(&other.node))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Near {}

/// One walk's scratch. Visited nodes are bits, cleared after each walk through the list of those
/// set (a walk touches hundreds of nodes, the bitset covers all of them).
#[derive(Default)]
struct Walk {
    visited: Vec<u64>,
    touched: Vec<u32>,
    /// Nodes to expand, nearest first.
    candidates: BinaryHeap<Reverse<Near>>,
    /// The best `ef` found that the keep predicate lets through, worst on top.
    results: BinaryHeap<Near>,
    links: Vec<u32>,
    fresh: Vec<u32>,
}

impl Walk {
    fn fit(&mut self, cap: usize) {
        if self.visited.len() * 64 < cap {
            self.visited.resize(cap.div_ceil(64), 0);
        }
    }
}

impl Graph {
    /// An empty graph of `dim`-d unit vectors with room for `capacity` nodes (it grows as needed).
    pub(crate) fn new(
        dim: usize,
        m: usize,
        ef_construction: usize,
        capacity: usize,
    ) -> Result<Self, GraphError> {
        if dim == 0 || m < 2 {
            return Err(GraphError(format!(
                "dim {dim} and m {m}: need dim >= 1, m >= 2"
            )));
        }
        let graph = Graph {
            dim,
            m,
            ef_construction: ef_construction.max(m),
            level_scale: 1.0 / (m as f64).ln(),
            dot: f16::dot_for_cpu(),
            nodes: RwLock::new(Nodes {
                dim,
                cap: 0,
                stride0: 1 + 2 * m,
                len: AtomicUsize::new(0),
                vectors: Vec::new(),
                keys: Vec::new(),
                links0: Vec::new(),
                upper: Vec::new(),
            }),
            inserting: Mutex::new(0),
            entry: RwLock::new(None),
            walks: Mutex::new(Vec::new()),
        };
        graph.grow(capacity.max(1));
        Ok(graph)
    }

    /// Nodes in the graph.
    pub(crate) fn len(&self) -> usize {
        self.nodes.read().len.load(Ordering::Acquire)
    }

    /// Bytes the graph holds: the f16 vectors, keys, links, and the walks' scratch.
    pub(crate) fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let nodes = self.nodes.read();
        let upper: usize = nodes
            .upper
            .iter()
            .map(|u| {
                u.lock()
                    .iter()
                    .map(|l| l.capacity() * 4 + size_of::<Vec<u32>>())
                    .sum::<usize>()
            })
            .sum();
        let walks: usize = self
            .walks
            .lock()
            .iter()
            .map(|w| w.visited.capacity() * 8 + w.touched.capacity() * 4)
            .sum();
        nodes.vectors.capacity() * 2
            + nodes.keys.capacity() * 8
            + nodes.links0.capacity() * 4
            + nodes.upper.capacity() * size_of::<Mutex<Vec<Vec<u32>>>>()
            + upper
            + walks
    }

    /// Inserts each `(slot, vector)` (unit length), one after another; safe beside searches.
    pub(crate) fn insert(&self, items: &[(usize, &[f32])]) -> Result<(), GraphError> {
        let mut draw = self.inserting.lock();
        let len = self.len();
        if len + items.len() > u32::MAX as usize {
            return Err(GraphError(format!(
                "{} nodes would pass the graph's limit of {}",
                len + items.len(),
                u32::MAX
            )));
        }
        // Checked before any is inserted, so that a refused call leaves the graph as it was.
        if let Some(&(_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(GraphError(format!(
                "a {}-d vector for a {}-d graph",
                v.len(),
                self.dim
            )));
        }
        self.grow(len + items.len());
        for &(key, v) in items {
            let level = self.draw_level(&mut draw);
            self.insert_one(key, &f16::halves(v), level);
        }
        Ok(())
    }

    fn insert_one(&self, key: usize, h: &[u16], level: usize) {
        let nodes = self.nodes.read();
        let id = nodes.len.load(Ordering::Relaxed) as u32;
        let start = id as usize * self.dim;
        for (cell, &x) in nodes.vectors[start..start + self.dim].iter().zip(h) {
            cell.store(x, Ordering::Relaxed);
        }
        nodes.keys[id as usize].store(key as u64, Ordering::Relaxed);
        *nodes.upper[id as usize].lock() = vec![Vec::new(); level];
        let entry = *self.entry.read();
        let Some((ep, top)) = entry else {
            // The first node: nothing to link. The entry's Release (the lock) publishes it.
            nodes.len.store(id as usize + 1, Ordering::Release);
            *self.entry.write() = Some((id, level));
            return;
        };
        let mut w = self.take_walk(nodes.cap);
        let mut best = Near {
            d: self.distance(h, nodes.vector(ep)),
            node: ep,
        };
        for layer in (level + 1..=top).rev() {
            best = self.walk(&nodes, &mut w, h, best, 1, layer, None)[0];
        }
        let mut chosen = Vec::new();
        for layer in (0..=level.min(top)).rev() {
            let found = self.walk(&nodes, &mut w, h, best, self.ef_construction, layer, None);
            best = found[0];
            let limit = self.limit(layer);
            self.select(&nodes, &found, limit, &mut chosen);
            let ids: Vec<u32> = chosen.iter().map(|c| c.node).collect();
            nodes.set_links(id, layer, &ids);
            for c in &chosen {
                self.connect(&nodes, c.node, Near { d: c.d, node: id }, layer);
            }
        }
        self.give_walk(w);
        nodes.len.store(id as usize + 1, Ordering::Release);
        if level > top {
            *self.entry.write() = Some((id, level));
        }
    }

    /// Links `from` to `to` on `layer` (`to.d` is their distance); past the layer's limit, the
    /// heuristic chooses among the old links and the new one.
    fn connect(&self, nodes: &Nodes, from: u32, to: Near, layer: usize) {
        let mut links = Vec::new();
        nodes.links(from, layer, &mut links);
        if links.contains(&to.node) {
            return;
        }
        let limit = self.limit(layer);
        if links.len() < limit {
            links.push(to.node);
            nodes.set_links(from, layer, &links);
            return;
        }
        let v = nodes.vector(from);
        let mut near: Vec<Near> = links
            .iter()
            .map(|&n| Near {
                d: self.distance(v, nodes.vector(n)),
                node: n,
            })
            .chain([to])
            .collect();
        near.sort_unstable();
        let mut chosen = Vec::with_capacity(limit);
        self.select(nodes, &near, limit, &mut chosen);
        links.clear();
        links.extend(chosen.iter().map(|c| c.node));
        nodes.set_links(from, layer, &links);
    }

    /// HNSW's neighbour heuristic: from `found` (nearest first), keep a candidate only if it is
    /// no nearer to any one kept so far than to the base, up to `limit`. Links then spread over
    /// directions instead of bunching in one cluster, which keeps clusters reachable. "No
    /// nearer" rather than "farther" for copies of one vector (the same video uploaded under two
    /// ids): with "farther" a copy linked to the base shut every other copy out of the base's
    /// links, and of ten copies among 2,000 points only six could be reached.
    fn select(&self, nodes: &Nodes, found: &[Near], limit: usize, out: &mut Vec<Near>) {
        out.clear();
        for &c in found {
            if out.len() >= limit {
                break;
            }
            let v = nodes.vector(c.node);
            if out
                .iter()
                .all(|r| self.distance(v, nodes.vector(r.node)) >= c.d)
            {
                out.push(c);
            }
        }
    }

    fn limit(&self, layer: usize) -> usize {
        if layer == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    /// A layer for a new node: floor(-ln(u) / ln(m)) for u uniform in (0, 1].
    fn draw_level(&self, state: &mut u64) -> usize {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_scale) as usize).min(MAX_LEVEL)
    }

    /// Room for at least `n` nodes, by half again at least so that one-by-one inserts do not
    /// reallocate each time.
    fn grow(&self, n: usize) {
        if n <= self.nodes.read().cap {
            return;
        }
        let mut nodes = self.nodes.write();
        if n <= nodes.cap {
            return;
        }
        let cap = n.max(nodes.cap + nodes.cap / 2);
        let stride0 = nodes.stride0;
        nodes
            .vectors
            .resize_with(cap * self.dim, || AtomicU16::new(0));
        nodes.keys.resize_with(cap, || AtomicU64::new(0));
        nodes
            .links0
            .resize_with(cap * stride0, || AtomicU32::new(0));
        nodes.upper.resize_with(cap, || Mutex::new(Vec::new()));
        nodes.cap = cap;
    }

    /// The `ef` best slots for `q` (unit length) that `keep` lets through, best first, each with
    /// its f16 distance (`1 - dot`, within [`f16::F16_DOT_ERROR`] of the f32 one), from a walk
    /// with a candidate list of `ef`. `keep` is asked only about nodes good enough to be kept, so
    /// the walk stops where an unfiltered one would; `None` skips the call altogether.
    pub(crate) fn search(
        &self,
        q: &[f32],
        ef: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Vec<(usize, f32)>, GraphError> {
        if q.len() != self.dim {
            return Err(GraphError(format!(
                "a {}-d query for a {}-d graph",
                q.len(),
                self.dim
            )));
        }
        let q = f16::halves(q);
        let nodes = self.nodes.read();
        let Some((ep, top)) = *self.entry.read() else {
            return Ok(Vec::new());
        };
        let mut w = self.take_walk(nodes.cap);
        let mut best = Near {
            d: self.distance(&q, nodes.vector(ep)),
            node: ep,
        };
        for layer in (1..=top).rev() {
            best = self.walk(&nodes, &mut w, &q, best, 1, layer, None)[0];
        }
        let found = self.walk(&nodes, &mut w, &q, best, ef.max(1), 0, keep);
        self.give_walk(w);
        Ok(found.iter().map(|n| (nodes.key(n.node), n.d)).collect())
    }

    /// The graph's distance between two f16 vectors: `1 - dot`, so that nearer is smaller.
    fn distance(&self, a: &[u16], b: &[u16]) -> f32 {
        1.0 - (self.dot)(a, b)
    }

    /// HNSW's best-first walk of `layer` from `entry`: the best `ef` nodes that `keep` lets
    /// through, best first (empty only if none passed).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        nodes: &Nodes,
        w: &mut Walk,
        q: &[u16],
        entry: Near,
        ef: usize,
        layer: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Vec<Near> {
        let Walk {
            visited,
            touched,
            candidates,
            results,
            links,
            fresh,
        } = w;
        let mut visit = |n: u32| {
            let (word, bit) = (n as usize / 64, 1u64 << (n % 64));
            let first = visited[word] & bit == 0;
            visited[word] |= bit;
            if first {
                touched.push(n);
            }
            first
        };
        let passes = |n: u32| keep.is_none_or(|k| k(nodes.key(n)));
        visit(entry.node);
        candidates.push(Reverse(entry));
        if passes(entry.node) {
            results.push(entry);
        }
        let bytes = self.dim * 2;
        while let Some(Reverse(c)) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|worst| c.d > worst.d) {
                break;
            }
            nodes.links(c.node, layer, links);
            fresh.clear();
            fresh.extend(links.iter().copied().filter(|&n| visit(n)));
            // Ask for every fresh neighbour's first line now, so their fetches overlap, and
            // for all of the next one's lines while this one's distance is computed.
            for &n in fresh.iter() {
                prefetch(nodes.vector(n).as_ptr(), 64);
            }
            for (j, &n) in fresh.iter().enumerate() {
                if let Some(&next) = fresh.get(j + 1) {
                    prefetch(nodes.vector(next).as_ptr(), bytes);
                }
                let d = self.distance(q, nodes.vector(n));
                if results.len() < ef || results.peek().is_some_and(|worst| d < worst.d) {
                    candidates.push(Reverse(Near { d, node: n }));
                    if passes(n) {
                        results.push(Near { d, node: n });
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        for &n in touched.iter() {
            visited[n as usize / 64] = 0;
        }
        touched.clear();
        candidates.clear();
        // Drained rather than taken, so the heap keeps its room for the next walk.
        let mut found: Vec<Near> = results.drain().collect();
        found.sort_unstable();
        found
    }

    fn take_walk(&self, cap: usize) -> Walk {
        let mut w = self.walks.lock().pop().unwrap_or_default();
        w.fit(cap);
        w
    }

    fn give_walk(&self, w: Walk) {
        self.walks.lock().push(w);
    }
}

/// Asks the CPU to start fetching `bytes` from `p` into cache; a hint, never a fault.
#[inline(always)]
fn prefetch(p: *const u16, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing the program sees and does not fault on any address;
        // `wrapping_add` keeps the pointer arithmetic itself defined.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(off)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::f16dot::tests::unit;

    #[test]
    fn grows_past_its_capacity_and_finds_each_point() {
        let dim = 16;
        let g = Graph::new(dim, 8, 32, 1).unwrap();
        let vs: Vec<Vec<f32>> = (0..3000).map(|i| unit(i, dim)).collect();
        // One by one from a capacity of 1, then a batch.
        for (i, v) in vs[..1500].iter().enumerate() {
            g.insert(&[(i, v.as_slice())]).unwrap();
        }
        let rest: Vec<(usize, &[f32])> = (1500..3000).map(|i| (i, vs[i].as_slice())).collect();
        g.insert(&rest).unwrap();
        assert_eq!(g.len(), 3000);
        for i in (0..3000).step_by(97) {
            assert_eq!(g.search(&vs[i], 32, None).unwrap()[0].0, i);
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
        let found: Vec<usize> = g
            .search(&vs[3], 20, Some(&even))
            .unwrap()
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(found.len(), 20);
        assert!(found.iter().all(|s| s.is_multiple_of(2)));
        assert!(!found.contains(&3));
        assert_eq!(g.search(&vs[3], 7, None).unwrap().len(), 7);
        let none = |_: usize| false;
        assert!(g.search(&vs[3], 7, Some(&none)).unwrap().is_empty());
    }

    #[test]
    fn keys_are_the_callers_and_wrong_lengths_are_refused() {
        let dim = 8;
        let g = Graph::new(dim, 4, 16, 10).unwrap();
        assert!(g.search(&unit(1, dim), 5, None).unwrap().is_empty());
        let vs: Vec<Vec<f32>> = (0..50).map(|i| unit(i, dim)).collect();
        let items: Vec<(usize, &[f32])> = vs
            .iter()
            .enumerate()
            .map(|(i, v)| (1000 + 7 * i, &v[..]))
            .collect();
        g.insert(&items).unwrap();
        assert_eq!(g.search(&vs[9], 4, None).unwrap()[0].0, 1000 + 63);
        assert!(g.insert(&[(1, &[0.0; 7][..])]).is_err());
        // A batch with one bad vector inserts none of them.
        assert!(g.insert(&[(2, &vs[0][..]), (3, &[0.0; 7][..])]).is_err());
        assert!(g.search(&[0.0; 9], 4, None).is_err());
        assert_eq!(g.len(), 50);
    }

    /// Every point is reachable: searching for a stored vector finds that vector first, at an
    /// `ef` far below the graph's size.
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
                .filter(|&i| g.search(&vs[i], 400, None).unwrap()[0].0 != i)
                .collect();
            assert!(missed.is_empty(), "round {round}: not found: {missed:?}");
        }
    }

    /// With a candidate list as long as the graph the walk reaches every node, so its order must
    /// be the exact order by the f16 dot product, and the distances it reports the f16 ones.
    #[test]
    fn a_walk_as_wide_as_the_graph_ranks_by_the_f16_dot_product() {
        let dim = 24;
        let n = 400;
        let g = Graph::new(dim, 8, 64, n).unwrap();
        let vs: Vec<Vec<f32>> = (0..n as u64).map(|i| unit(i, dim)).collect();
        let items: Vec<(usize, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i, &v[..])).collect();
        g.insert(&items).unwrap();
        let dot = f16::dot_for_cpu();
        for seed in [10_001, 10_002, 10_003] {
            let q = unit(seed, dim);
            let qb = f16::halves(&q);
            let mut exact: Vec<usize> = (0..n).collect();
            exact.sort_by(|&a, &b| {
                dot(&qb, &f16::halves(&vs[b])).total_cmp(&dot(&qb, &f16::halves(&vs[a])))
            });
            let found = g.search(&q, n, None).unwrap();
            assert_eq!(found.len(), n);
            let slots: Vec<usize> = found.iter().map(|f| f.0).collect();
            assert_eq!(slots[..20], exact[..20]);
            for &(s, d) in &found {
                assert_eq!(d, 1.0 - dot(&qb, &f16::halves(&vs[s])));
                let f32_dot: f32 = q.iter().zip(&vs[s]).map(|(x, y)| x * y).sum();
                assert!((d - (1.0 - f32_dot)).abs() <= f16::F16_DOT_ERROR);
            }
        }
    }

    /// Searches beside inserts (the store's add path) see a consistent graph: every answer is a
    /// node inserted so far, and once the inserts end every node is found.
    #[test]
    fn searches_beside_inserts_find_only_inserted_nodes() {
        let (dim, n) = (16, 4000);
        let g = Graph::new(dim, 8, 32, 16).unwrap();
        let vs: Vec<Vec<f32>> = (0..n as u64).map(|i| unit(i + 7, dim)).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for (i, v) in vs.iter().enumerate() {
                    g.insert(&[(i, v.as_slice())]).unwrap();
                }
            });
            s.spawn(|| {
                let mut i = 0;
                while g.len() < n {
                    let done = g.len();
                    for (slot, _) in g.search(&vs[i % n], 10, None).unwrap() {
                        assert!(slot < n);
                        // Answers may include the node being inserted, never one past it.
                        assert!(slot <= g.len().max(done), "{slot} before its insert");
                    }
                    i += 1;
                }
            });
        });
        for i in (0..n).step_by(13) {
            assert_eq!(g.search(&vs[i], 64, None).unwrap()[0].0, i);
        }
    }

    /// Copies of one vector (the same video under several ids) are each reachable: searching for
    /// the vector finds every copy, and so does a walk that only one copy passes.
    #[test]
    fn every_copy_of_a_repeated_vector_is_reachable() {
        let dim = 32;
        let g = Graph::new(dim, 8, 32, 10).unwrap();
        let v = unit(424_242, dim);
        let others: Vec<Vec<f32>> = (0..2000).map(|i| unit(i, dim)).collect();
        let mut items: Vec<(usize, &[f32])> = Vec::new();
        for (i, o) in others.iter().enumerate() {
            items.push((i, o));
            if i % 200 == 0 {
                items.push((100_000 + i, &v));
            }
        }
        g.insert(&items).unwrap();
        let copies: Vec<usize> = (0..2000).step_by(200).map(|i| 100_000 + i).collect();
        let mut found: Vec<usize> = g.search(&v, 64, None).unwrap()[..copies.len()]
            .iter()
            .map(|f| f.0)
            .collect();
        found.sort_unstable();
        assert_eq!(found, copies);
        for &k in &copies {
            let only = move |s: usize| s == k;
            assert_eq!(g.search(&v, 16, Some(&only)).unwrap()[0].0, k, "copy {k}");
        }
    }
}

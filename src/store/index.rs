//! The in-memory index of one task: records, vectors, tombstones, exact search and the HNSW graph.
//!
//! Owns the slot table (a slot is a position in the vector array and the graph's key; a deleted
//! or replaced record leaves a tombstone in its slot, skipped by every search until a rebuild
//! drops it), the exact top-k scan, and how a search uses the exact scan and the HNSW graph
//! (`graph`) built over the slots (`search_graph`, `search_filtered`). Does not own any I/O or
//! locking: `TaskStore` wraps this in a lock and feeds it from the log.
//!
//! Tombstones rather than removing nodes from the graph: an HNSW node's removal leaves holes in
//! its neighbours' links that only a rebuild mends well, and slot numbers that stay put keep the
//! graph, the vector array and the payload index addressed by one number.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rayon::prelude::*;

use super::f16dot::F16_DOT_ERROR;
use super::filter::Filter;
use super::graph::Graph;
use super::payload::{Candidates, PayloadIndex};

/// Below this many slots a parallel scan costs more in coordination than it saves.
const PAR_SCAN_MIN: usize = 8192;
/// Slots sampled to estimate how many records a filter passes (about 1% precision).
const FILTER_SAMPLE: usize = 1024;

/// What the store keeps per live id.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub slot: usize,
    pub added_ms: u64,
    /// The version of the id's blobs this record owns (0: unversioned names).
    pub blobs: u64,
    pub meta: serde_json::Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub id: Arc<str>,
}

/// Which slots are alive, one bit each. Kept apart from `Slot` because a graph walk asks for
/// every node it keeps once there are tombstones: 100k slots are 12.5 KiB of bits, which stay in
/// the first-level cache, where the same question asked of 24-byte slots reads 2.4 MB at random
/// (the walk with the predicate ran at 0.81-1.0x the walk without it; BENCHMARKS.md "Tombstones
/// as a bitset").
#[derive(Debug, Default)]
struct AliveBits(Vec<u64>);

impl AliveBits {
    fn push(&mut self, slot: usize, alive: bool) {
        if slot / 64 == self.0.len() {
            self.0.push(0);
        }
        if alive {
            self.0[slot / 64] |= 1 << (slot % 64);
        }
    }

    fn clear(&mut self, slot: usize) {
        self.0[slot / 64] &= !(1 << (slot % 64));
    }

    #[inline]
    fn get(&self, slot: usize) -> bool {
        self.0
            .get(slot / 64)
            .is_some_and(|w| w >> (slot % 64) & 1 == 1)
    }
}

pub(crate) struct Index {
    pub dim: usize,
    pub digest: Option<String>,
    pub entries: HashMap<Arc<str>, Entry>,
    /// Every slot ever assigned since the last rebuild, dead ones included: append only, and
    /// only through [`Index::push_slot`], so that `alive` covers every slot.
    slots: Vec<Slot>,
    alive: AliveBits,
    /// Row-major, `slots.len() * dim`, L2-normalised.
    pub vectors: Vec<f32>,
    pub dead: usize,
    /// When present it covers every slot (inserts keep it up to date).
    pub graph: Option<Arc<Graph>>,
    /// Live slots by metadata value; kept in step by `insert`, `remove` and `take_payload`.
    payload: PayloadIndex,
}

impl Index {
    pub(crate) fn new(dim: usize) -> Self {
        Index {
            dim,
            digest: None,
            entries: HashMap::new(),
            slots: Vec::new(),
            alive: AliveBits::default(),
            vectors: Vec::new(),
            dead: 0,
            graph: None,
            payload: PayloadIndex::default(),
        }
    }

    /// Moves `old`'s payload index over to this index, which a rebuild made from `old`'s slots
    /// `old_of_new` (ascending, and covering every live slot).
    pub(crate) fn take_payload(&mut self, old: &mut Index, old_of_new: &[usize]) {
        let mut new_of_old = vec![u32::MAX; old.slots.len()];
        for (new, &o) in old_of_new.iter().enumerate() {
            new_of_old[o] = new as u32;
        }
        self.payload = std::mem::take(&mut old.payload);
        self.payload.renumber(&new_of_old);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    /// Applies an add whose checks already passed; returns the new slot. Replacing an id leaves
    /// a tombstone in its old slot.
    pub(crate) fn insert(
        &mut self,
        id: &str,
        digest: &str,
        added_ms: u64,
        blobs: u64,
        vector: &[f32],
        meta: serde_json::Value,
    ) -> usize {
        self.remove(id);
        if self.digest.is_none() {
            self.digest = Some(digest.to_owned());
        }
        let id: Arc<str> = Arc::from(id);
        let slot = self.push_slot(id.clone(), true);
        self.vectors.extend_from_slice(vector);
        self.payload.add(slot, &meta);
        self.entries.insert(
            id,
            Entry {
                slot,
                added_ms,
                blobs,
                meta,
            },
        );
        slot
    }

    /// Appends a slot for `id` (dead when a rebuild carries over a tombstone) and returns its
    /// number.
    pub(crate) fn push_slot(&mut self, id: Arc<str>, alive: bool) -> usize {
        let n = self.slots.len();
        self.slots.push(Slot { id });
        self.alive.push(n, alive);
        n
    }

    /// Points each live record's entry at its slot, after a rebuild renumbered the slots.
    pub(crate) fn point_entries_at_slots(&mut self) {
        for (s, slot) in self.slots.iter().enumerate() {
            if self.alive.get(s) {
                if let Some(e) = self.entries.get_mut(&slot.id) {
                    e.slot = s;
                }
            }
        }
    }

    /// Slots assigned, dead ones included.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The id recorded in `slot` (live or dead).
    pub(crate) fn slot_id(&self, slot: usize) -> &Arc<str> {
        &self.slots[slot].id
    }

    /// Whether `slot` holds a live record (false past the end).
    #[inline]
    pub(crate) fn is_alive(&self, slot: usize) -> bool {
        self.alive.get(slot)
    }

    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let Some(e) = self.entries.remove(id) else {
            return false;
        };
        self.alive.clear(e.slot);
        self.payload.remove(e.slot, &e.meta);
        self.dead += 1;
        if self.entries.is_empty() {
            // An empty store may start a new embedding space (a new adapter generation).
            self.digest = None;
        }
        true
    }

    pub(crate) fn tombstone_fraction(&self) -> f32 {
        if self.slots.is_empty() {
            0.0
        } else {
            self.dead as f32 / self.slots.len() as f32
        }
    }

    /// Exact top-k by dot product over live slots, best first.
    pub(crate) fn search_exact(&self, q: &[f32], k: usize) -> Vec<(usize, f32)> {
        self.scan_top_k(q, k, self.slots.len(), |s| self.is_alive(s).then_some(s))
    }

    /// Top-k over `items` positions, `slot_at` naming the slot at each (or none to skip),
    /// on all cores when there are many.
    fn scan_top_k(
        &self,
        q: &[f32],
        k: usize,
        items: usize,
        slot_at: impl Fn(usize) -> Option<usize> + Sync,
    ) -> Vec<(usize, f32)> {
        let scan = |range: std::ops::Range<usize>| {
            let mut top = TopK::new(k);
            for s in range.filter_map(&slot_at) {
                top.push(s, dot(q, self.vector(s)));
            }
            top
        };
        let top = if items < PAR_SCAN_MIN {
            scan(0..items)
        } else {
            let chunk = items.div_ceil(rayon::current_num_threads().max(1) * 4);
            (0..items.div_ceil(chunk))
                .into_par_iter()
                .map(|c| scan(c * chunk..((c + 1) * chunk).min(items)))
                .reduce(|| TopK::new(k), TopK::merge)
        };
        top.into_sorted()
    }

    /// Top-k among live records whose meta passes `filter`, best first, planned like Qdrant's
    /// cardinality-based search. The payload index (when `use_payload` and it can answer the
    /// filter) gives the candidate slots and so their count; otherwise the count is estimated
    /// from a sample. If it is under `small` (or there is no graph, or `ef` is `None`), the
    /// passing records are scanned exactly. Otherwise the graph is searched with the filter
    /// applied inside it (a bitset lookup when the index answered exactly), and should it return
    /// fewer than `k` (the walk can end before `k` passing nodes are met when few pass), the
    /// exact scan answers after all; so `k` hits come back whenever `k` records pass.
    pub(crate) fn search_filtered(
        &self,
        q: &[f32],
        k: usize,
        ef: Option<usize>,
        small: usize,
        filter: &Filter,
        use_payload: bool,
    ) -> Vec<(usize, f32)> {
        let passes = |s: usize| {
            self.is_alive(s)
                && self
                    .entries
                    .get(&self.slots[s].id)
                    .is_some_and(|e| e.slot == s && filter.matches(&e.meta))
        };
        if let Some(c) = use_payload
            .then(|| self.payload.candidates(filter))
            .flatten()
        {
            return self.search_candidates(q, k, ef, small, &c, &passes);
        }
        if let (Some(ef), Some(graph)) = (ef, &self.graph) {
            if self.estimate_passing(&passes) >= small {
                let hits = self.graph_top_k(graph, q, k, ef, &passes);
                if hits.len() >= k {
                    return hits;
                }
            }
        }
        // Over the entries rather than the slots: each holds its meta and its slot, so this
        // needs no lookup per slot.
        let slots: Vec<usize> = if self.entries.len() < PAR_SCAN_MIN {
            let pass = self.entries.values().filter(|e| filter.matches(&e.meta));
            pass.map(|e| e.slot).collect()
        } else {
            let pass = self
                .entries
                .par_iter()
                .filter(|(_, e)| filter.matches(&e.meta));
            pass.map(|(_, e)| e.slot).collect()
        };
        self.scan_top_k(q, k, slots.len(), |i| Some(slots[i]))
    }

    /// `search_filtered` once the payload index named the candidates: every record that passes
    /// is among them, and when they are not `exact` each is checked with `passes`.
    fn search_candidates(
        &self,
        q: &[f32],
        k: usize,
        ef: Option<usize>,
        small: usize,
        c: &Candidates,
        passes: &(dyn Fn(usize) -> bool + Sync),
    ) -> Vec<(usize, f32)> {
        let check = |s: usize| c.exact || passes(s);
        if let (Some(ef), Some(graph)) = (ef, &self.graph) {
            if c.slots.len() >= small {
                let mut bits = vec![0u64; self.slots.len().div_ceil(64)];
                for &s in &c.slots {
                    bits[s as usize / 64] |= 1 << (s % 64);
                }
                let keep =
                    |d: usize| bits.get(d / 64).is_some_and(|w| w >> (d % 64) & 1 == 1) && check(d);
                let hits = self.graph_top_k(graph, q, k, ef, &keep);
                if hits.len() >= k {
                    return hits;
                }
            }
        }
        let slot = |i: usize| Some(c.slots[i] as usize).filter(|&s| check(s));
        self.scan_top_k(q, k, c.slots.len(), slot)
    }

    /// About how many live slots pass: all of them counted in a small store, else a fixed
    /// pseudo-random sample (not a stride, which could alias with ids like `i % 100`).
    fn estimate_passing(&self, passes: &dyn Fn(usize) -> bool) -> usize {
        let n = self.slots.len();
        if n <= FILTER_SAMPLE {
            return (0..n).filter(|&s| passes(s)).count();
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let (mut live, mut hit) = (0usize, 0usize);
        for _ in 0..FILTER_SAMPLE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = (x % n as u64) as usize;
            if self.is_alive(s) {
                live += 1;
                hit += usize::from(passes(s));
            }
        }
        (hit * self.len()).checked_div(live).unwrap_or(0)
    }

    /// Approximate top-k through the graph, skipping tombstones; `None` when there is no graph
    /// (or the graph refused the query, which it logs), so that the caller scans exactly.
    /// `plain` (benchmarks only) walks without the tombstone predicate and drops tombstones from
    /// the answer afterwards, so it may return fewer than `k`.
    pub(crate) fn search_graph(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        plain: bool,
    ) -> Option<Vec<(usize, f32)>> {
        let graph = self.graph.as_ref()?;
        let alive = |s: usize| self.is_alive(s);
        if plain {
            let mut found = self.graph_walk(graph, q, ef.max(k), None)?;
            found.retain(|&(s, _)| alive(s));
            return Some(self.hits(q, k, found));
        }
        // With no tombstones every slot passes: skip the predicate call per kept node.
        let keep: Option<&dyn Fn(usize) -> bool> = match self.dead {
            0 => None,
            _ => Some(&alive),
        };
        Some(self.hits(q, k, self.graph_walk(graph, q, ef.max(k), keep)?))
    }

    /// Top-k through `graph` among the slots `keep` lets through, best first; empty if the graph
    /// refused the query (the caller then scans exactly, as when too few pass).
    fn graph_top_k(
        &self,
        graph: &Graph,
        q: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let found = self.graph_walk(graph, q, ef.max(k), Some(keep));
        self.hits(q, k, found.unwrap_or_default())
    }

    fn graph_walk(
        &self,
        graph: &Graph,
        q: &[f32],
        ef: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Option<Vec<(usize, f32)>> {
        graph
            .search(q, ef, keep)
            .inspect_err(|e| tracing::warn!(error = %e, "graph search failed; scanning exactly"))
            .ok()
    }

    /// The best `k` of `found` (slots with the graph's f16 distance, best first) by their
    /// similarity computed here in f32, so that scores and order match the exact scan's. f16
    /// rounding moves a distance by at most [`F16_DOT_ERROR`], so any candidate that is in the f32
    /// top `k` lies within twice that of the graph's k-th distance: those, and only those, are
    /// rescored (usually a few more than `k`; a fixed number could cut a tie-rich list short).
    fn hits(&self, q: &[f32], k: usize, found: Vec<(usize, f32)>) -> Vec<(usize, f32)> {
        let Some(&(_, kth)) = found.get(k.saturating_sub(1)).or(found.last()) else {
            return Vec::new();
        };
        let mut hits: Vec<(usize, f32)> = found
            .into_iter()
            .take_while(|&(_, d)| d <= kth + 2.0 * F16_DOT_ERROR)
            .map(|(s, _)| (s, dot(q, self.vector(s))))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(k);
        hits
    }
}

/// Dot product: [`crate::simd::dot`]'s lane sums, with an AVX2+FMA build of them chosen at run time
/// (the crate is compiled for baseline x86-64, which only has SSE2). No AVX-512 copy
/// (`simd::at_level!` would add one): a search's distance waits on memory, and wider variants
/// timed no faster (BENCHMARKS.md, "usearch in place of hnsw_rs", point 7).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU features this function is compiled for were just detected.
            return unsafe { dot_avx2(a, b) };
        }
    }
    crate::simd::dot(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::dot(a, b)
}

/// Scales `v` to unit length in place; `false` for a zero or non-finite vector.
pub(crate) fn normalize(v: &mut [f32]) -> bool {
    if !v.iter().all(|x| x.is_finite()) {
        return false;
    }
    // f64 so that the result's norm is 1 to within f32 rounding (DistDot asserts dot <= 1+2e-6).
    let norm = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for x in v.iter_mut() {
        *x = (*x as f64 / norm) as f32;
    }
    true
}

#[derive(Clone, Copy)]
struct Scored(f32, usize);

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    // Reversed so that BinaryHeap's top is the worst of the kept hits.
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    fn push(&mut self, slot: usize, score: f32) {
        if self.heap.len() < self.k {
            self.heap.push(Scored(score, slot));
        } else if let Some(worst) = self.heap.peek() {
            if score > worst.0 {
                self.heap.pop();
                self.heap.push(Scored(score, slot));
            }
        }
    }

    fn merge(mut self, other: TopK) -> TopK {
        for Scored(s, i) in other.heap {
            self.push(i, s);
        }
        self
    }

    fn into_sorted(self) -> Vec<(usize, f32)> {
        // Ascending by the reversed order = best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Scored(s, i)| (i, s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Liveness follows pushes (alive or carried-over tombstones) and removals, across word
    /// boundaries, and a slot past the end is not alive.
    #[test]
    fn alive_bits_follow_pushes_and_removals() {
        let mut idx = Index::new(2);
        for i in 0..130usize {
            let n = idx.push_slot(Arc::from(format!("s{i}")), i % 3 != 0);
            assert_eq!(n, i);
        }
        idx.insert("live", "d", 0, 0, &[1.0, 0.0], serde_json::Value::Null);
        let live = idx.slot_count() - 1;
        assert!(idx.is_alive(live));
        for i in 0..130 {
            assert_eq!(idx.is_alive(i), i % 3 != 0, "slot {i}");
        }
        assert!(!idx.is_alive(131) && !idx.is_alive(100_000));
        assert!(idx.remove("live"));
        assert!(!idx.is_alive(live));
        // Re-adding an id gives it a new live slot and leaves the old one dead.
        idx.insert("live", "d", 0, 0, &[0.0, 1.0], serde_json::Value::Null);
        assert!(!idx.is_alive(live) && idx.is_alive(live + 1));
    }

    #[test]
    fn dot_matches_naive_on_odd_lengths() {
        for n in [0, 1, 15, 16, 17, 100, 512] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn exact_search_orders_and_skips_tombstones() {
        let mut idx = Index::new(2);
        for (id, v) in [("a", [1.0, 0.0]), ("b", [0.6, 0.8]), ("c", [0.0, 1.0])] {
            idx.insert(id, "d", 0, 0, &v, serde_json::Value::Null);
        }
        let hits = idx.search_exact(&[1.0, 0.0], 2);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 1]);
        idx.remove("a");
        let hits = idx.search_exact(&[1.0, 0.0], 5);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    /// The graph ranks by an f16 dot product; `hits` must give the f32 order back. Two vectors
    /// whose order against `q` flips when rounded to f16 are put in a graph with fillers far from
    /// `q`: the graph's best is the wrong one, the answer for k = 1 must be the right one.
    #[test]
    fn graph_hits_are_rescored_in_f32_where_f16_rounding_flips_the_order() {
        let dim = 4;
        let h = |x: f32| half::f16::from_f32(x).to_f32();
        let dot16 = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| h(*x) * h(*y)).sum::<f32>();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut unit = || {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 24) as f32 + 0.5
                })
                .collect();
            assert!(normalize(&mut v));
            v
        };
        let q = unit();
        // A pair with f32 order a > b and f16 order clearly the other way round.
        let (a, b) = loop {
            let (a, b) = (unit(), unit());
            let (d32, d16): (f32, f32) = (dot(&q, &a) - dot(&q, &b), dot16(&q, &a) - dot16(&q, &b));
            if d32 > 0.0 && d16 < -1e-4 {
                break (a, b);
            }
        };
        let mut idx = Index::new(dim);
        idx.insert("a", "d", 0, 0, &a, serde_json::Value::Null);
        idx.insert("b", "d", 0, 0, &b, serde_json::Value::Null);
        let far: Vec<Vec<f32>> = (0..30)
            .map(|i| {
                let mut v: Vec<f32> = q.iter().map(|x| -x).collect();
                v[i % dim] += 0.1 * (i / dim + 1) as f32;
                assert!(normalize(&mut v));
                v
            })
            .collect();
        for (i, v) in far.iter().enumerate() {
            idx.insert(&format!("far{i}"), "d", 0, 0, v, serde_json::Value::Null);
        }
        let graph = Graph::new(dim, 8, 32, idx.len()).unwrap();
        let items: Vec<(usize, &[f32])> = (0..idx.len()).map(|s| (s, idx.vector(s))).collect();
        graph.insert(&items).unwrap();
        assert_eq!(
            graph.search(&q, 4, None).unwrap()[0].0,
            1,
            "f16 ranks b first"
        );
        idx.graph = Some(Arc::new(graph));
        let hits = idx.search_graph(&q, 1, 16, false).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, 0, "f32 ranks a first");
        assert_eq!(hits[0].1, dot(&q, &a));
    }
}

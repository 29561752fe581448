//! The HNSW graph over one index's slots, on usearch (Unum's C++ HNSW behind `cxx`).
//!
//! Owns the graph's settings (inner product, `M`, `ef_construction`), its copy of the vectors
//! in f16, growing its capacity, the cap on calls inside usearch at once, and a search that
//! honours a per-query `ef` and a keep predicate. A graph key is the store's slot number; the
//! graph never forgets a slot (the store's tombstones are skipped by the predicate, and a rebuild
//! makes a new graph). Does not own the vectors of record, tombstones or locking of the index
//! (`index`, `task`), nor the final scores: the index rescores what the graph finds in f32.
//!
//! Why f16: usearch keeps its own copy of every vector, and a walk's distances wait on those
//! copies coming from memory (BENCHMARKS.md, usearch point 7). Half the bytes make the graph
//! about half the memory (152 MB against 286 MB at 100k 512-d) and the build 1.2-1.5x faster,
//! at the same recall@10; queries ran 1.07-1.33x faster in the last alternation with the f32
//! graph, about level in an earlier one (BENCHMARKS.md "The graph's copy in f16").
//! f16 rather than bf16 or i8: unit vectors' components are small (~0.04 for 512-d), and f16's
//! 11-bit significand keeps a dot product within ~1e-3 of f32, where bf16's 8 bits would not.
//!
//! The distance is this module's f16 dot product (AVX2+FMA+F16C, chosen at run time) handed
//! to usearch as its metric, so usearch is built without its `numkong` C kernels (BENCHMARKS.md
//! "usearch in place of hnsw_rs": the same queries/s, a faster build, 6 minutes less of a clean
//! build).
//!
//! Why usearch rather than hnsw_rs (BENCHMARKS.md "hnsw_rs against faiss"): with a filter,
//! hnsw_rs 0.3.5 drops HNSW's stopping rule and pays a SipHash map insert, `Arc` clones and
//! allocations per visited node; usearch applies the predicate only to what it keeps (as faiss's
//! `IDSelector` does), so the walk stops as early as an unfiltered one, and it keeps per-thread
//! visited sets and heaps that are reused across queries.

use half::slice::HalfFloatSliceExt;
use parking_lot::{Condvar, Mutex, RwLock};
use thiserror::Error;
use usearch::{Index as Usearch, IndexOptions, MetricKind, ScalarKind};

/// Calls that may be inside usearch at once. usearch keeps one search/insert context (visited
/// set, heaps, a query buffer) per "thread" reserved up front and fails a call that finds none
/// free; `Gate` holds further callers back instead. A context costs about a vector's bytes plus
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
            quantization: ScalarKind::F16,
            connectivity: m,
            expansion_add: ef_construction,
            // usearch searches with max(this, wanted) (index.hpp, `index_gt::search` in 2.26.6);
            // `search` asks for `ef` results, so 1 here makes the per-query `ef` the candidate
            // list size (0 would mean its default, 64).
            expansion_search: 1,
            multi: false,
        };
        let mut index = Usearch::new(&options)?;
        let dot_f16 = dot_f16_for_cpu();
        // Our own f16 dot product, not usearch's: built without its `numkong` feature
        // (BENCHMARKS.md "usearch in place of hnsw_rs": that C build was the largest unit of a
        // clean build), usearch's own kernels are compiled for baseline x86-64 (SSE2 has no f16
        // conversion at all).
        index.change_metric::<usearch::f16>(Box::new(
            move |a: *const usearch::f16, b: *const usearch::f16| {
                // SAFETY: usearch calls its metric with two vectors of the index's `dim` f16s
                // (a 2-byte IEEE half, as `u16` bits): stored ones and queries, whose length its
                // `add` and `search` check against `dim`.
                let (a, b) = unsafe {
                    (
                        std::slice::from_raw_parts(a.cast::<u16>(), dim),
                        std::slice::from_raw_parts(b.cast::<u16>(), dim),
                    )
                };
                1.0 - dot_f16(a, b)
            },
        ));
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

    /// Bytes usearch holds for the graph: its nodes and links and its copy of the vectors.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
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
        // Rounded once, before the gate, for the first try and the retry alike.
        let h = halves(v);
        let h = usearch::f16::from_i16s(&h);
        let added = {
            let _g = self.grow.read();
            let _c = self.gate.enter();
            self.index.add(slot as u64, h)
        };
        match added {
            Ok(()) => Ok(()),
            // Another inserter took the room reserved for this one: grow and try once more.
            Err(_) if self.len() >= self.index.capacity() => {
                self.ensure_capacity(self.len() + 1)?;
                let _g = self.grow.read();
                let _c = self.gate.enter();
                Ok(self.index.add(slot as u64, h)?)
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

    /// The `ef` best slots for `q` (unit length) that `keep` lets through, best first, each with
    /// its f16 distance (`1 - dot`, within [`F16_DOT_ERROR`] of the f32 one), from a walk with a
    /// candidate list of `ef`. `keep` is asked only about nodes good enough to be kept, so the
    /// walk stops where an unfiltered one would; `None` skips the call altogether.
    pub(crate) fn search(
        &self,
        q: &[f32],
        ef: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<Vec<(usize, f32)>, GraphError> {
        let q = halves(q);
        let q = usearch::f16::from_i16s(&q);
        let _g = self.grow.read();
        let _c = self.gate.enter();
        let found = match keep {
            Some(keep) => self
                .index
                .filtered_search(q, ef, |key: u64| keep(key as usize))?,
            None => self.index.search(q, ef)?,
        };
        let mut found: Vec<(usize, f32)> = found
            .keys
            .into_iter()
            .zip(found.distances)
            .map(|(k, d)| (k as usize, d))
            .collect();
        // usearch returns them sorted; `Index::hits` relies on it, so it is made a guarantee here
        // (a sorted input costs the stable sort one pass).
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(found)
    }
}

/// How far the graph's distance between two unit vectors can be from the f32 one. Rounding each
/// component to f16 moves it by at most 2^-11 of itself (2^-25 absolutely below f16's normal
/// range), so a product moves by at most ~2^-10 of |a_i b_i|, and Σ|a_i b_i| <= |a||b| = 1
/// (Cauchy-Schwarz); f32 accumulation adds ~3e-5 at 512-d. 1.1e-3 covers 2^-10 = 9.8e-4 and both.
pub(crate) const F16_DOT_ERROR: f32 = 1.1e-3;

/// The bits of `v` rounded to IEEE half precision (usearch's f16 is a view of such `i16`s).
fn halves(v: &[f32]) -> Vec<i16> {
    let mut h = vec![half::f16::ZERO; v.len()];
    h.convert_from_f32_slice(v);
    h.iter().map(|x| x.to_bits() as i16).collect()
}

/// The f16 dot product for this CPU, chosen once per graph (usearch calls the metric for every
/// distance). AVX2+FMA+F16C only: an AVX-512F copy (16 lanes, `vcvtph2ps zmm`) ran at 0.47-0.64x
/// faiss against this one's 0.54-0.81x in alternating runs on a Zen 4 (BENCHMARKS.md "The graph's
/// copy in f16") and answered as many queries on a full-width Zen 5 ("On an AMD Zen 5", under the
/// store); a distance waits on memory, not on arithmetic, as with the f32 dot (usearch point 7).
fn dot_f16_for_cpu() -> fn(&[u16], &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU features `dot_f16_avx2` is compiled for were just detected.
        return |a, b| unsafe { dot_f16_avx2(a, b) };
    }
    dot_f16_scalar
}

/// `a · b` of two f16 vectors (as bits), accumulated in f32.
fn dot_f16_scalar(a: &[u16], b: &[u16]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| half::f16::from_bits(x).to_f32() * half::f16::from_bits(y).to_f32())
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[u16], b: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, the length of both slices; unaligned loads.
        unsafe {
            let a0 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i).cast()));
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i).cast()));
            let a1 = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i + 8).cast()));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8).cast()));
            s0 = _mm256_fmadd_ps(a0, b0, s0);
            s1 = _mm256_fmadd_ps(a1, b1, s1);
        }
        i += 16;
    }
    let s = _mm256_add_ps(s0, s1);
    let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    _mm_cvtss_f32(q) + dot_f16_scalar(&a[i..n], &b[i..n])
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
                .filter(|&i| g.search(&vs[i], 400, None).unwrap()[0].0 != i)
                .collect();
            assert!(missed.is_empty(), "round {round}: not found: {missed:?}");
        }
    }

    /// The distance usearch walks with is this module's f16 dot product (`new` replaces usearch's
    /// own metric): with a candidate list as long as the graph the walk reaches every node, so
    /// its order must be the exact order by that product, best first.
    #[test]
    fn a_walk_as_wide_as_the_graph_ranks_by_the_f16_dot_product() {
        let dim = 24;
        let n = 400;
        let g = Graph::new(dim, 8, 64, n).unwrap();
        let vs: Vec<Vec<f32>> = (0..n as u64).map(|i| unit(i, dim)).collect();
        let items: Vec<(usize, &[f32])> = vs.iter().enumerate().map(|(i, v)| (i, &v[..])).collect();
        g.insert(&items).unwrap();
        let bits = |v: &[f32]| -> Vec<u16> { halves(v).iter().map(|&h| h as u16).collect() };
        let dot = dot_f16_for_cpu();
        for seed in [10_001, 10_002, 10_003] {
            let q = unit(seed, dim);
            let qb = bits(&q);
            let mut exact: Vec<usize> = (0..n).collect();
            exact.sort_by(|&a, &b| dot(&qb, &bits(&vs[b])).total_cmp(&dot(&qb, &bits(&vs[a]))));
            let found = g.search(&q, n, None).unwrap();
            let slots: Vec<usize> = found.iter().map(|f| f.0).collect();
            assert_eq!(slots[..20], exact[..20]);
            // The distances it reports are the f16 ones, within the bound of the f32 ones.
            for &(s, d) in &found {
                assert_eq!(d, 1.0 - dot(&qb, &bits(&vs[s])));
                let f32_dot: f32 = q.iter().zip(&vs[s]).map(|(x, y)| x * y).sum();
                assert!((d - (1.0 - f32_dot)).abs() <= F16_DOT_ERROR);
            }
        }
    }

    /// The AVX2 f16 dot product agrees with the scalar one (tails of every length included), and
    /// on unit vectors both agree with the f32 dot product to within f16 rounding.
    #[test]
    fn the_f16_dot_product_matches_f32_to_within_rounding() {
        for dim in [1, 7, 15, 16, 17, 31, 32, 33, 100, 512] {
            let (a, b) = (unit(dim as u64, dim), unit(dim as u64 + 999, dim));
            let bits = |v: &[f32]| -> Vec<u16> { halves(v).iter().map(|&h| h as u16).collect() };
            let (ha, hb) = (bits(&a), bits(&b));
            let scalar = dot_f16_scalar(&ha, &hb);
            let f32_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            // A unit vector's components round to f16 with relative error <= 2^-11 each.
            assert!(
                (scalar - f32_dot).abs() < 2e-3,
                "dim {dim}: {scalar} vs {f32_dot}"
            );
            assert!(
                (dot_f16_for_cpu()(&ha, &hb) - scalar).abs() < 1e-5,
                "dim {dim}"
            );
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                // SAFETY: the features it is compiled for were just detected.
                let simd = unsafe { dot_f16_avx2(&ha, &hb) };
                assert!(
                    (simd - scalar).abs() < 1e-5,
                    "dim {dim}: {simd} vs {scalar}"
                );
            }
        }
    }
}

//! Search of `store::TaskStore`: HNSW recall against exact search, tombstones and compaction,
//! searches running while another thread adds and deletes, and filtered search through the graph.

use std::collections::HashSet;
use std::sync::Arc;

use mvserve::store::{Filter, SearchMode, StoreConfig, TaskStore};
use serde_json::json;

use crate::common::Rng;

fn ids(hits: &[mvserve::store::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// 20k uniform random 512-d vectors (the hard case for HNSW: no clusters to exploit), M 24,
/// ef_construction 200: recall@10 against the exact scan grows with the per-query `ef` (so the
/// `ef` asked for reaches usearch's walk) and stays near what faiss's `IndexHNSWFlat` gets on the
/// same kind of data at the same M / efConstruction / efSearch. Measured with
/// `store --n 20000 --queries 200 --kinds uniform --m 24 --efc 200 --ef 64,128,256,512` (BENCHMARKS.md
/// "usearch in place of hnsw_rs"): faiss 0.354 / 0.546 / 0.772 / 0.929 at ef 64 / 128 / 256 /
/// 512, the store 0.334 / 0.503 / 0.713 / 0.903. HNSW cannot do better here without a larger
/// M or ef (hnsw_rs passed a 0.98 bar at ef 256 only because its filtered walk never stopped
/// early: an exhaustive search). The bars sit under the store's numbers by the spread of 100
/// queries and a build whose parallel insert order varies; a walk that ignored `ef` (usearch's
/// default 64) or a broken graph would fail them.
#[test]
fn hnsw_recall_at_10_against_exact_on_20k_random_512d_vectors() {
    const N: usize = 20_000;
    const DIM: usize = 512;
    const Q: usize = 100;
    // (ef_search, lowest recall@10 accepted)
    const BARS: [(usize, f64); 3] = [(64, 0.25), (256, 0.62), (512, 0.85)];
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 1,
        hnsw_m: 24,
        ef_construction: 200,
        ef_search: 256,
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let store = TaskStore::open(dir.path(), DIM, cfg).unwrap();
    let mut rng = Rng(42);
    for start in (0..N).step_by(2000) {
        let batch = (start..start + 2000)
            .map(|i| (format!("v{i}"), rng.vector(DIM), json!(i)))
            .collect();
        store.add_batch("dig", batch).unwrap();
    }
    store.wait_for_maintenance();
    assert!(store.has_graph());
    let queries: Vec<Vec<f32>> = (0..Q).map(|_| rng.vector(DIM)).collect();
    let exact: Vec<HashSet<String>> = queries
        .iter()
        .map(|q| {
            let hits = store.search_with(q, 10, SearchMode::Exact).unwrap();
            ids(&hits).into_iter().collect()
        })
        .collect();
    let mut last = 0.0;
    for (ef, bar) in BARS {
        let mut found = 0;
        for (q, exact) in queries.iter().zip(&exact) {
            let approx = match ef {
                // The configured `ef_search`, through the default (`Auto`) path.
                256 => store.search(q, 10).unwrap(),
                _ => store
                    .search_with(q, 10, SearchMode::Graph { ef_search: ef })
                    .unwrap(),
            };
            assert_eq!(approx.len(), 10);
            assert!(approx.windows(2).all(|w| w[0].score >= w[1].score));
            found += approx.iter().filter(|h| exact.contains(&h.id)).count();
        }
        let recall = found as f64 / (Q * 10) as f64;
        eprintln!("ef {ef}: recall@10 = {recall:.4}");
        assert!(recall >= bar, "ef {ef}: recall@10 {recall} < {bar}");
        assert!(
            recall > last,
            "ef {ef}: recall@10 {recall} not above {last}"
        );
        last = recall;
    }
}

#[test]
fn deleted_ids_never_show_up_and_compaction_keeps_everything_else() {
    const DIM: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 200,
        hnsw_m: 8,
        ef_construction: 32,
        compact_tombstone_fraction: 0.3,
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let store = TaskStore::open(dir.path(), DIM, cfg).unwrap();
    let mut rng = Rng(7);
    let vecs: Vec<Vec<f32>> = (0..600).map(|_| rng.vector(DIM)).collect();
    let batch = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("v{i}"), v.clone(), json!(i)))
        .collect();
    store.add_batch("dig", batch).unwrap();
    store.wait_for_maintenance();
    assert!(store.has_graph());
    // Delete every other id: the tombstone fraction passes 0.3 and a rebuild runs.
    for i in (0..600).step_by(2) {
        assert!(store.delete(&format!("v{i}")).unwrap());
    }
    store.wait_for_maintenance();
    assert_eq!(store.len(), 300);
    for (i, v) in vecs.iter().enumerate() {
        let hits = store.search(v, 5).unwrap();
        assert!(hits.iter().all(|h| {
            let n: usize = h.id[1..].parse().unwrap();
            n % 2 == 1
        }));
        if i % 2 == 1 {
            assert_eq!(hits[0].id, format!("v{i}"), "self is the nearest");
            assert_eq!(hits[0].meta, json!(i));
        }
    }
    store.compact().unwrap();
    for i in (1..600).step_by(2) {
        let hits = store.search(&vecs[i], 1).unwrap();
        assert_eq!(hits[0].id, format!("v{i}"));
    }
}

#[test]
fn searches_run_while_another_thread_writes() {
    const DIM: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 300,
        hnsw_m: 8,
        ef_construction: 32,
        snapshot_every: 100,
        ..StoreConfig::default()
    };
    let store = Arc::new(TaskStore::open(dir.path(), DIM, cfg.clone()).unwrap());
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let mut rng = Rng(3);
            for i in 0..800 {
                let v = rng.vector(DIM);
                store.add(&format!("w{i}"), &v, "dig", json!(i)).unwrap();
                if i % 10 == 9 {
                    store.delete(&format!("w{}", i - 5)).unwrap();
                }
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut rng = Rng(100 + r);
                let mut searches = 0;
                while searches < 300 {
                    let hits = store.search(&rng.vector(DIM), 5).unwrap();
                    assert!(hits.len() <= 5);
                    for h in &hits {
                        let n: usize = h.id[1..].parse().unwrap();
                        assert_eq!(h.meta, json!(n));
                    }
                    searches += 1;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    store.wait_for_maintenance();
    let expected = 800 - 80;
    assert_eq!(store.len(), expected);
    let live: Vec<String> = store.ids();
    drop(store);
    let reopened = TaskStore::open(dir.path(), DIM, cfg).unwrap();
    let mut a = live;
    let mut b = reopened.ids();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// Filtered search through the built graph: `k` hits that all pass, at 50%, 1% and 0.1% of the
/// store passing, whether the planner picks (`Auto`) or the graph is forced (`Graph`, which falls
/// back to the exact scan when the graph finds too few); deletes stay invisible.
#[test]
fn filtered_search_returns_k_passing_hits_through_the_graph() {
    const N: usize = 20_000;
    const DIM: usize = 32;
    const Q: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 1000,
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let store = TaskStore::open(dir.path(), DIM, cfg).unwrap();
    let mut rng = Rng(7);
    for start in (0..N).step_by(5000) {
        let batch = (start..start + 5000)
            .map(|i| {
                let m = json!({"m2": i % 2, "m100": i % 100, "m1000": i % 1000});
                (format!("v{i}"), rng.vector(DIM), m)
            })
            .collect();
        store.add_batch("dig", batch).unwrap();
    }
    // One passing record of each filter goes: it must never come back.
    assert!(store.delete("v0").unwrap());
    store.wait_for_maintenance();
    assert!(store.has_graph());
    for key in ["m2", "m100", "m1000"] {
        let f = Filter::parse(&format!(r#"{{"eq": ["{key}", 0]}}"#)).unwrap();
        for mode in [SearchMode::Auto, SearchMode::Graph { ef_search: 64 }] {
            let mut found = 0;
            for _ in 0..Q {
                let q = rng.vector(DIM);
                let exact = store
                    .search_filtered(&q, 10, SearchMode::Exact, Some(&f))
                    .unwrap();
                let hits = store.search_filtered(&q, 10, mode, Some(&f)).unwrap();
                assert_eq!(hits.len(), 10, "{key} {mode:?}");
                assert!(hits.iter().all(|h| f.matches(&h.meta) && h.id != "v0"));
                assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                let exact: HashSet<String> = ids(&exact).into_iter().collect();
                found += hits.iter().filter(|h| exact.contains(&h.id)).count();
            }
            let recall = found as f64 / (Q * 10) as f64;
            eprintln!("{key} {mode:?}: recall@10 against the exact filtered scan {recall:.3}");
            assert!(recall >= 0.9, "{key} {mode:?}: recall@10 {recall}");
        }
    }
}

/// The payload index answers filtered searches exactly as evaluating the filter on every
/// record's meta does, through replaces, deletes, a compaction (which renumbers slots) and a
/// reopen (which rebuilds the index from the snapshot and the log).
#[test]
fn payload_index_answers_as_the_meta_scan_through_deletes_compaction_and_reopen() {
    const N: usize = 3000;
    const DIM: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 1000,
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let meta = |i: usize, gen: usize| {
        let lang = ["en", "de", "fr"][i % 3];
        json!({"meta": {"lang": lang, "year": 2000 + i % 25, "gen": gen},
               "m100": i % 100, "m1000": i % 1000, "flag": i.is_multiple_of(2), "name": format!("f{i}")})
    };
    let filters: Vec<Filter> = [
        r#"{"eq": ["m100", 0]}"#,
        r#"{"eq": ["m1000", 7]}"#,
        r#"{"eq": ["flag", true]}"#,
        r#"{"in": ["meta.lang", ["de", "fr"]]}"#,
        r#"{"and": [{"eq": ["meta.lang", "en"]}, {"gte": ["meta.year", 2020]}]}"#,
        r#"{"and": [{"eq": ["meta.gen", 1]}, {"ne": ["m100", 3]}]}"#,
        r#"{"or": [{"lt": ["meta.year", 2001.5]}, {"eq": ["name", "f17"]}]}"#,
        r#"{"eq": ["meta.gen", 1]}"#,
    ]
    .iter()
    .map(|t| Filter::parse(t).unwrap())
    .collect();
    let mut rng = Rng(11);
    let queries: Vec<Vec<f32>> = (0..5).map(|_| rng.vector(DIM)).collect();
    let compare = |store: &TaskStore, when: &str| {
        for f in &filters {
            for q in &queries {
                for mode in [SearchMode::Exact, SearchMode::Auto] {
                    store.set_payload_index(false);
                    let want = store.search_filtered(q, 10, mode, Some(f)).unwrap();
                    store.set_payload_index(true);
                    let got = store.search_filtered(q, 10, mode, Some(f)).unwrap();
                    if mode == SearchMode::Exact {
                        assert_eq!(ids(&got), ids(&want), "{when}: {f:?}");
                    }
                    assert!(got.iter().all(|h| f.matches(&h.meta)), "{when}: {f:?}");
                    assert_eq!(got.len(), want.len(), "{when}: {f:?} {mode:?}");
                }
            }
        }
    };
    {
        let store = TaskStore::open(dir.path(), DIM, cfg.clone()).unwrap();
        let batch = (0..N)
            .map(|i| (format!("v{i}"), rng.vector(DIM), meta(i, 0)))
            .collect();
        store.add_batch("dig", batch).unwrap();
        store.wait_for_maintenance();
        compare(&store, "after adds");
        // Replace every 7th with new meta, delete every 5th.
        for i in (0..N).step_by(7) {
            store
                .add(&format!("v{i}"), &rng.vector(DIM), "dig", meta(i, 1))
                .unwrap();
        }
        for i in (0..N).step_by(5) {
            store.delete(&format!("v{i}")).unwrap();
        }
        compare(&store, "after replaces and deletes");
        store.compact().unwrap();
        compare(&store, "after compaction");
        store.snapshot().unwrap();
        // Changes after the snapshot come back from the log.
        for i in (1..N).step_by(11) {
            store.delete(&format!("v{i}")).unwrap();
        }
        store
            .add("v1", &rng.vector(DIM), "dig", meta(1, 1))
            .unwrap();
        compare(&store, "after more deletes");
    }
    let store = TaskStore::open(dir.path(), DIM, cfg).unwrap();
    store.wait_for_maintenance();
    compare(&store, "after reopen");
}

#[path = "../../benches/common/vectors.rs"]
mod vectors;

/// Issue 17 goal 4's recall bar on the benchmark's clustered data (BENCHMARKS.md "HNSW against
/// faiss"): recall@10 of the graph against the exact scan >= 0.99 at the default `ef_search`,
/// with 10% of the records deleted after the graph was built (tombstones the walk must skip),
/// unfiltered and with a 50% filter, through the payload index's bitset and through the filter
/// evaluated on each record's meta.
#[test]
fn graph_recall_at_10_on_clustered_vectors_with_tombstones_and_a_filter() {
    use vectors::{recall, Clustered, DIM, K};
    const N: usize = 20_000;
    const Q: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        exact_threshold: 1000,
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let store = TaskStore::open(dir.path(), DIM, cfg.clone()).unwrap();
    let mut rng = vectors::Rng(17);
    let gen = Clustered::new(&mut rng, N);
    let data = gen.sample(&mut rng, N);
    let queries = gen.sample(&mut rng, Q);
    for start in (0..N).step_by(5000) {
        let batch = (start..start + 5000)
            .map(|i| {
                let v = data[i * DIM..(i + 1) * DIM].to_vec();
                (format!("v{i}"), v, json!({"m2": i % 2}))
            })
            .collect();
        store.add_batch("dig", batch).unwrap();
    }
    store.wait_for_maintenance();
    assert!(store.has_graph());
    let deleted = |i: usize| i % 10 == 3;
    for i in (0..N).filter(|&i| deleted(i)) {
        assert!(store.delete(&format!("v{i}")).unwrap());
    }
    // Below `compact_tombstone_fraction`: the graph keeps the deleted slots as tombstones.
    assert!(0.1 < cfg.compact_tombstone_fraction);
    store.wait_for_maintenance();
    let num = |hits: &[mvserve::store::Hit]| -> Vec<u32> {
        let n: Vec<u32> = hits.iter().map(|h| h.id[1..].parse().unwrap()).collect();
        assert!(
            n.iter().all(|&i| !deleted(i as usize)),
            "a deleted id came back"
        );
        n
    };
    let f = Filter::parse(r#"{"eq": ["m2", 0]}"#).unwrap();
    let graph = SearchMode::Graph {
        ef_search: cfg.ef_search,
    };
    for (name, filter, payload) in [
        ("unfiltered", None, true),
        ("m2 = 0, payload index", Some(&f), true),
        ("m2 = 0, meta scan", Some(&f), false),
    ] {
        store.set_payload_index(payload);
        let (mut got, mut truth) = (Vec::new(), Vec::new());
        for q in queries.chunks_exact(DIM) {
            let exact = store
                .search_filtered(q, K, SearchMode::Exact, filter)
                .unwrap();
            let hits = store.search_filtered(q, K, graph, filter).unwrap();
            assert_eq!(hits.len(), K, "{name}");
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
            assert!(filter.is_none_or(|f| hits.iter().all(|h| f.matches(&h.meta))));
            truth.push(num(&exact));
            got.push(num(&hits));
        }
        let r = recall(&got, &truth);
        eprintln!("{name}: recall@10 {r:.4}");
        assert!(r >= 0.99, "{name}: recall@10 {r}");
    }
}

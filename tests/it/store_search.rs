//! Search of `store::TaskStore`: HNSW recall against exact search, tombstones and compaction,
//! and searches running while another thread adds and deletes.

use std::collections::HashSet;
use std::sync::Arc;

use mvserve::store::{SearchMode, StoreConfig, TaskStore};
use serde_json::json;

use crate::common::Rng;

fn ids(hits: &[mvserve::store::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// 20k uniform random 512-d vectors (the hard case for HNSW: no clusters to exploit).
#[test]
fn hnsw_recall_at_10_against_exact_on_20k_random_512d_vectors() {
    const N: usize = 20_000;
    const DIM: usize = 512;
    const Q: usize = 100;
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
    let mut found = 0;
    for _ in 0..Q {
        let q = rng.vector(DIM);
        let exact: HashSet<String> = ids(&store.search_with(&q, 10, SearchMode::Exact).unwrap())
            .into_iter()
            .collect();
        let approx = store.search(&q, 10).unwrap();
        assert_eq!(approx.len(), 10);
        assert!(approx.windows(2).all(|w| w[0].score >= w[1].score));
        found += approx.iter().filter(|h| exact.contains(&h.id)).count();
    }
    let recall = found as f64 / (Q * 10) as f64;
    eprintln!("recall@10 = {recall:.4}");
    assert!(recall >= 0.98, "recall@10 {recall}");
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

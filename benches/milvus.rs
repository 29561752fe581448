//! The two store backends side by side through the one store interface, in one run on this
//! machine: ingest rate, then search latency (p50/p99), throughput and recall@10 against the
//! exact answer, for the embedded store (in process) and a real Milvus (over gRPC, its own
//! processes on the same cores), with the same HNSW M / efConstruction and each `ef`; then
//! Milvus throughput with one and with two concurrent searchers (what two query replicas add
//! on this machine).
//!
//! Usage: `cargo bench --bench milvus -- [--n 100000] [--queries 200] [--ef 64,128,256]
//!         [--milvus milvus://127.0.0.1:19530]` (`.ci/milvus start` prints the URL).
//! Data: the store benchmark's clustered unit vectors in 512-d (`benches/common/vectors.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mvserve::store::milvus::{MilvusBackend, MilvusUrl};
use mvserve::store::{
    BlobVersion, NewRecord, SearchMode, StoreBackend, StoreConfig, TaskStore, VectorStore,
};
use serde_json::json;

#[path = "common/vectors.rs"]
mod vectors;
use vectors::{recall, Clustered, Rng, DIM, K};

/// Rows per `add_records` call: what one upload batch or re-embedding pass writes at most.
const BATCH: usize = 1000;

struct Args {
    n: usize,
    queries: usize,
    efs: Vec<usize>,
    milvus: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 100_000,
        queries: 200,
        efs: vec![64, 128, 256],
        milvus: std::env::var("MVSERVE_TEST_MILVUS")
            .unwrap_or_else(|_| "milvus://127.0.0.1:19530".into()),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--n" => a.n = val.parse().expect("--n"),
            "--queries" => a.queries = val.parse().expect("--queries"),
            "--ef" => a.efs = val.split(',').map(|s| s.parse().expect("--ef")).collect(),
            "--milvus" => a.milvus = val,
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn records(data: &[f32], from: usize) -> Vec<NewRecord> {
    data.chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| NewRecord {
            id: format!("v{}", from + i),
            vector: v.to_vec(),
            meta: json!({"i": from + i}),
            blobs: BlobVersion::UNVERSIONED,
        })
        .collect()
}

/// Adds every vector in batches; returns vectors per second.
fn ingest(store: &dyn VectorStore, data: &[f32]) -> f64 {
    let t = Instant::now();
    for (b, chunk) in data.chunks(BATCH * DIM).enumerate() {
        store
            .add_records("bench", records(chunk, b * BATCH))
            .unwrap();
    }
    (data.len() / DIM) as f64 / t.elapsed().as_secs_f64()
}

fn rows(hits: &[mvserve::store::Hit]) -> Vec<u32> {
    hits.iter().map(|h| h.id[1..].parse().unwrap()).collect()
}

struct Run {
    p50_ms: f64,
    p99_ms: f64,
    qps: f64,
    recall: f64,
}

fn measure(queries: &[f32], truth: &[Vec<u32>], search: impl Fn(&[f32]) -> Vec<u32>) -> Run {
    let mut lat = Vec::new();
    let mut got = Vec::new();
    let t = Instant::now();
    for q in queries.chunks_exact(DIM) {
        let t0 = Instant::now();
        got.push(search(q));
        lat.push(t0.elapsed());
    }
    let total = t.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        p50_ms: pct(0.5).as_secs_f64() * 1e3,
        p99_ms: pct(0.99).as_secs_f64() * 1e3,
        qps: lat.len() as f64 / total.as_secs_f64(),
        recall: recall(&got, truth),
    }
}

/// Queries per second with `threads` searchers sharing the queries.
fn throughput(store: &Arc<dyn VectorStore>, queries: &[f32], threads: usize) -> f64 {
    let per = queries.len() / DIM / threads;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let store = store.clone();
            let qs = &queries[th * per * DIM..(th + 1) * per * DIM];
            s.spawn(move || {
                for q in qs.chunks_exact(DIM) {
                    store.search(q, K, None).unwrap();
                }
            });
        }
    });
    (per * threads) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args = parse_args();
    let config = StoreConfig::default();
    println!(
        "milvus vs embedded: n {}, {} queries, dim {DIM}, k {K}, HNSW M {} efConstruction {}, {} threads",
        args.n,
        args.queries,
        config.hnsw_m,
        config.ef_construction,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let mut rng = Rng(2);
    let gen = Clustered::new(&mut rng, args.n);
    let data = gen.sample(&mut rng, args.n);
    let queries = gen.sample(&mut rng, args.queries);
    let work = tempfile::tempdir().unwrap();

    // Embedded: ingest, graph build, exact ground truth, then HNSW at each ef.
    let emb = TaskStore::open(&work.path().join("embedded"), DIM, config.clone()).unwrap();
    let emb_rate = ingest(&emb, &data);
    let t = Instant::now();
    emb.wait_for_maintenance();
    let emb_build = t.elapsed();
    let truth: Vec<Vec<u32>> = queries
        .chunks_exact(DIM)
        .map(|q| rows(&emb.search_with(q, K, SearchMode::Exact).unwrap()))
        .collect();

    // Milvus: the same through the backend the server uses.
    let url = MilvusUrl::parse(
        &format!("{}?prefix=bench{}_", args.milvus, std::process::id()),
        None,
    )
    .unwrap();
    let backend = MilvusBackend::new(url, DIM, config.clone()).unwrap();
    let mil = backend
        .open("bench", 0, &work.path().join("milvus"), Some("bench"))
        .unwrap();
    let mil_rate = ingest(mil.as_ref(), &data);
    let t = Instant::now();
    mil.settle().unwrap();
    let mil_build = t.elapsed();
    // Milvus swaps indexed segments in a moment after the index is built.
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "ingest (batches of {BATCH}, durable and visible): embedded {emb_rate:.0} vectors/s, milvus {mil_rate:.0} vectors/s ({:.2}x of embedded); index after ingest: embedded {:.1} s, milvus flush + index {:.1} s",
        mil_rate / emb_rate,
        emb_build.as_secs_f64(),
        mil_build.as_secs_f64()
    );
    let exact = measure(&queries, &truth, |q| {
        rows(&emb.search_with(q, K, SearchMode::Exact).unwrap())
    });
    println!(
        "embedded exact: p50 {:.2} ms p99 {:.2} ms {:.0} q/s recall {:.3}",
        exact.p50_ms, exact.p99_ms, exact.qps, exact.recall
    );
    for &ef in &args.efs {
        let e = measure(&queries, &truth, |q| {
            rows(
                &emb.search_with(q, K, SearchMode::Graph { ef_search: ef })
                    .unwrap(),
            )
        });
        let cfg = StoreConfig {
            ef_search: ef,
            ..config.clone()
        };
        let url = MilvusUrl::parse(
            &format!("{}?prefix=bench{}_", args.milvus, std::process::id()),
            None,
        )
        .unwrap();
        let b = MilvusBackend::new(url, DIM, cfg).unwrap();
        let m_store = b
            .open("bench", 0, &work.path().join("milvus"), None)
            .unwrap();
        let m = measure(&queries, &truth, |q| {
            rows(&m_store.search(q, K, None).unwrap())
        });
        println!(
            "ef {ef:>3}: embedded p50 {:.2} ms p99 {:.2} ms {:.0} q/s recall {:.3} | milvus p50 {:.2} ms p99 {:.2} ms {:.0} q/s recall {:.3} | milvus/embedded q/s {:.2}x",
            e.p50_ms, e.p99_ms, e.qps, e.recall, m.p50_ms, m.p99_ms, m.qps, m.recall, m.qps / e.qps
        );
    }
    let one = throughput(&mil, &queries, 1);
    let two = throughput(&mil, &queries, 2);
    println!(
        "milvus throughput (ef {}): 1 searcher {one:.0} q/s, 2 searchers {two:.0} q/s ({:.2}x)",
        config.ef_search,
        two / one
    );
    backend.discard("bench", 0).unwrap();
}

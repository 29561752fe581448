//! Benchmark of the per-task vector store: ingest, HNSW build, exact vs HNSW search, and faiss's
//! HNSW on the same vectors (benches/store_faiss.py), all on this machine in one run.
//!
//! Usage: `cargo bench --bench store -- [--n 20000] [--queries 200] [--m 16] [--efc 100]
//!        [--ef 16,32,64,128,256] [--kinds clustered,uniform] [--no-faiss] [--filtered]`
//! `--filtered` adds metadata-filtered search (50%, 1% and 0.1% of the vectors passing) beside
//! unfiltered search on the same store, graph built, default planning (`exact_threshold` 20,000).
//! `--plain` adds the graph walk without the tombstone predicate beside the default at each ef.
//! Data: unit vectors in 512-d of two kinds (see `clustered` and `uniform`); queries are drawn
//! from the same distribution but are not in the data set.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mvserve::store::{Filter, SearchMode, StoreConfig, TaskStore};

#[path = "common/vectors.rs"]
mod vectors;
use serde_json::json;
use vectors::{recall, uniform, Clustered, Rng, DIM, K};

struct Args {
    n: usize,
    queries: usize,
    m: usize,
    efc: usize,
    efs: Vec<usize>,
    kinds: Vec<String>,
    faiss: bool,
    filtered: bool,
    plain: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 20_000,
        queries: 200,
        m: 16,
        efc: 100,
        efs: vec![16, 32, 64, 128, 256],
        kinds: vec!["clustered".into(), "uniform".into()],
        faiss: true,
        filtered: false,
        plain: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let num = || val.parse::<usize>().expect("numeric argument");
        match argv[i].as_str() {
            "--n" => a.n = num(),
            "--queries" => a.queries = num(),
            "--m" => a.m = num(),
            "--efc" => a.efc = num(),
            "--ef" => {
                a.efs = val
                    .split(',')
                    .map(|s| s.parse().expect("ef list"))
                    .collect()
            }
            "--kinds" => a.kinds = val.split(',').map(str::to_owned).collect(),
            "--no-faiss" => {
                a.faiss = false;
                i += 1;
                continue;
            }
            "--filtered" => {
                a.filtered = true;
                i += 1;
                continue;
            }
            "--plain" => {
                a.plain = true;
                i += 1;
                continue;
            }
            _ => {
                // cargo passes `--bench`; ignore anything unknown.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn write_f32(path: &Path, v: &[f32]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for x in v {
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

fn ids_of(hits: &[mvserve::store::Hit]) -> Vec<u32> {
    hits.iter().map(|h| h.id[1..].parse().unwrap()).collect()
}

fn run_kind(args: &Args, kind: &str, work: &Path) {
    let mut rng = Rng(if kind == "uniform" { 1 } else { 2 });
    let t = Instant::now();
    let (data, queries) = match kind {
        "uniform" => (uniform(&mut rng, args.n), uniform(&mut rng, args.queries)),
        _ => {
            let gen = Clustered::new(&mut rng, args.n);
            (
                gen.sample(&mut rng, args.n),
                gen.sample(&mut rng, args.queries),
            )
        }
    };
    println!(
        "\n== {kind}: n={} dim={DIM} queries={} M={} ef_construction={} (data generated in {:.1}s)",
        args.n,
        args.queries,
        args.m,
        args.efc,
        t.elapsed().as_secs_f64()
    );
    let dir = work.join(kind);
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = StoreConfig {
        exact_threshold: usize::MAX,
        hnsw_m: args.m,
        ef_construction: args.efc,
        snapshot_every: 0,
        ..StoreConfig::default()
    };

    // Ingest: log + memory only (the threshold keeps the graph out of it).
    let store = TaskStore::open(&dir.join("store"), DIM, cfg.clone()).unwrap();
    let t = Instant::now();
    let single = 300.min(args.n);
    for i in 0..single {
        let v = &data[i * DIM..(i + 1) * DIM];
        store.add(&format!("i{i}"), v, "bench", meta(i)).unwrap();
    }
    let single_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for start in (single..args.n).step_by(1000) {
        let end = (start + 1000).min(args.n);
        let batch = (start..end)
            .map(|i| {
                (
                    format!("i{i}"),
                    data[i * DIM..(i + 1) * DIM].to_vec(),
                    meta(i),
                )
            })
            .collect();
        store.add_batch("bench", batch).unwrap();
    }
    let batch_s = t.elapsed().as_secs_f64();
    println!(
        "ingest (log fsync + memory): add() one by one {:.0}/s, add_batch(1000) {:.0}/s",
        single as f64 / single_s,
        (args.n - single) as f64 / batch_s
    );
    let t = Instant::now();
    store.snapshot().unwrap();
    println!(
        "snapshot of {} vectors: {:.2}s",
        args.n,
        t.elapsed().as_secs_f64()
    );

    // Exact search: ground truth, on all cores (rayon) and on one.
    let q = |i: usize| &queries[i * DIM..(i + 1) * DIM];
    let t = Instant::now();
    let truth: Vec<Vec<u32>> = (0..args.queries)
        .map(|i| ids_of(&store.search_with(q(i), K, SearchMode::Exact).unwrap()))
        .collect();
    let exact_all = args.queries as f64 / t.elapsed().as_secs_f64();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let t = Instant::now();
    pool.install(|| {
        for i in 0..args.queries {
            store.search_with(q(i), K, SearchMode::Exact).unwrap();
        }
    });
    let exact_one = args.queries as f64 / t.elapsed().as_secs_f64();
    println!(
        "exact: {exact_one:.0} queries/s on 1 thread ({:.2} ms/query), {exact_all:.0} queries/s on {} threads",
        1000.0 / exact_one,
        rayon::current_num_threads()
    );
    drop(store);

    // HNSW: reopen with a threshold below n; the graph builds in the background from the
    // snapshot, with parallel inserts on all cores. The filtered runs keep the default threshold
    // (when n reaches it), which their planner also uses.
    cfg.exact_threshold = match args.filtered {
        true => StoreConfig::default().exact_threshold.min(args.n),
        false => 1,
    };
    let t = Instant::now();
    let store = TaskStore::open(&dir.join("store"), DIM, cfg.clone()).unwrap();
    let open_s = t.elapsed().as_secs_f64();
    store.wait_for_maintenance();
    let build_s = t.elapsed().as_secs_f64() - open_s;
    assert!(store.has_graph());
    println!(
        "open (snapshot load) {open_s:.2}s; HNSW build {build_s:.1}s = {:.0} inserts/s (one at a time, see graph::Graph::insert)",
        args.n as f64 / build_s
    );
    let graph_bytes = store.graph_memory_bytes().unwrap_or(0);
    println!(
        "HNSW graph memory (usearch memory_usage: links and its copy of the vectors): {:.1} MB = {:.0} bytes/vector; the store's own f32 vectors {:.1} MB",
        graph_bytes as f64 / 1e6,
        graph_bytes as f64 / args.n as f64,
        (args.n * DIM * 4) as f64 / 1e6
    );
    // Incremental adds into the built graph (each one fsynced and inserted).
    let extra = uniform(&mut Rng(99), 200);
    let t = Instant::now();
    for (i, v) in extra.chunks_exact(DIM).enumerate() {
        store
            .add(&format!("x{i}"), v, "bench", json!(null))
            .unwrap();
    }
    println!(
        "add() into the graph, one by one: {:.0}/s",
        200.0 / t.elapsed().as_secs_f64()
    );
    for i in 0..200 {
        store.delete(&format!("x{i}")).unwrap();
    }

    // (ef, recall, queries/s)
    let mut ours = Vec::new();
    // (ef, recall, queries/s) of the walk without the tombstone predicate, timed right after
    // the default one.
    let mut plain = Vec::new();
    let graph_run = |ef: usize| {
        let t = Instant::now();
        let got: Vec<Vec<u32>> = (0..args.queries)
            .map(|i| {
                ids_of(
                    &store
                        .search_with(q(i), K, SearchMode::Graph { ef_search: ef })
                        .unwrap(),
                )
            })
            .collect();
        let qps = args.queries as f64 / t.elapsed().as_secs_f64();
        (ef, recall(&got, &truth), qps)
    };
    for &ef in &args.efs {
        ours.push(graph_run(ef));
        if args.plain {
            store.set_plain_graph_search(true);
            plain.push(graph_run(ef));
            store.set_plain_graph_search(false);
        }
    }
    if args.plain {
        println!("plain graph search (no tombstone predicate) vs the default (predicate), same store, timed back to back:");
        println!("| ef_search | plain recall@10 | plain queries/s | default recall@10 | default queries/s | plain / default |");
        println!("|---|---|---|---|---|---|");
        for (&(ef, pr, pq), &(_, dr, dq)) in plain.iter().zip(&ours) {
            println!(
                "| {ef} | {pr:.4} | {pq:.0} | {dr:.4} | {dq:.0} | {:.2}x |",
                pq / dq
            );
        }
    }
    if args.filtered {
        filtered(args, &store, &queries, &pool);
    }
    drop(store);

    let faiss = if args.faiss {
        run_faiss(args, &dir, &data, &queries, &truth)
    } else {
        None
    };
    if let Some(f) = &faiss {
        println!(
            "faiss HNSW build {:.1}s = {:.0} inserts/s; ours / faiss build speed {:.2}x",
            f.build_s,
            args.n as f64 / f.build_s,
            f.build_s / build_s
        );
    }
    println!("| ef_search | recall@10 | queries/s (1 thread) | vs exact (1 thread) | faiss recall@10 | faiss queries/s | ours / faiss queries/s |");
    println!("|---|---|---|---|---|---|---|");
    for &(ef, r, qps) in &ours {
        let fr = faiss
            .as_ref()
            .and_then(|f| f.rows.iter().find(|row| row.0 == ef).copied());
        let (fr_s, fq_s, ratio) = match fr {
            Some((_, fr, fq)) => (
                format!("{fr:.4}"),
                format!("{fq:.0}"),
                format!("{:.2}x", qps / fq),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {ef} | {r:.4} | {qps:.0} | {:.1}x | {fr_s} | {fq_s} | {ratio} |",
            qps / exact_one
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each record's meta: `m2`, `m100`, `m1000` are 0 for 50%, 1% and 0.1% of the records.
fn meta(i: usize) -> serde_json::Value {
    json!({"i": i, "m2": i % 2, "m100": i % 100, "m1000": i % 1000})
}

/// Filtered against unfiltered search on the same store (graph built, `SearchMode::Auto`, one
/// thread), with recall@10 against the exact filtered scan; each filter timed with the payload
/// index and without it (the filter evaluated on every record's meta), alternately, `ROUNDS`
/// times.
fn filtered(args: &Args, store: &TaskStore, queries: &[f32], pool: &rayon::ThreadPool) {
    const ROUNDS: usize = 2;
    let q = |i: usize| &queries[i * DIM..(i + 1) * DIM];
    let time = |f: Option<&Filter>, payload: bool| {
        store.set_payload_index(payload);
        pool.install(|| {
            let t = Instant::now();
            for i in 0..args.queries {
                let hits = store.search_filtered(q(i), K, SearchMode::Auto, f).unwrap();
                assert_eq!(hits.len(), K);
            }
            args.queries as f64 / t.elapsed().as_secs_f64()
        })
    };
    let base: Vec<f64> = (0..ROUNDS).map(|_| time(None, true)).collect();
    let base_mean = base.iter().sum::<f64>() / ROUNDS as f64;
    println!(
        "filtered search, n={} ({} queries, 1 thread, Auto, exact_threshold {}), {ROUNDS} rounds each, payload index on / off alternately:",
        args.n,
        args.queries,
        store.config().exact_threshold
    );
    println!(
        "| filter | passing | payload index | queries/s (each round) | ms/query (mean) | vs unfiltered | recall@10 vs exact filtered |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| none | 100% | - | {} | {:.3} | 1.00x | - |",
        rounds(&base),
        1000.0 / base_mean
    );
    for (key, share) in [("m2", "50%"), ("m100", "1%"), ("m1000", "0.1%")] {
        let f = Filter::parse(&format!(r#"{{"eq": ["{key}", 0]}}"#)).unwrap();
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            on.push(time(Some(&f), true));
            off.push(time(Some(&f), false));
        }
        for (payload, qps) in [(true, &on), (false, &off)] {
            store.set_payload_index(payload);
            let ids = |mode| -> Vec<Vec<u32>> {
                (0..args.queries)
                    .map(|i| ids_of(&store.search_filtered(q(i), K, mode, Some(&f)).unwrap()))
                    .collect()
            };
            let r = recall(&ids(SearchMode::Auto), &ids(SearchMode::Exact));
            let mean = qps.iter().sum::<f64>() / ROUNDS as f64;
            println!(
                "| `{{\"eq\": [\"{key}\", 0]}}` | {share} | {} | {} | {:.3} | {:.2}x | {r:.4} |",
                if payload { "on" } else { "off" },
                rounds(qps),
                1000.0 / mean,
                mean / base_mean
            );
        }
    }
    store.set_payload_index(true);
}

struct FaissResult {
    build_s: f64,
    /// (ef, recall, queries/s)
    rows: Vec<(usize, f64, f64)>,
}

fn run_faiss(
    args: &Args,
    dir: &Path,
    data: &[f32],
    queries: &[f32],
    truth: &[Vec<u32>],
) -> Option<FaissResult> {
    let data_path = dir.join("data.f32");
    let query_path = dir.join("queries.f32");
    let truth_path = dir.join("truth.u32");
    write_f32(&data_path, data);
    write_f32(&query_path, queries);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&truth_path).unwrap());
    for x in truth.iter().flatten() {
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    drop(f);
    let efs: Vec<String> = args.efs.iter().map(|e| e.to_string()).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/store_faiss.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--data", data_path.to_str()?])
        .args(["--queries", query_path.to_str()?])
        .args(["--truth", truth_path.to_str()?])
        .args(["--dim", &DIM.to_string(), "--k", &K.to_string()])
        .args(["--m", &args.m.to_string(), "--efc", &args.efc.to_string()])
        .args(["--ef", &efs.join(",")])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output();
    for p in [data_path, query_path, truth_path] {
        let _ = std::fs::remove_file(p);
    }
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "faiss script failed (pip install faiss-cpu numpy): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            println!("faiss script not run: {e}");
            return None;
        }
    };
    let mut res = FaissResult {
        build_s: f64::NAN,
        rows: Vec::new(),
    };
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["build", s, _] => res.build_s = s.parse().ok()?,
            ["ef", ef, r, q] => res
                .rows
                .push((ef.parse().ok()?, r.parse().ok()?, q.parse().ok()?)),
            _ => {}
        }
    }
    Some(res)
}

fn main() {
    let args = parse_args();
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/store-bench");
    std::fs::create_dir_all(&work).unwrap();
    println!(
        "store benchmark: {} threads, avx2 {}, fma {}",
        rayon::current_num_threads(),
        std::is_x86_feature_detected!("avx2"),
        std::is_x86_feature_detected!("fma")
    );
    for kind in args.kinds.clone() {
        run_kind(&args, &kind, &work);
    }
}

//! Benchmark of the per-task vector store: ingest, HNSW build, exact vs HNSW search, and faiss's
//! HNSW on the same vectors (benches/store_faiss.py), all on this machine in one run.
//!
//! Usage: `cargo bench --bench store -- [--n 20000] [--queries 200] [--m 16] [--efc 100]
//!        [--ef 16,32,64,128,256] [--kinds clustered,uniform] [--no-faiss] [--filtered] [--plain]
//!        [--rounds 3]`
//! `--filtered` adds metadata-filtered search (50%, 1% and 0.1% of the vectors passing) beside
//! unfiltered search on the same store, graph built, default planning (`exact_threshold` 20,000).
//! `--plain` adds the graph walk without the tombstone predicate beside the default at each ef.
//! `--rounds R` (default 3) times every ef R times, and faiss's pass at an ef right after ours
//! (its Python process stays up between passes): the table gives medians and the range of the
//! per-pair ratios, so a change of load on the machine lands on both sides of a ratio.
//! Data: unit vectors in 512-d of two kinds (see `clustered` and `uniform`); queries are drawn
//! from the same distribution but are not in the data set.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
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
    rounds: usize,
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
        rounds: 3,
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
            "--rounds" => a.rounds = num().max(1),
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
        "HNSW graph memory (its f16 copy of the vectors, links and walk scratch): {:.1} MB = {:.0} bytes/vector; the store's own f32 vectors {:.1} MB",
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

    // faiss builds now, before any of our timed passes, and then waits for them.
    let mut faiss = match args.faiss {
        true => FaissPeer::start(args, &dir, &data, &queries, &truth),
        false => None,
    };
    if let Some(f) = &faiss {
        println!(
            "faiss HNSW build {:.1}s = {:.0} inserts/s; ours / faiss build speed {:.2}x",
            f.build_s,
            args.n as f64 / f.build_s,
            f.build_s / build_s
        );
    }

    // Per (round, ef), in order: (ef, recall, queries/s), and faiss's (recall, queries/s).
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
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
    for _ in 0..args.rounds {
        for &ef in &args.efs {
            ours.push(graph_run(ef));
            theirs.push(faiss.as_mut().and_then(|f| f.search(ef)));
            if args.plain {
                store.set_plain_graph_search(true);
                plain.push(graph_run(ef));
                store.set_plain_graph_search(false);
            }
        }
    }
    drop(faiss);
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

    println!(
        "graph search, {} round(s){}: medians; the ratio is the median of the per-round ratios (their range)",
        args.rounds,
        if theirs.iter().any(Option::is_some) {
            ", each faiss pass right after ours at the same ef"
        } else {
            ""
        }
    );
    println!("| ef_search | recall@10 | queries/s (1 thread) | vs exact (1 thread) | faiss recall@10 | faiss queries/s | ours / faiss queries/s |");
    println!("|---|---|---|---|---|---|---|");
    for ef in args.efs.iter().copied().filter({
        let mut seen = std::collections::HashSet::new();
        move |e| seen.insert(*e)
    }) {
        let at: Vec<usize> = (0..ours.len()).filter(|&i| ours[i].0 == ef).collect();
        let r = ours[at[0]].1;
        let qps = median(at.iter().map(|&i| ours[i].2).collect());
        let pairs: Vec<(f64, f64)> = at.iter().filter_map(|&i| theirs[i]).collect();
        let (fr_s, fq_s, ratio) = match pairs.len() {
            0 => ("-".into(), "-".into(), "-".into()),
            _ => {
                let ratios: Vec<f64> = at
                    .iter()
                    .filter_map(|&i| theirs[i].map(|(_, fq)| ours[i].2 / fq))
                    .collect();
                let (lo, hi) = ratios
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let range = match ratios.len() {
                    1 => String::new(),
                    _ => format!(" ({lo:.2}-{hi:.2})"),
                };
                (
                    format!("{:.4}", pairs[0].0),
                    format!("{:.0}", median(pairs.iter().map(|p| p.1).collect())),
                    format!("{:.2}x{range}", median(ratios)),
                )
            }
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

/// faiss's HNSW on the same vectors, in a Python process (benches/store_faiss.py --serve) that
/// builds once and then times one pass over the queries per `ef` it is sent, so each of its
/// passes can run right after ours at the same ef.
struct FaissPeer {
    child: std::process::Child,
    /// `None` once closed, which ends the script.
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    build_s: f64,
}

impl FaissPeer {
    fn start(
        args: &Args,
        dir: &Path,
        data: &[f32],
        queries: &[f32],
        truth: &[Vec<u32>],
    ) -> Option<FaissPeer> {
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/store_faiss.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--data", data_path.to_str()?])
            .args(["--queries", query_path.to_str()?])
            .args(["--truth", truth_path.to_str()?])
            .args(["--dim", &DIM.to_string(), "--k", &K.to_string()])
            .args(["--m", &args.m.to_string(), "--efc", &args.efc.to_string()])
            .args(["--threads", &rayon::current_num_threads().to_string()])
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                println!("faiss script not run: {e}");
                return None;
            }
        };
        let mut peer = FaissPeer {
            stdin: child.stdin.take(),
            stdout: std::io::BufReader::new(child.stdout.take()?),
            child,
            build_s: f64::NAN,
        };
        // The script has read the files once it reports its build.
        let line = peer.line();
        for p in [data_path, query_path, truth_path] {
            let _ = std::fs::remove_file(p);
        }
        match line
            .as_deref()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            Some(w) if w.len() == 3 && w[0] == "build" => {
                peer.build_s = w[1].parse().ok()?;
                Some(peer)
            }
            _ => {
                println!("faiss script failed (pip install faiss-cpu numpy; its error is above)");
                None
            }
        }
    }

    /// faiss's (recall@k, queries/s) over all the queries at `ef`.
    fn search(&mut self, ef: usize) -> Option<(f64, f64)> {
        let stdin = self.stdin.as_mut()?;
        writeln!(stdin, "ef {ef}").ok()?;
        stdin.flush().ok()?;
        let line = self.line()?;
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ef", e, r, q] if e.parse() == Ok(ef) => Some((r.parse().ok()?, q.parse().ok()?)),
            _ => None,
        }
    }

    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        }
    }
}

impl Drop for FaissPeer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let args = parse_args();
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/store-bench");
    std::fs::create_dir_all(&work).unwrap();
    // The CPU named, since ratios against faiss move between CPUs (BENCHMARKS.md, the store's
    // Zen 4 and Zen 5 runs).
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map_or("?", |(_, v)| v.trim())
    };
    println!(
        "store benchmark: {} threads, avx2 {}, fma {}, avx512f {}; cpu {} (family {})",
        rayon::current_num_threads(),
        std::is_x86_feature_detected!("avx2"),
        std::is_x86_feature_detected!("fma"),
        std::is_x86_feature_detected!("avx512f"),
        field("model name"),
        field("cpu family")
    );
    for kind in args.kinds.clone() {
        run_kind(&args, &kind, &work);
    }
}

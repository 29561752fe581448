//! Search throughput over HTTP with one and with two query replicas (`--role query`, each its
//! own process) against one Milvus, in one run on this machine: the real binary end to end
//! (HTTP, query encoding, the alias lookup, the Milvus search, the JSON answer).
//!
//! An indexer takes one real upload (which creates the task's generation, its alias and its
//! adapter copy), then `--n` more vectors go straight into that generation through the store
//! interface (uploading 100k videos is not what is measured). `--clients` client threads send
//! distinct queries (so the query-embedding cache never answers) for `--seconds`, first all to
//! one replica, then spread over two.
//!
//! Usage: `cargo bench --bench milvus_replicas -- [--n 100000] [--clients 4] [--seconds 20]
//!         [--milvus milvus://127.0.0.1:19530]` (`.ci/milvus start` prints the URL).
//! The replicas use the test backbone in `tests/fixtures/tiny-clip` (32-d embeddings), so the
//! encoder costs little and the rest of the path is what is compared.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvserve::store::milvus::{MilvusBackend, MilvusUrl};
use mvserve::store::{BlobVersion, NewRecord, StoreBackend, StoreConfig};
use serde_json::json;

#[path = "common/vectors.rs"]
mod vectors;
use vectors::{normalise, Rng};

#[path = "common/server.rs"]
mod server;
use server::Server;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The test backbone's embedding width.
const TINY_DIM: usize = 32;

struct Args {
    n: usize,
    clients: usize,
    seconds: u64,
    milvus: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: 100_000,
        clients: 4,
        seconds: 20,
        milvus: std::env::var("MVSERVE_TEST_MILVUS")
            .unwrap_or_else(|_| "milvus://127.0.0.1:19530".into()),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--n" => a.n = val.parse().expect("--n"),
            "--clients" => a.clients = val.parse().expect("--clients"),
            "--seconds" => a.seconds = val.parse().expect("--seconds"),
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

/// A server on the test backbone, HTTP only, with `args`.
fn start(data: &Path, args: &[&str]) -> Server {
    let model = Path::new(ROOT).join("tests/fixtures/tiny-clip");
    let flags = [&["--frames", "4", "--no-grpc"][..], args].concat();
    Server::start(&model, data, &flags)
}

fn upload(base: &str, id: &str, file: &str) {
    let bytes = std::fs::read(format!("{ROOT}/tests/fixtures/videos/{file}")).unwrap();
    let b = "mvservebenchboundary";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n{id}\r\n--{b}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    ureq::post(&format!("{base}/index?task=clip"))
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={b}"),
        )
        .send_bytes(&body)
        .unwrap();
}

struct Load {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` threads search for `seconds`, client `c` always on replica `c % replicas.len()`.
fn load(replicas: &[String], clients: usize, seconds: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (stop, done, lat) = (stop.clone(), done.clone(), lat.clone());
            let base = replicas[c % replicas.len()].clone();
            s.spawn(move || {
                let mut mine = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url =
                        format!("{base}/search?task=clip&k=10&q=a+person+in+clip+{c}+scene+{i}");
                    let t = Instant::now();
                    ureq::get(&url).call().expect("search");
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                lat.lock().unwrap().extend(mine);
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
    Load {
        qps: done.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

fn main() {
    let args = parse_args();
    println!(
        "query replicas over HTTP: n {}, {} clients, {} s per measurement, {} cores",
        args.n,
        args.clients,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let work = tempfile::tempdir().unwrap();
    let blobs = work.path().join("blobs");
    let store = format!("{}?prefix=replicas{}_", args.milvus, std::process::id());
    let shared = [
        "--store",
        store.as_str(),
        "--blob-dir",
        blobs.to_str().unwrap(),
    ];
    let indexer = start(
        &work.path().join("indexer"),
        &[&["--role", "indexer"], &shared[..]].concat(),
    );
    upload(&indexer.base, "real", "bikes.mp4");

    // The rest of the vectors straight into the served generation.
    let backend = MilvusBackend::new(
        MilvusUrl::parse(&store, None).unwrap(),
        TINY_DIM,
        StoreConfig::default(),
    )
    .unwrap();
    let gen = backend
        .open("clip", 0, &blobs.join("tasks/clip/gen-0"), None)
        .unwrap();
    let mut rng = Rng(7);
    let t = Instant::now();
    for from in (0..args.n).step_by(1000) {
        let batch = (from..(from + 1000).min(args.n))
            .map(|i| {
                let mut v: Vec<f32> = (0..TINY_DIM).map(|_| rng.gauss()).collect();
                normalise(&mut v);
                NewRecord {
                    id: format!("v{i}"),
                    vector: v,
                    meta: json!({"meta": {"i": i}}),
                    blobs: BlobVersion::UNVERSIONED,
                }
            })
            .collect();
        gen.add_records(gen.digest().unwrap().as_deref().unwrap(), batch)
            .unwrap();
    }
    gen.settle().unwrap();
    println!(
        "{} vectors added and indexed in {:.1} s",
        args.n,
        t.elapsed().as_secs_f64()
    );
    // Milvus swaps indexed segments in a moment after the index is built.
    std::thread::sleep(Duration::from_secs(5));

    let q1 = start(
        &work.path().join("q1"),
        &[&["--role", "query"], &shared[..]].concat(),
    );
    load(std::slice::from_ref(&q1.base), args.clients, 3); // warm-up
    let one = load(std::slice::from_ref(&q1.base), args.clients, args.seconds);
    let q2 = start(
        &work.path().join("q2"),
        &[&["--role", "query"], &shared[..]].concat(),
    );
    load(std::slice::from_ref(&q2.base), args.clients, 3); // warm-up
    let two = load(
        &[q1.base.clone(), q2.base.clone()],
        args.clients,
        args.seconds,
    );
    println!(
        "1 replica:  {:.0} q/s, p50 {:.1} ms, p99 {:.1} ms",
        one.qps, one.p50_ms, one.p99_ms
    );
    println!(
        "2 replicas: {:.0} q/s, p50 {:.1} ms, p99 {:.1} ms ({:.2}x the q/s of one)",
        two.qps,
        two.p50_ms,
        two.p99_ms,
        two.qps / one.qps
    );
}

//! The storage argument and hot-swap latency, measured on the real server binary with a
//! full-size random ViT-B/32 (written to a temporary model directory) and random full-size
//! adapters (12 frames, 32 words, down-in tying: 3.4 M parameters each).
//!
//! 1. Resident memory (VmRSS of the server process once ready) with 0, 1, 10 and 100 adapter tasks
//!    loaded, against one bare backbone and against N fully fine-tuned models (N x backbone).
//! 2. Hot-swap latency: from the rename of a new adapter file into `adapters/` to the first
//!    search answered with it (its digest in the answer), over 20 swaps of an empty task, with the
//!    default 100 ms debounce and with 10 ms.
//!
//! `cargo bench --bench registry [-- --tasks 1,10,100 --swaps 20]`

use candle_core::Device;
use mvserve::adapter::clip_param_count;
use mvserve::backbone::{random_weights, Backbone, ClipConfig, ModelSource};
use mvserve::bench::random_adapter_file;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "common/queries.rs"]
mod queries;
#[path = "common/server.rs"]
mod server;
use server::Server;

/// Every server here: HTTP only, and room for every adapter the benchmark loads.
const FLAGS: &[&str] = &["--no-grpc", "--max-loaded-adapters", "128"];

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A Hugging Face style model directory holding a random ViT-B/32.
fn write_model(dir: &Path) -> Backbone {
    std::fs::create_dir_all(dir).unwrap();
    let config = ClipConfig::vit_b_32();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let weights: std::collections::HashMap<_, _> = random_weights(&config, 7, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let tok =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip/tokenizer.json");
    std::fs::copy(tok, dir.join("tokenizer.json")).unwrap();
    Backbone::load(&ModelSource::Dir(dir.into()), &Device::Cpu).unwrap()
}

/// A random full-size adapter for `b`; returns its digest.
fn write_adapter(b: &Backbone, task: &str, out: &Path) -> String {
    let f = random_adapter_file(&b.clip, task).unwrap();
    f.write(out).unwrap();
    f.digest().to_string()
}

impl Server {
    /// (VmRSS, RssAnon) in MiB from /proc: all resident pages, and the anonymous ones only
    /// (heap: weights, adapters, indexes; not the mapped binary).
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap()
                / 1024.0
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    /// Samples RSS until two readings 300 ms apart agree within 1 MiB (the allocator returns
    /// load-time scratch memory with a delay).
    fn settled_rss_mib(&self) -> (f64, f64) {
        let mut last = self.rss_mib();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.rss_mib();
            if (now.0 - last.0).abs() < 1.0 {
                return now;
            }
            last = now;
        }
        last
    }

    fn load_ms(&self, task: &str) -> f64 {
        let v: serde_json::Value = ureq::get(&format!("{}/tasks/{task}", self.base))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        v["model"]["load_ms"].as_f64().unwrap()
    }

    fn search_digest(&self, task: &str) -> Option<String> {
        let r = ureq::get(&format!("{}/search?task={task}&q=a+dog&k=1", self.base)).call();
        let v: serde_json::Value = r.ok()?.into_json().ok()?;
        v["adapter_digest"].as_str().map(str::to_string)
    }
}

/// One client, one `GET /search` at a time through an adapter task: `n` distinct ~30-word queries
/// (each padded or cut to the task's 32 tokens: a text-tower pass with its adapter), then the same
/// again (answered from the query cache).
fn query_latency(s: &Server, task: &str, n: usize) {
    let texts = queries::texts(n);
    let p50 = || {
        let l = queries::sorted_ms(&texts, |t| {
            ureq::get(&format!("{}/search", s.base))
                .query("task", task)
                .query("q", t)
                .query("k", "10")
                .call()
                .unwrap();
        });
        (percentile(&l, 0.5), percentile(&l, 0.99))
    };
    let before = text_batch_totals(s);
    let miss = p50();
    let after = text_batch_totals(s);
    let hit = p50();
    println!(
        "one GET /search at a time, adapter task, {n} distinct 32-token queries: p50 {:.1} ms (p99 {:.1} ms) through the text tower, p50 {:.2} ms (p99 {:.2} ms) from the query cache",
        miss.0, miss.1, hit.0, hit.1
    );
    // Where a miss goes, from the server's own histograms over the same queries.
    let mean = |i: usize| (after[i].0 - before[i].0) / (after[i].1 - before[i].1).max(1.0) * 1e3;
    println!(
        "  of a miss, mean: {:.1} ms computing its text batch (pass + adapter), {:.1} ms waiting for the batch",
        mean(0),
        mean(1)
    );
}

/// (sum, count) of the encoder's text batch compute time and queue wait, from `/metrics`.
fn text_batch_totals(s: &Server) -> [(f64, f64); 2] {
    let body = ureq::get(&format!("{}/metrics", s.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("kind=\"text\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    [
        "mvserve_batch_duration_seconds",
        "mvserve_queue_wait_seconds",
    ]
    .map(|m| (value(&format!("{m}_sum")), value(&format!("{m}_count"))))
}

fn unix_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e6
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let counts: Vec<usize> = arg("--tasks", "1,10,100")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let swaps: usize = arg("--swaps", "20").parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let b = write_model(&model);
    let backbone_params = clip_param_count(&b.clip.config);
    let most = counts.iter().copied().max().unwrap_or(0);
    let pool = tmp.path().join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    let t0 = Instant::now();
    for i in 0..most {
        write_adapter(
            &b,
            &format!("t{i:03}"),
            &pool.join(format!("t{i:03}.safetensors")),
        );
    }
    let swap_digests: Vec<String> = (0..=swaps)
        .map(|i| write_adapter(&b, "swap", &pool.join(format!("swap{i}.safetensors"))))
        .collect();
    let adapter_bytes = std::fs::metadata(pool.join("swap0.safetensors"))
        .unwrap()
        .len();
    drop(b);
    eprintln!(
        "wrote {} adapters in {:.1} s",
        most + swaps + 1,
        t0.elapsed().as_secs_f64()
    );

    println!("## resident memory (VmRSS once ready; random ViT-B/32, f32)");
    println!(
        "backbone parameters {backbone_params} ({:.0} MiB in f32); adapter file {:.1} MiB",
        backbone_params as f64 * 4.0 / 1048576.0,
        adapter_bytes as f64 / 1048576.0
    );
    let run = |n: usize| -> (f64, f64) {
        let data = tmp.path().join(format!("data-{n}"));
        let dir = data.join("adapters");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            std::fs::hard_link(
                pool.join(format!("t{i:03}.safetensors")),
                dir.join(format!("t{i:03}.safetensors")),
            )
            .unwrap();
        }
        let s = Server::start(&model, &data, FLAGS);
        // The same warm-up everywhere (one query through plain CLIP), and every task answers
        // (its adapter is resident, not merely listed).
        assert!(s.search_digest("clip").is_some());
        for i in 0..n {
            assert!(s.search_digest(&format!("t{i:03}")).is_some());
        }
        s.settled_rss_mib()
    };
    let (bare, bare_anon) = run(0);
    println!("| tasks | VmRSS (MiB) | RssAnon (MiB) | RssAnon per task (MiB) | N fine-tuned models: N x bare VmRSS (MiB) | VmRSS / that |");
    println!("|---|---|---|---|---|---|");
    println!("| 0 (backbone only) | {bare:.0} | {bare_anon:.0} | - | - | - |");
    for &n in &counts {
        let (rss, anon) = run(n);
        let full = n as f64 * bare;
        println!(
            "| {n} | {rss:.0} | {anon:.0} | {:.1} | {full:.0} | {:.3}x |",
            (anon - bare_anon) / n as f64,
            rss / full
        );
    }

    println!("\n## hot-swap latency (rename into adapters/ -> first search answered with it)");
    for debounce in ["100", "10"] {
        let data = tmp.path().join(format!("swap-{debounce}"));
        let dir = data.join("adapters");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(pool.join("swap0.safetensors"), dir.join("swap.safetensors")).unwrap();
        let s = Server::start(
            &model,
            &data,
            &[FLAGS, &["--watch-debounce-ms", debounce]].concat(),
        );
        assert_eq!(
            s.search_digest("swap").as_deref(),
            Some(swap_digests[0].as_str())
        );
        let mut ms = Vec::new();
        let mut load = Vec::new();
        let mut first = Vec::new();
        for (i, want) in swap_digests.iter().enumerate().skip(1) {
            let staged = dir.join(".swap.staged");
            std::fs::copy(pool.join(format!("swap{i}.safetensors")), &staged).unwrap();
            let renamed_us = unix_us();
            let t0 = Instant::now();
            std::fs::rename(&staged, dir.join("swap.safetensors")).unwrap();
            loop {
                let q0 = Instant::now();
                if s.search_digest("swap").as_deref() == Some(want.as_str()) {
                    // The search that answered with the new adapter (it encoded the query anew).
                    first.push(q0.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "swap {i} never served"
                );
            }
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
            load.push(s.load_ms("swap"));
            eprintln!(
                "swap {i}: rename started at {renamed_us:.0} us since the epoch, served after {:.1} ms",
                ms[ms.len() - 1]
            );
        }
        if debounce == "100" {
            query_latency(&s, "swap", 30);
        }
        load.sort_by(|a, b| a.partial_cmp(b).unwrap());
        first.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut sorted = ms.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "debounce {debounce} ms: p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms over {} swaps (of which loading the file: p50 {:.0} ms; the search that answered with it: p50 {:.0} ms)",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted[0],
            sorted[sorted.len() - 1],
            sorted.len(),
            percentile(&load, 0.5),
            percentile(&first, 0.5)
        );
    }
}

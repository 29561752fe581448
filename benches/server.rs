//! Encoder batching benchmark: 32 concurrent query clients spread over 8 tasks, each sending
//! queries back to back, against the full-size text tower of a random ViT-B/32. The same load runs
//! through an encoder that batches (up to 32 texts, 2 ms wait, tasks mixed in one batch) and one
//! that encodes one query at a time; prints throughput and p50/p99 latency of both and the ratios.
//!
//! `cargo bench --bench server [-- --clients 32 --tasks 8 --per-client 8 --no-adapters]`
//!
//! The 8 tasks are 8 random full-size MV-Adapters (files written and loaded through the server's
//! `FileLoader`), so a mixed batch runs 8 different text adapters inside every block; with
//! `--no-adapters` they are 8 distinct built-in models (grouping only, no adapter compute).

use candle_core::{DType, Device};
use mvserve::adapter::BackboneDims;
use mvserve::backbone::{Backbone, Clip, ClipConfig, ClipTokenizer, ModelFiles};
use mvserve::bench::random_adapter_file;
use mvserve::encode::{ClipModel, Encoder, EncoderConfig, TaskModel};
use mvserve::registry::adapters::{AdapterCache, CacheConfig, FileLoader};
use mvserve::registry::watch::AdapterLoader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/queries.rs"]
mod queries;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn backbone() -> Backbone {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip");
    Backbone {
        clip: Clip::random(ClipConfig::vit_b_32(), 7, DType::F32, &Device::Cpu).unwrap(),
        tokenizer: ClipTokenizer::from_file(&dir.join("tokenizer.json")).unwrap(),
        files: ModelFiles {
            name: "random-vit-b-32".into(),
            config: dir.join("config.json"),
            weights: dir.join("model.safetensors"),
            tokenizer: dir.join("tokenizer.json"),
        },
    }
}

struct Run {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `tasks` models for the backbone of `backbone()`: adapters loaded from files, or plain CLIP.
fn models(tasks: usize, adapters: bool, dir: &Path) -> Vec<Arc<dyn TaskModel>> {
    if !adapters {
        return (0..tasks)
            .map(|t| {
                Arc::new(ClipModel {
                    digest: format!("task-{t}"),
                    text_len: 32,
                    frames: 12,
                }) as Arc<dyn TaskModel>
            })
            .collect();
    }
    let b = backbone();
    let cache = AdapterCache::new(
        &dir.join("adapter-cache"),
        Device::Cpu,
        CacheConfig::default(),
        None,
    )
    .unwrap();
    let loader = FileLoader {
        cache,
        backbone: b.clip.id.clone(),
        dims: BackboneDims::of(&b.clip.config),
    };
    (0..tasks)
        .map(|t| {
            let task = format!("task{t}");
            let path = dir.join(format!("{task}.safetensors"));
            random_adapter_file(&b.clip, &task)
                .unwrap()
                .write(&path)
                .unwrap();
            loader.load(&task, &path).unwrap().0
        })
        .collect()
}

fn run(
    config: EncoderConfig,
    models: &[Arc<dyn TaskModel>],
    clients: usize,
    per_client: usize,
) -> Run {
    let tasks = models.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let enc = Encoder::start(backbone(), config, None);
    // Warm-up.
    for m in models {
        rt.block_on(enc.encode_text(m.clone(), "warm up")).unwrap();
    }
    let t0 = Instant::now();
    let mut lat: Vec<f64> = rt.block_on(async {
        let mut handles = Vec::new();
        for c in 0..clients {
            let (enc, model) = (enc.clone(), models[c % tasks].clone());
            handles.push(tokio::spawn(async move {
                let mut l = Vec::with_capacity(per_client);
                for q in 0..per_client {
                    let text = format!("a person doing thing number {q} in scene {c}");
                    let t = Instant::now();
                    enc.encode_text(model.clone(), &text).await.unwrap();
                    l.push(t.elapsed().as_secs_f64() * 1e3);
                }
                l
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let wall = t0.elapsed().as_secs_f64();
    enc.shutdown();
    lat.sort_by(|a, b| a.total_cmp(b));
    Run {
        qps: lat.len() as f64 / wall,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    }
}

/// One client, one query at a time through the first task: p50 of `n` distinct 32-token queries
/// (each a text-tower pass with the task's adapter), then p50 of the same queries again (answered
/// by the encoder's query cache).
fn query_latency(model: &Arc<dyn TaskModel>, n: usize) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let enc = Encoder::start(backbone(), EncoderConfig::default(), None);
    rt.block_on(enc.encode_text(model.clone(), "warm up"))
        .unwrap();
    let texts = queries::texts(n);
    let p50 = || {
        let l = queries::sorted_ms(&texts, |t| {
            rt.block_on(enc.encode_text(model.clone(), t)).unwrap();
        });
        percentile(&l, 0.5)
    };
    let miss = p50();
    let hit = p50();
    enc.shutdown();
    (miss, hit)
}

fn main() {
    let clients = arg("--clients", 32);
    let tasks = arg("--tasks", 8);
    let per_client = arg("--per-client", 8);
    let adapters = !std::env::args().any(|a| a == "--no-adapters");
    let dir = tempfile::tempdir().unwrap();
    let models = models(tasks, adapters, dir.path());
    let batched = run(
        EncoderConfig {
            max_text_batch: 32,
            max_wait: Duration::from_millis(2),
            ..Default::default()
        },
        &models,
        clients,
        per_client,
    );
    let single = run(
        EncoderConfig {
            max_text_batch: 1,
            max_wait: Duration::ZERO,
            ..Default::default()
        },
        &models,
        clients,
        per_client,
    );
    println!(
        "{clients} clients over {tasks} tasks ({}), {} queries each run (ViT-B/32 text tower, random weights, CPU)",
        if adapters { "one random MV-Adapter each" } else { "built-in, no adapter" },
        clients * per_client
    );
    for (name, r) in [("batched", &batched), ("one-at-a-time", &single)] {
        println!(
            "{name:>14}: {:8.1} queries/s  p50 {:7.1} ms  p99 {:7.1} ms",
            r.qps, r.p50_ms, r.p99_ms
        );
    }
    println!(
        "batched / one-at-a-time: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}",
        batched.qps / single.qps,
        batched.p50_ms / single.p50_ms,
        batched.p99_ms / single.p99_ms
    );
    let (miss, hit) = query_latency(&models[0], arg("--latency-queries", 30));
    println!(
        "one query at a time, task0: p50 {miss:.2} ms through the backbone, p50 {:.1} us from the query cache (x{:.0})",
        hit * 1e3,
        miss / hit
    );
}

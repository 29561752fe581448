//! Prometheus metrics (all named `mvserve_*`), recorded where things happen: the HTTP middleware
//! and the gRPC service (requests, latency, errors by code), the handlers (per-task operations, videos indexed,
//! filtered searches, searches by example), the
//! encoder (batch sizes, queue waits, dropped jobs via [`EncodeObserver`]) and the scrape itself
//! (queue depth, tasks, videos per task), and the adapter cache and watcher (loads, evictions,
//! updates and how long they took), and the stages of an upload (`mvserve_ingest_stage_seconds`).

use crate::encode::EncodeObserver;
use crate::registry::adapters::CacheObserver;
use crate::registry::watch::Outcome;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub grpc_requests: IntCounterVec,
    pub grpc_latency: HistogramVec,
    pub task_requests: IntCounterVec,
    pub task_latency: HistogramVec,
    pub filtered_searches: IntCounterVec,
    pub errors: IntCounterVec,
    pub videos_indexed: IntCounterVec,
    /// Segments stored for videos indexed as moments (each its own vector).
    pub segments_indexed: IntCounterVec,
    /// Where an upload's time goes: receive, decode, encode, store (`IndexBatch::commit`).
    pub ingest_stage: HistogramVec,
    pub example_searches: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub batch_tasks: HistogramVec,
    pub batch_seconds: HistogramVec,
    pub queue_wait: HistogramVec,
    pub dropped: IntCounterVec,
    pub tasks: IntGauge,
    pub videos: IntGaugeVec,
    pub adapter_loads: IntCounterVec,
    pub adapter_load_seconds: Histogram,
    pub adapter_evictions: IntCounterVec,
    pub adapters_loaded: IntGauge,
    pub adapter_swaps: IntCounterVec,
    pub adapter_swap_seconds: HistogramVec,
}

const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("metric registers once");
            c
        }
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let hv = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };
        let sizes: Vec<f64> = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0].to_vec();
        Metrics {
            http_requests: cv(
                "mvserve_http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            http_latency: hv(
                "mvserve_http_request_duration_seconds",
                "HTTP request latency by route",
                &["route", "method"],
                LATENCY,
            ),
            grpc_requests: cv(
                "mvserve_grpc_requests_total",
                "gRPC calls by method and status code",
                &["method", "code"],
            ),
            grpc_latency: hv(
                "mvserve_grpc_request_duration_seconds",
                "gRPC call latency by method",
                &["method"],
                LATENCY,
            ),
            task_requests: cv(
                "mvserve_task_requests_total",
                "Operations per task (search, search_example, index, get, delete, thumbnail)",
                &["task", "op"],
            ),
            task_latency: hv(
                "mvserve_task_request_duration_seconds",
                "Latency of successful operations per task",
                &["task", "op"],
                LATENCY,
            ),
            filtered_searches: cv(
                "mvserve_filtered_searches_total",
                "Successful searches per task that gave a metadata filter (also counted in mvserve_task_requests_total)",
                &["task"],
            ),
            errors: cv(
                "mvserve_errors_total",
                "Error responses (HTTP and gRPC) by error code",
                &["code"],
            ),
            videos_indexed: cv(
                "mvserve_videos_indexed_total",
                "Videos indexed per task",
                &["task"],
            ),
            segments_indexed: cv(
                "mvserve_segments_indexed_total",
                "Segments indexed per task, for videos indexed as moments (--segment-seconds)",
                &["task"],
            ),
            ingest_stage: hv(
                "mvserve_ingest_stage_seconds",
                "Seconds per uploaded video in each ingest stage: receive (body to disk), decode \
                 (including the wait for a decode slot), encode (including the encoder queue), \
                 store (blobs, log write)",
                &["stage"],
                LATENCY,
            ),
            example_searches: cv(
                "mvserve_example_searches_total",
                "Searches by example (POST /search, gRPC SearchByExample) answered, per task and \
                 by what the example was (image or video)",
                &["task", "kind"],
            ),
            queue_depth: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("mvserve_queue_depth", "Jobs waiting for the encoder"),
                    &["queue"],
                )
                .expect("valid metric"),
            ),
            batch_size: hv(
                "mvserve_batch_size",
                "Jobs per encoder batch",
                &["kind"],
                &sizes,
            ),
            batch_tasks: hv(
                "mvserve_batch_tasks",
                "Distinct tasks per encoder batch",
                &["kind"],
                &sizes,
            ),
            batch_seconds: hv(
                "mvserve_batch_duration_seconds",
                "Compute time per encoder batch",
                &["kind"],
                LATENCY,
            ),
            queue_wait: hv(
                "mvserve_queue_wait_seconds",
                "Time a job waited for its batch",
                &["kind"],
                LATENCY,
            ),
            dropped: cv(
                "mvserve_jobs_dropped_total",
                "Jobs dropped before compute because their client had gone",
                &["kind"],
            ),
            tasks: reg(
                &registry,
                IntGauge::new("mvserve_tasks", "Tasks being served").expect("valid metric"),
            ),
            videos: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "mvserve_videos",
                        "Videos held per task (current generation)",
                    ),
                    &["task"],
                )
                .expect("valid metric"),
            ),
            adapter_loads: cv(
                "mvserve_adapter_loads_total",
                "Adapter loads per task (from adapters/ or, after an eviction, from the copy)",
                &["task"],
            ),
            adapter_load_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "mvserve_adapter_load_seconds",
                        "Time to read, validate and build one adapter",
                    )
                    .buckets(LATENCY.to_vec()),
                )
                .expect("valid metric"),
            ),
            adapter_evictions: cv(
                "mvserve_adapter_evictions_total",
                "Adapters evicted from memory by the LRU, per task",
                &["task"],
            ),
            adapters_loaded: reg(
                &registry,
                IntGauge::new(
                    "mvserve_adapters_loaded",
                    "Adapters holding their tensors in memory",
                )
                .expect("valid metric"),
            ),
            adapter_swaps: cv(
                "mvserve_adapter_updates_total",
                "Changes in adapters/ by outcome (added, swapped, reembedding, unchanged, removed, rejected)",
                &["outcome"],
            ),
            adapter_swap_seconds: hv(
                "mvserve_adapter_swap_seconds",
                "From the first file event to the task serving the new adapter (or to its rejection)",
                &["outcome"],
                LATENCY,
            ),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheObserver for Metrics {
    fn loaded(&self, task: &str, seconds: f64) {
        self.adapter_loads.with_label_values(&[task]).inc();
        self.adapter_load_seconds.observe(seconds);
    }
    fn evicted(&self, task: &str) {
        self.adapter_evictions.with_label_values(&[task]).inc();
    }
    fn resident(&self, count: usize) {
        self.adapters_loaded.set(count as i64);
    }
}

impl Metrics {
    /// Records what a change in adapters/ did and how long it took.
    pub fn adapter_update(&self, outcome: &Outcome, waited: std::time::Duration) {
        let label = match outcome {
            Outcome::Added { .. } => "added",
            Outcome::Swapped { .. } => "swapped",
            Outcome::Reembedding { .. } => "reembedding",
            Outcome::Unchanged => "unchanged",
            Outcome::Removed => "removed",
            Outcome::Rejected(_) => "rejected",
            Outcome::Ignored => return,
        };
        self.adapter_swaps.with_label_values(&[label]).inc();
        self.adapter_swap_seconds
            .with_label_values(&[label])
            .observe(waited.as_secs_f64());
    }
}

impl EncodeObserver for Metrics {
    fn batch(&self, kind: &'static str, jobs: usize, tasks: usize, seconds: f64) {
        self.batch_size
            .with_label_values(&[kind])
            .observe(jobs as f64);
        self.batch_tasks
            .with_label_values(&[kind])
            .observe(tasks as f64);
        self.batch_seconds
            .with_label_values(&[kind])
            .observe(seconds);
    }
    fn queue_wait(&self, kind: &'static str, seconds: f64) {
        self.queue_wait.with_label_values(&[kind]).observe(seconds);
    }
    fn dropped(&self, kind: &'static str) {
        self.dropped.with_label_values(&[kind]).inc();
    }
}

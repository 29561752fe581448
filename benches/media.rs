//! Ingest cost per video against the cost of encoding the same frames, in one process.
//!
//! For each real clip: the wall time of `media::load_video` (demux, decode up to the last needed
//! frame, sample 12, preprocess to 224x224, thumbnail), median of several runs, and its ratio to the
//! encode baseline: the time to encode 12 frames.
//!
//! BASELINE: `encode_12_frames` runs the real backbone (full-size ViT-B/32 with random weights,
//! f32, candle on CPU) on one video's 12 preprocessed frames, in the same process.
//!
//! Each clip is loaded twice per run, with the seeking decoder (the default) and with the
//! sequential one (every frame up to the last sampled one, the decoder before issue 13), and the
//! table gives their ratio: the same frames (tested in `tests/it/media_seek.rs`), different work.
//!
//! Run: `cargo bench --bench media` (set `MEDIA_BENCH_RUNS` to change the number of runs).

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use mvserve::media::{load_video_bytes_with, DecodeStrategy, MediaLimits, SampleSpec};

const FILES: &[&str] = &[
    "video7020.mp4",
    "video7021.mp4",
    "video7024.mp4",
    "video7025.mp4",
    "video740.mp4",
    "jPBxl9gFqNY_110_117.avi",
    "realshort.mp4",
    "carphone_distorted.mp4",
    "bikes.mp4",
    "newtonscradle.gif",
    "big_buck_bunny_432_433.webm",
    "gop2s_bframes.mp4",
    "gop2s_bframes.avi",
    "gop2s.webm",
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The backbone encode of 12 frames (see the top of the file). Returns its median time.
fn encode_12_frames(runs: usize) -> candle_core::Result<Duration> {
    let dev = Device::Cpu;
    let clip = mvserve::bench::random_vit_b_32(DType::F32, &dev).expect("random ViT-B/32");
    let pixels = Tensor::randn(0f32, 1.0, (12, 3, 224, 224), &dev)?;
    clip.vision.forward(&pixels, None, false)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        clip.vision.forward(&pixels, None, false)?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

fn main() {
    let runs: usize = std::env::var("MEDIA_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos");
    let spec = SampleSpec::default();
    let limits = MediaLimits::default();
    let encode = encode_12_frames(runs).expect("backbone encode runs");
    println!(
        "baseline (ViT-B/32 vision tower on 12 frames, random weights, f32, {} threads): {:.1} ms",
        rayon::current_num_threads(),
        encode.as_secs_f64() * 1e3
    );
    println!(
        "| file | decoder | frames | seek ms (median of {runs}) | ingest / encode | sequential ms | sequential / seek |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in FILES {
        let bytes = std::fs::read(dir.join(name)).expect("fixture");
        let mut times = [Vec::new(), Vec::new()];
        let mut last = None;
        'runs: for _ in 0..runs {
            // Alternate the two so that load on the machine hits both alike.
            for (k, strategy) in [DecodeStrategy::Seek, DecodeStrategy::Sequential]
                .into_iter()
                .enumerate()
            {
                let t = Instant::now();
                match load_video_bytes_with(&bytes, &spec, &limits, strategy) {
                    Ok(f) => last = Some(f),
                    Err(e) => {
                        println!("| {name} | error: {e} | | | | | |");
                        break 'runs;
                    }
                }
                times[k].push(t.elapsed());
            }
        }
        let Some(f) = last else { continue };
        let [seek, seq] = times.map(median);
        println!(
            "| {name} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2}x |",
            f.info.decoder,
            f.timestamps.len(),
            seek.as_secs_f64() * 1e3,
            seek.as_secs_f64() / encode.as_secs_f64(),
            seq.as_secs_f64() * 1e3,
            seq.as_secs_f64() / seek.as_secs_f64()
        );
    }
}

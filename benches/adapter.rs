//! The extra time an MV-Adapter adds over plain CLIP: one video of 12 frames through the vision
//! tower, and one query of 32 tokens through the text tower, full-size ViT-B/32 with random
//! weights, f32 on the CPU. Baseline and adapted runs alternate in the same process and the best
//! of N is kept for each; the result is printed as a ratio (timings on shared machines are noisy).
//!
//! `cargo bench --bench adapter [-- --iters 10 --tying down_in]`

use candle_core::{DType, Device, Tensor};
use mvserve::adapter::{AdapterConfig, AdapterInit, BackboneDims, TaskAdapter, Tying};
use mvserve::backbone::{BlockHook, Clip, ClipConfig};
use std::sync::Mutex;
use std::time::Instant;

/// Wraps a hook and adds up the time spent inside it: the adapter's own cost, which is far less
/// noisy on a shared machine than the difference of two whole forward passes.
struct Timed<'a>(&'a dyn BlockHook, Mutex<f64>);

impl BlockHook for Timed<'_> {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let t = Instant::now();
        let r = self.0.after_mlp(layer, f);
        *self.1.lock().unwrap() += t.elapsed().as_secs_f64();
        r
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn best_of(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> anyhow::Result<()> {
    let iters: usize = arg("--iters").map_or(Ok(5), |s| s.parse())?;
    let tying = Tying::parse(&arg("--tying").unwrap_or_else(|| "down_in".into()))?;
    let dev = Device::Cpu;
    let config = ClipConfig::vit_b_32();
    let clip = Clip::random(config.clone(), 0, DType::F32, &dev)?;
    let ac = AdapterConfig::standard(BackboneDims::of(&config), 12, 32, tying);
    // Plain tensors, not Vars: the inference path (no gradient tracking, fused kernels).
    let tensors = TaskAdapter::init_tensors(&ac, AdapterInit::Random, &dev)?;
    let adapter = TaskAdapter::from_tensors(&ac, tensors, &dev)?;

    let pixels = Tensor::randn(0f32, 1.0, (12, 3, 224, 224), &dev)?;
    let mask = Tensor::ones((1, 12), DType::F32, &dev)?;
    let vhook = adapter.video_hook(&mask)?;
    let ids: Vec<u32> = (0..32)
        .map(|i| match i {
            0 => 49406,
            31 => 49407,
            _ => 320 + i,
        })
        .collect();
    let ids = Tensor::from_vec(ids, (1, 32), &dev)?;
    let eot = Tensor::new(&[31u32], &dev)?;
    let thook = adapter.text_hook(32)?;

    let run_v = |h: Option<&dyn BlockHook>| {
        clip.vision.forward(&pixels, h, false).unwrap();
    };
    let run_t = |h: Option<&dyn BlockHook>| {
        clip.text.forward(&ids, &eot, h, false).unwrap();
    };
    // Alternate baseline and adapter rounds so drift in machine load hits both.
    let (mut v0, mut v1, mut t0, mut t1) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        v0 = v0.min(best_of(iters, || run_v(None)));
        v1 = v1.min(best_of(iters, || run_v(Some(&vhook))));
        t0 = t0.min(best_of(iters * 4, || run_t(None)));
        t1 = t1.min(best_of(iters * 4, || run_t(Some(&thook))));
    }
    // The adapter's own time per pass (best pass), against the plain forward's best.
    let inside = |run: &dyn Fn(Option<&dyn BlockHook>), hook: &dyn BlockHook, n: usize| {
        (0..n)
            .map(|_| {
                let t = Timed(hook, Mutex::new(0.0));
                run(Some(&t));
                t.1.into_inner().unwrap()
            })
            .fold(f64::MAX, f64::min)
    };
    let vh = inside(&run_v, &vhook, iters);
    let th = inside(&run_t, &thook, iters * 4);
    println!(
        "ViT-B/32 f32, adapter {tying:?} ({} params), best of {iters} x 3 rounds",
        ac.param_count()
    );
    println!(
        "video (12 frames): plain {:.1} ms, adapted {:.1} ms, ratio {:.3} (+{:.1}%)",
        v0 * 1e3,
        v1 * 1e3,
        v1 / v0,
        100.0 * (v1 / v0 - 1.0)
    );
    println!(
        "query (32 tokens): plain {:.2} ms, adapted {:.2} ms, ratio {:.3} (+{:.1}%)",
        t0 * 1e3,
        t1 * 1e3,
        t1 / t0,
        100.0 * (t1 / t0 - 1.0)
    );
    println!(
        "inside the adapter hooks: video {:.1} ms = {:.3} of plain; query {:.2} ms = {:.3} of plain",
        vh * 1e3,
        vh / v0,
        th * 1e3,
        th / t0
    );
    Ok(())
}

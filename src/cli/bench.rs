//! `mvserve bench backbone|parity`: tower speed and CPU-vs-device agreement, as numbers.

use super::DeviceArgs;
use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Subcommand, ValueEnum};
use mvserve::backbone::{DeviceSpec, Precision};
use mvserve::media::DEFAULT_FRAMES;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Vision and text tower speed with full-size random ViT-B/32 weights.
    Backbone {
        /// Images per batch (one video's frames).
        #[arg(long, default_value_t = DEFAULT_FRAMES)]
        batch: usize,
        /// Timed iterations (the best is reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Compute dtype.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        #[command(flatten)]
        device: DeviceArgs,
        /// Also time the CPU in the same process (same batch, f32) and print the ratio.
        #[arg(long)]
        compare_cpu: bool,
        /// int8: time the int8 path against f32 on the same random model in the same process
        /// (alternating, --rounds times) and report the cosine of their embeddings.
        #[arg(long, default_value_t = Precision::F32)]
        precision: Precision,
        /// With --precision int8: f32 / int8 timings alternated this many times.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Runs the same random full-size ViT-B/32 and a random adapter on the CPU and on --device
    /// and compares the L2-normalised embeddings (plain image and text, adapted video and text).
    /// With --device cpu the second run takes the composite ops a GPU uses. Exits 1 when a
    /// difference exceeds --tolerance.
    Parity {
        #[command(flatten)]
        device: DeviceArgs,
        /// Largest accepted absolute difference of any embedding element.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f32,
        /// Images through the plain vision tower.
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// 12-frame videos through the adapter.
        #[arg(long, default_value_t = 2)]
        videos: usize,
        /// Texts (plain and adapted).
        #[arg(long, default_value_t = 8)]
        texts: usize,
        /// A Hugging Face config.json to use instead of ViT-B/32 (random weights either way).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `--dtype` of `bench backbone`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for DType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
        }
    }
}

/// `bench backbone --precision int8`: the same random ViT-B/32 in f32 and int8 (sharing the f32
/// weights), timed alternately `rounds` times in this process, then the cosine of their
/// embeddings of random images and texts.
fn int8_vs_f32(batch: usize, iters: usize, rounds: usize, json: bool) -> Result<()> {
    let f32_model = mvserve::bench::random_vit_b_32(DType::F32, &candle_core::Device::Cpu)?;
    let int8_model = f32_model.with_precision(Precision::Int8)?;
    let mut runs = Vec::new();
    for round in 0..rounds {
        let f = mvserve::bench::backbone(&f32_model, batch, iters)?;
        let q = mvserve::bench::backbone(&int8_model, batch, iters)?;
        if !json {
            println!(
                "round {}: f32 {:.2} images/s, text {:.2} ms; int8 {:.2} images/s, text {:.2} ms; int8 / f32 {:.2}x images/s, {:.2}x text",
                round + 1,
                f.images_per_s,
                f.text_ms_32,
                q.images_per_s,
                q.text_ms_32,
                q.images_per_s / f.images_per_s,
                f.text_ms_32 / q.text_ms_32
            );
        }
        runs.push(serde_json::json!({"f32_images_per_s": f.images_per_s, "int8_images_per_s": q.images_per_s, "f32_text_ms_32": f.text_ms_32, "int8_text_ms_32": q.text_ms_32, "images_ratio": q.images_per_s / f.images_per_s, "text_ratio": f.text_ms_32 / q.text_ms_32}));
    }
    let agreement = mvserve::bench::agreement(&f32_model, &int8_model, 16, 16)?;
    let kernel = mvserve::backbone::int8::kernel_name();
    if json {
        println!(
            "{}",
            serde_json::json!({"batch": batch, "iters": iters, "int8_kernel": kernel, "rounds": runs, "agreement": agreement})
        );
    } else {
        println!(
            "int8 kernel {kernel}; cosine int8 vs f32 over {} random images: min {:.5}, max {:.5}; over {} random texts: min {:.5}, max {:.5}",
            agreement.images,
            agreement.image_cos_min,
            agreement.image_cos_max,
            agreement.texts,
            agreement.text_cos_min,
            agreement.text_cos_max
        );
    }
    Ok(())
}

/// Side of the square sgemm that `bench backbone` times as the machine's reference rate.
const SGEMM_N: usize = 2048;

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Backbone {
            batch,
            iters,
            dtype,
            device,
            compare_cpu,
            precision,
            rounds,
            json,
        } => {
            if precision == Precision::Int8 {
                if compare_cpu || !matches!(device.device, DeviceSpec::Cpu) {
                    bail!("--precision int8 is a CPU path: leave out --device and --compare-cpu");
                }
                if !matches!(dtype, Dtype::F32) {
                    bail!("--precision int8 quantises the f32 model: leave out --dtype");
                }
                return int8_vs_f32(batch, iters, rounds.max(1), json);
            }
            let (dtype, device) = (DType::from(dtype), device.device);
            let run = |spec: DeviceSpec, dtype: DType| -> Result<mvserve::bench::BackboneBench> {
                let clip = mvserve::bench::random_vit_b_32(dtype, &spec.open()?)?;
                Ok(mvserve::bench::backbone(&clip, batch, iters)?)
            };
            // The machine's own sgemm rate through the same kernel, measured before and after the
            // backbone so a burst of load from elsewhere shows as a gap between the two.
            let sgemm = || mvserve::backbone::kernels::sgemm_gflops(SGEMM_N, 3);
            let on_cpu = matches!(device, DeviceSpec::Cpu);
            let sgemm_before = on_cpu.then(sgemm);
            let r = run(device, dtype)?;
            let sgemm_after = on_cpu.then(sgemm);
            let peak = sgemm_before.zip(sgemm_after).map(|(a, b)| a.max(b));
            // The baseline is the CPU as it serves: f32 with the fused kernels.
            let cpu = match compare_cpu {
                true => Some(run(DeviceSpec::Cpu, DType::F32)?),
                false => None,
            };
            let ratio = cpu.as_ref().map(|c| r.images_per_s / c.images_per_s);
            if json {
                let mut j = serde_json::json!({"device": device.to_string(), "batch": batch, "dtype": r.dtype, "images_per_s": r.images_per_s, "gflops_per_s": r.gflops_per_s, "text_ms_32": r.text_ms_32});
                if let (Some(p), Some(a), Some(b)) = (peak, sgemm_before, sgemm_after) {
                    j["gemm_kernel"] = mvserve::backbone::kernels::gemm_kernel().into();
                    j["simd_level"] = mvserve::simd::level().name().into();
                    j["sgemm_n"] = SGEMM_N.into();
                    j["sgemm_gflops_per_s"] = p.into();
                    j["sgemm_before_after"] = serde_json::json!([a, b]);
                    j["of_sgemm"] = (r.gflops_per_s / p).into();
                }
                if let Some(u) = r.text_ms_32_unpacked {
                    j["text_ms_32_unpacked"] = u.into();
                    j["text_packed_kernel"] = mvserve::backbone::packed::kernel_name().into();
                }
                if let (Some(c), Some(x)) = (&cpu, ratio) {
                    j["cpu_dtype"] = c.dtype.clone().into();
                    j["cpu_images_per_s"] = c.images_per_s.into();
                    j["cpu_text_ms_32"] = c.text_ms_32.into();
                    j["speedup_vs_cpu"] = x.into();
                }
                println!("{j}");
            } else {
                let line = |dev: &str, r: &mvserve::bench::BackboneBench| {
                    println!(
                        "ViT-B/32 {} batch {} on {dev}: {:.2} images/s, {:.1} GFLOP/s; text (1 x 32 tokens): {:.2} ms",
                        r.dtype, r.batch, r.images_per_s, r.gflops_per_s, r.text_ms_32
                    )
                };
                line(&device.to_string(), &r);
                if let Some(u) = r.text_ms_32_unpacked {
                    println!(
                        "text without the packed weights (gemm, alternating): {u:.2} ms; packed ({}) {:.2}x faster",
                        mvserve::backbone::packed::kernel_name(),
                        u / r.text_ms_32
                    );
                }
                if let Some(p) = peak {
                    println!(
                        "sgemm {SGEMM_N}^3 through gemm ({}; the crate's loops {}): {p:.1} GFLOP/s; backbone at {:.2} of it",
                        mvserve::backbone::kernels::gemm_kernel(),
                        mvserve::simd::level().name(),
                        r.gflops_per_s / p
                    );
                }
                if let (Some(c), Some(x)) = (&cpu, ratio) {
                    line("cpu", c);
                    println!("{device} / cpu: {x:.2}x images/s");
                }
            }
            Ok(())
        }
        BenchCommand::Parity {
            device,
            tolerance,
            images,
            videos,
            texts,
            config,
        } => {
            let clip_config = match &config {
                Some(p) => mvserve::backbone::ClipConfig::from_file(p)?,
                None => mvserve::backbone::ClipConfig::vit_b_32(),
            };
            let spec = mvserve::bench::parity::ParitySpec {
                images,
                videos,
                texts,
                ..Default::default()
            };
            let r = mvserve::bench::parity::device_parity(&clip_config, &device.open()?, &spec)?;
            let device = device.device;
            let ok = r.max() <= tolerance;
            println!(
                "{}",
                serde_json::json!({"report": r, "max": r.max(), "tolerance": tolerance, "ok": ok})
            );
            if !ok {
                bail!(
                    "{device} differs from the CPU by {} (tolerance {tolerance})",
                    r.max()
                );
            }
            Ok(())
        }
    }
}

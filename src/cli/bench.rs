//! `mvserve bench backbone|parity`: tower speed and CPU-vs-device agreement, as numbers.

use super::DeviceArgs;
use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Subcommand, ValueEnum};
use mvserve::backbone::DeviceSpec;
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
            json,
        } => {
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
                    j["sgemm_n"] = SGEMM_N.into();
                    j["sgemm_gflops_per_s"] = p.into();
                    j["sgemm_before_after"] = serde_json::json!([a, b]);
                    j["of_sgemm"] = (r.gflops_per_s / p).into();
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
                if let Some(p) = peak {
                    println!(
                        "sgemm {SGEMM_N}^3 through gemm ({}): {p:.1} GFLOP/s; backbone at {:.2} of it",
                        mvserve::backbone::kernels::gemm_kernel(),
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

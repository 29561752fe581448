//! Benchmarks shared by `mvserve bench` and `cargo bench`: full-size models with random weights,
//! timed in-process, reported as numbers a script can read; [`parity`] compares a device against
//! the CPU.

pub mod parity;

use crate::backbone::text::TextTower;
use crate::backbone::{Clip, ClipConfig};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// Multiply-adds x 2 of one image through the vision tower (patch GEMM, blocks, projection).
pub fn vision_flops(c: &ClipConfig) -> f64 {
    let v = &c.vision_config;
    let b = BlockFlops::of(c);
    let p = (v.patch_size * v.patch_size * 3) as f64;
    2.0 * (b.t - 1.0) * p * b.d
        + v.num_hidden_layers as f64 * b.full()
        + 2.0 * b.d * c.projection_dim as f64
}

/// The FLOPs an embedding pass executes for one image: [`vision_flops`] less the last block's
/// work for the rows it skips (`Encoder::forward_picked`: queries, attention, output projection
/// and MLP run for CLS only; the QKV projection still covers every token, as keys and values).
pub fn vision_flops_executed(c: &ClipConfig) -> f64 {
    let b = BlockFlops::of(c);
    vision_flops(c) - b.full() + b.picked()
}

/// One vision block's sizes: tokens, width, MLP width.
struct BlockFlops {
    t: f64,
    d: f64,
    inner: f64,
}

impl BlockFlops {
    fn of(c: &ClipConfig) -> Self {
        let v = &c.vision_config;
        Self {
            t: c.vision_tokens() as f64,
            d: v.hidden_size as f64,
            inner: v.intermediate_size as f64,
        }
    }

    /// QKV, output projection and MLP over every token, plus attention's two products.
    fn full(&self) -> f64 {
        let (t, d, inner) = (self.t, self.d, self.inner);
        2.0 * t * d * (3.0 * d + d + 2.0 * inner) + 4.0 * t * t * d
    }

    /// QKV over every token; attention, output projection and MLP for one row.
    fn picked(&self) -> f64 {
        let (t, d, inner) = (self.t, self.d, self.inner);
        2.0 * t * d * 3.0 * d + 4.0 * t * d + 2.0 * d * (d + 2.0 * inner)
    }
}

#[derive(Debug, Serialize)]
pub struct BackboneBench {
    pub images_per_s: f64,
    /// The FLOPs executed per second ([`vision_flops_executed`]): how close the kernels run to
    /// the machine's sgemm. Peers that run the whole last block do more work per image, so
    /// compare them by `images_per_s`.
    pub gflops_per_s: f64,
    /// Milliseconds for one text of 32 tokens (batch 1).
    pub text_ms_32: f64,
    /// The same text through the same model without the text encoder's packed weights (gemm
    /// only), timed alternately with `text_ms_32`; `None` when the model has none (a GPU, int8).
    pub text_ms_32_unpacked: Option<f64>,
    pub batch: usize,
    pub dtype: String,
    /// f32, or int8 for the encoders' linear layers.
    pub precision: String,
}

/// Times the vision tower on `batch` random images and the text tower on one 32-token text,
/// taking the best of `iters` runs after one warm-up (these machines are noisy; the minimum is
/// the most repeatable statistic).
pub fn backbone(clip: &Clip, batch: usize, iters: usize) -> candle_core::Result<BackboneBench> {
    let dev = &clip.device;
    let s = clip.config.vision_config.image_size;
    let dtype = clip.vision_dtype();
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), dev)?.to_dtype(dtype)?;
    let mut best = f64::MAX;
    for i in 0..=iters {
        let t0 = Instant::now();
        let out = clip.vision.forward(&pixels, None, false)?;
        dev.synchronize()?;
        drop(out);
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    let ids: Vec<u32> = (0..32)
        .map(|i| {
            if i == 0 {
                49406
            } else if i == 31 {
                49407
            } else {
                320 + i
            }
        })
        .collect();
    let ids = Tensor::from_vec(ids, (1, 32), dev)?;
    let eot = Tensor::new(&[31u32], dev)?;
    // The packed copies' own A/B: the same tower with them dropped, run alternately.
    let unpacked = clip.text.encoder.is_prepacked().then(|| {
        let mut t = clip.text.clone();
        t.encoder.drop_packed();
        t
    });
    let time_text = |tower: &TextTower| -> candle_core::Result<f64> {
        let t0 = Instant::now();
        let out = tower.forward(&ids, &eot, None, false)?;
        dev.synchronize()?;
        drop(out);
        Ok(t0.elapsed().as_secs_f64())
    };
    let (mut text_best, mut unpacked_best) = (f64::MAX, f64::MAX);
    for i in 0..=iters.max(5) {
        let t = time_text(&clip.text)?;
        let u = unpacked.as_ref().map(&time_text).transpose()?;
        if i > 0 {
            text_best = text_best.min(t);
            unpacked_best = unpacked_best.min(u.unwrap_or(f64::MAX));
        }
    }
    let images_per_s = batch as f64 / best;
    Ok(BackboneBench {
        images_per_s,
        gflops_per_s: images_per_s * vision_flops_executed(&clip.config) / 1e9,
        text_ms_32: text_best * 1e3,
        text_ms_32_unpacked: unpacked.is_some().then_some(unpacked_best * 1e3),
        batch,
        dtype: format!("{dtype:?}").to_lowercase(),
        precision: clip.precision().to_string(),
    })
}

/// How close two versions of one model (f32 and int8) embed the same inputs: the cosine of each
/// pair of embeddings, over random images and texts.
#[derive(Debug, Serialize)]
pub struct Agreement {
    pub images: usize,
    pub texts: usize,
    pub image_cos_min: f64,
    pub image_cos_max: f64,
    pub text_cos_min: f64,
    pub text_cos_max: f64,
}

/// Cosines of `a`'s and `b`'s embeddings of `images` random images (N(0, 1) pixels, as the
/// benchmark's) and `texts` texts of random tokens (lengths 4 to 32, BOS and EOT in place).
pub fn agreement(
    a: &Clip,
    b: &Clip,
    images: usize,
    texts: usize,
) -> candle_core::Result<Agreement> {
    use rand::{Rng, SeedableRng};
    let dev = &a.device;
    let s = a.config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (images, 3, s, s), dev)?;
    let ea = a.vision.forward(&pixels, None, false)?.embeds;
    let eb = b.vision.forward(&pixels, None, false)?.embeds;
    let (image_cos_min, image_cos_max) = cos_range(&ea, &eb)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut ids, mut eot) = (Vec::new(), Vec::new());
    for _ in 0..texts {
        let n = rng.random_range(4..=32usize);
        ids.push(49406u32);
        ids.extend((1..n - 1).map(|_| rng.random_range(300..49000u32)));
        ids.push(49407);
        ids.extend(std::iter::repeat_n(0u32, 32 - n));
        eot.push(n as u32 - 1);
    }
    let ids = Tensor::from_vec(ids, (texts, 32), dev)?;
    let eot = Tensor::from_vec(eot, texts, dev)?;
    let ta = a.text.forward(&ids, &eot, None, false)?.embeds;
    let tb = b.text.forward(&ids, &eot, None, false)?.embeds;
    let (text_cos_min, text_cos_max) = cos_range(&ta, &tb)?;
    Ok(Agreement {
        images,
        texts,
        image_cos_min,
        image_cos_max,
        text_cos_min,
        text_cos_max,
    })
}

/// The smallest and largest cosine between matching rows of two (N, D) matrices.
pub fn cos_range(a: &Tensor, b: &Tensor) -> candle_core::Result<(f64, f64)> {
    let a: Vec<Vec<f32>> = a.to_dtype(DType::F32)?.to_vec2()?;
    let b: Vec<Vec<f32>> = b.to_dtype(DType::F32)?.to_vec2()?;
    let mut range = (f64::MAX, f64::MIN);
    for (x, y) in a.iter().zip(&b) {
        let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
        let nx: f64 = x.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|&q| (q as f64).powi(2)).sum::<f64>().sqrt();
        let c = dot / (nx * ny);
        range = (range.0.min(c), range.1.max(c));
    }
    Ok(range)
}

/// Full-size ViT-B/32 with random weights in `dtype`.
pub fn random_vit_b_32(
    dtype: DType,
    device: &Device,
) -> Result<Clip, crate::backbone::BackboneError> {
    Clip::random(ClipConfig::vit_b_32(), 0, dtype, device)
}

/// A random full-size adapter for `clip` (the standard config: adapters in every block, down-in
/// tying in the last two, 12 frames, 32 words) with visibly non-identity weights.
pub fn random_adapter_file(
    clip: &Clip,
    task: &str,
) -> Result<crate::adapter::AdapterFile, crate::adapter::AdapterError> {
    use crate::adapter::{
        clip_param_count, AdapterConfig, AdapterFile, AdapterInit, AdapterMeta, BackboneDims,
        TaskAdapter, Tying,
    };
    let config = AdapterConfig::standard(BackboneDims::of(&clip.config), 12, 32, Tying::DownIn);
    let tensors = TaskAdapter::init_tensors(&config, AdapterInit::Random, &Device::Cpu)?;
    let meta = AdapterMeta {
        task: task.into(),
        backbone: clip.id.clone(),
        config,
        metrics: None,
        backbone_params: Some(clip_param_count(&clip.config) as u64),
    };
    AdapterFile::new(meta, tensors)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vit_b_32_costs_8_82_gflops_per_image() {
        let f = super::vision_flops(&crate::backbone::ClipConfig::vit_b_32());
        assert!((f / 1e9 - 8.82).abs() < 0.01, "{f}");
    }

    #[test]
    fn an_embedding_pass_skips_6_percent_of_them() {
        let c = crate::backbone::ClipConfig::vit_b_32();
        let skipped = 1.0 - super::vision_flops_executed(&c) / super::vision_flops(&c);
        assert!((skipped - 0.0599).abs() < 0.0005, "{skipped}");
    }
}

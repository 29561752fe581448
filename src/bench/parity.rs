//! Device parity: the same random CLIP and the same random adapter run on the CPU with the
//! hand-written kernels (the reference) and on a target device, and the embeddings compared.
//!
//! On a GPU the target takes candle's composite ops (see `backbone::ops`); with the CPU as the
//! target, the run is forced onto those same composite ops with [`with_composite_ops`], so the
//! route a GPU takes is checked even where there is none. Used by `mvserve bench parity`
//! (`benches/gpu_check.sh`) and by the tests.

use crate::adapter::{
    pool_frames, AdapterConfig, AdapterError, AdapterInit, BackboneDims, TaskAdapter, Tying,
};
use crate::backbone::ops::with_composite_ops;
use crate::backbone::{l2_normalize, BackboneError, BlockHook, Clip, ClipConfig};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("the two models' weights differ (digests {0} and {1})")]
    Weights(String, String),
}

/// How much to run through both devices.
#[derive(Clone, Debug)]
pub struct ParitySpec {
    /// Images through the plain vision tower.
    pub images: usize,
    /// Videos through the adapter's video hook (frames per video: the adapter's, 12).
    pub videos: usize,
    /// Texts through the plain text tower and through the adapter's text hook.
    pub texts: usize,
    pub seed: u64,
}

impl Default for ParitySpec {
    fn default() -> Self {
        Self {
            images: 8,
            videos: 2,
            texts: 8,
            seed: 0,
        }
    }
}

/// Largest absolute difference of each kind of L2-normalised embedding, target vs reference.
#[derive(Debug, Serialize)]
pub struct ParityReport {
    pub device: String,
    /// Plain CLIP image embeddings.
    pub image: f32,
    /// Plain CLIP text embeddings.
    pub text: f32,
    /// meanP video embeddings through the adapter (the last video has a padded frame).
    pub adapter_video: f32,
    /// Text embeddings through the adapter.
    pub adapter_text: f32,
}

impl ParityReport {
    /// The largest of the four; NaN when any is (a NaN must never pass a tolerance check).
    pub fn max(&self) -> f32 {
        [self.image, self.text, self.adapter_video, self.adapter_text]
            .into_iter()
            .fold(0.0, |m, x| if x.is_nan() { x } else { m.max(x) })
    }
}

/// Inputs shared by both runs, built on the CPU from `seed`.
struct Inputs {
    images: Tensor,
    frames: Tensor,
    /// (videos, F) f32
    mask: Tensor,
    ids: Tensor,
    eot: Tensor,
    adapter_ids: Tensor,
    adapter_eot: Tensor,
}

impl Inputs {
    fn new(c: &ClipConfig, a: &AdapterConfig, spec: &ParitySpec) -> candle_core::Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed.wrapping_add(1));
        let s = c.vision_config.image_size;
        // Preprocessed pixels are roughly standard normal (CLIP's mean and std).
        let mut pixels = |n: usize| {
            let v: Vec<f32> = (0..n * 3 * s * s)
                .map(|_| rng.random::<f32>() * 4.0 - 2.0)
                .collect();
            Tensor::from_vec(v, (n, 3, s, s), &Device::Cpu)
        };
        let images = pixels(spec.images)?;
        let f = a.frames;
        let frames = pixels(spec.videos * f)?;
        let mask: Vec<f32> = (0..spec.videos * f)
            .map(|i| {
                let last_frame_of_last_video = i == spec.videos * f - 1;
                if last_frame_of_last_video && f > 1 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (spec.videos, f), &Device::Cpu)?;
        let vocab = c.text_config.vocab_size as u32;
        let mut texts = |n: usize, len: usize| -> candle_core::Result<(Tensor, Tensor)> {
            let ids: Vec<u32> = (0..n * len).map(|_| rng.random_range(0..vocab)).collect();
            let eot: Vec<u32> = (0..n).map(|_| rng.random_range(1..len as u32)).collect();
            Ok((
                Tensor::from_vec(ids, (n, len), &Device::Cpu)?,
                Tensor::from_vec(eot, n, &Device::Cpu)?,
            ))
        };
        let (ids, eot) = texts(spec.texts, crate::backbone::DEFAULT_TEXT_LEN)?;
        let (adapter_ids, adapter_eot) = texts(spec.texts, a.words)?;
        Ok(Self {
            images,
            frames,
            mask,
            ids,
            eot,
            adapter_ids,
            adapter_eot,
        })
    }
}

/// The four kinds of embeddings, back on the CPU.
struct Embeddings([Tensor; 4]);

fn embed(clip: &Clip, adapter: &TaskAdapter, x: &Inputs) -> candle_core::Result<Embeddings> {
    let dev = &clip.device;
    let dtype = clip.vision_dtype();
    let on = |t: &Tensor| t.to_device(dev);
    let image = clip
        .vision
        .forward(&on(&x.images)?.to_dtype(dtype)?, None, false)?
        .embeds;
    let text = clip
        .text
        .forward(&on(&x.ids)?, &on(&x.eot)?, None, false)?
        .embeds;
    let mask = on(&x.mask)?;
    let video_hook = adapter
        .video_hook(&mask)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let frames = clip
        .vision
        .forward(
            &on(&x.frames)?.to_dtype(dtype)?,
            Some(&video_hook as &dyn BlockHook),
            false,
        )?
        .embeds;
    let video = pool_frames(&frames.to_dtype(DType::F32)?, &mask)?;
    let text_hook = adapter
        .text_hook(x.adapter_ids.dim(1)?)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let adapted_text = clip
        .text
        .forward(
            &on(&x.adapter_ids)?,
            &on(&x.adapter_eot)?,
            Some(&text_hook as &dyn BlockHook),
            false,
        )?
        .embeds;
    let cpu = |t: Tensor| -> candle_core::Result<Tensor> {
        l2_normalize(&t.to_dtype(DType::F32)?)?.to_device(&Device::Cpu)
    };
    Ok(Embeddings([
        cpu(image)?,
        cpu(text)?,
        cpu(video)?,
        cpu(adapted_text)?,
    ]))
}

/// max |a - b|, NaN when either side has a non-finite value.
fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("shapes differ: {:?} and {:?}", a.dims(), b.dims());
    }
    let (a, b) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    Ok(a.iter().zip(&b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    }))
}

/// Random CLIP of `config` (f32, weights from `spec.seed`) and a random down-in adapter with 12
/// frames and 32 words, on the CPU and on `target`; returns the largest differences.
pub fn device_parity(
    config: &ClipConfig,
    target: &Device,
    spec: &ParitySpec,
) -> Result<ParityReport, ParityError> {
    let reference = Clip::random(config.clone(), spec.seed, DType::F32, &Device::Cpu)?;
    let other = Clip::random(config.clone(), spec.seed, DType::F32, target)?;
    if reference.id.digest != other.id.digest {
        return Err(ParityError::Weights(
            reference.id.digest.clone(),
            other.id.digest.clone(),
        ));
    }
    let a = AdapterConfig::standard(
        BackboneDims::of(config),
        12,
        crate::backbone::DEFAULT_TEXT_LEN,
        Tying::DownIn,
    );
    a.validate()?;
    // Random everywhere (the authors' init is the identity and would hide the adapter's ops).
    let tensors = TaskAdapter::init_tensors(&a, AdapterInit::Random, &Device::Cpu)?;
    let on_target = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(target)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    let ref_adapter = TaskAdapter::from_tensors(&a, tensors, &Device::Cpu)?;
    let target_adapter = TaskAdapter::from_tensors(&a, on_target, target)?;
    let inputs = Inputs::new(config, &a, spec)?;

    let want = embed(&reference, &ref_adapter, &inputs)?;
    let got = if target.is_cpu() {
        with_composite_ops(|| embed(&other, &target_adapter, &inputs))?
    } else {
        embed(&other, &target_adapter, &inputs)?
    };
    let d = |i: usize| max_diff(&got.0[i], &want.0[i]);
    Ok(ParityReport {
        device: if target.is_cpu() {
            "cpu (composite ops)".into()
        } else {
            format!("{:?}", target.location())
        },
        image: d(0)?,
        text: d(1)?,
        adapter_video: d(2)?,
        adapter_text: d(3)?,
    })
}

//! One task's adapter as the backbone uses it: the per-layer text and video adapters with their
//! tying, the hooks that plug them into the towers (one task, or a batch mixing tasks), and the
//! meanP pooling of frame features into a video embedding.
//!
//! It owns building an adapter from tensors or fresh `Var`s. It does not own the file format
//! (`file`) nor batching across requests (the `encode` module).

use super::config::{AdapterConfig, Tying};
use super::modules::{AdapterInit, TextAdapter, TieSpec, VideoAdapter};
use super::AdapterError;
use crate::backbone::{l2_normalize, BlockHook};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;

/// The loaded adapter of one task: a video adapter and a text adapter per configured block.
#[derive(Clone, Debug)]
pub struct TaskAdapter {
    pub config: AdapterConfig,
    /// Indexed by vision block.
    video: Vec<Option<VideoAdapter>>,
    /// Indexed by text block.
    text: Vec<Option<TextAdapter>>,
}

impl TaskAdapter {
    /// Builds every module from `vb` under our tensor names. With a `VarMap`-backed builder the
    /// parameters are fresh `Var`s initialised per `init` (the tied factor is one `Var` shared by
    /// both modalities); with a tensor-backed one, `init` is ignored.
    pub fn new(config: &AdapterConfig, vb: VarBuilder, init: AdapterInit) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let c = config;
        let b = &c.backbone;
        let tie = |layer: usize| match c.tying {
            _ if !c.is_tied(layer) => TieSpec::None,
            Tying::DownIn => TieSpec::DownIn {
                factor_dim: c.factor_dim,
            },
            Tying::DownOut => TieSpec::DownOut {
                factor_dim: c.factor_dim,
            },
            Tying::Kronecker => TieSpec::Kronecker { n: c.kron_n },
            Tying::None => TieSpec::None,
        };
        let mut video = vec![None; b.vision_layers];
        for &l in &c.vision_layers {
            video[l] = Some(VideoAdapter::new(
                vb.pp("vision").pp(l),
                &vb.pp("cmt").pp(l),
                b.vision_width,
                c.width,
                c.heads,
                c.frames,
                c.scale,
                tie(l),
                c.video_trm,
                c.temporal.then_some(c.calib_dim),
                init,
            )?);
        }
        let mut text = vec![None; b.text_layers];
        for &l in &c.text_layers {
            text[l] = Some(TextAdapter::new(
                vb.pp("text").pp(l),
                &vb.pp("cmt").pp(l),
                b.text_width,
                c.width,
                c.heads,
                c.words,
                c.scale,
                tie(l),
                init,
            )?);
        }
        Ok(Self {
            config: config.clone(),
            video,
            text,
        })
    }

    /// An inference adapter from named tensors (already validated by `AdapterFile`).
    pub fn from_tensors(
        config: &AdapterConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let mut a = Self::new(config, vb, AdapterInit::Authors)?;
        for t in a.text.iter_mut().flatten() {
            t.prepack()?;
        }
        Ok(a)
    }

    /// A trainable adapter: fresh `Var`s in a `VarMap` (optionally overwritten by `tensors`).
    pub fn trainable(
        config: &AdapterConfig,
        init: AdapterInit,
        tensors: Option<&HashMap<String, Tensor>>,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let mut vm = VarMap::new();
        let a = Self::new(
            config,
            VarBuilder::from_varmap(&vm, DType::F32, device),
            init,
        )?;
        if let Some(t) = tensors {
            vm.set(t.iter())?;
        }
        Ok((a, vm))
    }

    /// Freshly initialised tensors under our names (plain tensors, not `Var`s): for a new file
    /// or an inference adapter via `from_tensors`.
    pub fn init_tensors(
        config: &AdapterConfig,
        init: AdapterInit,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let (_, vm) = Self::trainable(config, init, None, device)?;
        let data = vm.data().lock().expect("varmap lock");
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect())
    }

    /// Every tensor name and shape this config has, without allocating the tensors.
    pub fn expected_tensors(config: &AdapterConfig) -> Result<BTreeMap<String, Vec<usize>>> {
        let rec = Recorder::default();
        let names = rec.seen.clone();
        let vb = VarBuilder::from_backend(Box::new(rec), DType::F32, Device::Cpu);
        Self::new(config, vb, AdapterInit::Authors)?;
        let m = names.lock().expect("recorder lock").clone();
        Ok(m)
    }

    pub fn param_count(&self) -> usize {
        self.config.param_count()
    }

    pub fn video_layer(&self, layer: usize) -> Option<&VideoAdapter> {
        self.video.get(layer).and_then(Option::as_ref)
    }

    pub fn text_layer(&self, layer: usize) -> Option<&TextAdapter> {
        self.text.get(layer).and_then(Option::as_ref)
    }

    /// The hook for a batch of B videos of F frames each (rows b*F+f of the vision batch).
    /// `frame_mask` (B, F): 1 for real frames, 0 for padding.
    pub fn video_hook(
        &self,
        frame_mask: &Tensor,
    ) -> std::result::Result<VideoHook<'_>, AdapterError> {
        let (_, f) = frame_mask.dims2()?;
        if f == 0 || f > self.config.frames {
            return Err(AdapterError::Input(format!(
                "this adapter takes 1 to {} frames per video, got {f}",
                self.config.frames
            )));
        }
        Ok(VideoHook {
            adapter: self,
            mask: frame_mask.to_dtype(DType::F32)?,
        })
    }

    /// The hook for texts of `len` tokens: the configured words, or fewer when a batch is cut
    /// after its longest EOT (see `TextAdapter::forward`).
    pub fn text_hook(&self, len: usize) -> std::result::Result<TextHook<'_>, AdapterError> {
        if len > self.config.words {
            return Err(AdapterError::Input(format!(
                "this adapter takes texts of at most {} tokens, got {len}",
                self.config.words
            )));
        }
        Ok(TextHook { adapter: self })
    }
}

/// Runs `f` through the adapter in f32 and returns the result in `f`'s dtype.
fn in_f32(f: &Tensor, run: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if f.dtype() == DType::F32 {
        return run(f);
    }
    run(&f.to_dtype(DType::F32)?)?.to_dtype(f.dtype())
}

/// A task's video adapter in the vision tower, for one batch of videos.
pub struct VideoHook<'a> {
    adapter: &'a TaskAdapter,
    mask: Tensor,
}

impl BlockHook for VideoHook<'_> {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> Result<Option<Tensor>> {
        match self.adapter.video_layer(layer) {
            Some(a) => Ok(Some(in_f32(f, |x| a.forward(x, &self.mask))?)),
            None => Ok(None),
        }
    }
}

/// A task's text adapter in the text tower.
pub struct TextHook<'a> {
    adapter: &'a TaskAdapter,
}

impl BlockHook for TextHook<'_> {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> Result<Option<Tensor>> {
        match self.adapter.text_layer(layer) {
            Some(a) => Ok(Some(in_f32(f, |x| a.forward(x))?)),
            None => Ok(None),
        }
    }
}

/// One backbone batch holding samples of several tasks: each row range goes through its own
/// hook (or none: plain CLIP). Ranges must tile `0..N` in order. A video range must cover whole
/// videos (its hook's frame mask has rows x frames = range length).
pub struct MixedHook<'a> {
    parts: Vec<(Range<usize>, Option<&'a dyn BlockHook>)>,
}

impl<'a> MixedHook<'a> {
    pub fn new(
        parts: Vec<(Range<usize>, Option<&'a dyn BlockHook>)>,
    ) -> std::result::Result<Self, AdapterError> {
        let mut next = 0;
        for (r, _) in &parts {
            if r.start != next || r.end <= r.start {
                return Err(AdapterError::Input(format!(
                    "mixed batch ranges must tile the batch in order; got {r:?} after row {next}"
                )));
            }
            next = r.end;
        }
        Ok(Self { parts })
    }

    /// Rows covered.
    pub fn rows(&self) -> usize {
        self.parts.last().map_or(0, |(r, _)| r.end)
    }
}

impl BlockHook for MixedHook<'_> {
    fn after_mlp(&self, layer: usize, f: &Tensor) -> Result<Option<Tensor>> {
        let n = f.dim(0)?;
        if n != self.rows() {
            candle_core::bail!("mixed hook covers {} rows, the batch has {n}", self.rows());
        }
        let mut outs = Vec::with_capacity(self.parts.len());
        let mut any = false;
        for (r, hook) in &self.parts {
            let part = f.narrow(0, r.start, r.len())?;
            let out = match hook {
                Some(h) => h.after_mlp(layer, &part)?,
                None => None,
            };
            any |= out.is_some();
            outs.push(match out {
                Some(o) => o,
                None => part.zeros_like()?,
            });
        }
        if !any {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&outs, 0)?))
    }
}

/// CLIP4Clip's meanP: frame features (B*F, P) unnormalised, video-major, and the frame mask
/// (B, F) -> L2-normalised video embeddings (B, P). Each frame is L2-normalised, the real frames
/// are averaged, and the mean is L2-normalised.
pub fn pool_frames(frame_embeds: &Tensor, frame_mask: &Tensor) -> Result<Tensor> {
    let (b, f) = frame_mask.dims2()?;
    let (n, p) = frame_embeds.dims2()?;
    if n != b * f {
        candle_core::bail!("{n} frame features for a {b} x {f} frame mask");
    }
    let x = l2_normalize(frame_embeds)?.reshape((b, f, p))?;
    let m = frame_mask.to_dtype(x.dtype())?;
    let sum = x.broadcast_mul(&m.unsqueeze(2)?)?.sum(1)?; // (B, P)
    let count = m.sum_keepdim(1)?.clamp(1.0, f64::MAX)?; // (B, 1)
    l2_normalize(&sum.broadcast_div(&count)?)
}

/// A `VarBuilder` backend that records names and shapes and allocates nothing.
#[derive(Default)]
struct Recorder {
    seen: std::sync::Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.seen
            .lock()
            .expect("recorder lock")
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("recorder: {name} has no known shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

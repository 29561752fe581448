//! The training loop: prepares the frames (through the cache) and tokens once, builds a seeded
//! trainable adapter, and runs epochs of shuffled in-batch InfoNCE updates of the adapter's
//! parameters only; after each epoch it writes the checkpoint and its resume state.

use super::batches::plan_batches;
use super::frames::FrameCache;
use super::init::seeded_tensors;
use super::loss::{logit_scale, symmetric_infonce};
use super::optim::{clip_grad_norm, AdamW, Schedule};
use super::state::{state_path, TrainState};
use super::{TrainConfig, TrainError};
use crate::adapter::{
    clip_param_count, pool_frames, AdapterConfig, AdapterFile, AdapterInit, AdapterMeta,
    BackboneDims, TaskAdapter,
};
use crate::backbone::{l2_normalize, Backbone};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to train on: video files and (video index, caption) pairs. A video with several
/// captions appears in several pairs.
#[derive(Clone, Debug)]
pub struct TrainData {
    /// Shown in logs and recorded in the checkpoint's metrics.
    pub name: String,
    pub videos: Vec<PathBuf>,
    pub pairs: Vec<(usize, String)>,
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub steps: usize,
    /// Mean of the batch losses.
    pub loss: f64,
    pub last_loss: f64,
    /// The learning rate of the epoch's last update.
    pub lr: f64,
    /// Mean global gradient norm before clipping.
    pub grad_norm: f64,
    pub pairs: usize,
    pub seconds: f64,
    pub pairs_per_s: f64,
}

/// A usable pair: its video and its caption's tokens.
struct Pair {
    video: usize,
    ids: Vec<u32>,
    eot: u32,
}

pub struct Trainer<'a> {
    backbone: &'a Backbone,
    task: String,
    config: TrainConfig,
    data_name: String,
    adapter: TaskAdapter,
    opt: AdamW,
    cache: FrameCache,
    /// Cache entry of each video (None: not used by any pair, or could not be decoded).
    entries: Vec<Option<PathBuf>>,
    pairs: Vec<Pair>,
    /// "path: reason" of each video left out.
    skipped: Vec<String>,
    /// Videos decoded by this run (the others came from the cache).
    decoded: usize,
    data_digest: String,
    schedule: Schedule,
    epochs_done: usize,
    history: Vec<EpochStats>,
    /// Draw progress bars on stderr (indicatif draws nothing when stderr is not a terminal).
    pub show_progress: bool,
}

impl<'a> Trainer<'a> {
    /// Decodes (or finds in `cache`) every video, tokenises every caption and builds a fresh
    /// adapter (the authors' init, drawn from `config.seed`). Videos that cannot be decoded are
    /// left out with a warning (listed by `skipped`).
    pub fn new(
        backbone: &'a Backbone,
        task: &str,
        config: TrainConfig,
        data: &TrainData,
        cache: &FrameCache,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let spec = config.sample_spec(backbone);
        if cache.spec() != &spec {
            return Err(TrainError::Config(format!(
                "the frame cache samples {:?}, this run needs {spec:?}",
                cache.spec()
            )));
        }
        if let Some((v, _)) = data.pairs.iter().find(|(v, _)| *v >= data.videos.len()) {
            return Err(TrainError::NoData(format!(
                "a pair names video {v} of {}",
                data.videos.len()
            )));
        }
        let used: HashSet<usize> = data.pairs.iter().map(|(v, _)| *v).collect();
        let (entries, skipped, decoded) = prepare_frames(cache, &data.videos, &used)?;
        let mut pairs = Vec::with_capacity(data.pairs.len());
        let mut digest = blake3::Hasher::new();
        for (v, caption) in &data.pairs {
            let Some(entry) = &entries[*v] else { continue };
            let tok = backbone.tokenizer.encode(caption, config.words)?;
            digest.update(entry.file_stem().unwrap_or_default().as_encoded_bytes());
            digest.update(&(caption.len() as u64).to_le_bytes());
            digest.update(caption.as_bytes());
            pairs.push(Pair {
                video: *v,
                ids: tok.ids,
                eot: tok.eot as u32,
            });
        }
        if pairs.len() < 2 {
            return Err(TrainError::NoData(format!(
                "{} usable pairs in {} ({} videos left out)",
                pairs.len(),
                data.name,
                skipped.len()
            )));
        }
        let clip = &backbone.clip;
        let mut ac = AdapterConfig::standard(
            BackboneDims::of(&clip.config),
            config.frames,
            config.words,
            config.tying,
        );
        ac.temporal = config.temporal;
        ac.video_trm = config.temporal;
        ac.scale = config.scale;
        ac.validate()?;
        let init = seeded_tensors(&ac, AdapterInit::Authors, config.seed, &clip.device)?;
        let (adapter, varmap) =
            TaskAdapter::trainable(&ac, AdapterInit::Authors, Some(&init), &clip.device)?;
        let mut params: Vec<(String, candle_core::Var)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let opt = AdamW::new(params, config.adamw)?;
        let videos: Vec<usize> = pairs.iter().map(|p| p.video).collect();
        let total: usize = (0..config.epochs)
            .map(|e| plan_batches(&videos, config.batch, config.seed, e).len())
            .sum();
        let schedule = Schedule::new(config.lr, config.warmup, total as u64);
        tracing::info!(
            pairs = pairs.len(),
            videos = used.len() - skipped.len(),
            decoded,
            skipped = skipped.len(),
            updates = total,
            params = ac.param_count(),
            "training prepared"
        );
        Ok(Self {
            backbone,
            task: task.to_string(),
            config,
            data_name: data.name.clone(),
            adapter,
            opt,
            cache: cache.clone(),
            entries,
            pairs,
            skipped,
            decoded,
            data_digest: digest.finalize().to_hex().to_string(),
            schedule,
            epochs_done: 0,
            history: Vec::new(),
            show_progress: true,
        })
    }

    /// Continues the run saved in `checkpoint` and its `.train-state`. The settings, data and
    /// backbone must be the run's own, so that the result equals an uninterrupted run.
    pub fn resume(
        backbone: &'a Backbone,
        task: &str,
        config: TrainConfig,
        data: &TrainData,
        cache: &FrameCache,
        checkpoint: &Path,
    ) -> Result<Self, TrainError> {
        let (state, moments) = TrainState::read(&state_path(checkpoint))?;
        let file = AdapterFile::read(checkpoint)?;
        let fail = |m: String| Err(TrainError::Resume(m));
        if file.digest() != state.adapter_digest {
            return fail(format!(
                "{} is not the checkpoint its state was saved with (interrupted while saving?)",
                checkpoint.display()
            ));
        }
        if state.config != config {
            return fail(format!(
                "the run was started with other settings: {}",
                config_diff(&state.config, &config)
            ));
        }
        if state.task != task {
            return fail(format!("the run trains task {:?}", state.task));
        }
        let clip = &backbone.clip;
        if state.backbone_digest != clip.id.digest {
            return fail("the run used another backbone".into());
        }
        let mut t = Self::new(backbone, task, config, data, cache)?;
        if state.data_digest != t.data_digest {
            return fail("the training pairs differ from the run's".into());
        }
        if file.meta.config != t.adapter.config {
            return fail("the checkpoint's adapter config differs from this run's".into());
        }
        for (name, var) in t.opt.params() {
            let saved = file
                .tensors
                .get(name)
                .ok_or_else(|| TrainError::Resume(format!("the checkpoint lacks {name}")))?;
            var.set(&saved.to_device(&clip.device)?)?;
        }
        let moments = moments
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&clip.device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        t.opt.restore(state.step, moments)?;
        t.epochs_done = state.epochs_done;
        t.history = state.history;
        Ok(t)
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn adapter(&self) -> &TaskAdapter {
        &self.adapter
    }

    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// Videos decoded by this run; the others were found in the frame cache.
    pub fn decoded_videos(&self) -> usize {
        self.decoded
    }

    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    pub fn total_steps(&self) -> u64 {
        self.schedule.total
    }

    /// Trains the remaining epochs, saving the checkpoint and its state to `out` after each.
    pub fn run(&mut self, out: &Path) -> Result<(), TrainError> {
        while self.epochs_done < self.config.epochs {
            self.train_epoch()?;
            self.save(out)?;
        }
        Ok(())
    }

    /// One pass over the pairs in this epoch's order.
    pub fn train_epoch(&mut self) -> Result<EpochStats, TrainError> {
        let epoch = self.epochs_done;
        let videos: Vec<usize> = self.pairs.iter().map(|p| p.video).collect();
        let batches = plan_batches(&videos, self.config.batch, self.config.seed, epoch);
        let bar = self.bar(batches.len() as u64);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.config.epochs));
        let t0 = Instant::now();
        let (mut loss_sum, mut last, mut norm_sum, mut lr, mut pairs) = (0f64, 0f64, 0f64, 0f64, 0);
        let clip = if self.config.clip_norm > 0.0 {
            self.config.clip_norm
        } else {
            f64::INFINITY
        };
        for batch in &batches {
            lr = self.schedule.lr(self.opt.steps_done());
            let loss = self.batch_loss(batch)?;
            let grads = loss.backward()?;
            let mut g: Vec<Option<Tensor>> = self
                .opt
                .params()
                .map(|(_, v)| grads.get(v.as_tensor()).cloned())
                .collect();
            let norm = clip_grad_norm(&mut g, clip)?;
            last = loss.to_scalar::<f32>()? as f64;
            if !last.is_finite() || !norm.is_finite() {
                return Err(TrainError::Diverged {
                    update: self.opt.steps_done() + 1,
                    loss: last,
                    grad_norm: norm,
                });
            }
            self.opt.step(&g, lr)?;
            loss_sum += last;
            norm_sum += norm;
            pairs += batch.len();
            bar.inc(1);
            let rate = pairs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {last:.4} (mean {:.4}), {rate:.1} pairs/s, lr {lr:.2e}",
                loss_sum / bar.position() as f64
            ));
        }
        bar.finish_and_clear();
        let n = batches.len().max(1) as f64;
        let seconds = t0.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch: epoch + 1,
            steps: batches.len(),
            loss: loss_sum / n,
            last_loss: last,
            lr,
            grad_norm: norm_sum / n,
            pairs,
            seconds,
            pairs_per_s: pairs as f64 / seconds.max(1e-9),
        };
        tracing::info!(
            epoch = stats.epoch,
            loss = stats.loss,
            pairs_per_s = stats.pairs_per_s,
            lr = stats.lr,
            grad_norm = stats.grad_norm,
            "epoch done"
        );
        self.epochs_done += 1;
        self.history.push(stats.clone());
        Ok(stats)
    }

    /// The symmetric InfoNCE loss of one batch of pairs (indices into the usable pairs).
    fn batch_loss(&self, batch: &[usize]) -> Result<Tensor, TrainError> {
        let clip = &self.backbone.clip;
        let dev = &clip.device;
        let (f, s, l) = (
            self.config.frames,
            clip.config.vision_config.image_size,
            self.config.words,
        );
        let b = batch.len();
        let mut pixels = Vec::with_capacity(b * f * 3 * s * s);
        let mut mask = Vec::with_capacity(b * f);
        let mut ids = Vec::with_capacity(b * l);
        let mut eot = Vec::with_capacity(b);
        for &i in batch {
            let p = &self.pairs[i];
            let entry = self.entries[p.video]
                .as_ref()
                .expect("usable pairs have frames");
            let v = self.cache.read(entry)?;
            pixels.extend_from_slice(&v.pixels);
            mask.extend(v.mask.iter().map(|&m| if m { 1f32 } else { 0.0 }));
            ids.extend_from_slice(&p.ids);
            eot.push(p.eot);
        }
        let pixels = Tensor::from_vec(pixels, (b * f, 3, s, s), dev)?;
        let mask = Tensor::from_vec(mask, (b, f), dev)?;
        let hook = self.adapter.video_hook(&mask)?;
        let frames = clip.vision.forward(&pixels, Some(&hook), false)?.embeds;
        let video = pool_frames(&frames, &mask)?;
        let ids = Tensor::from_vec(ids, (b, l), dev)?;
        let eot = Tensor::from_vec(eot, b, dev)?;
        let th = self.adapter.text_hook(l)?;
        let text = l2_normalize(&clip.text.forward(&ids, &eot, Some(&th), false)?.embeds)?;
        Ok(symmetric_infonce(
            &text,
            &video,
            logit_scale(clip.logit_scale),
        )?)
    }

    /// The current adapter as a file, with the training metrics in its metadata.
    pub fn adapter_file(&self) -> Result<AdapterFile, TrainError> {
        let tensors = self
            .opt
            .params()
            .map(|(n, v)| {
                Ok((
                    n.to_string(),
                    v.as_tensor().detach().to_device(&Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let clip = &self.backbone.clip;
        let meta = AdapterMeta {
            task: self.task.clone(),
            backbone: clip.id.clone(),
            config: self.adapter.config.clone(),
            metrics: Some(self.metrics()),
            backbone_params: Some(clip_param_count(&clip.config) as u64),
        };
        Ok(AdapterFile::new(meta, tensors)?)
    }

    /// Writes the checkpoint to `out`, then its resume state beside it.
    pub fn save(&self, out: &Path) -> Result<AdapterFile, TrainError> {
        let file = self.adapter_file()?;
        file.write(out)?;
        let state = TrainState {
            task: self.task.clone(),
            config: self.config.clone(),
            epochs_done: self.epochs_done,
            step: self.opt.steps_done(),
            data_digest: self.data_digest.clone(),
            backbone_digest: self.backbone.clip.id.digest.clone(),
            adapter_digest: file.digest().to_string(),
            history: self.history.clone(),
        };
        state.write(&state_path(out), &self.opt.moments())?;
        Ok(file)
    }

    /// `{"train": {...}}`: where the adapter stands and how it was trained.
    fn metrics(&self) -> serde_json::Value {
        let c = &self.config;
        let last = self.history.last();
        serde_json::json!({"train": {
            "data": self.data_name, "data_digest": self.data_digest,
            "pairs": self.pairs.len(),
            "videos": self.entries.iter().filter(|e| e.is_some()).count(),
            "skipped_videos": self.skipped.len(),
            "epoch": self.epochs_done, "epochs": c.epochs,
            "step": self.opt.steps_done(), "steps": self.schedule.total,
            "loss": last.map(|s| s.loss), "last_loss": last.map(|s| s.last_loss),
            "lr": last.map(|s| s.lr), "pairs_per_s": last.map(|s| s.pairs_per_s),
            "seed": c.seed, "batch": c.batch, "base_lr": c.lr, "warmup": c.warmup,
            "weight_decay": c.adamw.weight_decay, "beta1": c.adamw.beta1,
            "beta2": c.adamw.beta2, "eps": c.adamw.eps, "clip_norm": c.clip_norm,
            "temporal": c.temporal, "frames": c.frames, "words": c.words,
            "history": self.history.iter().map(|s| serde_json::json!({
                "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "pairs_per_s": s.pairs_per_s,
            })).collect::<Vec<_>>(),
        }})
    }

    fn bar(&self, len: u64) -> ProgressBar {
        progress_bar(len, self.show_progress)
    }
}

fn progress_bar(len: u64, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

type Prepared = (Vec<Option<PathBuf>>, Vec<String>, usize);

/// Puts every used video into the cache (in parallel). A video that fails is left out.
fn prepare_frames(
    cache: &FrameCache,
    videos: &[PathBuf],
    used: &HashSet<usize>,
) -> Result<Prepared, TrainError> {
    let bar = progress_bar(used.len() as u64, true);
    bar.set_prefix("frames");
    let results: Vec<Option<Result<(PathBuf, bool), TrainError>>> = videos
        .par_iter()
        .enumerate()
        .map(|(i, v)| {
            if !used.contains(&i) {
                return None;
            }
            let r = cache.ensure(v).map(|e| (e.path, e.decoded));
            bar.inc(1);
            Some(r)
        })
        .collect();
    bar.finish_and_clear();
    let mut entries = Vec::with_capacity(videos.len());
    let (mut skipped, mut decoded) = (Vec::new(), 0);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            None => entries.push(None),
            Some(Ok((path, fresh))) => {
                decoded += fresh as usize;
                entries.push(Some(path));
            }
            Some(Err(e @ (TrainError::Media { .. } | TrainError::Io(..)))) => {
                tracing::warn!(video = %videos[i].display(), error = %e, "video left out");
                skipped.push(format!("{}: {e}", videos[i].display()));
                entries.push(None);
            }
            Some(Err(e)) => return Err(e),
        }
    }
    Ok((entries, skipped, decoded))
}

/// The settings that differ, by name (for the resume error).
fn config_diff(a: &TrainConfig, b: &TrainConfig) -> String {
    let (serde_json::Value::Object(x), serde_json::Value::Object(y)) = (
        serde_json::to_value(a).expect("config serialises"),
        serde_json::to_value(b).expect("config serialises"),
    ) else {
        return "?".into();
    };
    x.iter()
        .filter(|(k, v)| y.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} was {v}, now {}",
                y.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

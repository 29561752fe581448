//! Training a task's MV-Adapter on video-caption pairs with the backbone frozen (spec section 9):
//! symmetric InfoNCE over in-batch pairs, AdamW with warmup and cosine decay, gradient clipping,
//! the frame cache, per-epoch checkpoints in the adapter format, and exact resumes.
//!
//! Owns: `TrainConfig` (the run's hyper-parameters), `Trainer` (the loop), the order of pairs
//! (`batches`), the optimiser (`optim`), the loss (`loss`), the frame cache (`frames`), seeded
//! initial values (`init`) and the resume state beside each checkpoint (`state`). It does not own dataset formats (the caller
//! passes video paths and pairs), the model, or evaluation.
//!
//! ```no_run
//! # use mvserve::train::*; use mvserve::backbone::*;
//! # fn f(backbone: &Backbone, data: &TrainData) -> anyhow::Result<()> {
//! let config = TrainConfig { epochs: 5, batch: 128, ..TrainConfig::default() };
//! let cache = FrameCache::new(FrameCache::default_dir(), config.sample_spec(backbone), Default::default());
//! let mut trainer = Trainer::new(backbone, "msrvtt", config, data, &cache)?;
//! trainer.run("adapters/msrvtt.safetensors".as_ref())?;   // a checkpoint after every epoch
//! # Ok(()) }
//! ```

pub mod batches;
pub mod frames;
pub mod init;
pub mod loss;
pub mod optim;
pub mod state;
pub mod trainer;

pub use frames::{FrameCache, VideoFrames, CACHE_VERSION};
pub use optim::{AdamW, AdamWConfig, Schedule};
pub use state::{state_path, TrainState};
pub use trainer::{EpochStats, TrainData, Trainer};

use crate::adapter::Tying;
use crate::backbone::Backbone;
use crate::eval::data::DatasetFormat;
use crate::media::SampleSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything that fixes a training run. Recorded in the resume state: a resume must use the
/// same values, so that it continues exactly the run that was interrupted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Pairs per batch (each batch holds every video at most once).
    pub batch: usize,
    /// Peak learning rate (after warmup).
    pub lr: f64,
    /// Fraction of all updates spent warming up linearly from 0.
    pub warmup: f64,
    pub adamw: AdamWConfig,
    /// Largest global gradient norm; 0 turns clipping off.
    pub clip_norm: f64,
    /// Seeds the adapter's initial values and each epoch's order of pairs.
    pub seed: u64,
    /// Frames per video F and text length L of the adapter.
    pub frames: usize,
    pub words: usize,
    /// Temporal adaptation (the video TRM and the calibration); false is `--no-temporal`:
    /// a per-frame down/up video adapter, blind to frame order.
    pub temporal: bool,
    pub tying: Tying,
    /// The adapter's output scale s (0.1, the authors'). Its up-projection starts at zero, so a
    /// larger s makes the adapter's output grow faster: a small random backbone, whose
    /// embeddings barely differ between inputs, needs s = 1 to leave the collapsed start.
    pub scale: f64,
}

/// Frames per video for paragraph datasets.
pub const PARAGRAPH_FRAMES: usize = 32;
/// Padded text length for paragraph datasets (a paragraph of captions).
pub const PARAGRAPH_WORDS: usize = 64;

impl Default for TrainConfig {
    /// The authors' MSR-VTT settings (spec section 9).
    fn default() -> Self {
        Self {
            epochs: 5,
            batch: 128,
            lr: 5e-6,
            warmup: 0.1,
            adamw: AdamWConfig::default(),
            clip_norm: 1.0,
            seed: 42,
            frames: crate::media::DEFAULT_FRAMES,
            words: crate::backbone::DEFAULT_TEXT_LEN,
            temporal: true,
            tying: Tying::DownIn,
            scale: 0.1,
        }
    }
}

impl TrainConfig {
    /// The defaults for a dataset: paragraph datasets (DiDeMo, ActivityNet) take longer videos
    /// and texts, 32 frames and 64 tokens (spec section 9).
    pub fn for_format(format: DatasetFormat) -> Self {
        match format.is_paragraph() {
            true => Self {
                frames: PARAGRAPH_FRAMES,
                words: PARAGRAPH_WORDS,
                ..Self::default()
            },
            false => Self::default(),
        }
    }

    /// How videos are sampled for this run: F frames at 1 fps, the backbone's image size.
    pub fn sample_spec(&self, backbone: &Backbone) -> SampleSpec {
        SampleSpec {
            frames: self.frames,
            fps: 1.0,
            size: backbone.clip.config.vision_config.image_size as u32,
        }
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch < 2 {
            return bad("a batch needs at least 2 pairs (the other pairs are the negatives)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be positive");
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return bad("warmup is a fraction of the updates, in 0..=1");
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) || a.eps <= 0.0 {
            return bad("AdamW needs betas in 0..1 and a positive eps");
        }
        if !(a.weight_decay >= 0.0 && self.clip_norm >= 0.0) {
            return bad("weight decay and the clipping norm must not be negative");
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad("the adapter scale must be positive");
        }
        if self.frames == 0 || self.words < 2 {
            return bad("frames must be positive and words at least 2 (SOT and EOT)");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("bad training settings: {0}")]
    Config(String),
    #[error("no usable pairs: {0}")]
    NoData(String),
    #[error("video {video}: {source}")]
    Media {
        video: PathBuf,
        #[source]
        source: crate::media::MediaError,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("training diverged at update {update} (loss {loss}, gradient norm {grad_norm}); lower the learning rate")]
    Diverged {
        update: u64,
        loss: f64,
        grad_norm: f64,
    },
    #[error("frame cache: {0}")]
    Cache(String),
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error(transparent)]
    Adapter(#[from] crate::adapter::AdapterError),
    #[error(transparent)]
    Backbone(#[from] crate::backbone::BackboneError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

//! MV-Adapter (Jin, Zhang et al., CVPR 2024) for the shared CLIP backbone: the text adapter, the
//! video adapter with Temporal Adaptation, Cross Modality Tying, the adapter file format with its
//! validation, and the import of the authors' checkpoints.
//!
//! Owns: `AdapterConfig` (what an adapter is), the candle modules (`modules`), `TaskAdapter` and
//! its `BlockHook`s (how the backbone runs an adapter, also in batches mixing tasks), `AdapterFile`
//! (read, validate, write, digest) and the name map of the authors' code (`import`). It does not
//! own the backbone, batching, training or the watched adapter folder.
//!
//! ```no_run
//! # use mvserve::adapter::*; use mvserve::backbone::*; use candle_core::*;
//! # fn f(clip: &Clip, pixels: &Tensor, mask: &Tensor, ids: &Tensor, eot: &Tensor) -> anyhow::Result<()> {
//! let file = AdapterFile::read("adapters/msrvtt.safetensors".as_ref())?;
//! file.check_backbone(&clip.id, &BackboneDims::of(&clip.config))?;
//! let adapter = file.adapter(&clip.device)?;
//! let hook = adapter.video_hook(mask)?;                       // mask (B, F)
//! let frames = clip.vision.forward(pixels, Some(&hook), false)?.embeds; // (B*F, 512)
//! let videos = pool_frames(&frames, mask)?;                   // (B, 512), L2-normalised
//! let texts = clip.text.forward(ids, eot, Some(&adapter.text_hook(32)?), false)?.embeds;
//! # Ok(()) }
//! ```

pub mod config;
pub mod file;
pub mod import;
pub mod modules;
mod served_text;
pub mod task;

pub use config::{clip_param_count, AdapterConfig, BackboneDims, Tying};
pub use file::{AdapterFile, AdapterMeta, FORMAT, MAX_HEADER_BYTES};
pub use modules::AdapterInit;
pub use task::{pool_frames, MixedHook, TaskAdapter, TextHook, VideoHook};

use crate::backbone::BackboneId;
use std::path::PathBuf;

/// Everything that can be wrong with an adapter, its file or its input. No file input panics.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("the safetensors header is {size} bytes, more than the {limit}-byte limit")]
    HeaderTooLarge { size: u64, limit: u64 },
    #[error("the file is truncated: {found} bytes, the header describes {expected}")]
    Truncated { expected: u64, found: u64 },
    #[error("a safetensors file, but not an mvserve adapter (no \"format\" metadata)")]
    NotAnAdapter,
    #[error("unsupported adapter format {found:?} (this build reads {FORMAT:?})")]
    UnsupportedFormat { found: String },
    #[error("bad adapter metadata: {0}")]
    BadMetadata(String),
    #[error("bad adapter config: {0}")]
    BadConfig(String),
    #[error("the adapter does not fit this backbone: {0}")]
    ConfigMismatch(String),
    #[error(
        "the adapter was trained for backbone {} (weights {}), the loaded backbone is {} (weights {})",
        .expected.name, .expected.digest, .found.name, .found.digest
    )]
    BackboneMismatch {
        expected: BackboneId,
        found: BackboneId,
    },
    #[error("the adapter lacks tensors: {}", .0.join(", "))]
    MissingTensors(Vec<String>),
    #[error("the adapter has tensors its config does not use: {}", .0.join(", "))]
    UnexpectedTensors(Vec<String>),
    #[error("misnamed tensors: expected {} but found {}", .missing.join(", "), .unexpected.join(", "))]
    MisnamedTensors {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} is {found}, adapters are stored as F32")]
    TensorDtype { name: String, found: String },
    #[error("tensor {name} has {count} NaN or infinite values")]
    NonFinite { name: String, count: usize },
    #[error("bad input: {0}")]
    Input(String),
    #[error("import: {0}")]
    Import(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

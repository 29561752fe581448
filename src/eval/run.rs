//! One evaluation run: decode and embed every video of a [`Dataset`] (in batches), embed every
//! caption (in batches), and score the full caption x video cosine similarity matrix.
//!
//! Decoding a batch runs in parallel (rayon); the batch then goes through the vision tower in
//! one forward pass. A video that fails to decode fails the run, naming it: dropping it would
//! change what the metrics measure.

use super::data::Dataset;
use super::metrics::{evaluate, EvalReport, MetricsError, SimilarityMatrix};
use crate::embed::{EmbedError, Embedder};
use crate::media::{load_video, MediaError, MediaLimits};
use candle_core::Tensor;
use rayon::prelude::*;

/// Batch sizes and decoding limits of a run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Videos per vision forward pass (each is F frames).
    pub video_batch: usize,
    /// Captions per text forward pass.
    pub text_batch: usize,
    pub limits: MediaLimits,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            video_batch: 16,
            text_batch: 256,
            limits: MediaLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("video {id} ({path}): {source}")]
    Video {
        id: String,
        path: String,
        #[source]
        source: MediaError,
    },
    /// Boxed: adapter errors are large and runs fail rarely.
    #[error(transparent)]
    Embed(Box<EmbedError>),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<EmbedError> for EvalError {
    fn from(e: EmbedError) -> Self {
        EvalError::Embed(Box::new(e))
    }
}

/// The embeddings of a dataset: (V, P) videos in dataset order, (C, P) captions in
/// [`Dataset::captions`] order, and each caption's video.
pub struct DatasetEmbeddings {
    pub videos: Tensor,
    pub captions: Tensor,
    pub owner: Vec<usize>,
}

/// Embeds every video and caption of `ds`. `progress(done, total)` is called after each video batch.
pub fn embed_dataset(
    e: &Embedder,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<DatasetEmbeddings, EvalError> {
    let spec = e.sample_spec();
    let mut video_parts = Vec::new();
    let mut done = 0;
    for chunk in ds.videos.chunks(opts.video_batch.max(1)) {
        let frames = chunk
            .par_iter()
            .map(|v| {
                load_video(&v.path, &spec, &opts.limits).map_err(|source| EvalError::Video {
                    id: v.id.clone(),
                    path: v.path.display().to_string(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        video_parts.push(e.decoded(&frames.iter().collect::<Vec<_>>())?);
        done += chunk.len();
        progress(done, ds.videos.len());
    }
    let (texts, owner) = ds.captions();
    let text_parts = texts
        .chunks(opts.text_batch.max(1))
        .map(|c| e.texts(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DatasetEmbeddings {
        videos: Tensor::cat(&video_parts, 0)?,
        captions: Tensor::cat(&text_parts, 0)?,
        owner,
    })
}

/// Cosine similarities of L2-normalised rows: `queries` (C, P) against `items` (V, P).
pub fn similarity(queries: &Tensor, items: &Tensor) -> Result<SimilarityMatrix, EvalError> {
    let (c, _) = queries.dims2()?;
    let (v, _) = items.dims2()?;
    let s = queries
        .matmul(&items.t()?)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(SimilarityMatrix::new(c, v, s)?)
}

/// Embeds `ds` and scores it both ways.
pub fn run(
    e: &Embedder,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<EvalReport, EvalError> {
    let emb = embed_dataset(e, ds, opts, progress)?;
    let sim = similarity(&emb.captions, &emb.videos)?;
    Ok(evaluate(&sim, &emb.owner)?)
}

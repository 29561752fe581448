//! Embedding texts, images and videos with the backbone and, optionally, one task's adapter: the
//! one path behind `mvserve embed` and `mvserve eval` (the server's batching encoder, which mixes
//! tasks in a batch, runs the same hooks and the same [`pool_frames`]; `tests/it/encode_paths.rs`
//! holds the two to the same result).
//!
//! Texts go through the text tower with the adapter's text hook; videos are (B*F) frames through
//! the vision tower with the adapter's video hook, then meanP ([`pool_frames`]). Without an
//! adapter this is zero-shot CLIP with meanP. All tensors live on the backbone's device.

use crate::adapter::{pool_frames, AdapterError, AdapterFile, BackboneDims, TaskAdapter};
use crate::backbone::{l2_normalize, Backbone, BackboneError, Clip};
use crate::media::{Frames, SampleSpec};
use candle_core::{DType, Tensor};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error("adapter {path}: {source}")]
    Adapter {
        path: String,
        #[source]
        source: AdapterError,
    },
    #[error(transparent)]
    Hook(#[from] AdapterError),
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading frame {path}: {source}")]
    Frame {
        path: String,
        #[source]
        source: image::ImageError,
    },
    #[error("{0} has no frame images (jpg, png, gif)")]
    NoFrames(String),
}

/// The file endings a folder of frames is read for.
const FRAME_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "gif"];

type Res<T> = Result<T, EmbedError>;

/// Reads an adapter file, checks that it was made for `clip`, and loads it on `clip`'s device.
pub fn load_adapter(path: &Path, clip: &Clip) -> Res<(AdapterFile, TaskAdapter)> {
    let err = |source| EmbedError::Adapter {
        path: path.display().to_string(),
        source,
    };
    let file = AdapterFile::read(path).map_err(err)?;
    file.check_backbone(&clip.id, &BackboneDims::of(&clip.config))
        .map_err(err)?;
    let adapter = file.adapter(&clip.device).map_err(err)?;
    Ok((file, adapter))
}

/// The backbone with an optional adapter, and the text length and frame count they take.
pub struct Embedder<'a> {
    pub backbone: &'a Backbone,
    pub adapter: Option<&'a TaskAdapter>,
    text_len: usize,
    frames: usize,
}

impl<'a> Embedder<'a> {
    /// `text_len` and `frames` are used without an adapter; an adapter fixes both to its own.
    pub fn new(
        backbone: &'a Backbone,
        adapter: Option<&'a TaskAdapter>,
        text_len: usize,
        frames: usize,
    ) -> Self {
        let (text_len, frames) = match adapter {
            Some(a) => (a.config.words, a.config.frames),
            None => (text_len, frames),
        };
        Self {
            backbone,
            adapter,
            text_len,
            frames,
        }
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// F: frame slots per video.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The side of the square model input.
    pub fn image_size(&self) -> usize {
        self.backbone.clip.config.vision_config.image_size
    }

    /// How `media` should sample a video for this model: F frames at 1 fps, model-sized.
    pub fn sample_spec(&self) -> SampleSpec {
        SampleSpec {
            frames: self.frames,
            fps: 1.0,
            size: self.image_size() as u32,
        }
    }

    /// (N, P) L2-normalised text embeddings.
    pub fn texts(&self, texts: &[&str]) -> Res<Tensor> {
        match self.adapter {
            Some(a) => {
                let hook = a.text_hook(self.text_len)?;
                Ok(self
                    .backbone
                    .embed_texts(texts, self.text_len, Some(&hook))?)
            }
            None => Ok(self.backbone.embed_texts(texts, self.text_len, None)?),
        }
    }

    /// (B, P) L2-normalised video embeddings of `pixels` (B*F, 3, S, S), video-major, with the
    /// frame mask (B, F) (1 real, 0 padding).
    pub fn videos(&self, pixels: &Tensor, mask: &Tensor) -> Res<Tensor> {
        let vision = &self.backbone.clip.vision;
        let frames = match self.adapter {
            Some(a) => {
                let hook = a.video_hook(mask)?;
                vision.forward(pixels, Some(&hook), false)?.embeds
            }
            None => vision.forward(pixels, None, false)?.embeds,
        };
        Ok(pool_frames(&frames, mask)?)
    }

    /// (N, P) embeddings of images (N, 3, S, S): plain CLIP, or one-frame videos through the
    /// adapter's video hook.
    pub fn images(&self, pixels: &Tensor) -> Res<Tensor> {
        match self.adapter {
            Some(_) => {
                let n = pixels.dim(0)?;
                let mask = Tensor::ones((n, 1), DType::F32, pixels.device())?;
                self.videos(pixels, &mask)
            }
            None => Ok(l2_normalize(
                &self
                    .backbone
                    .clip
                    .vision
                    .forward(pixels, None, false)?
                    .embeds,
            )?),
        }
    }

    /// The (1, P) embedding of a folder of frame images taken as one video: sorted by name, F
    /// chosen by the media module's uniform rule, no padding.
    pub fn frame_dir(&self, dir: &Path) -> Res<Tensor> {
        let io = |source| EmbedError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_lowercase().as_str()))
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(EmbedError::NoFrames(dir.display().to_string()));
        }
        let picked = crate::media::sample::uniform(paths.len(), self.frames);
        let s = self.image_size();
        let mut data = Vec::with_capacity(picked.len() * 3 * s * s);
        for &i in &picked {
            let p = &paths[i];
            let img = image::open(p)
                .map_err(|source| EmbedError::Frame {
                    path: p.display().to_string(),
                    source,
                })?
                .to_rgb8();
            data.extend(crate::backbone::preprocess::preprocess(&img, s as u32));
        }
        let dev = &self.backbone.clip.device;
        let pixels = Tensor::from_vec(data, (picked.len(), 3, s, s), dev)?;
        let mask = Tensor::ones((1, picked.len()), DType::F32, dev)?;
        self.videos(&pixels, &mask)
    }

    /// (B, P) embeddings of videos decoded by `media` with [`Self::sample_spec`].
    pub fn decoded(&self, videos: &[&Frames]) -> Res<Tensor> {
        let (f, s) = (self.frames, self.image_size());
        let per_video = f * 3 * s * s;
        let mut pixels = Vec::with_capacity(videos.len() * per_video);
        let mut mask = Vec::with_capacity(videos.len() * f);
        for v in videos {
            if v.pixels.len() != per_video || v.mask.len() != f {
                return Err(EmbedError::Input(format!(
                    "decoded video has {} values and {} slots, expected {per_video} and {f}",
                    v.pixels.len(),
                    v.mask.len()
                )));
            }
            pixels.extend_from_slice(&v.pixels);
            mask.extend(v.mask.iter().map(|&m| if m { 1f32 } else { 0.0 }));
        }
        let dev = &self.backbone.clip.device;
        let b = videos.len();
        let pixels = Tensor::from_vec(pixels, (b * f, 3, s, s), dev)?;
        let mask = Tensor::from_vec(mask, (b, f), dev)?;
        self.videos(&pixels, &mask)
    }
}

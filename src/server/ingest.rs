//! Turning a stored upload into the encoder's frame tensor, behind the small [`VideoDecoder`]
//! trait so the server does not depend on how decoding is done.
//!
//! Owns: the trait, the error kinds the HTTP layer maps to statuses, and [`MediaDecoder`], the
//! implementation over the `media` module; and [`decode_still`], the same for a still image sent
//! as a search example (`media::still` has the rule that makes it a video). Does not own decoding
//! itself (`media`).

use crate::media::{self, MediaError, MediaLimits, SampleSpec};
use std::path::Path;

/// Frames sampled from one video, ready for the encoder.
#[derive(Debug, Clone)]
pub struct DecodedVideo {
    /// (F, 3, S, S) CLIP-normalised values; padded slots are zero.
    pub pixels: Vec<f32>,
    /// Length F; real frames first.
    pub mask: Vec<bool>,
    /// JPEG of the middle sampled frame.
    pub thumbnail_jpeg: Vec<u8>,
    /// What the decoder found (container, codec, duration, size ...), shown by `GET /videos`.
    pub info: serde_json::Value,
}

/// Why a video was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported media: {0}")]
    Unsupported(String),
    #[error("undecodable media: {0}")]
    Corrupt(String),
    #[error("media too large: {0}")]
    TooLarge(String),
    #[error("media decoding failed: {0}")]
    Internal(String),
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Unsupported(_) => "unsupported_media",
            DecodeError::Corrupt(_) => "corrupt_media",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::Internal(_) => "internal",
        }
    }
}

/// Decodes `frames` frames at `size` x `size` from a file (synchronous; called off the runtime).
pub trait VideoDecoder: Send + Sync {
    fn decode(&self, path: &Path, frames: usize, size: usize) -> Result<DecodedVideo, DecodeError>;
    /// Every 1-fps candidate of the video, for cutting segments (`store::moments`); `frames` picks
    /// the thumbnail as [`VideoDecoder::decode`] would.
    fn decode_timeline(
        &self,
        path: &Path,
        frames: usize,
        size: usize,
    ) -> Result<media::Timeline, DecodeError>;
}

/// `message` with `path` (as given, as absolute, as ffmpeg's `file:` URL) written as "the
/// upload": ffmpeg's messages quote its input, a file under the data folder, and clients see them.
fn without_path(message: &str, path: &Path) -> String {
    let mut forms = vec![path.display().to_string()];
    if let Ok(abs) = std::path::absolute(path) {
        forms.insert(0, abs.display().to_string());
    }
    let mut out = message.to_string();
    for f in forms {
        out = out
            .replace(&format!("file:{f}"), "the upload")
            .replace(&f, "the upload");
    }
    out
}

/// Decoding with `media::load_video` (in-process H.264 and GIF, the ffmpeg program for the rest).
pub struct MediaDecoder {
    pub limits: MediaLimits,
    /// Candidate frames per second before the uniform choice of F.
    pub fps: f64,
    /// Held while a timeline is decoded and preprocessed: one at a time, so the memory that
    /// `--segment-max-mb` bounds per video is also the bound for all of them.
    pub timeline_gate: parking_lot::Mutex<()>,
    /// The wall-time budget of one timeline (`--segment-max-decode-seconds`) in place of
    /// `limits.max_wall_time`: a timeline's work grows with the video's length.
    pub timeline_wall_time: std::time::Duration,
}

/// The typed error of a failed load of the file at `path` (which its message never names).
fn decode_error(e: MediaError, path: &Path) -> DecodeError {
    let m = without_path(&e.to_string(), path);
    match e {
        MediaError::Unsupported { .. } => DecodeError::Unsupported(m),
        MediaError::Corrupt(_) | MediaError::TimedOut(_) => DecodeError::Corrupt(m),
        MediaError::TooLarge(_) | MediaError::TooLong { .. } => DecodeError::TooLarge(m),
        MediaError::InvalidSpec(_) | MediaError::Io(_) => DecodeError::Internal(m),
    }
}

impl From<media::Frames> for DecodedVideo {
    fn from(f: media::Frames) -> Self {
        DecodedVideo {
            pixels: f.pixels,
            mask: f.mask,
            thumbnail_jpeg: f.thumbnail_jpeg,
            info: serde_json::to_value(&f.info).unwrap_or_default(),
        }
    }
}

impl VideoDecoder for MediaDecoder {
    fn decode(&self, path: &Path, frames: usize, size: usize) -> Result<DecodedVideo, DecodeError> {
        let spec = SampleSpec {
            frames,
            fps: self.fps,
            size: size as u32,
        };
        let f = media::load_video(path, &spec, &self.limits).map_err(|e| decode_error(e, path))?;
        Ok(f.into())
    }

    fn decode_timeline(
        &self,
        path: &Path,
        frames: usize,
        size: usize,
    ) -> Result<media::Timeline, DecodeError> {
        let spec = SampleSpec {
            frames,
            fps: self.fps,
            size: size as u32,
        };
        let limits = MediaLimits {
            max_wall_time: self.timeline_wall_time,
            ..self.limits.clone()
        };
        let _one_at_a_time = self.timeline_gate.lock();
        media::load_timeline(path, &spec, &limits).map_err(|e| decode_error(e, path))
    }
}

/// The still image (JPEG or PNG, at most `max_bytes`) at `path` as `frames` frames at `size` x
/// `size`: the picture in every slot (`media::still`). Synchronous; called off the runtime.
pub fn decode_still(
    path: &Path,
    frames: usize,
    size: usize,
    max_bytes: u64,
) -> Result<DecodedVideo, DecodeError> {
    let spec = SampleSpec {
        frames,
        fps: 1.0,
        size: size as u32,
    };
    let bytes = std::fs::read(path).map_err(|e| decode_error(e.into(), path))?;
    let f =
        media::still::load_still(&bytes, &spec, max_bytes).map_err(|e| decode_error(e, path))?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A timeline has its own wall-time budget: with none left it times out, while the plain
    /// decode of the same file, under the upload's budget, does not.
    #[test]
    fn a_timeline_has_its_own_time_budget() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos/video740.mp4");
        let decoder = |timeline_wall_time| MediaDecoder {
            limits: MediaLimits::default(),
            fps: 1.0,
            timeline_gate: parking_lot::Mutex::new(()),
            timeline_wall_time,
        };
        let none_left = decoder(Duration::ZERO);
        assert!(none_left.decode(&path, 4, 32).is_ok());
        match none_left.decode_timeline(&path, 4, 32) {
            Err(DecodeError::Corrupt(m)) => assert!(m.contains("timed out"), "{m}"),
            other => panic!("expected a timeout, got {:?}", other.map(|t| t.timestamps)),
        }
        let t = decoder(Duration::from_secs(60))
            .decode_timeline(&path, 4, 32)
            .unwrap();
        assert!(t.timestamps.len() >= 10, "{:?}", t.timestamps);
    }
}

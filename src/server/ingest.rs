//! Turning a stored upload into the encoder's frame tensor, behind the small [`VideoDecoder`]
//! trait so the server does not depend on how decoding is done.
//!
//! Owns: the trait, the error kinds the HTTP layer maps to statuses, and [`FfmpegDecoder`], a
//! stand-in that runs the `ffprobe`/`ffmpeg` programs until the `media` module is merged. Does not
//! own: resize/crop/normalise (that is `backbone::preprocess`).

use crate::backbone::preprocess::preprocess_into;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

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
}

/// Decoding through the `ffprobe` and `ffmpeg` programs: 1 frame per second, F chosen uniformly.
pub struct FfmpegDecoder {
    /// Longest accepted video in seconds.
    pub max_duration_s: f64,
    /// Largest accepted frame in pixels.
    pub max_pixels: u64,
}

impl Default for FfmpegDecoder {
    fn default() -> Self {
        Self {
            max_duration_s: 1800.0,
            max_pixels: 3840 * 2160,
        }
    }
}

/// A container we recognise by its first bytes, or `None`.
fn sniff(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        Some("mp4")
    } else if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        Some("matroska")
    } else if head.starts_with(b"RIFF") && head.len() >= 12 && &head[8..12] == b"AVI " {
        Some("avi")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("gif")
    } else if head.len() >= 8 && (&head[4..8] == b"moov" || &head[4..8] == b"mdat") {
        Some("mov")
    } else {
        None
    }
}

impl VideoDecoder for FfmpegDecoder {
    fn decode(&self, path: &Path, frames: usize, size: usize) -> Result<DecodedVideo, DecodeError> {
        let io = |e: std::io::Error| DecodeError::Internal(e.to_string());
        let mut head = [0u8; 16];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(io)?;
        let container = sniff(&head[..n]).ok_or_else(|| {
            DecodeError::Unsupported(
                "not a video container this server knows (MP4/MOV, Matroska/WebM, AVI, GIF)".into(),
            )
        })?;
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .arg("stream=width,height,codec_name:format=duration")
            .args(["-of", "json"])
            .arg(path)
            .output()
            .map_err(|e| DecodeError::Internal(format!("running ffprobe: {e}")))?;
        if !probe.status.success() {
            return Err(DecodeError::Corrupt(
                String::from_utf8_lossy(&probe.stderr).trim().to_string(),
            ));
        }
        let j: serde_json::Value = serde_json::from_slice(&probe.stdout)
            .map_err(|e| DecodeError::Internal(e.to_string()))?;
        let stream = j["streams"]
            .get(0)
            .ok_or_else(|| DecodeError::Corrupt("no video stream".into()))?;
        let (w, h) = (
            stream["width"].as_u64().unwrap_or(0),
            stream["height"].as_u64().unwrap_or(0),
        );
        if w == 0 || h == 0 {
            return Err(DecodeError::Corrupt(
                "video stream without a frame size".into(),
            ));
        }
        if w * h > self.max_pixels {
            return Err(DecodeError::TooLarge(format!("{w}x{h} frames")));
        }
        let duration: f64 = j["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0);
        if duration > self.max_duration_s {
            return Err(DecodeError::TooLarge(format!(
                "{duration:.1} s is over the limit of {:.1} s",
                self.max_duration_s
            )));
        }
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(path)
            .args(["-vf", "fps=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DecodeError::Internal(format!("running ffmpeg: {e}")))?;
        let frame_bytes = (w * h * 3) as usize;
        let mut all = Vec::new();
        let mut out = child.stdout.take().expect("piped");
        let mut buf = vec![0u8; frame_bytes];
        // Keep at most a few hundred 1-fps frames in memory (the duration limit bounds this).
        while out.read_exact(&mut buf).is_ok() {
            all.push(buf.clone());
        }
        let status = child.wait().map_err(io)?;
        if all.is_empty() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(DecodeError::Corrupt(if status.success() {
                "no frames decoded".into()
            } else {
                err.trim().to_string()
            }));
        }
        // F frames chosen uniformly over the 1-fps candidates; fewer candidates -> padding.
        let chosen: Vec<usize> = if all.len() <= frames {
            (0..all.len()).collect()
        } else {
            (0..frames)
                .map(|i| ((i as f64 + 0.5) * all.len() as f64 / frames as f64) as usize)
                .collect()
        };
        let per = 3 * size * size;
        let mut pixels = vec![0f32; frames * per];
        let mut mask = vec![false; frames];
        let mut thumb = None;
        for (slot, &i) in chosen.iter().enumerate() {
            let img = image::RgbImage::from_raw(w as u32, h as u32, all[i].clone())
                .ok_or_else(|| DecodeError::Internal("frame size".into()))?;
            preprocess_into(&img, size as u32, &mut pixels[slot * per..(slot + 1) * per]);
            mask[slot] = true;
            if slot == chosen.len() / 2 {
                thumb = Some(img);
            }
        }
        let mut jpeg = Vec::new();
        if let Some(img) = thumb {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
                .encode_image(&img)
                .map_err(|e| DecodeError::Internal(e.to_string()))?;
        }
        Ok(DecodedVideo {
            pixels,
            mask,
            thumbnail_jpeg: jpeg,
            info: serde_json::json!({
                "container": container,
                "codec": stream["codec_name"],
                "duration_s": duration,
                "width": w,
                "height": h,
                "decoder": "ffmpeg",
            }),
        })
    }
}

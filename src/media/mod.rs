//! Video ingest: bytes of an untrusted upload in, the backbone's frame tensor out.
//!
//! This module owns format detection, demuxing (MP4/MOV through the `mp4` crate, AVI through a small
//! RIFF reader), H.264 decoding in process (`openh264`), animated GIF (`gif` + `image`), the `ffmpeg`
//! child-process fallback for every other codec and container, frame sampling (MV-Adapter spec
//! section 10), the thumbnail, limits and the typed errors. It does not own the pixel arithmetic of
//! the model input: resize, crop and normalisation are `backbone::preprocess`, shared with the
//! backbone. Everything here is synchronous and CPU-bound; the server calls it from a blocking pool.
//!
//! Pipeline: [`detect`] the format from the first bytes; demux to a list of packets with their
//! presentation times ([`mp4`], [`avi`]) or ask `ffprobe` ([`ffmpeg`]); choose the frames to keep from
//! the timestamps alone ([`sample`]); decode only as far as the last chosen frame ([`h264`],
//! [`gif`], [`ffmpeg`]); preprocess the chosen frames and encode the middle one as a JPEG.
//!
//! Still images (JPEG, PNG: queries by example, never uploads) are [`still`]: one frame,
//! preprocessed the same way, repeated into every frame slot.

mod avi;
mod detect;
mod ffmpeg;
mod gif;
mod h264;
mod input;
pub(crate) mod mkv;
mod mp4;
pub mod sample;
pub mod still;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;

use crate::backbone::preprocess::{preprocess_into, resize_crop};
pub use detect::{detect, Container};

/// Hard ceiling on either side of a frame, whatever `max_pixels` says (H.264 level 6.2 is 8192).
pub const MAX_SIDE: u32 = 16_384;

/// Resource limits for one video. Every limit is checked before the work it bounds is done.
#[derive(Clone, Debug)]
pub struct MediaLimits {
    /// Largest accepted file, in bytes.
    pub max_bytes: u64,
    /// Longest accepted video, in seconds (from the container's timestamps).
    pub max_duration_s: f64,
    /// Largest accepted frame, in pixels (width x height), checked from headers before decoding.
    pub max_pixels: u64,
    /// Most frames the decoder may produce or the container may list for one video.
    pub max_frames_decoded: u64,
    /// Wall-clock budget for the whole load (demux, decode, preprocess, ffmpeg included).
    pub max_wall_time: Duration,
    /// Whether formats outside the in-process decoders may go to the `ffmpeg` program (if found).
    pub use_ffmpeg: bool,
}

impl Default for MediaLimits {
    /// 256 MiB, 30 minutes, 3840x2160 (4K UHD), 100 000 frames, 60 s, ffmpeg allowed.
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_duration_s: 1800.0,
            max_pixels: 3840 * 2160,
            max_frames_decoded: 100_000,
            max_wall_time: Duration::from_secs(60),
            use_ffmpeg: true,
        }
    }
}

/// F when nothing else sets it (an adapter fixes its own): spec section 10's 12 frames.
pub const DEFAULT_FRAMES: usize = 12;

/// How many frames to take and at what size (spec section 10: 12 frames at 1 fps, 224 px).
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    /// F: the number of frame slots in the output (padded and masked when the video is shorter).
    pub frames: usize,
    /// Candidate frames per second of video before the uniform choice of F.
    pub fps: f64,
    /// Side of the square model input.
    pub size: u32,
}

impl Default for SampleSpec {
    fn default() -> Self {
        Self {
            frames: DEFAULT_FRAMES,
            fps: 1.0,
            size: 224,
        }
    }
}

/// How the decoders reach the chosen frames. Both give the same frames (tested on every fixture);
/// they differ in how much of the video is decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeStrategy {
    /// Decode only around what is sampled. In-process H.264: for each chosen frame, start at the
    /// last IDR picture at or before it (from the container's index: MP4 `stss`, AVI `idx1`,
    /// each confirmed in the bytes) and decode up to it, going on with the same decoder when the
    /// next chosen frame is in the same GOP. ffmpeg: one seek per chosen frame for long videos,
    /// and a Matroska file's frame times read from its block headers rather than listed by
    /// ffprobe (which demuxes the whole file; `Sequential` still lists them).
    /// The work grows with the number of samples and the GOP length, not the video's length.
    #[default]
    Seek,
    /// Decode every frame from the start up to the last chosen one (GIF always does).
    Sequential,
}

/// What the container and decoder said about a video.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MediaInfo {
    /// Container detected from the bytes: "mp4", "avi", "gif", "matroska", ...
    pub container: String,
    /// Video codec: "h264", "gif", "vp8", "hevc", ...
    pub codec: String,
    /// Duration of the video stream in seconds (last frame's end minus first frame's start).
    pub duration_s: f64,
    /// Coded frame size in pixels (sample aspect ratio is ignored, as CLIP4Clip's OpenCV reader does).
    pub width: u32,
    pub height: u32,
    /// Average frame rate: frames in the stream divided by its duration.
    pub fps: f64,
    /// Which decoder produced the pixels: "openh264", "gif", or "ffmpeg".
    pub decoder: String,
    /// Frames in the video stream according to the container.
    pub frame_count: u64,
}

/// The sampled, preprocessed frames of one video.
#[derive(Clone, Debug)]
pub struct Frames {
    /// (F, 3, size, size) CLIP-normalised values, frame-major; padded slots are all zero.
    pub pixels: Vec<f32>,
    /// Length F; `true` for a real frame. Real frames come first, padding last.
    pub mask: Vec<bool>,
    /// Presentation time in seconds (from the container, relative to the first frame) of each real
    /// frame; its length is the number of `true` entries in `mask`.
    pub timestamps: Vec<f64>,
    /// Baseline JPEG of the middle sampled frame at its decoded size.
    pub thumbnail_jpeg: Vec<u8>,
    pub info: MediaInfo,
}

/// Why a video was refused. Every failure of this module is one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A format or codec this build cannot decode (and how to make it decodable).
    #[error("unsupported media: {format}; {hint}")]
    Unsupported { format: String, hint: String },
    /// The bytes claim to be a known format but do not decode.
    #[error("corrupt media: {0}")]
    Corrupt(String),
    /// Over a size limit (bytes, pixels or frame count).
    #[error("media too large: {0}")]
    TooLarge(String),
    /// Longer than `max_duration_s`.
    #[error("media too long: {duration_s:.1} s is over the limit of {max_s:.1} s")]
    TooLong { duration_s: f64, max_s: f64 },
    /// Ran past `max_wall_time`.
    #[error("media processing timed out after {0:?}")]
    TimedOut(Duration),
    /// The `SampleSpec` itself is unusable (a caller bug, not an upload problem).
    #[error("invalid sample spec: {0}")]
    InvalidSpec(String),
    /// Reading the file or running `ffmpeg` failed at the OS level.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl MediaError {
    /// A short stable code for APIs and metrics. Suggested HTTP mapping: `unsupported_media` 415,
    /// `corrupt_media` 422, `too_large` 413, `too_long` 413, `timed_out` 422 (the upload is too
    /// costly, retrying will not help), `invalid_spec` 500, `io_error` 500.
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::Unsupported { .. } => "unsupported_media",
            MediaError::Corrupt(_) => "corrupt_media",
            MediaError::TooLarge(_) => "too_large",
            MediaError::TooLong { .. } => "too_long",
            MediaError::TimedOut(_) => "timed_out",
            MediaError::InvalidSpec(_) => "invalid_spec",
            MediaError::Io(_) => "io_error",
        }
    }
}

pub type Result<T, E = MediaError> = std::result::Result<T, E>;

/// Decodes, samples and preprocesses the video at `path`. The format is detected from the bytes.
pub fn load_video(path: &Path, spec: &SampleSpec, limits: &MediaLimits) -> Result<Frames> {
    let bytes = input::open(path, limits)?;
    run(&bytes, Some(path), spec, limits, DecodeStrategy::Seek).map(|(frames, _)| frames)
}

/// Like [`load_video`] for a video already in memory (uploads, fuzzing).
pub fn load_video_bytes(bytes: &[u8], spec: &SampleSpec, limits: &MediaLimits) -> Result<Frames> {
    load_video_bytes_with(bytes, spec, limits, DecodeStrategy::Seek)
}

/// Like [`load_video_bytes`] with a chosen [`DecodeStrategy`] (tests and benchmarks compare them).
pub fn load_video_bytes_with(
    bytes: &[u8],
    spec: &SampleSpec,
    limits: &MediaLimits,
    strategy: DecodeStrategy,
) -> Result<Frames> {
    run(bytes, None, spec, limits, strategy).map(|(frames, _)| frames)
}

/// Most 1-fps candidates a timeline keeps (the spec's frame cap); a longer video's candidates
/// are thinned uniformly, as any sampling past F is.
pub const MAX_TIMELINE_FRAMES: usize = 4096;

/// Every candidate frame of a video (one per `1/fps` interval, spec section 10's first step),
/// kept as the `size` x `size` RGB crop preprocessing reads (3 bytes a pixel, a quarter of the
/// preprocessed floats and far less than a decoded frame), so segments of it can be cut
/// without decoding anything twice. Each frame is cut as soon as it is decoded: a timeline's
/// memory is `n x 3 x size^2` bytes plus one frame being decoded, whatever the video's
/// resolution (at most [`MAX_TIMELINE_FRAMES`] x 150 KiB at 224 px).
#[derive(Clone, Debug)]
pub struct Timeline {
    /// The candidates' crops, in time order (length n).
    frames: Vec<RgbImage>,
    /// Presentation time in seconds of each candidate (length n).
    pub timestamps: Vec<f64>,
    /// Side of each frame.
    pub size: u32,
    pub info: MediaInfo,
}

impl Timeline {
    /// Bytes a timeline of `n` candidates at `size` holds.
    pub fn bytes(n: usize, size: u32) -> u64 {
        n as u64 * 3 * u64::from(size) * u64::from(size)
    }

    /// The (F, 3, S, S) tensor and mask of the span `[start_s, end_s)`: its candidates, thinned
    /// to `frames` with the same uniform rule as a whole video (`sample::uniform`).
    pub fn span(&self, start_s: f64, end_s: f64, frames: usize) -> (Vec<f32>, Vec<bool>) {
        let s = self.size as usize;
        let per = 3 * s * s;
        let mut inside: Vec<usize> = (0..self.timestamps.len())
            .filter(|&i| {
                let t = self.timestamps[i];
                t + 1e-6 >= start_s && t < end_s - 1e-6
            })
            .collect();
        if inside.is_empty() {
            // A span between two candidates (a gap in the stream) shows the frame on screen then.
            let before = self.timestamps.iter().rposition(|&t| t < end_s);
            inside.push(before.unwrap_or(0));
        }
        let chosen = sample::uniform(inside.len(), frames);
        let mut pixels = vec![0.0f32; frames * per];
        for (slot, &j) in chosen.iter().enumerate() {
            preprocess_into(
                &self.frames[inside[j]],
                self.size,
                &mut pixels[slot * per..(slot + 1) * per],
            );
        }
        let mask = (0..frames).map(|i| i < chosen.len()).collect();
        (pixels, mask)
    }
}

/// Decodes every 1-fps candidate of the video at `path` (at most [`MAX_TIMELINE_FRAMES`]) with
/// the seeking decoder, so the work grows with the video's seconds, not its frames; each frame
/// is cut to its preprocessing crop as it is decoded.
pub fn load_timeline(path: &Path, spec: &SampleSpec, limits: &MediaLimits) -> Result<Timeline> {
    let bytes = input::open(path, limits)?;
    let all = SampleSpec {
        frames: MAX_TIMELINE_FRAMES,
        ..spec.clone()
    };
    validate_spec(spec)?;
    validate_spec(&all)?;
    let mut budget = Budget {
        limits,
        deadline: Instant::now() + limits.max_wall_time,
        stats: Stats::default(),
        shrink: Some(spec.size),
    };
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        decode_any(&bytes, Some(path), &all, &mut budget, DecodeStrategy::Seek)
    }))
    .unwrap_or_else(|_| Err(MediaError::Corrupt("decoder failed".into())))?;
    budget.check_time()?;
    let Decoded {
        info,
        timestamps,
        images,
    } = decoded;
    if images.is_empty() {
        return Err(MediaError::Corrupt("no decodable video frames".into()));
    }
    Ok(Timeline {
        frames: images,
        timestamps,
        size: spec.size,
        info,
    })
}

/// What `mvserve probe FILE` prints: the metadata and sampled timestamps, or the error.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub file: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<MediaInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_timestamps: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames_decoded: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeError>,
    pub elapsed_ms: f64,
}

/// The typed error of a failed probe.
#[derive(Debug, Serialize)]
pub struct ProbeError {
    pub code: &'static str,
    pub message: String,
}

/// Runs the whole ingest on `path` and reports what happened (for `mvserve probe`).
pub fn probe(
    path: &Path,
    spec: &SampleSpec,
    limits: &MediaLimits,
    strategy: DecodeStrategy,
) -> ProbeReport {
    let start = Instant::now();
    let result =
        input::open(path, limits).and_then(|b| run(&b, Some(path), spec, limits, strategy));
    let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
    let file = path.display().to_string();
    match result {
        Ok((frames, stats)) => ProbeReport {
            file,
            ok: true,
            info: Some(frames.info),
            sampled_timestamps: Some(frames.timestamps),
            frames_decoded: Some(stats.frames_decoded.into_inner()),
            error: None,
            elapsed_ms,
        },
        Err(e) => ProbeReport {
            file,
            ok: false,
            info: None,
            sampled_timestamps: None,
            frames_decoded: None,
            error: Some(ProbeError {
                code: e.code(),
                message: e.to_string(),
            }),
            elapsed_ms,
        },
    }
}

fn too_large_bytes(len: u64, limits: &MediaLimits) -> MediaError {
    MediaError::TooLarge(format!(
        "{len} bytes is over the limit of {} bytes",
        limits.max_bytes
    ))
}

/// Counters that are not part of the result but useful to `probe` and tests. Atomic because the
/// H.264 decoder may run two decoders of one video on two threads against one [`Budget`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub frames_decoded: AtomicU64,
}

/// Shared state of one load: limits, the deadline and the counters. Shared by reference between
/// the threads of one decode (its methods take `&self`), so the limits hold for them together.
pub(crate) struct Budget<'a> {
    pub limits: &'a MediaLimits,
    pub deadline: Instant,
    pub stats: Stats,
    /// When set, every frame a decoder keeps is cut at once to the `S` x `S` crop preprocessing
    /// reads ([`resize_crop`]), so a timeline's frames never sit in memory at full size.
    pub shrink: Option<u32>,
}

impl Budget<'_> {
    /// A decoded frame as the caller keeps it (see `shrink`).
    pub fn keep(&self, img: RgbImage) -> RgbImage {
        match self.shrink {
            Some(size) => resize_crop(&img, size),
            None => img,
        }
    }

    /// Fails once the wall-time budget is spent.
    pub fn check_time(&self) -> Result<()> {
        if Instant::now() > self.deadline {
            Err(MediaError::TimedOut(self.limits.max_wall_time))
        } else {
            Ok(())
        }
    }

    /// Counts one decoded frame against `max_frames_decoded`.
    pub fn count_frame(&self) -> Result<()> {
        let n = self.stats.frames_decoded.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_frames_decoded {
            return Err(MediaError::TooLarge(format!(
                "more than {} decoded frames",
                self.limits.max_frames_decoded
            )));
        }
        Ok(())
    }

    /// Refuses a frame size over `max_pixels` (or a degenerate one) before anything is allocated.
    pub fn check_dims(&self, width: u64, height: u64) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(MediaError::Corrupt(format!(
                "frame size {width}x{height} is empty"
            )));
        }
        if width > MAX_SIDE as u64
            || height > MAX_SIDE as u64
            || width * height > self.limits.max_pixels
        {
            return Err(MediaError::TooLarge(format!(
                "frame size {width}x{height} is over the limit of {} pixels",
                self.limits.max_pixels
            )));
        }
        Ok(())
    }

    /// Checks a stream's length against `max_duration_s` and `max_frames_decoded` from its header.
    pub fn check_stream(&self, duration_s: f64, frame_count: u64) -> Result<()> {
        if !duration_s.is_finite() || duration_s > self.limits.max_duration_s {
            return Err(MediaError::TooLong {
                duration_s,
                max_s: self.limits.max_duration_s,
            });
        }
        if frame_count > self.limits.max_frames_decoded {
            return Err(MediaError::TooLarge(format!(
                "{frame_count} frames is over the limit of {}",
                self.limits.max_frames_decoded
            )));
        }
        Ok(())
    }
}

/// What a decoder path hands back: metadata, the chosen frames' timestamps, and their pixels.
pub(crate) struct Decoded {
    pub info: MediaInfo,
    /// Timestamps (s, relative to the first frame) of the chosen frames, in order.
    pub timestamps: Vec<f64>,
    /// The chosen frames, in the same order as `timestamps`.
    pub images: Vec<RgbImage>,
}

fn validate_spec(spec: &SampleSpec) -> Result<()> {
    if spec.frames == 0 || spec.frames > 4096 {
        return Err(MediaError::InvalidSpec(format!(
            "frames = {} (must be 1..=4096)",
            spec.frames
        )));
    }
    if !(spec.fps.is_finite() && spec.fps > 0.0 && spec.fps <= 1000.0) {
        return Err(MediaError::InvalidSpec(format!(
            "fps = {} (must be in (0, 1000])",
            spec.fps
        )));
    }
    if spec.size == 0 || spec.size > 4096 {
        return Err(MediaError::InvalidSpec(format!(
            "size = {} (must be 1..=4096)",
            spec.size
        )));
    }
    Ok(())
}

/// The whole ingest. Panics from decoder crates are caught here and become `Corrupt`.
fn run(
    bytes: &[u8],
    path: Option<&Path>,
    spec: &SampleSpec,
    limits: &MediaLimits,
    strategy: DecodeStrategy,
) -> Result<(Frames, Stats)> {
    validate_spec(spec)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large_bytes(bytes.len() as u64, limits));
    }
    let mut budget = Budget {
        limits,
        deadline: Instant::now() + limits.max_wall_time,
        stats: Stats::default(),
        shrink: None,
    };
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        decode_any(bytes, path, spec, &mut budget, strategy)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(MediaError::Corrupt(format!("decoder failed: {what}")))
    })?;
    budget.check_time()?;
    let frames = finish(decoded, spec)?;
    Ok((frames, budget.stats))
}

/// Routes the bytes to a decoder by their detected format.
fn decode_any(
    bytes: &[u8],
    path: Option<&Path>,
    spec: &SampleSpec,
    budget: &mut Budget,
    strategy: DecodeStrategy,
) -> Result<Decoded> {
    let container = detect::detect(bytes);
    let ffmpeg = |container, codec: &str, budget: &mut Budget| {
        ffmpeg::decode(bytes, path, container, codec, spec, budget, strategy)
    };
    match container {
        Container::Mp4 | Container::Avi => {
            let stream = match container {
                Container::Mp4 => match mp4::demux(bytes, budget)? {
                    mp4::Demux::H264(s) => s,
                    mp4::Demux::Other { codec } => return ffmpeg(container, &codec, budget),
                },
                _ => match avi::demux(bytes, budget)? {
                    avi::Demux::H264(s) => s,
                    avi::Demux::Other { codec } => return ffmpeg(container, &codec, budget),
                },
            };
            match h264::decode(bytes, stream, spec, budget, strategy) {
                // An H.264 flavour OpenH264 lacks (High 10, 4:2:2, interlaced): ffmpeg may have it.
                Err(MediaError::Unsupported { format, .. }) => ffmpeg(container, &format, budget),
                other => other,
            }
        }
        Container::Gif => gif::decode(bytes, spec, budget),
        Container::Unknown => Err(MediaError::Unsupported {
            format: "unrecognised bytes (not a known video container)".into(),
            hint: "upload MP4/MOV, AVI, WebM/MKV or GIF video".into(),
        }),
        other => ffmpeg(other, "", budget),
    }
}

/// Preprocesses the chosen frames into the (F, 3, size, size) tensor and makes the thumbnail.
fn finish(decoded: Decoded, spec: &SampleSpec) -> Result<Frames> {
    let Decoded {
        info,
        timestamps,
        images,
    } = decoded;
    if images.is_empty() {
        return Err(MediaError::Corrupt("no decodable video frames".into()));
    }
    debug_assert_eq!(images.len(), timestamps.len());
    let n = images.len().min(spec.frames);
    let s = spec.size as usize;
    let per = 3 * s * s;
    let mut pixels = vec![0.0f32; spec.frames * per];
    for (img, out) in images.iter().take(n).zip(pixels.chunks_mut(per)) {
        preprocess_into(img, spec.size, out);
    }
    let mask = (0..spec.frames).map(|i| i < n).collect();
    let thumbnail_jpeg = jpeg(&images[(n - 1) / 2])?;
    Ok(Frames {
        pixels,
        mask,
        timestamps: timestamps.into_iter().take(n).collect(),
        thumbnail_jpeg,
        info,
    })
}

/// Encodes a frame as a quality-85 JPEG.
fn jpeg(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(img)
        .map_err(|e| MediaError::Corrupt(format!("thumbnail encoding failed: {e}")))?;
    Ok(out)
}

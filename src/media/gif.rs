//! Animated GIF: frame times from a cheap first pass (`gif` crate, no pixel decoding), then the
//! composited frames from `image`'s GIF decoder up to the last frame sampling needs.
//!
//! Owns the GIF timing rule: a frame delay under 2/100 s is read as 1/10 s, as ffmpeg and browsers
//! do. Does not own sampling policy (`sample`) or preprocessing.

use std::io::Cursor;

use image::{AnimationDecoder, RgbImage};

use super::detect::Container;
use super::{sample, Budget, Decoded, MediaError, MediaInfo, Result, SampleSpec};

fn corrupt(e: impl std::fmt::Display) -> MediaError {
    MediaError::Corrupt(format!("GIF: {e}"))
}

/// Decodes the frames of an animated (or still) GIF that sampling asks for.
pub fn decode(bytes: &[u8], spec: &SampleSpec, budget: &mut Budget) -> Result<Decoded> {
    // Pass 1: screen size and frame delays, without decompressing pixels.
    let mut opts = gif::DecodeOptions::new();
    opts.skip_frame_decoding(true);
    let mut reader = opts.read_info(Cursor::new(bytes)).map_err(corrupt)?;
    let (w, h) = (reader.width() as u64, reader.height() as u64);
    budget.check_dims(w, h)?;
    let mut pts = Vec::new();
    let mut t_cs: u64 = 0;
    while let Some(frame) = reader.next_frame_info().map_err(corrupt)? {
        budget.check_time()?;
        if pts.len() as u64 >= budget.limits.max_frames_decoded {
            return Err(MediaError::TooLarge(format!(
                "more than {} frames",
                budget.limits.max_frames_decoded
            )));
        }
        pts.push(t_cs as f64 / 100.0);
        let delay = if frame.delay < 2 {
            10
        } else {
            frame.delay as u64
        };
        t_cs += delay;
    }
    if pts.is_empty() {
        return Err(corrupt("no frames"));
    }
    let n = pts.len();
    let duration_s = t_cs as f64 / 100.0;
    budget.check_stream(duration_s, n as u64)?;
    let chosen = sample::choose(&pts, spec.fps, spec.frames);
    let last = *chosen.last().expect("at least one frame");

    // Pass 2: composite frames up to the last chosen one.
    let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let mut images = Vec::with_capacity(chosen.len());
    let mut next = 0;
    for (i, frame) in decoder.into_frames().enumerate() {
        if i > last {
            break;
        }
        budget.check_time()?;
        budget.count_frame()?;
        let frame = frame.map_err(corrupt)?;
        if chosen[next] == i {
            let rgba = frame.into_buffer();
            let (fw, fh) = rgba.dimensions();
            let rgb: Vec<u8> = rgba.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect();
            images.push(budget.keep(RgbImage::from_raw(fw, fh, rgb).expect("w*h*3 bytes")));
            next += 1;
            if next == chosen.len() {
                break;
            }
        }
    }
    if images.is_empty() {
        return Err(corrupt("no decodable frames"));
    }
    let timestamps = chosen[..images.len()].iter().map(|&i| pts[i]).collect();
    Ok(Decoded {
        info: MediaInfo {
            container: Container::Gif.name().into(),
            codec: "gif".into(),
            duration_s,
            width: w as u32,
            height: h as u32,
            fps: if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            },
            decoder: "gif".into(),
            frame_count: n as u64,
        },
        timestamps,
        images,
    })
}

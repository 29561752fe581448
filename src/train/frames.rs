//! The frame cache of training: every video is decoded and sampled once (through
//! `media::load_video`, exactly as the server does) and its preprocessed frames are kept on disk,
//! so later epochs, a resumed run or a second run over the same videos never decode again.
//!
//! Entries are keyed by the blake3 of the video's bytes together with the sampling (frames, fps,
//! size) and `CACHE_VERSION`; a changed file or another sampling is a new key, so an entry never
//! needs invalidating (delete the folder to reclaim space). An entry is `<dir>/<key>.frames`,
//! written to a temporary name and renamed. The CLIP-normalised values of real frames are stored
//! as the 8-bit pixels they came from (4x smaller; restored bit for bit through a 256-entry table
//! per channel), falling back to f32 when a value is not such a pixel. A damaged entry is decoded
//! again. It owns no model.

use super::TrainError;
use crate::backbone::preprocess::{CLIP_MEAN, CLIP_STD};
use crate::media::{load_video, MediaLimits, SampleSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bump when `media` or `backbone::preprocess` would produce other values for the same bytes.
pub const CACHE_VERSION: &str = "mvserve-frames/1";
const MAGIC: &[u8; 4] = b"MVFC";

/// The sampled frames of one video, as the vision tower takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoFrames {
    /// (F, 3, S, S) CLIP-normalised, padding slots zero.
    pub pixels: Vec<f32>,
    /// Length F, real frames first.
    pub mask: Vec<bool>,
}

/// Where a video's frames are and whether they had to be decoded.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    pub path: PathBuf,
    pub decoded: bool,
}

/// A folder of decoded videos for one sampling.
#[derive(Clone, Debug)]
pub struct FrameCache {
    dir: PathBuf,
    spec: SampleSpec,
    limits: MediaLimits,
}

impl FrameCache {
    pub fn new(dir: PathBuf, spec: SampleSpec, limits: MediaLimits) -> Self {
        Self { dir, spec, limits }
    }

    /// `$XDG_CACHE_HOME/mvserve/frames`, else `~/.cache/mvserve/frames`, else `.mvserve-cache/frames`.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match base {
            Some(b) => b.join("mvserve").join("frames"),
            None => PathBuf::from(".mvserve-cache").join("frames"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spec(&self) -> &SampleSpec {
        &self.spec
    }

    /// The entry's key: blake3 over the cache version, the sampling and the video's bytes.
    pub fn key(&self, video: &Path) -> Result<String, TrainError> {
        let io = |e| TrainError::Io(video.to_path_buf(), e);
        let mut h = blake3::Hasher::new();
        h.update(CACHE_VERSION.as_bytes());
        h.update(&(self.spec.frames as u64).to_le_bytes());
        h.update(&self.spec.fps.to_le_bytes());
        h.update(&(self.spec.size as u64).to_le_bytes());
        let mut f = std::fs::File::open(video).map_err(io)?;
        std::io::copy(&mut f, &mut h).map_err(io)?;
        Ok(h.finalize().to_hex().to_string())
    }

    /// Makes sure the video's frames are in the cache, decoding it if they are not (or the entry
    /// is damaged).
    pub fn ensure(&self, video: &Path) -> Result<CacheEntry, TrainError> {
        let path = self.dir.join(format!("{}.frames", self.key(video)?));
        if path.exists() {
            match self.read(&path) {
                Ok(_) => {
                    return Ok(CacheEntry {
                        path,
                        decoded: false,
                    })
                }
                Err(e) => {
                    tracing::warn!(entry = %path.display(), error = %e, "damaged frame cache entry, decoding again")
                }
            }
        }
        let frames =
            load_video(video, &self.spec, &self.limits).map_err(|e| TrainError::Media {
                video: video.to_path_buf(),
                source: e,
            })?;
        let bytes = encode(
            &VideoFrames {
                pixels: frames.pixels,
                mask: frames.mask,
            },
            self.spec.size as usize,
        );
        let io = |e| TrainError::Io(path.clone(), e);
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::Io(self.dir.clone(), e))?;
        let tmp = path.with_extension(format!("frames.tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(CacheEntry {
            path,
            decoded: true,
        })
    }

    /// Reads an entry written for this cache's sampling.
    pub fn read(&self, entry: &Path) -> Result<VideoFrames, TrainError> {
        let bytes = std::fs::read(entry).map_err(|e| TrainError::Io(entry.to_path_buf(), e))?;
        decode(&bytes, self.spec.frames, self.spec.size as usize).ok_or_else(|| {
            TrainError::Cache(format!("{} is not a valid frame entry", entry.display()))
        })
    }
}

/// `table[c][b]`: the value `backbone::preprocess` gives byte `b` of channel `c`, computed the
/// same way (rescale in f64, round to f32, normalise in f32).
fn table() -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, row) in t.iter_mut().enumerate() {
        for (b, x) in row.iter_mut().enumerate() {
            let v = (b as f64 * (1.0 / 255.0)) as f32;
            *x = (v - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    t
}

/// Header: magic, kind (0 = u8 pixels, 1 = f32), F (u32), S (u32), F mask bytes; then the real
/// frames' (3, S, S) values.
fn encode(frames: &VideoFrames, size: usize) -> Vec<u8> {
    let plane = 3 * size * size;
    let real: Vec<usize> = (0..frames.mask.len()).filter(|&i| frames.mask[i]).collect();
    let t = table();
    let mut pixels8 = Vec::with_capacity(real.len() * plane);
    let mut exact = true;
    'frames: for &i in &real {
        for (j, &x) in frames.pixels[i * plane..(i + 1) * plane].iter().enumerate() {
            let c = j / (size * size);
            let b = ((x * CLIP_STD[c] + CLIP_MEAN[c]) * 255.0)
                .round()
                .clamp(0.0, 255.0) as usize;
            if t[c][b].to_bits() != x.to_bits() {
                exact = false;
                break 'frames;
            }
            pixels8.push(b as u8);
        }
    }
    let mut out = Vec::with_capacity(16 + frames.mask.len() + real.len() * plane * 4);
    out.extend_from_slice(MAGIC);
    out.push(if exact { 0 } else { 1 });
    out.extend_from_slice(&(frames.mask.len() as u32).to_le_bytes());
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend(frames.mask.iter().map(|&m| m as u8));
    if exact {
        out.extend_from_slice(&pixels8);
    } else {
        for &i in &real {
            for x in &frames.pixels[i * plane..(i + 1) * plane] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    out
}

fn decode(bytes: &[u8], frames: usize, size: usize) -> Option<VideoFrames> {
    let head = 4 + 1 + 4 + 4;
    if bytes.len() < head || &bytes[..4] != MAGIC {
        return None;
    }
    let kind = bytes[4];
    let f = u32::from_le_bytes(bytes[5..9].try_into().ok()?) as usize;
    let s = u32::from_le_bytes(bytes[9..13].try_into().ok()?) as usize;
    if f != frames || s != size || bytes.len() < head + f {
        return None;
    }
    let mask: Vec<bool> = bytes[head..head + f].iter().map(|&b| b != 0).collect();
    let plane = 3 * s * s;
    let data = &bytes[head + f..];
    let mut pixels = vec![0f32; f * plane];
    let real = mask.iter().filter(|&&m| m).count();
    let width = match kind {
        0 => 1,
        1 => 4,
        _ => return None,
    };
    if data.len() != real * plane * width {
        return None;
    }
    let t = table();
    for (k, i) in (0..f).filter(|&i| mask[i]).enumerate() {
        let dst = &mut pixels[i * plane..(i + 1) * plane];
        let src = &data[k * plane * width..(k + 1) * plane * width];
        for (j, x) in dst.iter_mut().enumerate() {
            *x = if kind == 0 {
                t[j / (s * s)][src[j] as usize]
            } else {
                f32::from_le_bytes(src[4 * j..4 * j + 4].try_into().ok()?)
            };
        }
    }
    Some(VideoFrames { pixels, mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preprocessed_value_survives_the_8_bit_entry_bit_for_bit() {
        // Each normalised value depends only on (channel, byte): this is every value there is,
        // computed by the real preprocessing of a one-pixel-per-byte image.
        let size = 16usize;
        let mut img = image::RgbImage::new(size as u32, size as u32);
        for (i, p) in img.pixels_mut().enumerate() {
            let b = i as u8;
            *p = image::Rgb([b, b.wrapping_add(85), b.wrapping_add(170)]);
        }
        let one = crate::backbone::preprocess::preprocess(&img, size as u32);
        let frames = VideoFrames {
            pixels: [one.clone(), vec![0.0; one.len()]].concat(),
            mask: vec![true, false],
        };
        let bytes = encode(&frames, size);
        assert_eq!(bytes[4], 0, "stored as 8-bit pixels");
        assert_eq!(bytes.len(), 13 + 2 + one.len());
        let back = decode(&bytes, 2, size).unwrap();
        assert!(back
            .pixels
            .iter()
            .zip(&frames.pixels)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(back.mask, frames.mask);
    }

    #[test]
    fn values_that_are_not_pixels_are_kept_as_f32() {
        let frames = VideoFrames {
            pixels: vec![0.123_456_7; 3 * 4 * 4],
            mask: vec![true],
        };
        let bytes = encode(&frames, 4);
        assert_eq!(bytes[4], 1);
        assert_eq!(decode(&bytes, 1, 4).unwrap(), frames);
        // Another sampling or a damaged entry is refused.
        assert!(decode(&bytes, 2, 4).is_none());
        assert!(decode(&bytes[..bytes.len() - 1], 1, 4).is_none());
        assert!(decode(b"nope", 1, 4).is_none());
    }
}

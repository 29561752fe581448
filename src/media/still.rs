//! Still images (JPEG, PNG) as the frame tensor of a video, for searching by example.
//!
//! Owns the image rule: an image becomes a video that shows it for the whole clip, its one frame
//! preprocessed exactly as a video frame is (`backbone::preprocess`) and repeated into every one
//! of the F frame slots, all of them real (no padding, no mask). An adapter's temporal modules
//! then see what they would see from a clip of a still scene, and the meanP pooling of the
//! built-in task gives the image's own CLIP embedding. EXIF orientation is applied first, so the
//! model sees the picture the way a viewer does.
//!
//! Owns the limits of a still too, checked from the header before any pixel is decoded: the size
//! of the file, the pixels of the image, and how elongated it may be (preprocessing resizes the
//! short side to the model's input, so a 1 x 16000 image would grow to millions of pixels).
//! GIF is not a still here: it is a video container (`media::gif`), as uploads treat it.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat};

use super::{Frames, MediaError, MediaInfo, Result, SampleSpec, MAX_SIDE};
use crate::backbone::preprocess::preprocess_into;

/// Most pixels a still may have: a 48-megapixel phone photo (8000 x 6000) fits. Larger than a
/// video frame's limit because a still is decoded once, not once per sampled frame.
pub const MAX_IMAGE_PIXELS: u64 = 50_000_000;
/// Longest side over shortest side a still may have.
pub const MAX_ASPECT: u32 = 32;
/// Most memory the image decoder may allocate for one still.
const MAX_DECODER_ALLOC: u64 = 512 << 20;

/// A still image format this build decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StillFormat {
    Jpeg,
    Png,
}

impl StillFormat {
    pub fn name(self) -> &'static str {
        match self {
            StillFormat::Jpeg => "jpeg",
            StillFormat::Png => "png",
        }
    }
}

/// The still image format of `bytes` from its signature, if it is one.
pub fn detect_still(bytes: &[u8]) -> Option<StillFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(StillFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(StillFormat::Png)
    } else {
        None
    }
}

fn image_error(format: StillFormat, e: ImageError) -> MediaError {
    match e {
        ImageError::Limits(l) => MediaError::TooLarge(format!("{}: {l}", format.name())),
        ImageError::Unsupported(u) => MediaError::Unsupported {
            format: format!("{} ({u})", format.name()),
            hint: "send a baseline or progressive JPEG, or an 8/16-bit PNG".into(),
        },
        e => MediaError::Corrupt(format!("{}: {e}", format.name())),
    }
}

/// Refuses a still that is too large, empty, or too elongated to preprocess, from its header.
fn check_dims(width: u32, height: u32, spec: &SampleSpec) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(MediaError::Corrupt(format!(
            "image size {width}x{height} is empty"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(MediaError::TooLarge(format!(
            "image size {width}x{height} is over the limit of {MAX_IMAGE_PIXELS} pixels (and {MAX_SIDE} per side)"
        )));
    }
    let (short, long) = (width.min(height), width.max(height));
    // The short side also has to reach the crop: a side below 1/`MAX_ASPECT` of the input would
    // be stretched from almost nothing.
    if long / short >= MAX_ASPECT || short < spec.size.div_ceil(MAX_ASPECT) {
        return Err(MediaError::TooLarge(format!(
            "image size {width}x{height} is more elongated than {MAX_ASPECT}:1 (or its short side under {} pixels)",
            spec.size.div_ceil(MAX_ASPECT)
        )));
    }
    Ok(())
}

fn decode(bytes: &[u8], format: StillFormat, spec: &SampleSpec) -> Result<image::RgbImage> {
    let image_format = match format {
        StillFormat::Jpeg => ImageFormat::Jpeg,
        StillFormat::Png => ImageFormat::Png,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(limits);
    let err = |e| image_error(format, e);
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    check_dims(w, h, spec)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// The frames of a still: `bytes` (a JPEG or PNG, at most `max_bytes`) decoded, preprocessed to
/// `spec.size` and repeated into all `spec.frames` slots (see the module's image rule). The
/// thumbnail is empty (nothing is stored); `info` names the format and size, with one frame.
pub fn load_still(bytes: &[u8], spec: &SampleSpec, max_bytes: u64) -> Result<Frames> {
    super::validate_spec(spec)?;
    if bytes.len() as u64 > max_bytes {
        return Err(MediaError::TooLarge(format!(
            "{} bytes is over the limit of {max_bytes} bytes",
            bytes.len()
        )));
    }
    let format = detect_still(bytes).ok_or_else(|| MediaError::Unsupported {
        format: "unrecognised bytes (not a JPEG or PNG image)".into(),
        hint: "send a JPEG or PNG image".into(),
    })?;
    // Decoder crates are not trusted to never panic on hostile input (as in `media::run`).
    let img =
        catch_unwind(AssertUnwindSafe(|| decode(bytes, format, spec))).unwrap_or_else(|_| {
            Err(MediaError::Corrupt(format!(
                "{}: decoder failed",
                format.name()
            )))
        })?;
    let s = spec.size as usize;
    let per = 3 * s * s;
    let mut pixels = vec![0.0f32; spec.frames * per];
    let (first, rest) = pixels.split_at_mut(per);
    preprocess_into(&img, spec.size, first);
    for slot in rest.chunks_mut(per) {
        slot.copy_from_slice(first);
    }
    Ok(Frames {
        pixels,
        mask: vec![true; spec.frames],
        timestamps: vec![0.0; spec.frames],
        thumbnail_jpeg: Vec::new(),
        info: MediaInfo {
            container: format.name().into(),
            codec: format.name().into(),
            duration_s: 0.0,
            width: img.width(),
            height: img.height(),
            fps: 0.0,
            decoder: "image".into(),
            frame_count: 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SampleSpec {
        SampleSpec {
            frames: 3,
            fps: 1.0,
            size: 16,
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_still_fills_every_frame_slot_as_a_video_frame_is_preprocessed() {
        let bytes = png(40, 30);
        let f = load_still(&bytes, &spec(), 1 << 20).unwrap();
        assert_eq!(f.mask, vec![true; 3]);
        let per = 3 * 16 * 16;
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let mut want = vec![0.0; per];
        preprocess_into(&decoded, 16, &mut want);
        for slot in f.pixels.chunks(per) {
            assert_eq!(slot, &want[..]);
        }
        assert_eq!((f.info.width, f.info.height), (40, 30));
    }

    #[test]
    fn hostile_stills_are_typed_errors() {
        let s = spec();
        assert!(matches!(
            load_still(b"not an image", &s, 1 << 20),
            Err(MediaError::Unsupported { .. })
        ));
        let mut cut = png(40, 30);
        cut.truncate(cut.len() / 2);
        assert!(matches!(
            load_still(&cut, &s, 1 << 20),
            Err(MediaError::Corrupt(_))
        ));
        // Elongated past the limit: refused from the header.
        assert!(matches!(
            load_still(&png(33 * 4, 4), &s, 1 << 20),
            Err(MediaError::TooLarge(_))
        ));
        assert!(matches!(
            load_still(&png(40, 30), &s, 10),
            Err(MediaError::TooLarge(_))
        ));
        // A PNG header claiming 100000 x 100000 pixels (its IHDR CRC is recomputed): refused
        // before anything is allocated.
        let mut huge = png(40, 30);
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&huge[12..29]);
        huge[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            load_still(&huge, &s, 1 << 20),
            Err(MediaError::TooLarge(_))
        ));
    }
}

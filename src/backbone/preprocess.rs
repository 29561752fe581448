//! CLIP image preprocessing: RGB pixels in, the vision tower's normalised CHW input out.
//!
//! This owns the exact arithmetic of the reference pipeline (transformers' PIL-backed
//! `CLIPImageProcessor`, which is also what OpenAI CLIP and the MV-Adapter data loader use): resize
//! the short side to `size` with Pillow's antialiased bicubic filter in 8-bit fixed point, centre-crop
//! with floor offsets, scale by 1/255 and normalise with CLIP's mean and std. The resampler is
//! written here, not taken from an image crate, because retrieval quality depends on feeding the
//! model the pixels it was trained on, and the crates' filters round differently from Pillow.
//! Decoding images and videos lives elsewhere (`image` for stills, `media` for videos).

use image::RgbImage;

/// CLIP's per-channel normalisation constants (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Pillow's fixed-point precision for 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic kernel in input pixels at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// The size after resizing the short side to `size`, keeping the aspect ratio as transformers does:
/// the long side is `int(size * long / short)` (truncated, not rounded).
pub fn resized_dims(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Preprocesses one RGB image into `out`, laid out (3, size, size) channel-major.
///
/// Panics if `out.len() != 3 * size * size` (a caller bug, not an input problem).
pub fn preprocess_into(img: &RgbImage, size: u32, out: &mut [f32]) {
    let s = size as usize;
    assert_eq!(
        out.len(),
        3 * s * s,
        "output buffer must hold 3 x size x size values"
    );
    let src = shortest_side_to(img, size);
    let (w, h) = src.dimensions();
    let top = (h - size) / 2;
    let left = (w - size) / 2;
    let raw = src.as_raw();
    let stride = src.width() as usize * 3;
    for c in 0..3 {
        let plane = &mut out[c * s * s..(c + 1) * s * s];
        for y in 0..s {
            let row = &raw[(top as usize + y) * stride + left as usize * 3..];
            for x in 0..s {
                // The reference rescales in f64 and rounds once to f32 before normalising in f32.
                let v = (row[x * 3 + c] as f64 * (1.0 / 255.0)) as f32;
                plane[y * s + x] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
}

/// The `size` x `size` pixels [`preprocess_into`] reads from `img`: resized (shortest side to
/// `size`, bicubic) and centre-cropped, still RGB bytes. Preprocessing the crop gives exactly the
/// values preprocessing `img` gives, at a fraction of the memory of a large frame (a video's
/// timeline keeps its frames this way).
pub fn resize_crop(img: &RgbImage, size: u32) -> RgbImage {
    let src = shortest_side_to(img, size);
    let (w, h) = src.dimensions();
    image::imageops::crop_imm(&*src, (w - size) / 2, (h - size) / 2, size, size).to_image()
}

/// `img` with its shortest side resized to `size` (bicubic), or `img` itself when it already is.
fn shortest_side_to(img: &RgbImage, size: u32) -> std::borrow::Cow<'_, RgbImage> {
    let (w, h) = resized_dims(img.width(), img.height(), size);
    if (w, h) == img.dimensions() {
        std::borrow::Cow::Borrowed(img)
    } else {
        std::borrow::Cow::Owned(resize_bicubic(img, w, h))
    }
}

/// Preprocesses one RGB image, returning (3, size, size) values.
pub fn preprocess(img: &RgbImage, size: u32) -> Vec<f32> {
    let mut out = vec![0.0; 3 * (size * size) as usize];
    preprocess_into(img, size, &mut out);
    out
}

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for resampling one axis from `in_size` to `out_size` samples.
struct Taps {
    /// Per output sample: the first input index and the number of taps.
    bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` weights, scaled by 2^PRECISION_BITS.
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // Downscaling widens the kernel: that is Pillow's antialiasing.
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut taps = vec![0f64; ksize];
        for (xx, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut total = 0.0;
            for (x, t) in taps.iter_mut().enumerate().take(n) {
                *t = bicubic((x as f64 + xmin as f64 - center + 0.5) / filter_scale);
                total += *t;
            }
            for (x, w) in row.iter_mut().enumerate().take(n) {
                let t = if total != 0.0 {
                    taps[x] / total
                } else {
                    taps[x]
                };
                let scaled = t * (1u32 << PRECISION_BITS) as f64;
                *w = if scaled < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((xmin, n));
        }
        Taps {
            bounds,
            weights,
            ksize,
        }
    }

    /// Applies the taps for output sample `i` to samples read by `at(input_index)`.
    #[inline]
    fn apply(&self, i: usize, at: impl Fn(usize) -> u8) -> u8 {
        let (start, n) = self.bounds[i];
        let k = &self.weights[i * self.ksize..i * self.ksize + n];
        let mut acc: i64 = 1 << (PRECISION_BITS - 1);
        for (j, &w) in k.iter().enumerate() {
            acc += at(start + j) as i64 * w as i64;
        }
        (acc >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

/// Resizes with Pillow's `Image.resize((w, h), BICUBIC)` arithmetic: horizontal pass first into an
/// 8-bit intermediate covering only the rows the vertical pass reads, then the vertical pass.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let raw = img.as_raw();

    let horizontal = if out_w != in_w {
        let taps = Taps::new(in_w, out_w);
        let mut tmp = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let src = &raw[y * in_w * 3..(y + 1) * in_w * 3];
            let dst = &mut tmp[y * out_w * 3..(y + 1) * out_w * 3];
            for x in 0..out_w {
                for c in 0..3 {
                    dst[x * 3 + c] = taps.apply(x, |i| src[i * 3 + c]);
                }
            }
        }
        tmp
    } else {
        raw.clone()
    };

    let out = if out_h != in_h {
        let taps = Taps::new(in_h, out_h);
        let mut out = vec![0u8; out_w * out_h * 3];
        let stride = out_w * 3;
        for y in 0..out_h {
            for x in 0..stride {
                out[y * stride + x] = taps.apply(y, |i| horizontal[i * stride + x]);
            }
        }
        out
    } else {
        horizontal
    };
    RgbImage::from_raw(width, height, out).expect("buffer size matches dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_dims_truncate_the_long_side() {
        assert_eq!(resized_dims(320, 240, 224), (298, 224));
        assert_eq!(resized_dims(426, 240, 224), (397, 224));
        assert_eq!(resized_dims(240, 426, 224), (224, 397));
        assert_eq!(resized_dims(224, 224, 224), (224, 224));
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(320, 298), (240, 224), (100, 224), (1920, 224)] {
            let t = Taps::new(i, o);
            for x in 0..o {
                let (_, n) = t.bounds[x];
                let sum: i64 = t.weights[x * t.ksize..x * t.ksize + n]
                    .iter()
                    .map(|&w| w as i64)
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} at {x}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(333, 250, image::Rgb([10, 128, 250]));
        let out = resize_bicubic(&img, 298, 224);
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }
}

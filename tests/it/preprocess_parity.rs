//! Preprocessing parity with transformers' PIL-backed CLIPImageProcessor (fixtures/preprocess).

use candle_core::{Device, Tensor};
use image::RgbImage;
use mvserve::backbone::preprocess::{preprocess, resize_bicubic, CLIP_MEAN, CLIP_STD};
use std::collections::HashMap;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/preprocess");

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/expected.safetensors"), &Device::Cpu).unwrap()
}

fn u8_image(t: &Tensor, i: usize) -> RgbImage {
    let t = t.get(i).unwrap();
    let (h, w, _) = t.dims3().unwrap();
    let data: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

/// (max, mean) absolute difference.
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += d as f64;
    }
    (max, (sum / a.len() as f64) as f32)
}

#[test]
fn constants_match_the_reference() {
    let e = expected();
    assert_eq!(e["mean"].to_vec1::<f32>().unwrap(), CLIP_MEAN.to_vec());
    assert_eq!(e["std"].to_vec1::<f32>().unwrap(), CLIP_STD.to_vec());
}

#[test]
fn downscale_resize_is_bit_exact_with_pillow() {
    let e = expected();
    let src = u8_image(&e["downscale_rgb_uint8"], 0);
    let want = u8_image(&e["downscale_resized_uint8"], 0);
    let got = resize_bicubic(&src, 298, 224);
    let mismatched = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        mismatched, 0,
        "bytes differing from Pillow's bicubic resize"
    );
}

#[test]
fn downscale_tensor_matches_the_processor() {
    let e = expected();
    let src = u8_image(&e["downscale_rgb_uint8"], 0);
    let got = preprocess(&src, 224);
    let want: Vec<f32> = e["downscale_expected"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (max, mean) = diff(&got, &want);
    eprintln!("downscale: max |diff| {max:e}, mean {mean:e}");
    assert!(max <= 1e-6, "max {max}");
}

#[test]
fn jpeg_frames_match_within_decoder_tolerance() {
    let e = expected();
    let want_all: Vec<f32> = e["expected"].flatten_all().unwrap().to_vec1().unwrap();
    let per = 3 * 224 * 224;
    for i in 0..3 {
        // From the reference's own decode, the pipeline must be exact.
        let pil = u8_image(&e["jpeg_rgb_uint8"], i);
        let want = &want_all[i * per..(i + 1) * per];
        let (max, _) = diff(&preprocess(&pil, 224), want);
        assert!(max <= 1e-6, "frame {i} from PIL pixels: max {max}");

        // From our JPEG decoder (zune-jpeg through `image`): IDCT and chroma upsampling differ from
        // libjpeg-turbo by a few levels in a few pixels (4 at most on these frames); after the crop the
        // tensor stays within 3 levels, with a mean far below one level.
        let ours = image::open(format!("{DIR}/frame_{i}.jpg"))
            .unwrap()
            .to_rgb8();
        let (px_max, _) = diff(
            &ours.as_raw().iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &pil.as_raw().iter().map(|&v| v as f32).collect::<Vec<_>>(),
        );
        let (max, mean) = diff(&preprocess(&ours, 224), want);
        eprintln!("frame {i}: decoder max pixel diff {px_max}, tensor max {max:e}, mean {mean:e}");
        let one_level = 1.0 / 255.0 / CLIP_STD.iter().cloned().fold(f32::MAX, f32::min);
        assert!(max <= 3.0 * one_level + 1e-6, "frame {i}: max {max}");
        assert!(mean <= 0.25 * one_level, "frame {i}: mean {mean}");
    }
}

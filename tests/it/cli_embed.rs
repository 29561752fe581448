//! `mvserve embed` end to end: the binary's JSON equals the library's embedding.

use crate::common::{self, fixture};

use candle_core::{Device, Tensor};
use mvserve::backbone::{l2_normalize, preprocess};

use common::mvserve as run;

fn embedding(stdout: &str) -> Vec<f32> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    serde_json::from_value(v["embedding"].clone()).unwrap()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-6, "{d}");
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn embed_text_prints_the_normalised_embedding() {
    let dir = fixture("tiny-clip");
    let (ok, out, err) = run(&[
        "embed",
        "--model-dir",
        dir.to_str().unwrap(),
        "--text",
        "a cat plays piano",
    ]);
    assert!(ok, "{err}");
    let m = common::tiny_backbone();
    let want: Vec<f32> = m
        .embed_texts(&["a cat plays piano"], 32, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_close(&embedding(&out), &want);
}

#[test]
fn embed_image_prints_the_normalised_embedding() {
    let dir = fixture("tiny-clip");
    let img = fixture("preprocess/frame_0.jpg");
    let (ok, out, err) = run(&[
        "embed",
        "--model-dir",
        dir.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let m = common::tiny_backbone();
    let rgb = image::open(&img).unwrap().to_rgb8();
    let px = Tensor::from_vec(
        preprocess::preprocess(&rgb, 64),
        (1, 3, 64, 64),
        &Device::Cpu,
    )
    .unwrap();
    let e = l2_normalize(&m.clip.vision.forward(&px, None, false).unwrap().embeds).unwrap();
    assert_close(
        &embedding(&out),
        &e.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
    );
}

#[test]
fn embed_without_a_model_offline_asks_for_model_dir() {
    let cache = tempfile::tempdir().unwrap();
    let out = common::mvserve_command()
        .args(["embed", "--text", "x"])
        .env("HF_HOME", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MVSERVE_MODEL_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model-dir"), "{err}");
}

#[test]
fn embed_needs_text_or_image() {
    let dir = fixture("tiny-clip");
    let (ok, _, err) = run(&["embed", "--model-dir", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("--text") && err.contains("--image"), "{err}");
}

#[test]
fn embed_video_file_goes_through_media_and_mean_pooling() {
    let dir = fixture("tiny-clip");
    let video = fixture("videos/video740.mp4");
    let (ok, out, err) = run(&[
        "embed",
        "--model-dir",
        dir.to_str().unwrap(),
        "--video",
        video.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let m = common::tiny_backbone();
    let spec = mvserve::media::SampleSpec {
        frames: 12,
        fps: 1.0,
        size: 64,
    };
    let frames = mvserve::media::load_video(&video, &spec, &Default::default()).unwrap();
    // video740 is 10.7 s long: 11 real frames and one padded slot, which must not count.
    assert_eq!(frames.mask.iter().filter(|&&m| m).count(), 11);
    let px = Tensor::from_vec(frames.pixels, (12, 3, 64, 64), &Device::Cpu).unwrap();
    let mask: Vec<f32> = frames.mask.iter().map(|&m| m as u8 as f32).collect();
    let mask = Tensor::from_vec(mask, (1, 12), &Device::Cpu).unwrap();
    let per_frame = m.clip.vision.forward(&px, None, false).unwrap().embeds;
    let want = mvserve::adapter::pool_frames(&per_frame, &mask).unwrap();
    assert_close(
        &embedding(&out),
        &want.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
    );
}

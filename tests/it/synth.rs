//! The synthetic data generator end to end: files decode through `media` with the rendered
//! pixels, ffprobe agrees on codec, size and duration, the output is a function of the seed.

use crate::common;

use mvserve::backbone::preprocess::{preprocess, CLIP_STD};
use mvserve::media::{load_video, SampleSpec};
use mvserve::synth::{generate, SynthSpec};
use std::path::Path;
use std::process::Command;

fn spec(n: usize, seed: u64) -> SynthSpec {
    SynthSpec {
        n,
        seed,
        width: 64,
        height: 64,
        fps: 4,
        seconds: 8,
        qp: 20,
    }
}

/// PSNR in dB between two CLIP-normalised (3, S, S) tensors, in 8-bit pixel units.
fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let plane = a.len() / 3;
    let mse: f64 = a
        .iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| {
            let d = ((x - y) * CLIP_STD[i / plane] * 255.0) as f64;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

#[test]
fn clips_decode_to_the_rendered_frames() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(8, 11);
    let clips = generate(&s, dir.path()).unwrap();
    assert_eq!(clips.len(), 8);
    let plans = s.plan().unwrap();
    let sample = SampleSpec {
        frames: 8,
        fps: 1.0,
        size: 64,
    };
    let mut worst = f64::INFINITY;
    let mut best_other = 0f64;
    for (clip, plan) in clips.iter().zip(&plans) {
        assert_eq!(clip.caption, plan.caption);
        let f = load_video(&dir.path().join(&clip.video), &sample, &Default::default()).unwrap();
        assert_eq!(f.info.codec, "h264");
        assert_eq!((f.info.width, f.info.height), (64, 64));
        assert!(
            (f.info.duration_s - 8.0).abs() < 1e-6,
            "{}",
            f.info.duration_s
        );
        assert_eq!(f.info.frame_count, 32);
        assert!(f.mask.iter().all(|&m| m), "8 s at 1 fps fills 8 slots");
        assert_eq!(f.timestamps, (0..8).map(f64::from).collect::<Vec<_>>());
        let rendered = s.render(plan);
        let n = 3 * 64 * 64;
        for (k, t) in f.timestamps.iter().enumerate() {
            let want = preprocess(&rendered[(*t as u32 * s.fps) as usize], 64);
            let p = psnr(&f.pixels[k * n..(k + 1) * n], &want);
            worst = worst.min(p);
        }
        // The same time in a clip of the other group is far from this one: the check can fail.
        let i = plans.iter().position(|p| p == plan).unwrap();
        let other = s.render(&plans[(i + 4) % 8]);
        let far = psnr(&f.pixels[4 * n..5 * n], &preprocess(&other[16], 64));
        best_other = best_other.max(far);
    }
    println!("PSNR of sampled frames: worst {worst:.1} dB; against another clip: best {best_other:.1} dB");
    assert!(worst > 28.0, "worst PSNR {worst:.1} dB");
    assert!(
        best_other < 25.0,
        "another clip's frame is as close: {best_other:.1} dB"
    );
}

#[test]
fn ffprobe_agrees() {
    if !common::have_ffmpeg("ffprobe_agrees") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clips = generate(&SynthSpec { n: 2, ..spec(2, 4) }, dir.path()).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames,duration",
            "-of",
            "json",
        ])
        .arg(dir.path().join(&clips[0].video))
        .output()
        .expect("ffprobe is needed for this test (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &v["streams"][0];
    assert_eq!(st["codec_name"], "h264");
    assert_eq!(st["width"], 64);
    assert_eq!(st["height"], 64);
    assert_eq!(st["nb_read_frames"], "32");
    let d: f64 = st["duration"].as_str().unwrap().parse().unwrap();
    assert!((d - 8.0).abs() < 1e-3, "{d}");
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "captions.jsonl".to_string(),
        std::fs::read(dir.join("captions.jsonl")).unwrap(),
    )];
    let mut names: Vec<_> = std::fs::read_dir(dir.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in names {
        out.push((
            n.clone(),
            std::fs::read(dir.join("videos").join(&n)).unwrap(),
        ));
    }
    out
}

#[test]
fn same_seed_same_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&spec(6, 9), a.path()).unwrap();
    generate(&spec(6, 9), b.path()).unwrap();
    generate(&spec(6, 10), c.path()).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 7);
    assert!(fa == fb, "same seed, different bytes");
    assert_ne!(fa[0].1, fc[0].1, "another seed, the same captions");
    let plan = spec(6, 9).plan().unwrap();
    assert_eq!(spec(6, 9).render(&plan[3]), spec(6, 9).render(&plan[3]));
}

#[test]
fn captions_jsonl_is_the_generic_format() {
    let dir = tempfile::tempdir().unwrap();
    let clips = generate(&spec(5, 2), dir.path()).unwrap();
    let d = mvserve::eval::load(&dir.path().join("captions.jsonl"), None, None).unwrap();
    assert_eq!(d.videos.len(), 5);
    for (v, c) in d.videos.iter().zip(&clips) {
        assert_eq!(v.captions.len(), 1);
        assert_eq!(v.captions[0], c.caption);
        assert!(v.path.is_file(), "{}", v.path.display());
    }
    let first = std::fs::read_to_string(dir.path().join("captions.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(line["video"], "videos/00000.mp4");
    assert!(line["caption"].as_str().unwrap().contains(", then "));
    assert_eq!(line["group"], 0);
}

#[test]
fn cli_writes_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mvserve"))
        .args([
            "synth", "--n", "4", "--seed", "1", "--width", "32", "--height", "48", "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("4 clips (1 groups, 32x48"));
    let d = mvserve::eval::load(&dir.path().join("captions.jsonl"), None, None).unwrap();
    assert_eq!(d.videos.len(), 4);
    let bad = Command::new(env!("CARGO_BIN_EXE_mvserve"))
        .args(["synth", "--n", "4", "--width", "33", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("even sides"));
}

#[test]
fn time_reversed_twins_show_the_same_sampled_frames_in_reverse() {
    // In a group [X then Y, Y then X, rev Y then rev X, rev X then rev Y], clips 0 and 2 (and 1
    // and 3) are time reverses: their 1-fps frames (0..7 s) are the same in reverse order, which
    // is what keeps an order-blind model from telling them apart. Clips 0 and 1 (swapped order)
    // are not.
    let s = spec(8, 21);
    let plans = s.plan().unwrap();
    let one_fps = |i: usize| -> Vec<image::RgbImage> {
        let all = s.render(&plans[i]);
        (0..8).map(|k| all[k * s.fps as usize].clone()).collect()
    };
    let diff = |a: &image::RgbImage, b: &image::RgbImage| -> u8 {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap()
    };
    for (a, b) in [(0, 2), (1, 3), (4, 6), (5, 7)] {
        let (fa, fb) = (one_fps(a), one_fps(b));
        let worst = (0..8).map(|k| diff(&fa[k], &fb[7 - k])).max().unwrap();
        assert!(worst <= 1, "clips {a} and {b}: {worst} levels apart");
        let swapped = one_fps(a ^ 1);
        assert!((0..8).any(|k| diff(&fa[k], &swapped[7 - k]) > 100));
        assert!(
            (0..8).any(|k| diff(&fa[k], &fb[k]) > 100),
            "clips {a} and {b} are not static"
        );
    }
}

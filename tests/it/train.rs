//! The training loop end to end on the tiny backbone with small generated GIF videos: the frame
//! cache, checkpoints with metrics, exact resumes, and the refusals of a resume that would not
//! continue the same run.

use crate::common;

use image::codecs::gif::GifEncoder;
use image::{Delay, Frame, Rgba, RgbaImage};
use mvserve::adapter::AdapterFile;
use mvserve::train::{state_path, FrameCache, TrainConfig, TrainData, TrainError, Trainer};
use std::path::{Path, PathBuf};

use common::{mvserve, tiny_backbone as tiny};

/// A 4-second GIF (one frame a second) of a coloured square moving `dx` pixels a second.
fn gif(path: &Path, colour: [u8; 3], dx: i32) {
    let mut frames = Vec::new();
    for t in 0..4 {
        let mut img = RgbaImage::from_pixel(48, 48, Rgba([20, 20, 20, 255]));
        let x0 = 18 + dx * (t - 2);
        for y in 16..32 {
            for x in x0.max(0)..(x0 + 12).min(48) {
                img.put_pixel(x as u32, y, Rgba([colour[0], colour[1], colour[2], 255]));
            }
        }
        frames.push(Frame::from_parts(
            img,
            0,
            0,
            Delay::from_numer_denom_ms(1000, 1),
        ));
    }
    let mut enc = GifEncoder::new(std::fs::File::create(path).unwrap());
    enc.encode_frames(frames).unwrap();
}

fn data(dir: &Path) -> TrainData {
    let colours = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [40, 60, 230]),
        ("yellow", [230, 220, 40]),
    ];
    let mut videos = Vec::new();
    let mut pairs = Vec::new();
    for (name, c) in colours {
        for (dir_name, dx) in [("left", -8), ("right", 8)] {
            let p = dir.join(format!("{name}-{dir_name}.gif"));
            gif(&p, c, dx);
            pairs.push((videos.len(), format!("a {name} square moves {dir_name}")));
            videos.push(p);
        }
    }
    // A second caption for one video, and a file that is not a video at all.
    pairs.push((0, "the red block slides to the left".into()));
    let junk = dir.join("junk.gif");
    std::fs::write(&junk, b"GIF89a but not really").unwrap();
    pairs.push((videos.len(), "nothing".into()));
    videos.push(junk);
    TrainData {
        name: "gifs".into(),
        videos,
        pairs,
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch: 4,
        lr: 1e-3,
        frames: 4,
        words: 16,
        seed: 3,
        ..TrainConfig::default()
    }
}

fn tensors_diff(a: &AdapterFile, b: &AdapterFile) -> f32 {
    assert_eq!(a.tensors.len(), b.tensors.len());
    a.tensors
        .iter()
        .map(|(k, t)| common::max_diff(t, &b.tensors[k]))
        .fold(0.0, f32::max)
}

#[test]
fn train_checkpoint_cache_and_exact_resume() {
    let b = tiny();
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let cfg = config();
    let cache = FrameCache::new(
        dir.path().join("cache"),
        cfg.sample_spec(&b),
        Default::default(),
    );

    // An uninterrupted run of 2 epochs.
    let mut a = Trainer::new(&b, "gifs", cfg.clone(), &d, &cache).unwrap();
    a.show_progress = false;
    assert_eq!(a.decoded_videos(), 8, "every good video decoded once");
    assert_eq!(a.skipped().len(), 1, "{:?}", a.skipped());
    assert_eq!(a.pair_count(), 9);
    // 9 pairs in batches of 4: two updates an epoch (a batch of one pair has no negatives and
    // is dropped; which pair that is changes with the epoch's order).
    assert_eq!(a.total_steps(), 4);
    let out_a = dir.path().join("a.safetensors");
    a.run(&out_a).unwrap();
    let fa = AdapterFile::read(&out_a).unwrap();
    let m = &fa.meta.metrics.as_ref().unwrap()["train"];
    assert_eq!(m["epoch"], 2);
    assert_eq!(m["step"], 4);
    assert_eq!(m["pairs"], 9);
    assert_eq!(m["skipped_videos"], 1);
    assert_eq!(m["history"].as_array().unwrap().len(), 2);
    assert!(m["loss"].as_f64().unwrap().is_finite());
    assert_eq!(fa.meta.task, "gifs");
    assert_eq!(fa.meta.config.frames, 4);
    assert!(fa.meta.config.video_trm && fa.meta.config.temporal);
    // The adapter moved away from its identity init.
    let up: Vec<f32> = fa.tensors["vision.1.up.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(up.iter().any(|&x| x != 0.0));
    assert!(state_path(&out_a).exists());

    // The same run, interrupted after one epoch and resumed: the frames come from the cache
    // and the result equals the uninterrupted run.
    let out_b = dir.path().join("b.safetensors");
    let mut first = Trainer::new(&b, "gifs", cfg.clone(), &d, &cache).unwrap();
    first.show_progress = false;
    assert_eq!(first.decoded_videos(), 0, "a second run decodes nothing");
    first.train_epoch().unwrap();
    first.save(&out_b).unwrap();
    drop(first);
    let after_one = AdapterFile::read(&out_b).unwrap();
    assert!(tensors_diff(&after_one, &fa) > 1e-4, "one epoch is not two");
    let mut rest = Trainer::resume(&b, "gifs", cfg.clone(), &d, &cache, &out_b).unwrap();
    rest.show_progress = false;
    assert_eq!(rest.epochs_done(), 1);
    rest.run(&out_b).unwrap();
    let fb = AdapterFile::read(&out_b).unwrap();
    let diff = tensors_diff(&fa, &fb);
    assert!(diff < 1e-6, "resumed run differs by {diff}");
    let losses = |f: &AdapterFile| -> Vec<f64> {
        f.meta.metrics.as_ref().unwrap()["train"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&fa), losses(&fb));
    // Resuming a finished run does nothing more.
    let mut done = Trainer::resume(&b, "gifs", cfg.clone(), &d, &cache, &out_b).unwrap();
    assert_eq!(done.epochs_done(), 2);
    done.run(&out_b).unwrap();
    assert_eq!(AdapterFile::read(&out_b).unwrap().digest(), fb.digest());

    // Refusals: other settings, other data, a checkpoint that is not the state's own.
    let other = TrainConfig {
        lr: 2e-3,
        ..cfg.clone()
    };
    let e = Trainer::resume(&b, "gifs", other, &d, &cache, &out_b)
        .err()
        .unwrap();
    assert!(
        matches!(&e, TrainError::Resume(m) if m.contains("lr")),
        "{e}"
    );
    let mut fewer = d.clone();
    fewer.pairs.pop();
    fewer.pairs.pop();
    let e = Trainer::resume(&b, "gifs", cfg.clone(), &fewer, &cache, &out_b)
        .err()
        .unwrap();
    assert!(
        matches!(&e, TrainError::Resume(m) if m.contains("pairs")),
        "{e}"
    );
    // The state belongs to the 2-epoch file; put the 1-epoch file in its place.
    after_one.write(&out_b).unwrap();
    let e = Trainer::resume(&b, "gifs", cfg.clone(), &d, &cache, &out_b)
        .err()
        .unwrap();
    assert!(
        matches!(&e, TrainError::Resume(m) if m.contains("interrupted")),
        "{e}"
    );
    let junk = dir.path().join("c.safetensors");
    std::fs::copy(&out_a, &junk).unwrap();
    std::fs::write(state_path(&junk), b"not a state").unwrap();
    assert!(Trainer::resume(&b, "gifs", cfg, &d, &cache, &junk).is_err());
}

#[test]
fn no_temporal_trains_a_down_up_only_adapter_and_bad_settings_are_refused() {
    let b = tiny();
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let cfg = TrainConfig {
        temporal: false,
        epochs: 1,
        ..config()
    };
    let cache = FrameCache::new(
        dir.path().join("cache"),
        cfg.sample_spec(&b),
        Default::default(),
    );
    let mut t = Trainer::new(&b, "flat", cfg.clone(), &d, &cache).unwrap();
    t.show_progress = false;
    let out = dir.path().join("flat.safetensors");
    t.run(&out).unwrap();
    let f = AdapterFile::read(&out).unwrap();
    assert!(!f.meta.config.video_trm && !f.meta.config.temporal);
    assert!(!f.tensors.contains_key("vision.0.pos"));
    assert_eq!(f.meta.metrics.as_ref().unwrap()["train"]["temporal"], false);

    let bad = |c: TrainConfig| Trainer::new(&b, "x", c, &d, &cache).err().unwrap();
    assert!(matches!(
        bad(TrainConfig {
            batch: 1,
            ..cfg.clone()
        }),
        TrainError::Config(_)
    ));
    assert!(matches!(
        bad(TrainConfig {
            lr: 0.0,
            ..cfg.clone()
        }),
        TrainError::Config(_)
    ));
    // A cache made for another sampling.
    assert!(matches!(
        bad(TrainConfig {
            frames: 6,
            ..cfg.clone()
        }),
        TrainError::Config(_)
    ));
    // No usable pairs.
    let none = TrainData {
        name: "none".into(),
        videos: vec![PathBuf::from("/nonexistent.mp4")],
        pairs: vec![(0, "x".into()), (0, "y".into())],
    };
    let e = Trainer::new(&b, "x", cfg, &none, &cache).err().unwrap();
    assert!(matches!(e, TrainError::NoData(_)), "{e}");
}

#[test]
fn the_train_command_trains_refuses_to_overwrite_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let lines: Vec<String> = d
        .pairs
        .iter()
        .map(|(v, c)| {
            let name = d.videos[*v].file_name().unwrap().to_str().unwrap();
            serde_json::json!({"video": name, "caption": c}).to_string()
        })
        .collect();
    let jsonl = dir.path().join("captions.jsonl");
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let out = dir.path().join("cli.safetensors");
    let cache = dir.path().join("cache");
    let args = |epochs: &'static str| -> Vec<String> {
        [
            "train",
            "--data",
            jsonl.to_str().unwrap(),
            "--model-dir",
            "tests/fixtures/tiny-clip",
            "--task",
            "gifs",
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            epochs,
            "--batch",
            "4",
            "--lr",
            "1e-3",
            "--frames",
            "4",
            "--words",
            "16",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| mvserve(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, stdout, err) = run(args("1"));
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(j["epochs"], 1);
    assert!(j["loss"].as_f64().unwrap().is_finite());
    assert!(j["pairs_per_s"].as_f64().unwrap() > 0.0);
    let f = AdapterFile::read(&out).unwrap();
    assert_eq!(j["digest"], f.digest());
    assert_eq!(
        f.meta.metrics.as_ref().unwrap()["train"]["data"],
        "captions"
    );
    assert!(
        std::fs::read_dir(&cache).unwrap().count() >= 8,
        "frames cached"
    );
    // An existing file is not overwritten by accident.
    let (ok, _, err) = run(args("1"));
    assert!(!ok && err.contains("--resume"), "{err}");
    // Resuming the finished 1-epoch run with other settings is refused; with its own, a no-op.
    let (ok, _, err) = run([args("2"), vec!["--resume".into()]].concat());
    assert!(!ok && err.contains("epochs"), "{err}");
    let (ok, stdout, err) = run([args("1"), vec!["--resume".into()]].concat());
    assert!(ok, "{err}");
    let again: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["digest"], j["digest"]);
    // --overwrite starts afresh: the same seed gives the same adapter.
    let (ok, stdout, err) = run([args("1"), vec!["--overwrite".into()]].concat());
    assert!(ok, "{err}");
    let fresh: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let g = AdapterFile::read(&out).unwrap();
    assert_eq!(fresh["loss"], j["loss"]);
    assert!(g.tensors.iter().all(|(k, t)| {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = f.tensors[k].flatten_all().unwrap().to_vec1().unwrap();
        a == b
    }));
}

//! `mvserve eval` end to end on a small synthetic set with the tiny CLIP: zero-shot and with an
//! adapter file, the JSON's shape and ranges, agreement with the library, multi-caption sets, and
//! a deliberately perfect case through the library's metrics.

use candle_core::Device;
use mvserve::embed::{load_adapter, Embedder};
use mvserve::eval::metrics::evaluate;
use mvserve::eval::run::{embed_dataset, run, similarity};
use mvserve::eval::{load, EvalOptions, EvalReport};
use mvserve::synth::{generate, SynthSpec};
use std::path::{Path, PathBuf};

use crate::common::{mvserve, tiny_backbone, tiny_clip};

fn synth(dir: &Path, n: usize) -> PathBuf {
    let spec = SynthSpec {
        n,
        seed: 5,
        width: 64,
        height: 64,
        ..Default::default()
    };
    generate(&spec, dir).unwrap();
    dir.join("captions.jsonl")
}

fn check_ranges(r: &EvalReport, n: usize) {
    for m in [&r.t2v, &r.v2t] {
        assert!(
            0.0 <= m.r1 && m.r1 <= m.r5 && m.r5 <= m.r10 && m.r10 <= 100.0,
            "{m:?}"
        );
        assert!(1.0 <= m.mdr && m.mdr <= n as f64, "{m:?}");
        assert!(1.0 <= m.mnr && m.mnr <= n as f64, "{m:?}");
    }
}

#[test]
fn zero_shot_json_table_and_out_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 8);
    let out = dir.path().join("report.json");
    let (data_s, model_s, out_s) = (
        data.to_str().unwrap(),
        tiny_clip().to_str().unwrap().to_string(),
        out.to_str().unwrap(),
    );
    let (ok, stdout, stderr) = mvserve(&[
        "eval",
        "--data",
        data_s,
        "--model-dir",
        &model_s,
        "--json",
        "--out",
        out_s,
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for dir in ["t2v", "v2t"] {
        for k in ["r1", "r5", "r10", "mdr", "mnr"] {
            assert!(v[dir][k].is_number(), "{dir}.{k} in {stdout}");
        }
    }
    let r: EvalReport = serde_json::from_value(v).unwrap();
    assert_eq!((r.videos, r.captions), (8, 8));
    check_ranges(&r, 8);
    let file: EvalReport = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file, r);

    // The same numbers from the library, zero-shot with 12 frame slots.
    let b = tiny_backbone();
    let ds = load(&data, None, None).unwrap();
    let lib = run(
        &Embedder::new(&b, None, 32, 12),
        &ds,
        &EvalOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(lib, r);

    // Without --json: the table.
    let (ok, table, stderr) = mvserve(&["eval", "--data", data_s, "--model-dir", &model_s]);
    assert!(ok, "{stderr}");
    assert!(
        table.contains("text->video") && table.contains("video->text"),
        "{table}"
    );
    assert!(table.contains(&format!("{:.2}", r.t2v.r10)), "{table}");
}

#[test]
fn with_an_adapter_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 8);
    let adapter = dir.path().join("task.safetensors");
    let model_s = tiny_clip().to_str().unwrap().to_string();
    let (ok, _, stderr) = mvserve(&[
        "adapter",
        "new",
        "--model-dir",
        &model_s,
        "--task",
        "synth",
        "--init",
        "random",
        "--frames",
        "8",
        "--out",
        adapter.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = mvserve(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--model-dir",
        &model_s,
        "--adapter",
        adapter.to_str().unwrap(),
        "--json",
        "--batch",
        "3",
    ]);
    assert!(ok, "{stderr}");
    let r: EvalReport = serde_json::from_str(stdout.trim()).unwrap();
    check_ranges(&r, 8);
    // The library with the same adapter (8 frames, 32 words from the file) agrees.
    let b = tiny_backbone();
    let (_, a) = load_adapter(&adapter, &b.clip).unwrap();
    let e = Embedder::new(&b, Some(&a), 77, 3);
    assert_eq!((e.frames(), e.text_len()), (8, 32));
    let ds = load(&data, None, None).unwrap();
    assert_eq!(
        run(&e, &ds, &EvalOptions::default(), &|_, _| {}).unwrap(),
        r
    );
    // A random adapter changes the embeddings, so the similarity matrix differs from zero-shot.
    let plain = embed_dataset(
        &Embedder::new(&b, None, 32, 8),
        &ds,
        &EvalOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let adapted = embed_dataset(&e, &ds, &EvalOptions::default(), &|_, _| {}).unwrap();
    let d = (plain.videos - adapted.videos)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 1e-3);
}

#[test]
fn a_perfect_case_scores_100_and_the_matrix_is_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 16);
    let b = tiny_backbone();
    let ds = load(&data, None, None).unwrap();
    let opts = EvalOptions {
        video_batch: 5,
        text_batch: 7,
        ..Default::default()
    };
    let emb = embed_dataset(&Embedder::new(&b, None, 32, 8), &ds, &opts, &|_, _| {}).unwrap();
    assert_eq!(emb.videos.dims(), &[16, 32]);
    assert_eq!(emb.captions.dims(), &[16, 32]);
    // Captions as their own gallery: every caption is unique, so each finds itself first.
    let s = similarity(&emb.captions, &emb.captions).unwrap();
    let r = evaluate(&s, &(0..16).collect::<Vec<_>>()).unwrap();
    assert_eq!(
        (r.t2v.r1, r.v2t.r1, r.t2v.mdr, r.v2t.mnr),
        (100.0, 100.0, 1.0, 1.0)
    );
    // One clip per contrast group (different shapes and colours): each video finds itself.
    let firsts = emb
        .videos
        .index_select(
            &candle_core::Tensor::new(&[0u32, 4, 8, 12], &Device::Cpu).unwrap(),
            0,
        )
        .unwrap();
    let s = similarity(&firsts, &firsts).unwrap();
    let r = evaluate(&s, &[0, 1, 2, 3]).unwrap();
    assert_eq!((r.t2v.r1, r.v2t.r1), (100.0, 100.0));
    // The matrix holds caption . video cosines, captions in dataset order.
    let s = similarity(&emb.captions, &emb.videos).unwrap();
    let c: Vec<Vec<f32>> = emb.captions.to_vec2().unwrap();
    let v: Vec<Vec<f32>> = emb.videos.to_vec2().unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for (i, j) in [(0, 0), (3, 11), (15, 2)] {
        assert!((s.get(i, j) - dot(&c[i], &v[j])).abs() < 1e-5);
    }
}

#[test]
fn multi_caption_sets_and_missing_videos() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 4);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str(
        "{\"video\": \"videos/00002.mp4\", \"caption\": \"shapes on a black background\"}\n",
    );
    let multi = dir.path().join("multi.jsonl");
    std::fs::write(&multi, &text).unwrap();
    let model_s = tiny_clip().to_str().unwrap().to_string();
    let (ok, stdout, stderr) = mvserve(&[
        "eval",
        "--data",
        multi.to_str().unwrap(),
        "--model-dir",
        &model_s,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let r: EvalReport = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((r.videos, r.captions), (4, 5));
    // Five text queries: recalls are multiples of 20 %; four video queries: of 25 %.
    assert_eq!(r.t2v.r1 % 20.0, 0.0);
    assert_eq!(r.v2t.r1 % 25.0, 0.0);

    text.push_str("{\"video\": \"videos/gone.mp4\", \"caption\": \"nothing\"}\n");
    std::fs::write(&multi, &text).unwrap();
    let (ok, _, stderr) = mvserve(&[
        "eval",
        "--data",
        multi.to_str().unwrap(),
        "--model-dir",
        &model_s,
    ]);
    assert!(!ok);
    assert!(stderr.contains("videos/gone.mp4"), "{stderr}");
}

#[test]
fn order_blind_meanp_cannot_separate_time_reversed_twins() {
    // Zero-shot CLIP with meanP ignores frame order, so a clip and its time reverse (same 1-fps
    // frames, reversed) embed alike, while the swapped-order clip of the group does not.
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 16);
    let b = tiny_backbone();
    let ds = load(&data, None, None).unwrap();
    let emb = embed_dataset(
        &Embedder::new(&b, None, 32, 8),
        &ds,
        &EvalOptions::default(),
        &|_, _| {},
    )
    .unwrap();
    let v: Vec<Vec<f32>> = emb.videos.to_vec2().unwrap();
    let gap = |i: usize, j: usize| 1.0 - v[i].iter().zip(&v[j]).map(|(x, y)| x * y).sum::<f32>();
    let (mut twins, mut swapped) = (0.0, 0.0);
    for g in 0..4 {
        let i = 4 * g;
        twins += gap(i, i + 2) + gap(i + 1, i + 3);
        swapped += gap(i, i + 1) + gap(i + 2, i + 3);
    }
    println!(
        "1 - cos: time-reversed twins {:.2e}, swapped order {:.2e}",
        twins / 8.0,
        swapped / 8.0
    );
    assert!(
        twins < 0.05 * swapped,
        "twins {twins:e}, swapped {swapped:e}"
    );
}

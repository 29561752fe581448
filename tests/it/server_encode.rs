//! The batching encoder against the tiny fixture backbone: batches that mix tasks give every job
//! the result it would get alone, and each task's hook touches only its own rows.

use candle_core::Tensor;
use mvserve::backbone::BlockHook;
use mvserve::encode::{ClipModel, Encoder, EncoderConfig, TaskModel};
use std::sync::Arc;
use std::time::Duration;

use crate::common::tiny_backbone as backbone;

/// A stand-in adapter: adds `scale * f` after every MLP. Like a real text adapter (whose
/// positional table has L rows), it refuses texts longer than its own length.
struct Scaled(f64, Option<usize>);
impl BlockHook for Scaled {
    fn after_mlp(&self, _layer: usize, f: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if let Some(len) = self.1 {
            if f.dim(1)? > len {
                candle_core::bail!(
                    "texts of {} tokens, this task takes at most {len}",
                    f.dim(1)?
                );
            }
        }
        (f * self.0).map(Some)
    }
}

struct ScaledModel {
    digest: String,
    scale: f64,
    text_len: usize,
}

impl TaskModel for ScaledModel {
    fn digest(&self) -> &str {
        &self.digest
    }
    fn text_len(&self) -> usize {
        self.text_len
    }
    fn frames(&self) -> usize {
        2
    }
    fn text_hook(&self) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>> {
        Ok(Some(Box::new(Scaled(self.scale, Some(self.text_len)))))
    }
    fn video_hook(&self, _mask: &Tensor) -> candle_core::Result<Option<Box<dyn BlockHook + '_>>> {
        Ok(Some(Box::new(Scaled(self.scale, None))))
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mixed_batches_match_single_jobs() {
    let rt = runtime();
    let texts = [
        "a dog runs",
        "a cat sleeps on a sofa",
        "cars in the rain",
        "x",
        // Over 16 tokens: cut to 16 for `short`, 24 for the others, so a batch that mixed them
        // would hand `short`'s hook rows longer than it takes.
        "a man in a red jacket walks his small brown dog along the river bank at sunset in the rain",
    ];
    let clip: Arc<dyn TaskModel> = Arc::new(ClipModel {
        digest: "clip".into(),
        text_len: 32,
        frames: 2,
    });
    let adapted: Arc<dyn TaskModel> = Arc::new(ScaledModel {
        digest: "scaled".into(),
        scale: 0.5,
        text_len: 32,
    });
    // Another text length in the same batches (the encoder must not give it 32-token rows).
    let short: Arc<dyn TaskModel> = Arc::new(ScaledModel {
        digest: "short".into(),
        scale: 0.25,
        text_len: 16,
    });
    // One at a time: batches of one.
    let solo = Encoder::start(
        backbone(),
        EncoderConfig {
            max_text_batch: 1,
            max_video_batch: 1,
            ..Default::default()
        },
        None,
    );
    // Batched: a long wait so that concurrent jobs share batches.
    let batched = Encoder::start(
        backbone(),
        EncoderConfig {
            max_text_batch: 8,
            max_video_batch: 4,
            max_wait: Duration::from_millis(200),
            ..Default::default()
        },
        None,
    );
    let models = [clip.clone(), adapted.clone(), short];
    let mut want = Vec::new();
    for m in &models {
        for t in texts {
            want.push(rt.block_on(solo.encode_text(m.clone(), t)).unwrap());
        }
    }
    let got: Vec<Vec<f32>> = rt.block_on(async {
        let mut handles = Vec::new();
        for m in &models {
            for t in texts {
                let (e, m) = (batched.clone(), m.clone());
                handles.push(tokio::spawn(async move { e.encode_text(m, t).await }));
            }
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap());
        }
        out
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(max_diff(g, w) < 1e-4, "text {i}: batched differs from solo");
    }
    // The hook changed the adapted task's embeddings, and only those.
    assert!(max_diff(&want[0], &want[texts.len()]) > 1e-3);
    let plain = backbone().embed_texts(&[texts[0]], 32, None).unwrap();
    let plain: Vec<f32> = plain.squeeze(0).unwrap().to_vec1().unwrap();
    assert!(max_diff(&plain, &got[0]) < 1e-4);

    // Videos: 2 frames of 64x64 each, the second video with one padded slot.
    let s = 64;
    let frames = |seed: u64| -> Vec<f32> {
        (0..2 * 3 * s * s)
            .map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let jobs = [
        (clip.clone(), frames(1), vec![true, true]),
        (adapted.clone(), frames(2), vec![true, false]),
        (clip.clone(), frames(3), vec![true, false]),
        (adapted.clone(), frames(4), vec![true, true]),
    ];
    let want: Vec<Vec<f32>> = jobs
        .iter()
        .map(|(m, p, k)| {
            rt.block_on(solo.encode_video(m.clone(), p.clone(), k.clone()))
                .unwrap()
        })
        .collect();
    let got: Vec<Vec<f32>> = rt.block_on(async {
        let mut handles = Vec::new();
        for (m, p, k) in jobs.iter().cloned() {
            let e = batched.clone();
            handles.push(tokio::spawn(async move { e.encode_video(m, p, k).await }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap());
        }
        out
    });
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            max_diff(g, w) < 1e-4,
            "video {i}: batched differs from solo"
        );
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // A padded slot is ignored: its pixels do not change the embedding.
    let mut other = frames(2);
    for v in &mut other[3 * s * s..] {
        *v = 0.7;
    }
    let masked = rt
        .block_on(solo.encode_video(adapted.clone(), other, vec![true, false]))
        .unwrap();
    assert!(max_diff(&masked, &want[1]) < 1e-5);
    // Likewise for plain CLIP, whose padded slots are not run through the tower at all.
    let mut other = frames(3);
    for v in &mut other[3 * s * s..] {
        *v = 0.7;
    }
    let masked = rt
        .block_on(solo.encode_video(clip.clone(), other, vec![true, false]))
        .unwrap();
    assert!(max_diff(&masked, &want[2]) < 1e-5);
    // Wrong shapes are refused before they reach the worker.
    let bad = rt.block_on(solo.encode_video(clip.clone(), vec![0.0; 10], vec![true, true]));
    assert!(bad.is_err());
    solo.shutdown();
    batched.shutdown();
}

#[test]
fn full_queue_is_refused_not_queued() {
    let rt = runtime();
    let enc = Encoder::start(
        backbone(),
        EncoderConfig {
            text_queue: 0,
            ..Default::default()
        },
        None,
    );
    let m: Arc<dyn TaskModel> = Arc::new(ClipModel {
        digest: "clip".into(),
        text_len: 32,
        frames: 2,
    });
    let r = rt.block_on(enc.encode_text(m, "hello"));
    assert!(matches!(
        r,
        Err(mvserve::encode::EncodeError::Overloaded("text"))
    ));
    enc.shutdown();
}

#[test]
fn repeated_queries_come_from_the_cache_of_their_generation() {
    let rt = runtime();
    let enc = Encoder::start(backbone(), EncoderConfig::default(), None);
    let gen1: Arc<dyn TaskModel> = Arc::new(ScaledModel {
        digest: "task-gen-1".into(),
        scale: 0.5,
        text_len: 32,
    });
    let gen2: Arc<dyn TaskModel> = Arc::new(ScaledModel {
        digest: "task-gen-2".into(),
        scale: 0.25,
        text_len: 32,
    });
    let first = rt
        .block_on(enc.encode_text(gen1.clone(), "a dog runs"))
        .unwrap();
    let fresh = rt
        .block_on(enc.encode_text(gen2.clone(), "a dog runs"))
        .unwrap();
    // A new generation (digest) is another embedding space: computed, not the old answer.
    assert!(max_diff(&first, &fresh) > 1e-3);
    assert_eq!(enc.query_cache_stats().hits, 0);
    // With the worker gone, only the cache can answer: a repeat needs no backbone pass.
    enc.shutdown();
    let again = rt
        .block_on(enc.encode_text(gen1.clone(), "a dog runs"))
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(enc.query_cache_stats().hits, 1);
    let unseen = rt.block_on(enc.encode_text(gen1, "a cat"));
    assert!(matches!(unseen, Err(mvserve::encode::EncodeError::Stopped)));

    // Turned off, a repeat goes to the worker again.
    let off = Encoder::start(
        backbone(),
        EncoderConfig {
            query_cache_per_task: 0,
            ..Default::default()
        },
        None,
    );
    rt.block_on(off.encode_text(gen2.clone(), "a dog runs"))
        .unwrap();
    off.shutdown();
    assert!(rt.block_on(off.encode_text(gen2, "a dog runs")).is_err());
    assert_eq!(off.query_cache_stats().hits, 0);
}

//! The server's video path (the batching encoder with an adapter task loaded by the registry's
//! `FileLoader`) against `Embedder` (the path of `train`, `eval` and `embed`): the same frames
//! through the same adapter file give the same embedding, padded frame slots included. A task
//! must be served through the pooling it was trained through.

use candle_core::{DType, Device, Tensor};
use mvserve::adapter::{
    AdapterConfig, AdapterFile, AdapterInit, AdapterMeta, BackboneDims, TaskAdapter, Tying,
};
use mvserve::backbone::{Backbone, ModelSource};
use mvserve::embed::{load_adapter, Embedder};
use mvserve::encode::{Encoder, EncoderConfig};
use mvserve::registry::adapters::{AdapterCache, FileLoader};
use mvserve::registry::watch::AdapterLoader;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-clip");
const FRAMES: usize = 4;
const WORDS: usize = 16;

fn backbone() -> Backbone {
    Backbone::load(&ModelSource::Dir(MODEL.into()), &Device::Cpu).unwrap()
}

/// Deterministic values in [-1, 1) (a small LCG), so both paths see the same pixels.
fn pixels(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn adapted_video_through_the_server_equals_embedder() {
    let b = backbone();
    let dir = tempfile::tempdir().unwrap();
    // A random adapter (not the identity init), so a different pooling or hook would show.
    let config = AdapterConfig::standard(
        BackboneDims::of(&b.clip.config),
        FRAMES,
        WORDS,
        Tying::DownIn,
    );
    let tensors = TaskAdapter::init_tensors(&config, AdapterInit::Random, &Device::Cpu).unwrap();
    let meta = AdapterMeta {
        task: "news".into(),
        backbone: b.clip.id.clone(),
        config,
        metrics: None,
        backbone_params: None,
    };
    let file = dir.path().join("news.safetensors");
    AdapterFile::new(meta, tensors)
        .unwrap()
        .write(&file)
        .unwrap();

    let s = b.clip.config.vision_config.image_size;
    // One video with every slot real, one with its last slot padded.
    let videos = [
        (pixels(FRAMES * 3 * s * s, 1), vec![true; FRAMES]),
        (
            pixels(FRAMES * 3 * s * s, 2),
            (0..FRAMES).map(|i| i + 1 < FRAMES).collect::<Vec<bool>>(),
        ),
    ];

    // Embedder: the path training and evaluation take.
    let (_, adapter) = load_adapter(&file, &b.clip).unwrap();
    let e = Embedder::new(&b, Some(&adapter), 0, 0);
    assert_eq!(e.frames(), FRAMES);
    let mut want = Vec::new();
    for (px, mask) in &videos {
        let px = Tensor::from_vec(px.clone(), (FRAMES, 3, s, s), &Device::Cpu).unwrap();
        let m: Vec<f32> = mask.iter().map(|&m| m as u8 as f32).collect();
        let m = Tensor::from_vec(m, (1, FRAMES), &Device::Cpu).unwrap();
        let v = e.videos(&px, &m).unwrap().to_dtype(DType::F32).unwrap();
        want.push(v.squeeze(0).unwrap().to_vec1::<f32>().unwrap());
    }

    // The server: the registry's loader and the batching encoder, both videos in one batch.
    let cache = AdapterCache::new(
        &dir.path().join("adapter-cache"),
        Device::Cpu,
        Default::default(),
        None,
    )
    .unwrap();
    let loader = FileLoader {
        cache,
        backbone: b.clip.id.clone(),
        dims: BackboneDims::of(&b.clip.config),
    };
    let (model, _) = loader.load("news", &file).unwrap();
    let encoder = Encoder::start(
        backbone(),
        EncoderConfig {
            max_video_batch: videos.len(),
            max_wait: std::time::Duration::from_millis(200),
            ..Default::default()
        },
        None,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Concurrent jobs, so that both videos can share a batch as uploads do.
    let got: Vec<Vec<f32>> = rt.block_on(async {
        let jobs: Vec<_> = videos
            .iter()
            .map(|(px, mask)| {
                let (enc, model) = (encoder.clone(), model.clone());
                let (px, mask) = (px.clone(), mask.clone());
                tokio::spawn(async move { enc.encode_video(model, px, mask).await })
            })
            .collect();
        let mut out = Vec::new();
        for j in jobs {
            out.push(j.await.unwrap().unwrap());
        }
        out
    });
    encoder.shutdown();

    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "video {i}: norm {norm}");
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff < 1e-5,
            "video {i}: the server differs from Embedder by {diff}"
        );
    }
    // The two videos differ, so equal results are not an accident of a constant output.
    let apart = got[0]
        .iter()
        .zip(&got[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(apart > 1e-3, "{apart}");
}

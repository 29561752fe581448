//! `--precision int8` against f32 on the parity fixtures: every embedding of the transformers
//! fixture (tiny-clip, image and text towers) and of the authors'-code fixture (the same CLIP with
//! an MV-Adapter on both towers) within cosine 0.999 of the f32 embedding and of the references
//! themselves; then the same on a random full-size ViT-B/32, whose layers have the real widths
//! (768 / 3072 inputs). On a CPU without AVX-512 VNNI the int8 model must be refused instead.

use crate::common::{self, fixture};

use candle_core::{DType, Device, Tensor};
use mvserve::adapter::Tying;
use mvserve::backbone::{int8, Clip, ClipConfig, Precision};
use mvserve::bench::cos_range;
use std::collections::HashMap;

const MIN_COS: f64 = 0.999;

fn load(p: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(p), &Device::Cpu).unwrap()
}

/// The int8 copy of `clip`, or `None` (after checking the refusal) where the CPU cannot run it.
fn int8_of(clip: &Clip) -> Option<Clip> {
    match int8::int8_support() {
        Ok(()) => {
            let q = clip.with_precision(Precision::Int8).unwrap();
            assert_eq!(q.precision(), Precision::Int8);
            assert_eq!(
                clip.precision(),
                Precision::F32,
                "the f32 model is left as it was"
            );
            Some(q)
        }
        Err(why) => {
            let err = clip.with_precision(Precision::Int8).err().expect("refused");
            assert!(err.to_string().contains(&why), "{err}");
            None
        }
    }
}

/// Every row of `got` within cosine [`MIN_COS`] of the same row of `want`; returns the lowest.
fn check(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let d = got.dim(candle_core::D::Minus1).unwrap();
    let g = got.to_dtype(DType::F32).unwrap().reshape(((), d)).unwrap();
    let w = want.to_dtype(DType::F32).unwrap().reshape(((), d)).unwrap();
    let (min, _) = cos_range(&g, &w).unwrap();
    eprintln!("{what}: min cosine {min:.6}");
    assert!(min >= MIN_COS, "{what}: cosine {min} < {MIN_COS}");
    min
}

/// int8 really ran: not the f32 numbers bit for bit.
fn assert_differs(what: &str, a: &Tensor, b: &Tensor) {
    let d = common::max_diff(a, b);
    assert!(
        d > 0.0,
        "{what}: int8 gave exactly the f32 result; was it used?"
    );
}

#[test]
fn tiny_clip_towers_in_int8_stay_within_cosine_0_999() {
    let bb = common::tiny_backbone();
    let Some(q) = int8_of(&bb.clip) else { return };
    let r = load("tiny-clip/reference.safetensors");
    let pixels = &r["pixel_values"];
    let f = bb.clip.vision.forward(pixels, None, false).unwrap().embeds;
    let i = q.vision.forward(pixels, None, false).unwrap().embeds;
    assert_differs("image", &f, &i);
    check("image embeds, int8 vs f32", &i, &f);
    check(
        "image embeds, int8 vs transformers",
        &i,
        &r["image_embeds_f32"],
    );

    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let eot = r["input_ids"].argmax(1).unwrap();
    let f = bb
        .clip
        .text
        .forward(&ids, &eot, None, false)
        .unwrap()
        .embeds;
    let t = q.text.forward(&ids, &eot, None, false).unwrap().embeds;
    assert_differs("text", &f, &t);
    check("text embeds, int8 vs f32", &t, &f);
    check(
        "text embeds, int8 vs transformers",
        &t,
        &r["text_embeds_f32"],
    );
}

/// Frame, video and text embeddings through the authors'-code fixture's adapter.
fn adapted(clip: &Clip, tying: Tying) -> [Tensor; 3] {
    common::official_adapter_outputs(clip, "mv-adapter-official/weights.safetensors", tying)
}

#[test]
fn adapted_embeddings_in_int8_stay_within_cosine_0_999() {
    let bb = common::tiny_backbone();
    let Some(q) = int8_of(&bb.clip) else { return };
    for (tying, reference) in [
        (
            Tying::DownIn,
            "mv-adapter-official/reference_down_in.safetensors",
        ),
        (
            Tying::DownOut,
            "mv-adapter-official/reference_down_out.safetensors",
        ),
    ] {
        let r = load(reference);
        let want = adapted(&bb.clip, tying);
        let got = adapted(&q, tying);
        let names = ["frame_features", "video_embed", "text_embed"];
        for ((name, g), w) in names.iter().zip(&got).zip(&want) {
            assert_differs(name, g, w);
            check(&format!("{tying:?} {name}, int8 vs f32"), g, w);
            let theirs = &r[&format!("{name}.f32")];
            check(
                &format!("{tying:?} {name}, int8 vs the authors' code"),
                g,
                theirs,
            );
        }
    }
}

#[test]
fn full_size_vit_b_32_in_int8_stays_within_cosine_0_999() {
    let clip = Clip::random(ClipConfig::vit_b_32(), 3, DType::F32, &Device::Cpu).unwrap();
    let Some(q) = int8_of(&clip) else { return };
    let a = mvserve::bench::agreement(&clip, &q, 4, 6).unwrap();
    eprintln!("{a:?}");
    assert!(a.image_cos_min >= MIN_COS, "{a:?}");
    assert!(a.text_cos_min >= MIN_COS, "{a:?}");
    assert!(
        a.image_cos_max < 1.0 - 1e-9 || a.text_cos_max < 1.0 - 1e-9,
        "{a:?}"
    );
}

//! The backbone against transformers' CLIP (fixtures/tiny-clip) and the CLIP tokenizer against the
//! expected ids of all 1000 MSR-VTT 1k-A captions; plus the loader's strictness.

use crate::common::{self, fixture};
use common::max_diff;

use candle_core::{DType, Device, IndexOp, Tensor};
use mvserve::backbone::{l2_normalize, Backbone, BackboneError, ModelSource};
use std::collections::HashMap;
use std::path::Path;

use common::tiny_backbone as tiny;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("tiny-clip/reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_diff(a, b);
    eprintln!("{what}: max |diff| {d:e}");
    assert!(d <= 1e-4, "{what}: max |diff| {d}");
}

#[test]
fn vision_tower_matches_transformers() {
    let m = tiny();
    let r = reference();
    let out = m
        .clip
        .vision
        .forward(&r["pixel_values"], None, true)
        .unwrap();
    let hs = &r["vision_hidden_states_f64"];
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.iter().enumerate() {
        assert_close(&format!("vision hidden state {i}"), h, &hs.i(i).unwrap());
    }
    assert_close(
        "vision last hidden",
        out.last_hidden.as_ref().unwrap(),
        &r["vision_last_hidden_state_f32"],
    );
    assert_close("vision pooled", &out.pooled, &r["vision_pooled_f32"]);
    assert_close("image embeds", &out.embeds, &r["image_embeds_f32"]);

    // An embedding pass runs the last block for the CLS rows only.
    let pooled_only = m
        .clip
        .vision
        .forward(&r["pixel_values"], None, false)
        .unwrap();
    assert!(pooled_only.last_hidden.is_none());
    assert_close(
        "vision pooled (CLS rows only)",
        &pooled_only.pooled,
        &r["vision_pooled_f32"],
    );
    assert_close(
        "image embeds (CLS rows only)",
        &pooled_only.embeds,
        &r["image_embeds_f32"],
    );
}

#[test]
fn text_tower_matches_transformers() {
    let m = tiny();
    let r = reference();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let eot = r["input_ids"].argmax(1).unwrap();
    let out = m.clip.text.forward(&ids, &eot, None, true).unwrap();
    assert_close(
        "text last hidden (causal only)",
        out.last_hidden.as_ref().unwrap(),
        &r["text_last_hidden_state_causal_only_f32"],
    );
    // The f64 per-layer states were run with a padding mask: compare the rows up to EOT.
    let hs = &r["text_hidden_states_f64"];
    let eots: Vec<u32> = eot.to_vec1().unwrap();
    for (i, h) in out.hidden_states.iter().enumerate() {
        for (n, &e) in eots.iter().enumerate() {
            let len = e as usize + 1;
            assert_close(
                &format!("text hidden state {i}, caption {n}"),
                &h.i((n, 0..len)).unwrap(),
                &hs.i((i, n, 0..len)).unwrap(),
            );
        }
    }
    assert_close("text pooled", &out.pooled, &r["text_pooled_f32"]);
    assert_close("text embeds", &out.embeds, &r["text_embeds_f32"]);

    // An embedding pass runs the last block for each caption's EOT row only (EOTs differ here).
    assert!(eots.windows(2).any(|w| w[0] != w[1]));
    let pooled_only = m.clip.text.forward(&ids, &eot, None, false).unwrap();
    assert!(pooled_only.last_hidden.is_none());
    assert_close(
        "text pooled (EOT rows only)",
        &pooled_only.pooled,
        &r["text_pooled_f32"],
    );
    assert_close(
        "text embeds (EOT rows only)",
        &pooled_only.embeds,
        &r["text_embeds_f32"],
    );

    let img = m
        .clip
        .vision
        .forward(&r["pixel_values"], None, false)
        .unwrap()
        .embeds;
    let scale = (m.clip.logit_scale as f64).exp();
    let logits = (l2_normalize(&img)
        .unwrap()
        .matmul(&l2_normalize(&out.embeds).unwrap().t().unwrap())
        .unwrap()
        * scale)
        .unwrap();
    assert_close("logits per image", &logits, &r["logits_per_image_f32"]);
    assert_eq!(
        m.clip.logit_scale,
        r["logit_scale"].to_scalar::<f32>().unwrap()
    );
}

/// A query alone is a short product (32 rows), which takes the text encoder's packed weights
/// (`backbone::packed`) rather than gemm, unlike the 4-caption batch above (128 rows).
#[test]
fn text_tower_one_caption_at_a_time_matches_transformers() {
    let m = tiny();
    let r = reference();
    assert!(
        m.clip.text.encoder.is_prepacked(),
        "an f32 CPU model packs its text encoder"
    );
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let eot = r["input_ids"].argmax(1).unwrap();
    let (n, l) = ids.dims2().unwrap();
    assert!(l <= mvserve::backbone::packed::MAX_ROWS);
    for c in 0..n {
        let (one_ids, one_eot) = (ids.narrow(0, c, 1).unwrap(), eot.narrow(0, c, 1).unwrap());
        let want = |name: &str| r[name].narrow(0, c, 1).unwrap();
        let full = m.clip.text.forward(&one_ids, &one_eot, None, true).unwrap();
        assert_close(
            &format!("caption {c} last hidden (causal only)"),
            full.last_hidden.as_ref().unwrap(),
            &want("text_last_hidden_state_causal_only_f32"),
        );
        // What a query runs: the last block for the EOT row only.
        let out = m
            .clip
            .text
            .forward(&one_ids, &one_eot, None, false)
            .unwrap();
        assert_close(
            &format!("caption {c} pooled"),
            &out.pooled,
            &want("text_pooled_f32"),
        );
        assert_close(
            &format!("caption {c} embeds"),
            &out.embeds,
            &want("text_embeds_f32"),
        );
    }
}

#[test]
fn embed_texts_tokenizes_like_the_reference() {
    let m = tiny();
    let r = reference();
    let bytes = std::fs::read(fixture("tiny-clip/reference.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let captions: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["captions"]).unwrap();
    let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
    let (ids, _) = m.tokenize_batch(&texts, 32).unwrap();
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        r["input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    );
    let emb = m.embed_texts(&texts, 32, None).unwrap();
    assert_close(
        "normalised text embeds",
        &emb,
        &l2_normalize(&r["text_embeds_f32"]).unwrap(),
    );
}

#[derive(serde::Deserialize)]
struct Expected {
    caption: String,
    ids: Vec<u32>,
}

#[test]
fn tokenizer_matches_all_msrvtt_1ka_captions() {
    let m = tiny();
    let expected: Vec<Expected> = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip-tokenizer/expected_ids_msrvtt_1ka.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected.len(), 1000);
    let mut mismatches = 0;
    for e in &expected {
        let got = m.tokenizer.encode_unpadded(&e.caption).unwrap();
        if got != e.ids {
            mismatches += 1;
            eprintln!(
                "mismatch: {:?}\n  got  {:?}\n  want {:?}",
                e.caption, got, e.ids
            );
        }
        // Padded layout: the same ids, zero padding, EOT at the end of the text.
        let padded = m.tokenizer.encode(&e.caption, 77).unwrap();
        assert_eq!(&padded.ids[..e.ids.len()], &e.ids[..]);
        assert!(padded.ids[e.ids.len()..].iter().all(|&i| i == 0));
        assert_eq!(padded.eot, e.ids.len() - 1);
    }
    assert_eq!(mismatches, 0);
}

#[test]
fn long_captions_are_truncated_inside_sot_and_eot() {
    let m = tiny();
    let expected: Vec<Expected> = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip-tokenizer/expected_ids_msrvtt_1ka.json")).unwrap(),
    )
    .unwrap();
    let long = expected
        .iter()
        .find(|e| e.ids.len() == 33)
        .expect("the 33-id caption");
    let t = m.tokenizer.encode(&long.caption, 32).unwrap();
    assert_eq!(t.ids.len(), 32);
    assert_eq!(t.eot, 31);
    assert_eq!(&t.ids[..31], &long.ids[..31]);
    assert_eq!(t.ids[31], 49407);
}

/// Writes tiny-clip with `edit` applied to its tensors into a fresh model directory.
fn edited_model(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut t =
        candle_core::safetensors::load(fixture("tiny-clip/model.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-clip").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> BackboneError {
    match Backbone::load(&ModelSource::Dir(dir.to_path_buf()), &Device::Cpu) {
        Ok(_) => panic!("loaded a broken model"),
        Err(e) => e,
    }
}

#[test]
fn a_missing_weight_is_an_error() {
    let dir = edited_model(|t| {
        t.remove("text_model.encoder.layers.1.mlp.fc2.bias");
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, BackboneError::MissingWeight(n) if n == "text_model.encoder.layers.1.mlp.fc2.bias"),
        "{e}"
    );
}

#[test]
fn an_unexpected_weight_is_an_error() {
    let dir = edited_model(|t| {
        t.insert(
            "vision_model.encoder.layers.2.mlp.fc1.bias".into(),
            Tensor::zeros(256, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, BackboneError::UnexpectedWeights(v) if v == &["vision_model.encoder.layers.2.mlp.fc1.bias"]),
        "{e}"
    );
}

#[test]
fn a_misshapen_weight_is_an_error() {
    let dir = edited_model(|t| {
        t.insert(
            "visual_projection.weight".into(),
            Tensor::zeros((32, 65), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(matches!(
        load_err(dir.path()),
        BackboneError::WeightShape { .. }
    ));
}

#[test]
fn a_directory_without_weights_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path()).to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn a_missing_hub_model_offline_names_the_flag() {
    // HF_HOME and HF_HUB_OFFLINE hold for the whole process.
    if !common::alone_in_process("backbone_parity::a_missing_hub_model_offline_names_the_flag") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let e = Backbone::load(
        &ModelSource::Hub("openai/clip-vit-base-patch32".into()),
        &Device::Cpu,
    )
    .err()
    .expect("no model offline")
    .to_string();
    assert!(e.contains("--model-dir"), "{e}");
}

#[test]
fn the_digest_identifies_the_weights() {
    let a = tiny();
    let b = tiny();
    assert_eq!(a.clip.id.digest, b.clip.id.digest);
    let dir = edited_model(|t| {
        let w = t["logit_scale"].clone();
        t.insert("logit_scale".into(), (w + 1.0).unwrap());
    });
    let c = Backbone::load(&ModelSource::Dir(dir.path().to_path_buf()), &Device::Cpu).unwrap();
    assert_ne!(a.clip.id.digest, c.clip.id.digest);
}

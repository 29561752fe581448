//! The adapter file: round trip, digest, import of the authors' names, and one malformed file per
//! validation error.

use candle_core::{DType, Device, Tensor};
use mvserve::adapter::import::{import, map_name, read_checkpoint, ImportOptions, Mapped};
use mvserve::adapter::{
    AdapterConfig, AdapterError, AdapterFile, AdapterInit, AdapterMeta, BackboneDims, TaskAdapter,
    Tying, MAX_HEADER_BYTES,
};
use mvserve::backbone::BackboneId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn dims() -> BackboneDims {
    BackboneDims {
        vision_width: 64,
        vision_layers: 2,
        text_width: 64,
        text_layers: 2,
    }
}

fn config() -> AdapterConfig {
    AdapterConfig::standard(dims(), 4, 32, Tying::DownIn)
}

fn backbone() -> BackboneId {
    BackboneId {
        name: "tiny-clip".into(),
        digest: "abc123".into(),
    }
}

fn tensors(c: &AdapterConfig) -> HashMap<String, Tensor> {
    let (_, vm) = TaskAdapter::trainable(c, AdapterInit::Random, None, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

fn meta(c: &AdapterConfig) -> AdapterMeta {
    AdapterMeta {
        task: "msrvtt".into(),
        backbone: backbone(),
        config: c.clone(),
        metrics: Some(serde_json::json!({"t2v_r1": 46.2})),
        backbone_params: Some(151_277_313),
    }
}

fn good() -> AdapterFile {
    let c = config();
    AdapterFile::new(meta(&c), tensors(&c)).unwrap()
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Writes a safetensors file with arbitrary metadata and tensors (bypassing our validation).
fn raw_file(
    dir: &tempfile::TempDir,
    md: HashMap<String, String>,
    tensors: &HashMap<String, Tensor>,
) -> PathBuf {
    let p = dir.path().join("raw.safetensors");
    safetensors::serialize_to_file(tensors.iter(), Some(md), &p).unwrap();
    p
}

fn good_md(c: &AdapterConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".into(), "mvserve-adapter/1".into()),
        ("task".into(), "msrvtt".into()),
        ("backbone".into(), "tiny-clip".into()),
        ("backbone_digest".into(), "abc123".into()),
        ("config".into(), serde_json::to_string(c).unwrap()),
    ])
}

#[test]
fn round_trip_keeps_everything_and_the_digest_is_of_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f = good();
    let p = dir.path().join("msrvtt.safetensors");
    f.write(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(f.digest(), blake3::hash(&bytes).to_hex().as_str());
    assert_eq!(f.size(), bytes.len() as u64);
    let g = AdapterFile::read(&p).unwrap();
    assert_eq!(g.meta, f.meta);
    assert_eq!(g.digest(), f.digest());
    assert_eq!(g.param_count(), config().param_count());
    for (k, t) in &f.tensors {
        let d = (t - &g.tensors[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }
    // Deterministic: writing again gives the same bytes.
    g.write(&p).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    // The header alone is enough for listings.
    let (m, size) = AdapterFile::read_header(&p).unwrap();
    assert_eq!(m.task, "msrvtt");
    assert_eq!(size, bytes.len() as u64);
    // It is a plain safetensors file for other tools too.
    let st = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    assert_eq!(st.len(), f.tensors.len());
    // A different adapter has a different digest.
    assert_ne!(good().digest(), f.digest());
}

#[test]
fn backbone_checks() {
    let f = good();
    f.check_backbone(&backbone(), &dims()).unwrap();
    let other = BackboneId {
        name: "tiny-clip".into(),
        digest: "fff".into(),
    };
    assert!(matches!(
        f.check_backbone(&other, &dims()),
        Err(AdapterError::BackboneMismatch { .. })
    ));
    let wider = BackboneDims {
        vision_width: 768,
        ..dims()
    };
    assert!(matches!(
        f.check_backbone(&backbone(), &wider),
        Err(AdapterError::ConfigMismatch(_))
    ));
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let mut t = tensors(&c);
    t.remove("vision.0.cc").unwrap();
    let p = raw_file(&dir, good_md(&c), &t);
    let e = AdapterFile::read(&p).unwrap_err();
    assert!(
        matches!(&e, AdapterError::MissingTensors(v) if v == &["vision.0.cc"]),
        "{e}"
    );
    assert!(AdapterFile::new(meta(&c), t).is_err());
}

#[test]
fn extra_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let mut t = tensors(&c);
    t.insert(
        "vision.0.extra".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = raw_file(&dir, good_md(&c), &t);
    let e = AdapterFile::read(&p).unwrap_err();
    assert!(
        matches!(&e, AdapterError::UnexpectedTensors(v) if v == &["vision.0.extra"]),
        "{e}"
    );
}

#[test]
fn misnamed_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let mut t = tensors(&c);
    let x = t.remove("text.1.up.weight").unwrap();
    t.insert("text.1.up_proj.weight".into(), x);
    let p = raw_file(&dir, good_md(&c), &t);
    let e = AdapterFile::read(&p).unwrap_err();
    assert!(matches!(&e, AdapterError::MisnamedTensors { .. }), "{e}");
    assert!(e.to_string().contains("text.1.up.weight"));
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let mut t = tensors(&c);
    t.insert(
        "vision.1.pos".into(),
        Tensor::zeros((8, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = raw_file(&dir, good_md(&c), &t);
    let e = AdapterFile::read(&p).unwrap_err();
    assert!(
        matches!(&e, AdapterError::TensorShape { name, expected, .. } if name == "vision.1.pos" && expected == &[9, 64]),
        "{e}"
    );
}

#[test]
fn wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let mut t = tensors(&c);
    let x = t["vision.0.up.bias"].to_dtype(DType::F16).unwrap();
    t.insert("vision.0.up.bias".into(), x);
    let p = raw_file(&dir, good_md(&c), &t);
    let e = AdapterFile::read(&p).unwrap_err();
    assert!(
        matches!(&e, AdapterError::TensorDtype { found, .. } if found == "F16"),
        "{e}"
    );
}

#[test]
fn nan_and_inf_values() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut t = tensors(&c);
        let mut v: Vec<f32> = t["text.0.down.bias"].to_vec1().unwrap();
        v[3] = bad;
        t.insert(
            "text.0.down.bias".into(),
            Tensor::new(v, &Device::Cpu).unwrap(),
        );
        let p = raw_file(&dir, good_md(&c), &t);
        let e = AdapterFile::read(&p).unwrap_err();
        assert!(
            matches!(&e, AdapterError::NonFinite { name, count: 1 } if name == "text.0.down.bias"),
            "{e}"
        );
        assert!(matches!(
            AdapterFile::new(meta(&c), t),
            Err(AdapterError::NonFinite { .. })
        ));
    }
}

#[test]
fn config_that_does_not_fit_the_tensors_or_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let t = tensors(&c);
    // Unparseable config.
    let mut md = good_md(&c);
    md.insert("config".into(), "{not json".into());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::BadConfig(_)), "{e}");
    // Invalid config (a tied layer the backbone lacks).
    let mut bad = c.clone();
    bad.tied_layers = vec![7];
    let mut md = good_md(&c);
    md.insert("config".into(), serde_json::to_string(&bad).unwrap());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::BadConfig(_)), "{e}");
    // Valid config whose tensors differ: 8 frames instead of 4.
    let mut other = c.clone();
    other.frames = 8;
    let mut md = good_md(&c);
    md.insert("config".into(), serde_json::to_string(&other).unwrap());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::TensorShape { .. }), "{e}");
}

#[test]
fn bad_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let t = tensors(&c);
    let mut md = good_md(&c);
    md.remove("format");
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::NotAnAdapter), "{e}");
    let mut md = good_md(&c);
    md.insert("format".into(), "mvserve-adapter/9".into());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::UnsupportedFormat { .. }), "{e}");
    let mut md = good_md(&c);
    md.remove("backbone_digest");
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::BadMetadata(_)), "{e}");
    let mut md = good_md(&c);
    md.insert("task".into(), "../etc/passwd".into());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::BadMetadata(_)), "{e}");
    let mut md = good_md(&c);
    md.insert("metrics".into(), "{oops".into());
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::BadMetadata(_)), "{e}");
}

#[test]
fn oversized_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = config();
    let t = tensors(&c);
    let mut md = good_md(&c);
    md.insert("notes".into(), "x".repeat(MAX_HEADER_BYTES as usize + 10));
    let e = AdapterFile::read(&raw_file(&dir, md, &t)).unwrap_err();
    assert!(matches!(e, AdapterError::HeaderTooLarge { .. }), "{e}");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = good().to_bytes().unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 100] {
        let p = write_tmp(&dir, "cut.safetensors", &bytes[..cut]);
        let e = AdapterFile::read(&p).unwrap_err();
        assert!(
            matches!(e, AdapterError::Truncated { .. }),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty", b"".to_vec()),
        (
            "text",
            b"this is a text file, not a model at all\n".to_vec(),
        ),
        ("png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
        ("badjson", {
            let mut v = 10u64.to_le_bytes().to_vec();
            v.extend_from_slice(b"{not json}");
            v
        }),
    ] {
        let p = write_tmp(&dir, name, &bytes);
        let e = AdapterFile::read(&p).unwrap_err();
        assert!(matches!(e, AdapterError::NotSafetensors(_)), "{name}: {e}");
    }
    // Trailing bytes after the last tensor.
    let mut bytes = good().to_bytes().unwrap();
    bytes.extend_from_slice(&[0; 16]);
    let p = write_tmp(&dir, "trailing", &bytes);
    assert!(matches!(
        AdapterFile::read(&p),
        Err(AdapterError::NotSafetensors(_))
    ));
    // A missing file is an I/O error.
    assert!(matches!(
        AdapterFile::read(Path::new("/nonexistent/x.safetensors")),
        Err(AdapterError::Io(..))
    ));
}

#[test]
fn authors_names_map_to_ours_in_one_place() {
    let m = |s| map_name(s).unwrap();
    assert_eq!(
        m("clip.visual.transformer.resblocks.3.mlp.adapter.conv_rf_c.a.weight"),
        Mapped::Ours("vision.3.calib.a.weight".into())
    );
    assert_eq!(
        m("module.clip.transformer.resblocks.11.mlp.adapter.block.attn.in_proj_weight"),
        Mapped::Ours("text.11.trm.attn.in_proj.weight".into())
    );
    assert_eq!(
        m("clip.transformer.resblocks.11.mlp.adapter.shared_factor"),
        Mapped::SharedFactor { layer: 11 }
    );
    assert_eq!(m("clip.prompt.1"), Mapped::Prompt(1));
    assert_eq!(m("clip.visual.conv1.weight"), Mapped::Ignored);
    assert_eq!(
        m("clip.transformer.resblocks.0.mlp.c_fc.weight"),
        Mapped::Ignored
    );
    assert!(
        map_name("clip.visual.transformer.resblocks.0.mlp.adapter.conv_rf_p.a.weight").is_err()
    );
}

#[test]
fn import_of_the_authors_fixture_checkpoint() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mv-adapter-official/weights.safetensors");
    let ckpt = read_checkpoint(&p).unwrap();
    assert_eq!(ckpt.len(), 95);
    // md_proj is 64 wide and so is the backbone: the mode must be given.
    let e = import(ckpt.clone(), dims(), &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--tying"), "{e}");
    let opts = ImportOptions {
        tying: Some(Tying::DownOut),
        ..Default::default()
    };
    let (c, t) = import(ckpt.clone(), dims(), &opts).unwrap();
    assert_eq!(c.tying, Tying::DownOut);
    assert_eq!(t.len(), 95 - 2); // the shared factor's three copies become one tensor
    let f = AdapterFile::new(
        AdapterMeta {
            task: "fixture".into(),
            backbone: backbone(),
            config: c,
            metrics: None,
            backbone_params: None,
        },
        t,
    )
    .unwrap();
    assert_eq!(f.param_count(), f.meta.config.param_count());
    // A checkpoint whose copies of the shared factor disagree is refused.
    let mut bad = ckpt.clone();
    for (n, t) in bad.iter_mut() {
        if n == "clip.prompt.0" {
            *t = (t.clone() + 1.0).unwrap();
        }
    }
    let e = import(bad, dims(), &opts).unwrap_err();
    assert!(e.to_string().contains("shared factor differs"), "{e}");
}

#[test]
fn down_up_only_adapters_round_trip_and_older_files_still_read() {
    // A standard config writes no video_trm key: files written before the field existed have the
    // same bytes, and their config parses with the cross-frame part on.
    let c = config();
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("video_trm"), "{json}");
    let back: AdapterConfig = serde_json::from_str(&json).unwrap();
    assert!(back.video_trm);
    let dir = tempfile::tempdir().unwrap();
    let p = raw_file(&dir, good_md(&c), &tensors(&c));
    assert!(AdapterFile::read(&p).unwrap().meta.config.video_trm);
    // Down/up only: the key is written, the tensors lack pos, cc, ln_pre, trm and calib.
    let mut d = config();
    d.temporal = false;
    d.video_trm = false;
    let f = AdapterFile::new(meta(&d), tensors(&d)).unwrap();
    assert!(f.tensors.keys().all(|k| !k.ends_with(".cc")));
    assert!(!f.tensors.contains_key("vision.0.pos"));
    assert!(f.tensors.contains_key("text.0.pos"));
    assert_eq!(f.param_count(), d.param_count());
    let p = dir.path().join("flat.safetensors");
    f.write(&p).unwrap();
    let g = AdapterFile::read(&p).unwrap();
    assert_eq!(g.meta, f.meta);
    assert!(!g.meta.config.video_trm);
    // A down/up-only config over tensors that have the cross-frame part is refused, and back.
    let mut md = good_md(&c);
    md.insert("config".into(), serde_json::to_string(&d).unwrap());
    let e = AdapterFile::read(&raw_file(&dir, md, &tensors(&c))).unwrap_err();
    assert!(matches!(e, AdapterError::UnexpectedTensors(_)), "{e}");
    let e = AdapterFile::read(&raw_file(&dir, good_md(&c), &tensors(&d))).unwrap_err();
    assert!(matches!(e, AdapterError::MissingTensors(_)), "{e}");
}

/// A header written by hand: `config` as JSON, tensors as (name, shape, offsets), no data unless
/// given. The shapes and offsets are whatever the test says, however absurd.
fn hand_made(
    dir: &tempfile::TempDir,
    config: &serde_json::Value,
    tensors: &[(&str, Vec<u64>, [u64; 2])],
    data: &[u8],
) -> PathBuf {
    let mut header = serde_json::Map::new();
    let md = good_md(&self::config());
    let mut md: serde_json::Map<String, serde_json::Value> =
        md.into_iter().map(|(k, v)| (k, v.into())).collect();
    md.insert("config".into(), config.to_string().into());
    header.insert("__metadata__".into(), md.into());
    for (name, shape, offs) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": offs}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(data);
    write_tmp(dir, "hand.safetensors", &bytes)
}

#[test]
fn hostile_sizes_are_refused_before_anything_is_allocated() {
    use mvserve::adapter::config::limits;
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_value(config()).unwrap();
    // Every size of the config, far beyond its limit: refused by the config check, naming the
    // field, before a shape is computed (the file has no tensors or data at all).
    for (field, value) in [
        ("frames", serde_json::json!(1_000_000_000u64)),
        ("frames", serde_json::json!(limits::MAX_FRAMES + 1)),
        ("words", serde_json::json!(1_000_000_000u64)),
        ("words", serde_json::json!(limits::MAX_WORDS + 1)),
        ("width", serde_json::json!(1u64 << 40)),
        ("heads", serde_json::json!(1u64 << 40)),
        ("factor_dim", serde_json::json!(u64::MAX)),
        ("kron_n", serde_json::json!(1u64 << 62)),
        ("calib_dim", serde_json::json!(1u64 << 33)),
        ("backbone.vision_width", serde_json::json!(1u64 << 50)),
        ("backbone.text_width", serde_json::json!(1u64 << 50)),
        ("backbone.vision_layers", serde_json::json!(1_000_000u64)),
        ("backbone.text_layers", serde_json::json!(1_000_000u64)),
    ] {
        let mut c = good.clone();
        match field.split_once('.') {
            Some((outer, inner)) => c[outer][inner] = value.clone(),
            None => c[field] = value.clone(),
        }
        let e = AdapterFile::read(&hand_made(&dir, &c, &[], &[])).unwrap_err();
        assert!(
            matches!(&e, AdapterError::BadConfig(m) if m.contains(field) && m.contains("limit")),
            "{field} = {value}: {e}"
        );
        // The header-only read used by listings refuses it the same way.
        assert!(AdapterFile::read_header(&hand_made(&dir, &c, &[], &[])).is_err());
    }
    // The limits themselves are allowed (the tensors then do not match: a shape error, not a
    // config error).
    let mut c = good.clone();
    c["frames"] = limits::MAX_FRAMES.into();
    c["words"] = limits::MAX_WORDS.into();
    let e = AdapterFile::read(&hand_made(&dir, &c, &[], &[])).unwrap_err();
    assert!(matches!(e, AdapterError::MissingTensors(_)), "{e}");

    // Lengths in the header that overflow or point past the file, with the config valid: the
    // tensor list is the right one, but the shapes or offsets are absurd.
    let f = good_file_layout();
    let mut absurd_shape = f.clone();
    absurd_shape[0].1 = vec![1 << 40, 1 << 40, 1 << 40];
    let mut huge_end = f.clone();
    huge_end.last_mut().unwrap().2[1] = u64::MAX;
    let mut reversed = f.clone();
    reversed[0].2 = [reversed[0].2[1], reversed[0].2[0]];
    for (what, layout) in [
        ("shape", absurd_shape),
        ("end", huge_end),
        ("reversed", reversed),
    ] {
        let tensors: Vec<(&str, Vec<u64>, [u64; 2])> = layout
            .iter()
            .map(|(n, s, o)| (n.as_str(), s.clone(), *o))
            .collect();
        let e = AdapterFile::read(&hand_made(&dir, &good, &tensors, &[0u8; 64])).unwrap_err();
        assert!(
            matches!(
                e,
                AdapterError::TensorShape { .. }
                    | AdapterError::NotSafetensors(_)
                    | AdapterError::Truncated { .. }
            ),
            "{what}: {e}"
        );
    }
}

/// The tensors of the good file: name, shape, offsets, in the file's order.
fn good_file_layout() -> Vec<(String, Vec<u64>, [u64; 2])> {
    let bytes = good().to_bytes().unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out: Vec<(String, Vec<u64>, [u64; 2])> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let o = v["data_offsets"].as_array().unwrap();
            (
                k.clone(),
                shape,
                [o[0].as_u64().unwrap(), o[1].as_u64().unwrap()],
            )
        })
        .collect();
    out.sort_by_key(|(_, _, o)| o[0]);
    out
}

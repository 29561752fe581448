//! `mvserve adapter new|inspect|import` and `mvserve embed --adapter/--video`, end to end on the
//! tiny CLIP fixture.

use crate::common::{mvserve, root};

fn embedding(stdout: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn new_inspect_import_and_embed() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = "tests/fixtures/tiny-clip";
    let zero = dir.path().join("zero.safetensors");
    let z = zero.to_str().unwrap();
    let (ok, _, err) = mvserve(&[
        "adapter",
        "new",
        "--model-dir",
        tiny,
        "--task",
        "demo",
        "--out",
        z,
        "--frames",
        "4",
        "--tied-layers",
        "1",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = mvserve(&["adapter", "inspect", z, "--model-dir", tiny, "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["task"], "demo");
    assert_eq!(j["fits"], true);
    assert_eq!(j["params"], 257_856);
    assert_eq!(
        j["digest"].as_str().unwrap(),
        blake3::hash(&std::fs::read(&zero).unwrap())
            .to_hex()
            .as_str()
    );
    let (ok, out, _) = mvserve(&["adapter", "inspect", z]);
    assert!(ok && out.contains("fits:       unknown"), "{out}");
    // Down/up only: no cross-frame part, fewer parameters; --no-video-trm needs --no-temporal.
    let flat = dir.path().join("flat.safetensors");
    let args = [
        "adapter",
        "new",
        "--model-dir",
        tiny,
        "--task",
        "demo",
        "--out",
        flat.to_str().unwrap(),
        "--frames",
        "4",
        "--no-video-trm",
    ];
    let (ok, _, _) = mvserve(&args);
    assert!(!ok, "--no-video-trm alone must be refused");
    let (ok, _, err) = mvserve(&[&args[..], &["--no-temporal"]].concat());
    assert!(ok, "{err}");
    let (ok, out, err) = mvserve(&["adapter", "inspect", flat.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["config"]["video_trm"], false);
    assert!(j["params"].as_u64().unwrap() < 257_856);

    // A fresh adapter embeds like plain CLIP (to rounding: the plain pass runs its last block for
    // the CLS rows only, the adapted one in full); an imported random one does not.
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..3 {
        std::fs::copy(
            root().join(format!("tests/fixtures/preprocess/frame_{i}.jpg")),
            frames.join(format!("{i:04}.jpg")),
        )
        .unwrap();
    }
    let f = frames.to_str().unwrap();
    let plain = mvserve(&["embed", "--model-dir", tiny, "--video", f, "--frames", "4"]);
    let adapted = mvserve(&["embed", "--model-dir", tiny, "--video", f, "--adapter", z]);
    assert!(plain.0 && adapted.0, "{} {}", plain.2, adapted.2);
    let diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert!(diff(&embedding(&plain.1), &embedding(&adapted.1)) < 1e-5);

    let imported = dir.path().join("fixture.safetensors");
    let i = imported.to_str().unwrap();
    let ckpt = "tests/fixtures/mv-adapter-official/weights.safetensors";
    let (ok, _, err) = mvserve(&[
        "adapter",
        "import",
        ckpt,
        "--model-dir",
        tiny,
        "--task",
        "fixture",
        "--out",
        i,
    ]);
    assert!(!ok && err.contains("--tying"), "{err}");
    let (ok, _, err) = mvserve(&[
        "adapter",
        "import",
        ckpt,
        "--model-dir",
        tiny,
        "--task",
        "fixture",
        "--out",
        i,
        "--tying",
        "down_in",
    ]);
    assert!(ok, "{err}");
    let t_plain = mvserve(&["embed", "--model-dir", tiny, "--text", "a dog runs"]);
    let t_adapted = mvserve(&[
        "embed",
        "--model-dir",
        tiny,
        "--text",
        "a dog runs",
        "--adapter",
        i,
    ]);
    assert!(t_plain.0 && t_adapted.0, "{}", t_adapted.2);
    let (a, b) = (embedding(&t_plain.1), embedding(&t_adapted.1));
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));

    // A file that is not an adapter is refused with a clear message.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not a model").unwrap();
    let (ok, _, err) = mvserve(&["adapter", "inspect", junk.to_str().unwrap()]);
    assert!(!ok && err.contains("not a safetensors file"), "{err}");
}

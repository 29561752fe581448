//! `--device` and the route a GPU takes, checked without a GPU: the composite ops (what CUDA runs)
//! against the hand-written CPU kernels on whole models, and the errors for a device this build or
//! machine cannot use.

use crate::common::{self, fixture};

use candle_core::Device;
use mvserve::backbone::device::CUDA_BUILT;
use mvserve::backbone::ClipConfig;
use mvserve::bench::parity::{device_parity, ParitySpec};

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = common::mvserve_command();
    c.args(args).env_remove("MVSERVE_DEVICE");
    common::output(c.envs(env.iter().copied()))
}

#[test]
fn composite_ops_match_the_cpu_kernels_on_whole_models() {
    let config = ClipConfig::from_file(&fixture("tiny-clip/config.json")).unwrap();
    let spec = ParitySpec {
        images: 3,
        videos: 2,
        texts: 4,
        seed: 7,
    };
    let r = device_parity(&config, &Device::Cpu, &spec).unwrap();
    // Plain towers, a video adapter (with a padded frame) and a text adapter: the same model run
    // through candle's composite ops agrees with the fused kernels to float rounding.
    for (what, d) in [
        ("image", r.image),
        ("text", r.text),
        ("adapter video", r.adapter_video),
        ("adapter text", r.adapter_text),
    ] {
        assert!(d.is_finite() && d < 1e-5, "{what}: {d}");
    }
    assert!(r.max() < 1e-5);
}

#[test]
fn bench_parity_command_passes_on_the_cpu_and_fails_below_rounding() {
    let cfg = fixture("tiny-clip/config.json");
    let cfg = cfg.to_str().unwrap();
    let (ok, out, err) = run(&["bench", "parity", "--config", cfg, "--images", "2"], &[]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["device"], "cpu (composite ops)");
    // The two routes round differently (the fused QuickGELU is not candle's sigmoid), so a
    // tolerance of exactly 0 must fail: the check can fail.
    let (ok, out, err) = run(
        &["bench", "parity", "--config", cfg, "--tolerance", "0"],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("differs from the CPU"), "{err}");
}

#[test]
fn an_unusable_device_is_a_clear_error_for_every_command() {
    let tiny = fixture("tiny-clip");
    let tiny = tiny.to_str().unwrap();
    let want = if CUDA_BUILT {
        "cuda:0 is not usable"
    } else {
        "built without CUDA support"
    };
    let data = tempfile::tempdir().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "embed",
            "--model-dir",
            tiny,
            "--text",
            "a cat",
            "--device",
            "cuda",
        ],
        vec!["bench", "backbone", "--device", "cuda", "--iters", "1"],
        vec!["bench", "parity", "--device", "cuda:0"],
        vec![
            "serve",
            "--model-dir",
            tiny,
            "--port",
            "0",
            "--no-grpc",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--device",
            "cuda",
        ],
    ];
    if CUDA_BUILT && Device::new_cuda(0).is_ok() {
        // A GPU is here: nothing to refuse.
        return;
    }
    for args in commands {
        let (ok, out, err) = run(&args, &[]);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.contains("listening on"), "{args:?} bound a port");
    }
    // The environment variable is read too, and a bad name is refused by the parser.
    let (ok, _, err) = run(
        &["embed", "--model-dir", tiny, "--text", "a cat"],
        &[("MVSERVE_DEVICE", "cuda")],
    );
    assert!(!ok && err.contains(want), "{err}");
    let (ok, _, err) = run(
        &[
            "embed",
            "--model-dir",
            tiny,
            "--text",
            "a cat",
            "--device",
            "tpu",
        ],
        &[],
    );
    assert!(!ok && err.contains("unknown device"), "{err}");
}

#[test]
fn the_cpu_device_flag_embeds_as_before() {
    let tiny = fixture("tiny-clip");
    let tiny = tiny.to_str().unwrap();
    let base = ["embed", "--model-dir", tiny, "--text", "a dog runs"];
    let (ok, plain, err) = run(&base, &[]);
    assert!(ok, "{err}");
    let mut with_flag = base.to_vec();
    with_flag.extend(["--device", "cpu"]);
    let (ok, flagged, err) = run(&with_flag, &[]);
    assert!(ok, "{err}");
    assert_eq!(plain, flagged);
}

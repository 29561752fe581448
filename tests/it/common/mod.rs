//! Helpers shared by the integration tests: fixture paths, the tiny backbone, running the
//! `mvserve` binary, tensor comparison, the rule for tests that need a system program, and a way
//! to run one test alone in a process of its own.
#![allow(dead_code)]

pub mod media;
pub mod milvus;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use mvserve::backbone::{Backbone, ModelSource};

/// The repository root (`CARGO_MANIFEST_DIR`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<p>`.
pub fn fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures").join(p)
}

/// The tiny random CLIP of `tests/fixtures/tiny-clip` (transformers' layout and names).
pub fn tiny_clip() -> PathBuf {
    fixture("tiny-clip")
}

/// The authors'-code fixture (`mv-adapter-official/inputs.safetensors`) through `clip` (in any
/// precision) with the fixture checkpoint `ckpt` imported under `tying`: frame features (8, D),
/// video embeddings (2, D) (meanP over the mask) and text embeddings (N, D), unnormalised.
pub fn official_adapter_outputs(
    clip: &mvserve::backbone::Clip,
    ckpt: &str,
    tying: mvserve::adapter::Tying,
) -> [Tensor; 3] {
    use mvserve::adapter::import::{import, read_checkpoint, ImportOptions};
    use mvserve::adapter::{pool_frames, BackboneDims, TaskAdapter};
    let inputs = candle_core::safetensors::load(
        fixture("mv-adapter-official/inputs.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tensors = read_checkpoint(&fixture(ckpt)).unwrap();
    let opts = ImportOptions {
        tying: Some(tying),
        ..Default::default()
    };
    let (config, tensors) = import(tensors, BackboneDims::of(&clip.config), &opts).unwrap();
    let adapter = TaskAdapter::from_tensors(&config, tensors, &Device::Cpu).unwrap();
    let video = inputs["video"].reshape((8, 3, 64, 64)).unwrap();
    let mask = inputs["video_mask"].to_dtype(DType::F32).unwrap();
    let hook = adapter.video_hook(&mask).unwrap();
    let frames = clip
        .vision
        .forward(&video, Some(&hook), false)
        .unwrap()
        .embeds;
    let video_embed = pool_frames(&frames, &mask).unwrap();
    let ids = inputs["input_ids"].to_dtype(DType::U32).unwrap();
    let eot = inputs["input_ids"].argmax(1).unwrap();
    let text = clip
        .text
        .forward(&ids, &eot, Some(&adapter.text_hook(32).unwrap()), false)
        .unwrap()
        .embeds;
    [frames, video_embed, text]
}

/// The tiny fixture backbone, loaded on the CPU.
pub fn tiny_backbone() -> Backbone {
    Backbone::load(&ModelSource::Dir(tiny_clip()), &Device::Cpu).unwrap()
}

/// The `mvserve` binary, run from the repository root with `RUST_LOG=warn` and no backtraces.
pub fn mvserve_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mvserve"));
    c.current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "warn");
    c
}

/// Runs `mvserve ARGS` to the end: (success, stdout, stderr).
pub fn mvserve(args: &[&str]) -> (bool, String, String) {
    output(mvserve_command().args(args))
}

/// Runs a command to the end: (success, stdout, stderr).
pub fn output(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small deterministic generator (splitmix64), so a randomized test reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f32 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
    /// `dim` standard normal values.
    pub fn vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.gauss()).collect()
    }
}

/// max |a - b| over all elements, compared in f32; the shapes must match.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `true` if the `ffmpeg` and `ffprobe` programs can be run. Outside CI a test that needs them
/// skips (or swaps its input) with a printed notice; under CI (`CI` set) it must run, so their
/// absence is a failure: `.ci/run` installs them.
pub fn have_ffmpeg(test: &str) -> bool {
    let runs = |p: &str| {
        std::process::Command::new(p)
            .arg("-version")
            .output()
            .is_ok()
    };
    let ok = runs("ffmpeg") && runs("ffprobe");
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: ffmpeg/ffprobe not found, and CI must run this test");
        }
        eprintln!("NOTICE: {test}: ffmpeg/ffprobe not installed, its ffmpeg part is skipped");
    }
    ok
}

/// This test binary again, running the one test `name` (its full name, `module::function`) and
/// nothing else, on one thread, with its output uncaptured.
pub fn this_test_alone(name: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    c
}

/// Set in the child process that [`alone_in_process`] starts, to the name of its test.
const ALONE: &str = "MVSERVE_TEST_ALONE";

/// For a test that changes what holds for the whole process (an environment variable the code
/// under test reads, such as `MVSERVE_FFMPEG` or `HF_HOME`; candle's thread count): all the tests
/// share one process, so such a test runs its body in a child process of its own. Call it first
/// with the test's full name: in the test run it starts the child, waits for it, passes its
/// output on, fails if the child's test failed (or did not run) and returns `false`, and the test
/// returns; in the child it returns `true` and the body runs, the only test in its process, where
/// `std::env::set_var` touches no other test.
pub fn alone_in_process(name: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|v| v == name) {
        return true;
    }
    let out = this_test_alone(name).env(ALONE, name).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed in its own process");
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process (is the name right?)"
    );
    false
}

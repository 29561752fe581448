//! Helpers shared by the integration tests: tensor comparison, a real server process, media
//! fixtures, and the rule for tests that need a system program.
#![allow(dead_code)]

pub mod media;
pub mod server;

use candle_core::{DType, Tensor};

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

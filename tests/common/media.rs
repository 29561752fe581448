//! Helpers of the media tests: fixture paths and the ffmpeg check.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/fixtures/videos/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/videos")
        .join(name)
}

/// `true` if ffmpeg can be used; `false` (with a notice) to skip; panics under CI.
pub fn have_ffmpeg(test: &str) -> bool {
    let ok = Command::new("ffmpeg").arg("-version").output().is_ok()
        && Command::new("ffprobe").arg("-version").output().is_ok();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: ffmpeg/ffprobe not found, and CI must run this test");
        }
        eprintln!("NOTICE: {test} skipped: ffmpeg/ffprobe not installed");
    }
    ok
}

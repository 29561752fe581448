//! Helpers of the media tests: fixture paths (the ffmpeg check is `common::have_ffmpeg`).

use std::path::{Path, PathBuf};

/// `tests/fixtures/videos/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/videos")
        .join(name)
}

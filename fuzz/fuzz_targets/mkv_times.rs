//! Fuzzes the Matroska block-header walk (`media::mkv::frame_times`) that replaces ffprobe's packet
//! listing on the seeking path: any input must give times, a fallback (`None`) or a typed error,
//! never a panic, within the frame limit. Seed it with `tests/fixtures/videos/*.webm`.
#![no_main]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

#[path = "../../src/media/mod.rs"]
mod media;

#[path = "../../src/backbone/preprocess.rs"]
pub mod preprocess;

/// `media` calls `crate::backbone::preprocess`.
mod backbone {
    pub use super::preprocess;
}

fuzz_target!(|data: &[u8]| {
    let limits = media::MediaLimits {
        max_frames_decoded: 5_000,
        ..Default::default()
    };
    let budget = media::Budget {
        limits: &limits,
        deadline: Instant::now() + Duration::from_secs(10),
        stats: Default::default(),
        shrink: None,
    };
    if let Ok(Some(times)) = media::mkv::frame_times(data, &budget) {
        assert!(!times.pts.is_empty() && times.pts.len() <= 5_000);
    }
});

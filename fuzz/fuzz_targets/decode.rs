//! Fuzzes the decode entry point, `media::load_video_bytes_with`, with in-process decoders only,
//! through both strategies: seeking (index-driven, the default) and sequential.
//!
//! Any panic is reported as a crash even though `load_video_bytes` catches panics (libFuzzer's panic
//! hook aborts first): a panic inside a decoder crate is a finding to fix or to guard against.
#![no_main]
#![allow(dead_code)]

use std::time::Duration;

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
        use_ffmpeg: false,
        max_wall_time: Duration::from_secs(10),
        max_pixels: 1920 * 1088,
        max_frames_decoded: 5_000,
        ..Default::default()
    };
    let spec = media::SampleSpec {
        frames: 4,
        fps: 1.0,
        size: 32,
    };
    for strategy in [media::DecodeStrategy::Seek, media::DecodeStrategy::Sequential] {
        let _ = media::load_video_bytes_with(data, &spec, &limits, strategy);
    }
});

//! Video ingest on real third-party files (`tests/fixtures/videos`, provenance in its `SOURCES.md`):
//! metadata, sampled timestamps, and pixels against ffmpeg's decode of the same frames (PSNR).
//!
//! Tests that need the `ffmpeg` program skip with a notice when it is missing, except under CI
//! (`CI` set), where they fail: CI installs ffmpeg.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::have_ffmpeg;
use common::media::fixture;

use mvserve::backbone::preprocess::{preprocess, CLIP_MEAN, CLIP_STD};
use mvserve::media::{load_video, Frames, MediaLimits, SampleSpec};

/// What we expect of each real file (from ffprobe and the 1 fps / F = 12 rule).
struct Expect {
    file: &'static str,
    container: &'static str,
    codec: &'static str,
    decoder: &'static str,
    size: (u32, u32),
    frame_count: u64,
    duration_s: f64,
    /// Whole seconds of the sampled frames (each timestamp is the first frame at or after it).
    seconds: &'static [u32],
    /// Frame duration, the most a timestamp may lie after its whole second.
    frame_s: f64,
}

const S12_OF_16: &[u32] = &[0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 15];
const S12_OF_14: &[u32] = &[0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13];

const EXPECT: &[Expect] = &[
    Expect {
        file: "video7020.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 330,
        duration_s: 11.011,
        seconds: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        frame_s: 1.001 / 30.0,
    },
    Expect {
        file: "video7021.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 288,
        duration_s: 12.0,
        seconds: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        frame_s: 1.0 / 24.0,
    },
    Expect {
        file: "video7024.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 480,
        duration_s: 16.016,
        seconds: S12_OF_16,
        frame_s: 1.001 / 30.0,
    },
    Expect {
        file: "video7025.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 336,
        duration_s: 14.014,
        seconds: S12_OF_14,
        frame_s: 1.001 / 24.0,
    },
    Expect {
        file: "video740.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (298, 224),
        frame_count: 32,
        duration_s: 10.667,
        seconds: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        frame_s: 1.0 / 3.0,
    },
    Expect {
        file: "jPBxl9gFqNY_110_117.avi",
        container: "avi",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 210,
        duration_s: 7.007,
        seconds: &[0, 1, 2, 3, 4, 5, 6],
        frame_s: 1.001 / 30.0,
    },
    Expect {
        file: "realshort.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (320, 240),
        frame_count: 36,
        duration_s: 1.1992,
        seconds: &[0, 1],
        frame_s: 1499.0 / 45000.0,
    },
    Expect {
        file: "carphone_distorted.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (176, 144),
        frame_count: 120,
        duration_s: 4.004,
        seconds: &[0, 1, 2, 3],
        frame_s: 1.001 / 30.0,
    },
    Expect {
        file: "bikes.mp4",
        container: "mp4",
        codec: "h264",
        decoder: "openh264",
        size: (640, 272),
        frame_count: 250,
        duration_s: 10.0,
        seconds: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        frame_s: 1.0 / 25.0,
    },
    Expect {
        file: "newtonscradle.gif",
        container: "gif",
        codec: "gif",
        decoder: "gif",
        size: (200, 150),
        frame_count: 36,
        duration_s: 0.82,
        seconds: &[0],
        frame_s: 0.1,
    },
    Expect {
        file: "big_buck_bunny_432_433.webm",
        container: "webm",
        codec: "vp8",
        decoder: "ffmpeg",
        size: (1280, 720),
        frame_count: 24,
        duration_s: 1.0,
        seconds: &[0],
        frame_s: 1.0 / 24.0,
    },
];

fn check(e: &Expect, f: &Frames) {
    let spec = SampleSpec::default();
    let info = &f.info;
    assert_eq!(
        (
            info.container.as_str(),
            info.codec.as_str(),
            info.decoder.as_str()
        ),
        (e.container, e.codec, e.decoder),
        "{}",
        e.file
    );
    assert_eq!((info.width, info.height), e.size, "{}", e.file);
    assert_eq!(info.frame_count, e.frame_count, "{}", e.file);
    assert!(
        (info.duration_s - e.duration_s).abs() < 0.02,
        "{}: duration {}",
        e.file,
        info.duration_s
    );
    assert!(
        (info.fps - e.frame_count as f64 / e.duration_s).abs() < 0.1,
        "{}: fps {}",
        e.file,
        info.fps
    );
    let n = e.seconds.len();
    assert_eq!(f.timestamps.len(), n, "{}: {:?}", e.file, f.timestamps);
    assert_eq!(f.mask.len(), spec.frames);
    assert!(
        f.mask[..n].iter().all(|&m| m) && f.mask[n..].iter().all(|&m| !m),
        "{}",
        e.file
    );
    for (t, &s) in f.timestamps.iter().zip(e.seconds) {
        assert!(
            *t >= s as f64 - 1e-6 && *t < s as f64 + e.frame_s + 1e-6,
            "{}: timestamp {t} is not the first frame at or after {s} s ({:?})",
            e.file,
            f.timestamps
        );
    }
    let per = 3 * 224 * 224;
    assert_eq!(f.pixels.len(), spec.frames * per);
    assert!(
        f.pixels[n * per..].iter().all(|&v| v == 0.0),
        "{}: padding is not zero",
        e.file
    );
    for k in 0..n {
        let frame = &f.pixels[k * per..(k + 1) * per];
        assert!(frame.iter().all(|v| v.is_finite() && v.abs() < 3.0));
        let mean = frame.iter().sum::<f32>() / per as f32;
        let var = frame.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / per as f32;
        assert!(var > 1e-3, "{}: frame {k} is flat", e.file);
    }
    let thumb = image::load_from_memory(&f.thumbnail_jpeg).expect("thumbnail is a JPEG");
    assert_eq!(
        (thumb.width(), thumb.height()),
        e.size,
        "{}: thumbnail size",
        e.file
    );
}

/// Every real file: container, codec, decoder, size, frame count, duration and sampled times.
#[test]
fn real_files_metadata_and_sampling() {
    let ffmpeg = have_ffmpeg("real_files_metadata_and_sampling");
    for e in EXPECT {
        if e.decoder == "ffmpeg" && !ffmpeg {
            continue;
        }
        let f = load_video(
            &fixture(e.file),
            &SampleSpec::default(),
            &MediaLimits::default(),
        )
        .unwrap_or_else(|err| panic!("{}: {err}", e.file));
        check(e, &f);
    }
}

/// Without ffmpeg, a WebM is a clear `unsupported_media` error naming the format and the remedy.
#[test]
fn webm_without_ffmpeg_is_unsupported() {
    let limits = MediaLimits {
        use_ffmpeg: false,
        ..Default::default()
    };
    let Err(err) = load_video(
        &fixture("big_buck_bunny_432_433.webm"),
        &SampleSpec::default(),
        &limits,
    ) else {
        panic!("decoded a WebM without ffmpeg");
    };
    assert_eq!(err.code(), "unsupported_media", "{err}");
    assert!(err.to_string().contains("webm"), "{err}");
}

/// Presentation-order indices of `timestamps` among the video's packets, from ffprobe.
fn frame_indices(path: &Path, timestamps: &[f64]) -> Vec<usize> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,dts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let mut pts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(',').find_map(|v| v.trim().parse().ok()))
        .collect();
    pts.sort_by(f64::total_cmp);
    let t0 = pts[0];
    timestamps
        .iter()
        .map(|t| {
            pts.iter()
                .position(|p| (p - t0 - t).abs() < 1e-3)
                .unwrap_or_else(|| panic!("{}: no packet at {t}", path.display()))
        })
        .collect()
}

/// ffmpeg's RGB decode of the frames at presentation-order indices `idx`.
fn ffmpeg_frames(path: &Path, idx: &[usize], w: u32, h: u32) -> Vec<image::RgbImage> {
    let expr = idx
        .iter()
        .map(|i| format!("eq(n\\,{i})"))
        .collect::<Vec<_>>()
        .join("+");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-noautorotate", "-i"])
        .arg(path)
        .args([
            "-vf",
            &format!("select='{expr}'"),
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    let size = (w * h * 3) as usize;
    assert_eq!(
        out.stdout.len(),
        size * idx.len(),
        "{}: ffmpeg frames",
        path.display()
    );
    out.stdout
        .chunks(size)
        .map(|c| image::RgbImage::from_raw(w, h, c.to_vec()).unwrap())
        .collect()
}

/// PSNR (dB) between two preprocessed frames, in 8-bit pixel units.
fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mut se = 0.0f64;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let c = i / (a.len() / 3);
        let d = (x - y) as f64 * CLIP_STD[c] as f64 * 255.0;
        se += d * d;
    }
    let mse = se / a.len() as f64;
    let _ = CLIP_MEAN;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Pixels and frame order of the in-process decoders against ffmpeg's decode of the same frames.
/// A frame out of order (B-frame reordering) or a wrong colour conversion drops PSNR far below 30.
#[test]
fn native_decode_matches_ffmpeg_psnr() {
    if !have_ffmpeg("native_decode_matches_ffmpeg_psnr") {
        return;
    }
    let per = 3 * 224 * 224;
    for e in EXPECT.iter().filter(|e| e.decoder != "ffmpeg") {
        let path = fixture(e.file);
        let f = load_video(&path, &SampleSpec::default(), &MediaLimits::default()).unwrap();
        let idx = frame_indices(&path, &f.timestamps);
        let theirs = ffmpeg_frames(&path, &idx, f.info.width, f.info.height);
        let mut worst = f64::INFINITY;
        let mut all = Vec::new();
        for (k, img) in theirs.iter().enumerate() {
            let p = psnr(&f.pixels[k * per..(k + 1) * per], &preprocess(img, 224));
            worst = worst.min(p);
            all.push(format!("{p:.1}"));
        }
        println!(
            "PSNR vs ffmpeg {}: min {worst:.1} dB, per frame [{}]",
            e.file,
            all.join(", ")
        );
        assert!(worst > 30.0, "{}: PSNR {worst:.1} dB vs ffmpeg", e.file);
    }
}

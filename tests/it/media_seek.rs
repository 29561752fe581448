//! The seeking decoder (`DecodeStrategy::Seek`, the default) against the sequential one it
//! replaced: on every fixture video the same frames (timestamps, pixels, thumbnail, metadata) for
//! several frame counts, and on the long-GOP fixtures a fraction of the decoding work.
//!
//! `gop2s_bframes.{mp4,avi}` and `gop2s.webm` are 90 s, 64x48, 25 fps, a key frame every 2 s
//! (ffmpeg's `testsrc2` through libx264 with 2 B-frames / libvpx; commands in README "Video
//! ingest"). The WebM needs the ffmpeg program: skipped with a notice without it, except under CI.

use crate::common;

use common::have_ffmpeg;
use common::media::fixture;
use mvserve::media::{
    load_video_bytes_with, probe, DecodeStrategy, Frames, MediaError, MediaLimits, SampleSpec,
};

const IN_PROCESS: &[&str] = &[
    "video7020.mp4",
    "video7021.mp4",
    "video7024.mp4",
    "video7025.mp4",
    "video740.mp4",
    "bikes.mp4",
    "carphone_distorted.mp4",
    "realshort.mp4",
    "jPBxl9gFqNY_110_117.avi",
    "newtonscradle.gif",
    "gop2s_bframes.mp4",
    "gop2s_bframes.avi",
];
const THROUGH_FFMPEG: &[&str] = &["big_buck_bunny_432_433.webm", "gop2s.webm"];

fn load(bytes: &[u8], frames: usize, strategy: DecodeStrategy) -> Result<Frames, MediaError> {
    let spec = SampleSpec {
        frames,
        ..Default::default()
    };
    load_video_bytes_with(bytes, &spec, &MediaLimits::default(), strategy)
}

fn assert_same(name: &str, frames: usize) {
    assert_same_bytes(name, &std::fs::read(fixture(name)).unwrap(), frames);
}

fn assert_same_bytes(name: &str, bytes: &[u8], frames: usize) {
    let seq = load(bytes, frames, DecodeStrategy::Sequential)
        .unwrap_or_else(|e| panic!("{name}: sequential decode failed: {e}"));
    let seek = load(bytes, frames, DecodeStrategy::Seek)
        .unwrap_or_else(|e| panic!("{name}: seeking decode failed: {e}"));
    let what = format!("{name}, {frames} frames");
    assert_eq!(seek.timestamps, seq.timestamps, "{what}: timestamps");
    assert_eq!(seek.mask, seq.mask, "{what}: mask");
    assert_eq!(seek.info, seq.info, "{what}: metadata");
    assert!(seek.pixels == seq.pixels, "{what}: pixels differ");
    assert!(
        seek.thumbnail_jpeg == seq.thumbnail_jpeg,
        "{what}: thumbnail"
    );
    assert!(seek.mask.iter().any(|&m| m), "{what}: no frames");
}

#[test]
fn seeking_gives_the_sequential_frames_on_every_in_process_fixture() {
    for name in IN_PROCESS {
        for frames in [12, 4, 1, 40] {
            assert_same(name, frames);
        }
    }
}

#[test]
fn seeking_gives_the_sequential_frames_through_ffmpeg() {
    if !have_ffmpeg("seeking_gives_the_sequential_frames_through_ffmpeg") {
        return;
    }
    for name in THROUGH_FFMPEG {
        for frames in [12, 5] {
            assert_same(name, frames);
        }
    }
}

/// H.264 with B-frames in Matroska (the 90 s fixture remuxed, 2,250 packets: over the seeking
/// threshold), alone and with an audio track: the seeking path reads the frame times from the
/// block headers and the frames in batched ffmpeg runs; the sequential one lists every packet with
/// ffprobe and decodes in one pass. Then copies whose block times were rewritten (times that
/// lie, some negative): both paths must still agree (the walk reads what ffmpeg reads, or falls
/// back to the listing), frames or the same error.
#[test]
fn seeking_gives_the_sequential_frames_on_long_matroska() {
    if !have_ffmpeg("seeking_gives_the_sequential_frames_on_long_matroska") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mvserve-seek-mkv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("gop2s_bframes.mp4");
    let remux = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let ok = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&src)
            .args(extra)
            .arg(&out)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ffmpeg could not make {name}");
        std::fs::read(&out).unwrap()
    };
    let plain = remux("plain.mkv", &["-c", "copy"]);
    let audio = remux(
        "audio.mkv",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=90",
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "copy",
            "-c:a",
            "pcm_s16le",
        ],
    );
    for (name, bytes) in [("plain.mkv", &plain), ("audio.mkv", &audio)] {
        for frames in [12, 5] {
            assert_same_bytes(name, bytes, frames);
        }
    }
    // SimpleBlocks of track 1 (ID 0xA3, a 1-byte size, track 0x81): rewrite some times.
    let blocks: Vec<usize> = (0..plain.len() - 8)
        .filter(|&i| plain[i] == 0xA3 && plain[i + 1] & 0x80 != 0 && plain[i + 2] == 0x81)
        .collect();
    assert!(blocks.len() > 2000, "{} blocks", blocks.len());
    for (k, &at) in blocks.iter().enumerate().skip(300).step_by(700) {
        let mut m = plain.clone();
        m[at + 3] ^= if k % 2 == 0 { 0x80 } else { 0x01 };
        let seq = load(&m, 12, DecodeStrategy::Sequential);
        let seek = load(&m, 12, DecodeStrategy::Seek);
        match (seq, seek) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.timestamps, b.timestamps, "block {at}: timestamps");
                assert!(a.pixels == b.pixels, "block {at}: pixels");
            }
            (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "block {at}"),
            (a, b) => panic!(
                "block {at}: sequential {:?}, seeking {:?}",
                a.err(),
                b.err()
            ),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Frames decoded by the in-process decoder (`probe` reports the count).
fn decoded(name: &str, strategy: DecodeStrategy) -> (u64, Vec<f64>) {
    let r = probe(
        &fixture(name),
        &SampleSpec::default(),
        &MediaLimits::default(),
        strategy,
    );
    assert!(r.ok, "{name}: {:?}", r.error);
    (r.frames_decoded.unwrap(), r.sampled_timestamps.unwrap())
}

#[test]
fn seeking_decodes_a_fraction_of_a_long_video() {
    for name in ["gop2s_bframes.mp4", "gop2s_bframes.avi"] {
        let (seq, t_seq) = decoded(name, DecodeStrategy::Sequential);
        let (seek, t_seek) = decoded(name, DecodeStrategy::Seek);
        assert_eq!(t_seq, t_seek, "{name}");
        // The last sample is at 89 s: sequential decoding goes through ~2,225 frames. Seeking
        // decodes within the 12 GOPs of 50 frames that hold a sample, plus the reorder delay.
        println!("{name}: sequential {seq} frames, seeking {seek} frames");
        assert!(seq >= 2200, "{name}: sequential decoded {seq}");
        assert!(seek <= 12 * 52, "{name}: seeking decoded {seek}");
    }
}

/// On MSR-VTT clips (one to five GOPs, every one holding a sample) seeking saves nothing by
/// skipping GOPs; what it saves is the B-frames no picture refers to (`nal_ref_idc` 0) that are
/// not chosen: 101 of video7020's 330 pictures, 213 of video7024's 480 (counted with ffmpeg's
/// `trace_headers`). The frames themselves are the sequential ones (the test above).
#[test]
fn seeking_skips_pictures_no_picture_refers_to() {
    for (name, most) in [("video7020.mp4", 0.8), ("video7024.mp4", 0.65)] {
        let (seq, t_seq) = decoded(name, DecodeStrategy::Sequential);
        let (seek, t_seek) = decoded(name, DecodeStrategy::Seek);
        assert_eq!(t_seq, t_seek, "{name}");
        println!("{name}: sequential {seq} frames, seeking {seek} frames");
        assert!(
            (seek as f64) <= most * seq as f64,
            "{name}: seeking decoded {seek} of {seq}"
        );
    }
    // AVI ranks pictures by counting them: nothing is skipped there (this clip has no B-frames
    // either), and seeking never decodes more than the sequential path.
    let (seq, _) = decoded("jPBxl9gFqNY_110_117.avi", DecodeStrategy::Sequential);
    let (seek, _) = decoded("jPBxl9gFqNY_110_117.avi", DecodeStrategy::Seek);
    assert!(seek <= seq, "avi: seeking {seek}, sequential {seq}");
}

/// A timeline keeps each candidate as its preprocessing crop, cut as it is decoded; the span of
/// the whole video must give bit for bit the tensor of a plain decode (the same candidates, the
/// same uniform choice of F), on every fixture and decoder path.
#[test]
fn a_timeline_span_of_the_whole_video_is_the_plain_decode() {
    let mut names: Vec<&str> = IN_PROCESS.to_vec();
    if have_ffmpeg("a_timeline_span_of_the_whole_video_is_the_plain_decode") {
        names.extend(THROUGH_FFMPEG);
    }
    for name in names {
        let path = fixture(name);
        let frames = 12;
        let spec = SampleSpec {
            frames,
            ..Default::default()
        };
        let limits = MediaLimits::default();
        let plain = mvserve::media::load_video(&path, &spec, &limits).unwrap();
        let t = mvserve::media::load_timeline(&path, &spec, &limits).unwrap();
        let end = t.timestamps.last().unwrap() + 1.0;
        let (pixels, mask) = t.span(0.0, end, frames);
        assert_eq!(mask, plain.mask, "{name}, {frames} frames: mask");
        assert!(pixels == plain.pixels, "{name}, {frames} frames: pixels");
    }
}

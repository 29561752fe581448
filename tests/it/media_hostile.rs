//! Video ingest on hostile input: truncated and byte-flipped copies of real files, headers that
//! claim absurd sizes, garbage. Every case must return (usually an error), never panic, abort or hang.

use std::path::Path;
use std::time::Duration;

use mvserve::media::{
    load_video_bytes, load_video_bytes_with, DecodeStrategy, MediaError, MediaLimits, SampleSpec,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/videos")
            .join(name),
    )
    .unwrap()
}

/// In-process formats only (ffmpeg is exercised in `media_real`), and a short time budget.
fn limits() -> MediaLimits {
    MediaLimits {
        use_ffmpeg: false,
        max_wall_time: Duration::from_secs(20),
        ..Default::default()
    }
}

const NATIVE: &[&str] = &[
    "video7020.mp4",
    "video740.mp4",
    "carphone_distorted.mp4",
    "realshort.mp4",
    "jPBxl9gFqNY_110_117.avi",
    "newtonscradle.gif",
    "gop2s_bframes.mp4",
    "gop2s_bframes.avi",
];

/// A small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn spec() -> SampleSpec {
    SampleSpec {
        frames: 4,
        ..Default::default()
    }
}

#[test]
fn truncated_copies_return_errors_or_frames() {
    for name in NATIVE {
        let bytes = fixture(name);
        let cuts = [
            0,
            1,
            7,
            8,
            12,
            64,
            100,
            1000,
            bytes.len() / 4,
            bytes.len() / 2,
            bytes.len() * 9 / 10,
            bytes.len() - 1,
        ];
        for &cut in &cuts {
            let r = load_video_bytes(&bytes[..cut], &spec(), &limits());
            if cut <= 100 {
                let e = r
                    .as_ref()
                    .err()
                    .unwrap_or_else(|| panic!("{name} cut at {cut} decoded"));
                assert!(
                    matches!(e, MediaError::Corrupt(_) | MediaError::Unsupported { .. }),
                    "{name} cut at {cut}: {e}"
                );
            }
            if let Ok(f) = r {
                // A prefix can still hold whole frames (AVI and GIF store frames in order).
                assert!(f.mask.iter().any(|&m| m));
            }
        }
    }
}

#[test]
fn byte_flipped_copies_never_crash() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut outcomes = std::collections::BTreeMap::new();
    for name in NATIVE {
        let bytes = fixture(name);
        for round in 0..12 {
            let mut b = bytes.clone();
            // Flip 1..64 bytes anywhere; every third round, only in the first 4 KiB (headers).
            let flips = 1 + rng.next() as usize % 64;
            let span = if round % 3 == 0 {
                4096.min(b.len())
            } else {
                b.len()
            };
            for _ in 0..flips {
                let i = rng.next() as usize % span;
                b[i] ^= 1 << (rng.next() % 8);
            }
            let code = match load_video_bytes(&b, &spec(), &limits()) {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            *outcomes.entry(code).or_insert(0) += 1;
        }
    }
    println!("byte-flip outcomes: {outcomes:?}");
}

/// The error of a load that must fail (without printing megabytes of pixels when it does not).
fn err(r: Result<mvserve::media::Frames, MediaError>) -> MediaError {
    match r {
        Ok(f) => panic!("expected an error, decoded {:?}", f.info),
        Err(e) => e,
    }
}

/// Patches a big-endian u16 `offset` bytes after the `avc1` sample entry's type.
fn patch_avc1(b: &mut [u8], offset: usize, v: u16) {
    let stsd = b
        .windows(4)
        .position(|w| w == b"stsd")
        .expect("stsd present");
    let p = stsd
        + b[stsd..]
            .windows(4)
            .position(|w| w == b"avc1")
            .expect("avc1 entry");
    b[p + offset..p + offset + 2].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn absurd_dimensions_are_refused_before_decoding() {
    // MP4: the avc1 sample entry claims 65535x65535.
    let mut mp4 = fixture("video740.mp4");
    patch_avc1(&mut mp4, 4 + 24, 65535);
    patch_avc1(&mut mp4, 4 + 26, 65535);
    let e = err(load_video_bytes(&mp4, &spec(), &limits()));
    assert_eq!(e.code(), "too_large", "{e}");

    // AVI: the BITMAPINFOHEADER claims 100000x100000.
    let mut avi = fixture("jPBxl9gFqNY_110_117.avi");
    let p = avi.windows(4).position(|w| w == b"strf").unwrap() + 8;
    avi[p + 4..p + 8].copy_from_slice(&100_000i32.to_le_bytes());
    avi[p + 8..p + 12].copy_from_slice(&100_000i32.to_le_bytes());
    let e = err(load_video_bytes(&avi, &spec(), &limits()));
    assert_eq!(e.code(), "too_large", "{e}");

    // GIF: the logical screen claims 65535x65535.
    let mut gif = fixture("newtonscradle.gif");
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let e = err(load_video_bytes(&gif, &spec(), &limits()));
    assert_eq!(e.code(), "too_large", "{e}");
}

#[test]
fn limits_are_enforced() {
    let bytes = fixture("video7021.mp4");
    let strict = |f: fn(&mut MediaLimits)| {
        let mut l = limits();
        f(&mut l);
        err(load_video_bytes(&bytes, &spec(), &l)).code()
    };
    assert_eq!(strict(|l| l.max_bytes = 1000), "too_large");
    assert_eq!(strict(|l| l.max_duration_s = 5.0), "too_long");
    assert_eq!(strict(|l| l.max_pixels = 320 * 240 - 1), "too_large");
    assert_eq!(strict(|l| l.max_frames_decoded = 100), "too_large");
    assert_eq!(strict(|l| l.max_wall_time = Duration::ZERO), "timed_out");
}

#[test]
fn garbage_is_unsupported() {
    let e = err(load_video_bytes(
        b"this is not a video at all",
        &spec(),
        &limits(),
    ));
    assert_eq!(e.code(), "unsupported_media");
    let e = err(load_video_bytes(&[], &spec(), &limits()));
    assert_eq!(e.code(), "unsupported_media");
    let bad = SampleSpec {
        frames: 0,
        ..Default::default()
    };
    let e = err(load_video_bytes(&fixture("video740.mp4"), &bad, &limits()));
    assert_eq!(e.code(), "invalid_spec");
}

/// Fuzzing found that the `mp4` crate loops forever on a box of size 0 (or under 8) inside `moov`;
/// `media` now checks the box tree first. These must return promptly with `corrupt_media`.
#[test]
fn mp4_boxes_with_tiny_sizes_do_not_hang() {
    for bad_size in [0u32, 1, 4, 7] {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_be_bytes());
        b.extend_from_slice(b"ftypisom\0\0\0\0isom3gp4");
        let moov_at = b.len();
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(b"moov");
        b.extend_from_slice(&bad_size.to_be_bytes());
        b.extend_from_slice(b"junk");
        b.extend_from_slice(&[0xAB; 16]);
        let moov_len = (b.len() - moov_at) as u32;
        b[moov_at..moov_at + 4].copy_from_slice(&moov_len.to_be_bytes());
        let e = err(load_video_bytes(&b, &spec(), &limits()));
        assert_eq!(e.code(), "corrupt_media", "size {bad_size}: {e}");
    }
}

/// The inputs the fuzzer found (both hung the `mp4` crate before the box-tree check).
#[test]
fn fuzz_findings_return_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let e = err(load_video_bytes(&bytes, &spec(), &limits()));
        assert_eq!(e.code(), "corrupt_media", "{}: {e}", path.display());
    }
}

/// Where the entries of the last `kind` box start (its full-box header and entry count skipped),
/// and how many it has. The sample table sits in `moov`, after `mdat` in these files.
fn mp4_table(b: &[u8], kind: &[u8; 4]) -> (usize, usize) {
    let p = b.windows(4).rposition(|w| w == kind).expect("box present");
    let count = u32::from_be_bytes(b[p + 8..p + 12].try_into().unwrap()) as usize;
    (p + 12, count)
}

fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn frames_equal(a: &mvserve::media::Frames, b: &mvserve::media::Frames) -> bool {
    a.timestamps == b.timestamps && a.mask == b.mask && a.pixels == b.pixels
}

/// An index that lies about key frames (non-IDR samples marked sync, IDRs left out, numbers out of
/// range, out of order) costs the seeking decoder work, never other frames: each key frame is
/// confirmed in the bytes, so the result is the sequential decode's.
#[test]
fn lying_key_frame_index_gives_the_sequential_frames() {
    let spec = SampleSpec::default();
    let lim = limits();
    let good = fixture("gop2s_bframes.mp4");
    let reference = load_video_bytes_with(&good, &spec, &lim, DecodeStrategy::Sequential).unwrap();
    let (at, count) = mp4_table(&good, b"stss");
    assert!(count > 10);
    // (what the lie is, the sample number it writes into stss entry i)
    type Lie = (&'static str, fn(usize) -> u32);
    let lies: [Lie; 5] = [
        ("every entry a P/B frame", |i| 2 + 50 * i as u32 + 7),
        ("only the first sample", |_| 1),
        ("out of range", |i| {
            if i % 2 == 0 {
                0
            } else {
                u32::MAX - i as u32
            }
        }),
        ("descending", |i| 2250 - 50 * i as u32),
        ("one off each IDR", |i| 2 + 50 * i as u32),
    ];
    for (what, entry) in lies {
        let mut b = good.clone();
        for i in 0..count {
            put_be32(&mut b, at + 4 * i, entry(i));
        }
        let f = load_video_bytes(&b, &spec, &lim).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            frames_equal(&f, &reference),
            "mp4 stss {what}: other frames"
        );
    }

    // AVI: idx1 key-frame flags all set, all cleared, or inverted.
    let good = fixture("gop2s_bframes.avi");
    let reference = load_video_bytes_with(&good, &spec, &lim, DecodeStrategy::Sequential).unwrap();
    let p = good.windows(4).rposition(|w| w == b"idx1").unwrap();
    let len = u32::from_le_bytes(good[p + 4..p + 8].try_into().unwrap()) as usize;
    for (what, flip) in [("all key", 0), ("none key", 1), ("inverted", 2)] {
        let mut b = good.clone();
        for e in b[p + 8..p + 8 + len].chunks_exact_mut(16) {
            let flags = u32::from_le_bytes(e[4..8].try_into().unwrap());
            let flags = match flip {
                0 => flags | 0x10,
                1 => flags & !0x10,
                _ => flags ^ 0x10,
            };
            e[4..8].copy_from_slice(&flags.to_le_bytes());
        }
        let f = load_video_bytes(&b, &spec, &lim).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            frames_equal(&f, &reference),
            "avi idx1 {what}: other frames"
        );
    }
}

/// Offsets that point elsewhere in the file (or past it) and timestamps that jump, repeat or run
/// backwards: the seeking path returns frames or a typed error, like the sequential one.
#[test]
fn lying_offsets_and_timestamps_never_crash() {
    let spec = SampleSpec::default();
    let good = fixture("gop2s_bframes.mp4");
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut outcomes = std::collections::BTreeMap::new();
    for (kind, stride) in [(b"stco", 4), (b"stts", 8), (b"ctts", 8), (b"stsz", 4)] {
        let (at, count) = mp4_table(&good, kind);
        // stsz has a sample_size field before the count: its entries start 4 bytes later.
        let (at, count) = if kind == b"stsz" {
            let count = u32::from_be_bytes(good[at..at + 4].try_into().unwrap()) as usize;
            (at + 4, count)
        } else {
            (at, count)
        };
        for round in 0..6 {
            let mut b = good.clone();
            for _ in 0..1 + rng.next() as usize % 16 {
                let i = rng.next() as usize % count.max(1);
                let field = at + stride * i + stride - 4;
                let v = match round % 3 {
                    0 => rng.next() as u32,
                    1 => u32::from_be_bytes(b[field..field + 4].try_into().unwrap()) ^ 0x10,
                    _ => 0,
                };
                put_be32(&mut b, field, v);
            }
            for strategy in [DecodeStrategy::Seek, DecodeStrategy::Sequential] {
                let code = match load_video_bytes_with(&b, &spec, &limits(), strategy) {
                    Ok(_) => "ok",
                    Err(e) => e.code(),
                };
                *outcomes
                    .entry((std::str::from_utf8(kind).unwrap(), code))
                    .or_insert(0) += 1;
            }
        }
    }
    println!("lying table outcomes: {outcomes:?}");
}

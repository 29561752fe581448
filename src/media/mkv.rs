//! Matroska/WebM frame times read in process, so that the ffmpeg path need not list every packet.
//!
//! The sampling rule (`sample`) needs the presentation time of every frame. ffprobe lists them by
//! demuxing the whole file in a child process and printing a line per packet: for a 30-minute
//! upload, 45k lines and seconds of work, most of an ingest. Here the EBML tree is walked in place
//! and only each block's header is read (track number, 16-bit time relative to its cluster, flags);
//! the frame data is stepped over by its size, so the work is a few bytes per frame.
//!
//! Owns: that walk, with every element size checked against its parent and the block count
//! checked against `max_frames_decoded` as it grows; and the times as ffprobe prints them (ticks
//! times ffmpeg's reduced stream time base, in seconds rounded to 6 decimals), so the chosen frames
//! are exactly those of the listing. Hand-written: no maintained crate reads block headers without
//! the payloads, and the rules below are ffmpeg's, not the format's.
//!
//! Anything it does not model exactly gives `None`, and the caller falls back to ffprobe's full
//! listing: laced blocks, clusters or elements of unknown size, a cluster without its timestamp,
//! a negative time, a track timestamp scale, codec delay or content encoding, an element that runs
//! past its parent or the file (a truncated upload), a codec outside the few it knows, tracks
//! after clusters. The Cues (key-frame index) are not read at all: they list key frames only,
//! and a Cue that lies cannot move a frame time here. ffmpeg itself still seeks through them when
//! decoding the chosen frames; a seek that misses a frame sends the video through one full pass.

use super::{Budget, MediaError, Result};

/// Element IDs (with their length marker, as the spec writes them).
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_TYPE: u32 = 0x83;
const CODEC_ID: u32 = 0x86;
const TRACK_TIMESTAMP_SCALE: u32 = 0x23_314F;
const CODEC_DELAY: u32 = 0x56AA;
const CONTENT_ENCODINGS: u32 = 0x6D80;
const CLUSTER: u32 = 0x1F43_B675;
const CLUSTER_TIMESTAMP: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;
const ENCRYPTED_BLOCK: u32 = 0xAF;

/// How many blocks between two looks at the wall-time budget.
const TIME_CHECK_EVERY: usize = 4096;

/// The first video track's frames, as ffprobe would list them.
#[derive(Debug, PartialEq)]
pub(crate) struct FrameTimes {
    /// ffmpeg's name of the track's codec ("h264", "vp9", ...), to check against ffprobe's.
    pub codec: &'static str,
    /// Presentation time in seconds of every block of the track, in file order (length = frames).
    pub pts: Vec<f64>,
}

/// One element: its ID and where its payload lies in the file.
struct Element {
    id: u32,
    start: usize,
    end: usize,
}

/// A variable-size integer at `pos` with its length marker removed: (value, length in bytes);
/// `None` as the value when every value bit is set (the "unknown size" marker).
fn vint(b: &[u8], pos: usize) -> Option<(Option<u64>, usize)> {
    let first = *b.get(pos)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let bytes = b.get(pos..pos + len)?;
    let mut v = u64::from(first) & (0xFFu64 >> len);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    let unknown = v == (1u64 << (7 * len)) - 1;
    Some(((!unknown).then_some(v), len))
}

/// The element at `pos`, which must end at or before `end`; `None` when its header is malformed,
/// its size unknown, or it runs past `end`.
fn element(b: &[u8], pos: usize, end: usize) -> Option<Element> {
    let first = *b.get(pos)?;
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return None;
    }
    let id = b
        .get(pos..pos + id_len)?
        .iter()
        .fold(0u32, |a, &x| (a << 8) | u32::from(x));
    let (size, size_len) = vint(b, pos + id_len)?;
    let start = pos + id_len + size_len;
    let end_of = usize::try_from(size?)
        .ok()
        .and_then(|s| start.checked_add(s))?;
    (end_of <= end).then_some(Element {
        id,
        start,
        end: end_of,
    })
}

/// The children of `[start, end)`, each checked to fit; a malformed one ends the walk with `None`.
fn children(b: &[u8], start: usize, end: usize) -> impl Iterator<Item = Option<Element>> + '_ {
    let mut pos = start;
    let mut failed = false;
    std::iter::from_fn(move || {
        if pos >= end || failed {
            return None;
        }
        let e = element(b, pos, end);
        match &e {
            Some(e) => pos = e.end,
            None => failed = true,
        }
        Some(e)
    })
}

fn uint(b: &[u8]) -> Option<u64> {
    (b.len() <= 8).then(|| b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
}

fn float(b: &[u8]) -> Option<f64> {
    match b.len() {
        0 => Some(0.0),
        4 => Some(f64::from(f32::from_be_bytes(b.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

/// ffmpeg's codec name for the Matroska codec IDs whose packets its demuxer passes through one
/// block to one packet with the block's time (others fall back to the listing).
fn codec_name(codec_id: &[u8]) -> Option<&'static str> {
    Some(match codec_id {
        b"V_MPEG4/ISO/AVC" => "h264",
        b"V_MPEGH/ISO/HEVC" => "hevc",
        b"V_VP8" => "vp8",
        b"V_VP9" => "vp9",
        b"V_AV1" => "av1",
        _ => return None,
    })
}

/// The first video track: its number and codec, and the numbers of all tracks; `None` when it
/// uses something whose times ffmpeg derives differently from the block times.
fn video_track(b: &[u8], tracks: &Element) -> Option<(u64, &'static str, Vec<u64>)> {
    let mut numbers = Vec::new();
    let mut video = None;
    for entry in children(b, tracks.start, tracks.end) {
        let entry = entry?;
        if entry.id != TRACK_ENTRY {
            continue;
        }
        let (mut number, mut kind, mut codec) = (None, None, None);
        let mut plain = true;
        for field in children(b, entry.start, entry.end) {
            let field = field?;
            let payload = &b[field.start..field.end];
            match field.id {
                TRACK_NUMBER => number = uint(payload),
                TRACK_TYPE => kind = uint(payload),
                CODEC_ID => codec = Some(payload),
                TRACK_TIMESTAMP_SCALE => plain &= float(payload) == Some(1.0),
                CODEC_DELAY => plain &= uint(payload) == Some(0),
                CONTENT_ENCODINGS => plain = false,
                _ => {}
            }
        }
        numbers.push(number?);
        if kind == Some(1) && video.is_none() {
            // The first video track is ffprobe's `v:0`; anything unusual about it: fall back.
            let number = number.filter(|&n| n > 0)?;
            let codec = codec_name(codec?.strip_suffix(&[0u8]).unwrap_or(codec?))?;
            video = Some(plain.then_some((number, codec))?);
        }
    }
    video.map(|(n, c)| (n, c, numbers))
}

/// What the walk gathers: the video track's block times in ticks of the segment's time scale.
struct Blocks<'a> {
    track: u64,
    /// Every track's number: ffmpeg drops the rest of a cluster at a block of another number.
    known: Vec<u64>,
    ticks: Vec<i64>,
    budget: &'a Budget<'a>,
}

impl Blocks<'_> {
    /// Reads one block header; `Ok(None)` when the block is something to fall back on.
    fn block(&mut self, payload: &[u8], cluster_time: Option<u64>) -> Result<Option<()>> {
        let Some((Some(track), len)) = vint(payload, 0) else {
            return Ok(None);
        };
        // Header: track number, 16-bit signed time, flags; then at least one byte of frame.
        if payload.len() <= len + 3 {
            return Ok(None);
        }
        if track != self.track {
            return Ok(self.known.contains(&track).then_some(()));
        }
        let relative = i16::from_be_bytes([payload[len], payload[len + 1]]);
        let flags = payload[len + 2];
        if flags & 0x06 != 0 {
            return Ok(None); // laced: several frames, times ffmpeg derives from the durations
        }
        let Some(cluster) = cluster_time.filter(|&t| t < 1 << 53) else {
            return Ok(None);
        };
        let t = cluster as i64 + i64::from(relative);
        if t < 0 {
            return Ok(None);
        }
        self.ticks.push(t);
        let n = self.ticks.len();
        if n as u64 > self.budget.limits.max_frames_decoded {
            return Err(MediaError::TooLarge(format!(
                "more than {} frames",
                self.budget.limits.max_frames_decoded
            )));
        }
        if n.is_multiple_of(TIME_CHECK_EVERY) {
            self.budget.check_time()?;
        }
        Ok(Some(()))
    }

    fn cluster(&mut self, b: &[u8], cluster: &Element) -> Result<Option<()>> {
        let mut time = None;
        for child in children(b, cluster.start, cluster.end) {
            let Some(child) = child else {
                return Ok(None);
            };
            let payload = &b[child.start..child.end];
            let ok = match child.id {
                CLUSTER_TIMESTAMP => {
                    time = uint(payload);
                    time.map(|_| ())
                }
                SIMPLE_BLOCK => self.block(payload, time)?,
                BLOCK_GROUP => {
                    let mut ok = Some(());
                    for part in children(b, child.start, child.end) {
                        match part {
                            None => ok = None,
                            Some(p) if p.id == BLOCK => {
                                if self.block(&b[p.start..p.end], time)?.is_none() {
                                    ok = None;
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    ok
                }
                ENCRYPTED_BLOCK => None,
                _ => Some(()),
            };
            if ok.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }
}

/// The times of the first video track's frames as ffprobe prints them, or `None` when only
/// ffprobe's listing can say (see the module comment). Errors: over `max_frames_decoded`
/// (`TooLarge`, as the listing would be) or past the wall-time budget.
pub(crate) fn frame_times(b: &[u8], budget: &Budget) -> Result<Option<FrameTimes>> {
    // Top level: the EBML header, then the Segment (of unknown size in live recordings: to the end).
    let mut pos = 0;
    let segment = loop {
        let Some(first) = b.get(pos) else {
            return Ok(None);
        };
        let id_len = first.leading_zeros() as usize + 1;
        let Some(id) = b
            .get(pos..pos + id_len.min(5))
            .filter(|_| id_len <= 4)
            .map(|x| x.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)))
        else {
            return Ok(None);
        };
        let Some((size, size_len)) = vint(b, pos + id_len) else {
            return Ok(None);
        };
        let start = pos + id_len + size_len;
        let end = match size {
            None if id == SEGMENT => b.len(),
            None => return Ok(None),
            Some(s) => match usize::try_from(s).ok().and_then(|s| start.checked_add(s)) {
                Some(end) if end <= b.len() => end,
                _ => return Ok(None),
            },
        };
        if id == SEGMENT {
            break Element { id, start, end };
        }
        pos = end;
    };
    if segment.end != b.len() {
        return Ok(None); // something after the segment (a second one?): ffprobe decides
    }

    let mut scale: u64 = 1_000_000;
    let mut info_seen = false;
    let mut track: Option<(u64, &'static str)> = None;
    let mut blocks: Option<Blocks> = None;
    for e in children(b, segment.start, segment.end) {
        let Some(e) = e else {
            return Ok(None);
        };
        match e.id {
            INFO => {
                if std::mem::replace(&mut info_seen, true) {
                    return Ok(None);
                }
                for f in children(b, e.start, e.end) {
                    let Some(f) = f else {
                        return Ok(None);
                    };
                    if f.id == TIMESTAMP_SCALE {
                        match uint(&b[f.start..f.end]) {
                            Some(s) if s > 0 => scale = s,
                            _ => return Ok(None),
                        }
                    }
                }
            }
            TRACKS => {
                if track.is_some() || blocks.is_some() {
                    return Ok(None);
                }
                let Some((number, codec, known)) = video_track(b, &e) else {
                    return Ok(None);
                };
                track = Some((number, codec));
                blocks = Some(Blocks {
                    track: number,
                    known,
                    ticks: Vec::new(),
                    budget,
                });
            }
            CLUSTER => {
                // Tracks must come first: a block's track decides whether it is kept.
                let Some(blocks) = blocks.as_mut() else {
                    return Ok(None);
                };
                if blocks.cluster(b, &e)?.is_none() {
                    return Ok(None);
                }
            }
            _ => {}
        }
    }
    let (Some((_, codec)), Some(blocks)) = (track, blocks) else {
        return Ok(None);
    };
    if blocks.ticks.is_empty() {
        return Ok(None);
    }
    // ffmpeg's stream time base is TimestampScale / 1e9 reduced (`av_reduce`, exact while both
    // fit an int); ffprobe prints ticks times its value (`av_q2d`) with "%f".
    let (num, den) = reduce(scale, 1_000_000_000);
    if num > i32::MAX as u64 {
        return Ok(None);
    }
    let tb = num as f64 / den as f64;
    let pts = blocks
        .ticks
        .iter()
        .map(|&t| ffprobe_seconds(t as f64 * tb))
        .collect::<Option<Vec<f64>>>();
    Ok(pts.map(|pts| FrameTimes { codec, pts }))
}

fn reduce(a: u64, b: u64) -> (u64, u64) {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x, b / x)
}

/// `s` as ffprobe prints it ("%f": 6 decimals) and the ffmpeg path then parses it. A value exactly
/// halfway between two 6-decimal numbers would depend on two libraries agreeing on the tie: `None`.
fn ffprobe_seconds(s: f64) -> Option<f64> {
    let scaled = s * 1e6;
    if !scaled.is_finite() || (scaled - scaled.floor() == 0.5) {
        return None;
    }
    format!("{s:.6}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{MediaLimits, Stats};
    use std::time::{Duration, Instant};

    fn budget(limits: &MediaLimits) -> Budget<'_> {
        Budget {
            limits,
            deadline: Instant::now() + Duration::from_secs(30),
            stats: Stats::default(),
            shrink: None,
        }
    }

    /// An element with a 1-byte size (payloads under 127 bytes) or an 8-byte one.
    fn el(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = id
            .to_be_bytes()
            .into_iter()
            .skip_while(|&x| x == 0)
            .collect();
        if payload.len() < 127 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x01);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes()[1..]);
        }
        v.extend_from_slice(payload);
        v
    }

    fn simple_block(track: u8, time: i16, flags: u8) -> Vec<u8> {
        let mut p = vec![0x80 | track];
        p.extend_from_slice(&time.to_be_bytes());
        p.extend_from_slice(&[flags, 0xAB, 0xCD]);
        el(SIMPLE_BLOCK, &p)
    }

    /// A file with a video track 1 ("V_VP9") and an audio track 2, two clusters.
    fn file(cluster_body: impl Fn(u64) -> Vec<u8>) -> Vec<u8> {
        let mut f = el(0x1A45_DFA3, &el(0x4282, b"webm"));
        let mut seg = el(INFO, &el(TIMESTAMP_SCALE, &[0x0F, 0x42, 0x40]));
        let video = [
            el(TRACK_NUMBER, &[1]),
            el(TRACK_TYPE, &[1]),
            el(CODEC_ID, b"V_VP9"),
        ]
        .concat();
        let audio = [
            el(TRACK_NUMBER, &[2]),
            el(TRACK_TYPE, &[2]),
            el(CODEC_ID, b"A_OPUS"),
        ]
        .concat();
        seg.extend(el(
            TRACKS,
            &[el(TRACK_ENTRY, &audio), el(TRACK_ENTRY, &video)].concat(),
        ));
        for t in [0u64, 1000] {
            seg.extend(el(CLUSTER, &cluster_body(t)));
        }
        seg.extend(el(0x1C53_BB6B, b"cues are not read"));
        f.extend(el(SEGMENT, &seg));
        f
    }

    fn plain(t: u64) -> Vec<u8> {
        [
            el(CLUSTER_TIMESTAMP, &(t as u16).to_be_bytes()),
            simple_block(1, 0, 0x80),
            simple_block(2, 0, 0x80),
            simple_block(1, 80, 0),
            simple_block(1, 40, 0),
            el(BLOCK_GROUP, &el(BLOCK, &simple_block(1, 120, 0)[2..])),
        ]
        .concat()
    }

    #[test]
    fn reads_block_times_of_the_video_track() {
        let limits = MediaLimits::default();
        let t = frame_times(&file(plain), &budget(&limits))
            .unwrap()
            .unwrap();
        assert_eq!(t.codec, "vp9");
        assert_eq!(t.pts, vec![0.0, 0.08, 0.04, 0.12, 1.0, 1.08, 1.04, 1.12]);
    }

    #[test]
    fn falls_back_on_what_it_does_not_model() {
        let limits = MediaLimits::default();
        let b = budget(&limits);
        // Laced block.
        let laced = |t: u64| [plain(t), simple_block(1, 160, 0x02)].concat();
        assert_eq!(frame_times(&file(laced), &b).unwrap(), None);
        // A block before the cluster's timestamp.
        let early = |t: u64| [vec![], simple_block(1, 0, 0x80), plain(t)].concat();
        assert_eq!(frame_times(&file(early), &b).unwrap(), None);
        // A block of a track the file does not declare.
        let stray = |t: u64| [plain(t), simple_block(3, 160, 0)].concat();
        assert_eq!(frame_times(&file(stray), &b).unwrap(), None);
        // A negative time.
        let negative = |t: u64| [plain(t), simple_block(1, -2000, 0)].concat();
        assert_eq!(frame_times(&file(negative), &b).unwrap(), None);
        // An element running past its parent: every truncation of the file.
        let whole = file(plain);
        for cut in 0..whole.len() {
            assert_eq!(frame_times(&whole[..cut], &b).unwrap(), None, "cut {cut}");
        }
        // Garbage and an unknown-size cluster.
        assert_eq!(frame_times(&[0u8; 64], &b).unwrap(), None);
        let mut unknown = whole.clone();
        let at = unknown
            .windows(4)
            .position(|w| w == CLUSTER.to_be_bytes())
            .unwrap();
        unknown[at + 4] = 0xFF;
        assert_eq!(frame_times(&unknown, &b).unwrap(), None);
    }

    #[test]
    fn frame_limit_and_byte_flips() {
        let limits = MediaLimits {
            max_frames_decoded: 5,
            ..Default::default()
        };
        let e = frame_times(&file(plain), &budget(&limits)).unwrap_err();
        assert_eq!(e.code(), "too_large");
        // Every single-byte change returns (times, a fallback or an error), never panics.
        let limits = MediaLimits::default();
        let b = budget(&limits);
        let whole = file(plain);
        for i in 0..whole.len() {
            for v in [0x00, 0xFF, 0x80, 0x01, whole[i] ^ 0x10] {
                let mut m = whole.clone();
                m[i] = v;
                let _ = frame_times(&m, &b);
            }
        }
    }

    #[test]
    fn times_match_ffprobe_printing() {
        assert_eq!(ffprobe_seconds(40.0 * 0.001), Some(0.04));
        assert_eq!(ffprobe_seconds(1001.0 * (1.0 / 30000.0)), Some(0.033367));
        // 1/128 s is exactly halfway at 6 decimals.
        assert_eq!(ffprobe_seconds(0.0078125), None);
        assert_eq!(reduce(1_000_000, 1_000_000_000), (1, 1000));
        assert_eq!(vint(&[0x81], 0), Some((Some(1), 1)));
        assert_eq!(vint(&[0xFF], 0), Some((None, 1)));
        assert_eq!(vint(&[0x40, 0x02], 0), Some((Some(2), 2)));
        assert_eq!(vint(&[0x00], 0), None);
    }
}

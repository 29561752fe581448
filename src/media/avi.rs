//! AVI (RIFF) demuxing, hand-written: no maintained crate reads AVI.
//!
//! Owns: walking the RIFF chunk tree (`hdrl` headers, the `movi` list) with every size checked
//! against the bytes that are actually there (a chunk that runs past the end is treated as the end
//! of a truncated file), finding the first video stream, its codec, frame size and rate, and
//! listing its frame chunks with their times. `movi` is scanned in order for the frames (chunk
//! headers only); the `idx1` index is read for its key-frame flags alone, which seeking takes as
//! hints (its offsets are never trusted). OpenDML extensions (`AVIX` beyond 1 GiB) are not read.
//! Does not decode.

use super::detect::Container;
use super::h264::{parse_avcc, Packet, Stream};
use super::{Budget, MediaError, Result};

/// What an AVI holds, as far as decoding is concerned.
pub enum Demux {
    H264(Stream),
    Other { codec: String },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The sub-chunks of a RIFF list body: (fourcc, body, offset of body in the list).
fn chunks(list: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], usize)> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let id = list.get(pos..pos + 4)?;
        let size = u32_at(list, pos + 4)? as usize;
        let start = pos + 8;
        let end = start.saturating_add(size).min(list.len());
        let body = &list[start..end];
        pos = end.saturating_add(size & 1); // chunks are padded to even sizes
        Some((id, body, start))
    })
}

/// A LIST chunk's type and contents, if `body` is one.
fn list_of<'a>(id: &[u8], body: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    (id == b"LIST" && body.len() >= 4).then(|| (&body[..4], &body[4..]))
}

/// The decoder-facing name of an AVI video fourcc.
fn codec_name(fourcc: &[u8]) -> String {
    let up: Vec<u8> = fourcc.to_ascii_uppercase();
    match &up[..] {
        b"H264" | b"X264" | b"AVC1" | b"DAVC" | b"VSSH" => "h264".into(),
        b"XVID" | b"DIVX" | b"DX50" | b"FMP4" | b"MP4V" => "mpeg4".into(),
        b"MJPG" => "mjpeg".into(),
        b"HEVC" | b"H265" | b"HVC1" => "hevc".into(),
        _ => format!("avi fourcc {:?}", String::from_utf8_lossy(fourcc)),
    }
}

/// Demuxes the first video stream of an AVI file.
pub fn demux(bytes: &[u8], budget: &Budget) -> Result<Demux> {
    let corrupt = |what: &str| MediaError::Corrupt(format!("AVI: {what}"));
    let riff_size = u32_at(bytes, 4).ok_or_else(|| corrupt("truncated RIFF header"))? as usize;
    let riff = &bytes[12.min(bytes.len())..(8usize.saturating_add(riff_size)).min(bytes.len())];

    let mut video: Option<(usize, String, u32, u32, u32, u32)> = None; // (stream, codec, w, h, scale, rate)
    let mut extradata: &[u8] = &[];
    let mut movi: Option<(&[u8], usize)> = None;
    let mut idx1: Option<&[u8]> = None;
    let mut us_per_frame = 0u32;
    for (id, body, off) in chunks(riff) {
        match list_of(id, body) {
            Some((b"hdrl", hdrl)) => {
                let mut stream_index = 0usize;
                for (id, body, _) in chunks(hdrl) {
                    if id == b"avih" {
                        us_per_frame = u32_at(body, 0).unwrap_or(0);
                    }
                    let Some((b"strl", strl)) = list_of(id, body) else {
                        continue;
                    };
                    let (mut strh, mut strf) = (None, None);
                    for (id, body, _) in chunks(strl) {
                        match id {
                            b"strh" => strh = Some(body),
                            b"strf" => strf = Some(body),
                            _ => {}
                        }
                    }
                    if let (None, Some(strh)) = (&video, strh) {
                        if strh.get(0..4) == Some(b"vids") {
                            let strf =
                                strf.ok_or_else(|| corrupt("video stream without format"))?;
                            let w = u32_at(strf, 4).ok_or_else(|| corrupt("short video format"))?
                                as i32;
                            let h = u32_at(strf, 8).ok_or_else(|| corrupt("short video format"))?
                                as i32;
                            let compression = strf
                                .get(16..20)
                                .ok_or_else(|| corrupt("short video format"))?;
                            let handler = strh.get(4..8).unwrap_or(b"    ");
                            let mut codec = codec_name(compression);
                            if !codec.starts_with('h') || codec.starts_with("hevc") {
                                let by_handler = codec_name(handler);
                                if by_handler == "h264" {
                                    codec = by_handler;
                                }
                            }
                            // BITMAPINFOHEADER is 40 bytes; H.264 may follow it with an avcC record.
                            extradata = strf.get(40..).unwrap_or(&[]);
                            let scale = u32_at(strh, 20).unwrap_or(0);
                            let rate = u32_at(strh, 24).unwrap_or(0);
                            video = Some((
                                stream_index,
                                codec,
                                w.unsigned_abs(),
                                h.unsigned_abs(),
                                scale,
                                rate,
                            ));
                        }
                    }
                    stream_index += 1;
                }
            }
            Some((b"movi", list)) if movi.is_none() => movi = Some((list, off + 4)),
            None if id == b"idx1" && idx1.is_none() => idx1 = Some(body),
            _ => {}
        }
    }
    let (stream, codec, width, height, scale, rate) =
        video.ok_or_else(|| corrupt("no video stream"))?;
    if codec != "h264" {
        return Ok(Demux::Other { codec });
    }
    budget.check_dims(width as u64, height as u64)?;
    let frame_s = if scale > 0 && rate > 0 {
        scale as f64 / rate as f64
    } else if us_per_frame > 0 {
        us_per_frame as f64 / 1e6
    } else {
        return Err(corrupt("no frame rate"));
    };
    let (movi, movi_off) = movi.ok_or_else(|| corrupt("no movi list"))?;
    // Absolute offset of `movi` inside `bytes`: `riff` starts at 12.
    let base = 12 + movi_off;
    let mut packets = Vec::new();
    let mut frames = 0u64;
    let tag = format!("{stream:02}");
    let mut movi_scan = MoviScan {
        tag: tag.clone(),
        frame_s,
        max_frames: budget.limits.max_frames_decoded,
        packets: &mut packets,
        frames: &mut frames,
    };
    movi_scan.scan(movi, base, 0)?;
    if packets.is_empty() {
        return Err(corrupt("no video frames"));
    }
    // With an avcC record the chunks are length-prefixed (as in MP4); without one, Annex-B.
    let (nal_length_size, parameter_sets) = match parse_avcc(extradata) {
        Some((n, sets)) => (Some(n), sets),
        None => (None, Vec::new()),
    };
    let keyframes = idx1.and_then(|idx| index_keyframes(idx, tag.as_bytes(), packets.len()));
    Ok(Demux::H264(Stream {
        container: Container::Avi,
        packets,
        nal_length_size,
        parameter_sets,
        pts_known: false,
        width,
        height,
        duration_s: frames as f64 * frame_s,
        keyframes,
    }))
}

/// `AVIIF_KEYFRAME` in an `idx1` entry's flags.
const AVIIF_KEYFRAME: u32 = 0x10;

/// The packets (indices among the stream's non-empty frame chunks) that `idx1` flags as key
/// frames. Entries are 16 bytes: chunk id, flags, offset, size. `None` when the index does not
/// list exactly as many non-empty frame chunks as `movi` holds (it describes another file, or
/// lies): then nothing from it is used.
fn index_keyframes(idx1: &[u8], tag: &[u8], packets: usize) -> Option<Vec<usize>> {
    let mut keys = Vec::new();
    let mut packet = 0usize;
    for e in idx1.chunks_exact(16) {
        if e.get(0..2) != Some(tag) || !matches!(e.get(2..4), Some(b"dc") | Some(b"db")) {
            continue;
        }
        if u32_at(e, 12)? == 0 {
            continue; // a dropped frame: no packet
        }
        if u32_at(e, 4)? & AVIIF_KEYFRAME != 0 {
            keys.push(packet);
        }
        packet += 1;
        if packet > packets {
            return None;
        }
    }
    (packet == packets).then_some(keys)
}

/// The walk over `movi`: frame chunks of one stream, in file order, one level of `rec ` lists.
struct MoviScan<'a> {
    tag: String,
    frame_s: f64,
    max_frames: u64,
    packets: &'a mut Vec<Packet>,
    frames: &'a mut u64,
}

impl MoviScan<'_> {
    fn scan(&mut self, list: &[u8], list_base: usize, depth: u32) -> Result<()> {
        for (id, body, off) in chunks(list) {
            if depth == 0 {
                if let Some((b"rec ", rec)) = list_of(id, body) {
                    self.scan(rec, list_base + off + 4, depth + 1)?;
                    continue;
                }
            }
            let ours = id.get(0..2) == Some(self.tag.as_bytes());
            if !(ours && matches!(id.get(2..4), Some(b"dc") | Some(b"db"))) {
                continue;
            }
            if *self.frames >= self.max_frames {
                return Err(MediaError::TooLarge(format!(
                    "more than {} frames",
                    self.max_frames
                )));
            }
            // An empty chunk is a dropped (repeated) frame: time advances, nothing to decode.
            if !body.is_empty() {
                self.packets.push(Packet {
                    offset: list_base + off,
                    len: body.len(),
                    pts: *self.frames as f64 * self.frame_s,
                });
            }
            *self.frames += 1;
        }
        Ok(())
    }
}

//! MP4/MOV demuxing: the `mp4` crate parses the boxes, this file turns the sample table into packets.
//!
//! Owns: choosing the video track, the sample table walk (stsz/stsc/stco/co64/stts/ctts) done once in
//! O(samples) with every count checked against the limits before anything is allocated (the crate's
//! per-sample lookups are O(table) each and trust the header), and naming the codec of tracks that are
//! not H.264 so they can go to ffmpeg. Does not decode.

use std::io::Cursor;

use ::mp4::{Mp4Reader, TrackType};

use super::detect::Container;
use super::h264::{Packet, Stream};
use super::{Budget, MediaError, Result};

/// What an MP4 holds, as far as decoding is concerned.
pub enum Demux {
    /// An H.264 track OpenH264 can take.
    H264(Stream),
    /// A video track in another codec, or a file the `mp4` crate cannot parse; `codec` names it.
    Other { codec: String },
}

/// Demuxes the first video track.
pub fn demux(bytes: &[u8], budget: &Budget) -> Result<Demux> {
    if let Err(e) = check_structure(bytes) {
        // A box layout the `mp4` crate could hang on. Legitimate oddities (an old QuickTime
        // `udta` terminator) still decode through ffmpeg when it is there.
        if budget.limits.use_ffmpeg && super::ffmpeg::available() {
            let codec = raw_video_codec(bytes).unwrap_or_else(|| "unknown".into());
            return Ok(Demux::Other { codec });
        }
        return Err(e);
    }
    let reader = match Mp4Reader::read_header(Cursor::new(bytes), bytes.len() as u64) {
        Ok(r) => r,
        Err(e) => {
            // A damaged file is the likely reason, unless the codec is one only ffmpeg decodes
            // (or nothing could be identified and ffmpeg may still make sense of it).
            let ffmpeg_usable = budget.limits.use_ffmpeg && super::ffmpeg::available();
            return match raw_video_codec(bytes) {
                Some(codec) if codec != "h264" => Ok(Demux::Other { codec }),
                None if ffmpeg_usable => Ok(Demux::Other {
                    codec: format!("unknown (mp4 parser: {e})"),
                }),
                _ => Err(MediaError::Corrupt(format!("MP4 structure: {e}"))),
            };
        }
    };
    let mut tracks: Vec<_> = reader.tracks().values().collect();
    tracks.sort_by_key(|t| t.track_id());
    let Some(track) = tracks
        .iter()
        .find(|t| matches!(t.track_type(), Ok(TrackType::Video)))
    else {
        return Err(MediaError::Corrupt("MP4 has no video track".into()));
    };
    let stbl = &track.trak.mdia.minf.stbl;
    let Some(avc1) = &stbl.stsd.avc1 else {
        let codec = if stbl.stsd.hev1.is_some() {
            "hevc".to_string()
        } else if stbl.stsd.vp09.is_some() {
            "vp9".to_string()
        } else {
            raw_video_codec(bytes).unwrap_or_else(|| "unknown".into())
        };
        return Ok(Demux::Other { codec });
    };
    if !track.trafs.is_empty() || reader.is_fragmented() {
        return Ok(Demux::Other {
            codec: "h264 (fragmented MP4)".into(),
        });
    }
    budget.check_dims(avc1.width as u64, avc1.height as u64)?;
    let timescale = track.trak.mdia.mdhd.timescale;
    if timescale == 0 {
        return Err(MediaError::Corrupt("MP4 track timescale is zero".into()));
    }

    // Sample count and sizes.
    let stsz = &stbl.stsz;
    let n = stsz.sample_count as usize;
    if n as u64 > budget.limits.max_frames_decoded {
        return Err(MediaError::TooLarge(format!(
            "{n} frames is over the limit of {}",
            budget.limits.max_frames_decoded
        )));
    }
    if n == 0 {
        return Err(MediaError::Corrupt("MP4 video track has no samples".into()));
    }
    if stsz.sample_size == 0 && stsz.sample_sizes.len() < n {
        return Err(MediaError::Corrupt("MP4 sample size table is short".into()));
    }
    let size_of = |i: usize| {
        if stsz.sample_size > 0 {
            stsz.sample_size as usize
        } else {
            stsz.sample_sizes[i] as usize
        }
    };

    // Sample offsets: chunks from stco/co64, samples per chunk from stsc.
    let chunk_offsets: Vec<u64> = match (&stbl.stco, &stbl.co64) {
        (Some(stco), _) => stco.entries.iter().map(|&o| o as u64).collect(),
        (None, Some(co64)) => co64.entries.clone(),
        (None, None) => return Err(MediaError::Corrupt("MP4 has no chunk offsets".into())),
    };
    let corrupt = |what: &str| MediaError::Corrupt(format!("MP4 sample table: {what}"));
    let mut offsets = Vec::with_capacity(n);
    let stsc = &stbl.stsc.entries;
    for (k, e) in stsc.iter().enumerate() {
        let first = e.first_chunk as usize;
        let end = stsc
            .get(k + 1)
            .map_or(chunk_offsets.len() + 1, |next| next.first_chunk as usize);
        if first == 0 || end < first || end > chunk_offsets.len() + 1 {
            return Err(corrupt("bad stsc chunk range"));
        }
        for chunk in first..end {
            let mut off = chunk_offsets[chunk - 1];
            for _ in 0..e.samples_per_chunk {
                if offsets.len() == n {
                    break;
                }
                offsets.push(off as usize);
                off = off.saturating_add(size_of(offsets.len() - 1) as u64);
            }
            if offsets.len() == n {
                break;
            }
        }
    }
    if offsets.len() < n {
        return Err(corrupt("fewer chunk entries than samples"));
    }

    // Decode times from stts, composition offsets from ctts.
    let mut dts = Vec::with_capacity(n);
    let mut t: i64 = 0;
    'stts: for e in &stbl.stts.entries {
        for _ in 0..e.sample_count {
            if dts.len() == n {
                break 'stts;
            }
            dts.push(t);
            t = t.saturating_add(e.sample_delta as i64);
        }
    }
    if dts.len() < n {
        return Err(corrupt("fewer time entries than samples"));
    }
    let end_time = t;
    let mut pts = dts.clone();
    if let Some(ctts) = &stbl.ctts {
        let mut i = 0;
        'ctts: for e in &ctts.entries {
            for _ in 0..e.sample_count {
                if i == n {
                    break 'ctts;
                }
                pts[i] = dts[i].saturating_add(e.sample_offset as i64);
                i += 1;
            }
        }
    }
    let min_pts = pts.iter().copied().min().unwrap_or(0);
    let scale = timescale as f64;
    let packets = (0..n)
        .map(|i| Packet {
            offset: offsets[i],
            len: size_of(i),
            pts: (pts[i] - min_pts) as f64 / scale,
        })
        .collect();
    let duration_s = (end_time - dts[0]) as f64 / scale;
    // Sync samples (1-based); no `stss` means every sample is one.
    let keyframes = stbl.stss.as_ref().map(|stss| {
        let mut k: Vec<usize> = stss
            .entries
            .iter()
            .filter_map(|&s| (s as usize).checked_sub(1))
            .filter(|&s| s < n)
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    });

    let avcc = &avc1.avcc;
    let parameter_sets = avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avcc.picture_parameter_sets)
        .map(|nal| nal.bytes.clone())
        .collect();
    Ok(Demux::H264(Stream {
        container: Container::Mp4,
        packets,
        nal_length_size: Some(avcc.length_size_minus_one as usize + 1),
        parameter_sets,
        pts_known: true,
        width: avc1.width as u32,
        height: avc1.height as u32,
        duration_s,
        keyframes,
    }))
}

/// Names the codec of the first video sample entry found by scanning for `stsd` boxes.
fn raw_video_codec(bytes: &[u8]) -> Option<String> {
    let mut from = 0;
    while let Some(p) = find(&bytes[from..], b"stsd").map(|p| p + from) {
        from = p + 4;
        let Some(fourcc) = bytes.get(p + 16..p + 20) else {
            break;
        };
        let name = match fourcc {
            b"avc1" | b"avc3" => "h264",
            b"hvc1" | b"hev1" => "hevc",
            b"vp08" => "vp8",
            b"vp09" => "vp9",
            b"av01" => "av1",
            b"mp4v" => "mpeg4",
            b"jpeg" | b"mjpa" => "mjpeg",
            b"apch" | b"apcn" | b"apcs" | b"apco" | b"ap4h" => "prores",
            _ => continue,
        };
        return Some(name.into());
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Walks the box tree before the `mp4` crate does: it loops forever on a child box whose size is
/// under 8 (or 0) and underflows on some, so every box inside the containers it descends into
/// must have a sane size that fits its parent (found by fuzzing; see BENCHMARKS/README).
fn check_structure(bytes: &[u8]) -> Result<()> {
    walk(bytes, 0, bytes.len(), 0, false)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Where the child boxes of a container start, relative to its payload; `None` for leaf boxes.
fn children_at(kind: &[u8], payload: &[u8]) -> Option<usize> {
    Some(match kind {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"udta" | b"mvex"
        | b"moof" | b"traf" | b"mfra" | b"ilst" => 0,
        b"stsd" | b"dref" => 8,
        b"avc1" | b"avc3" | b"hev1" | b"hvc1" | b"encv" | b"vp09" => 78,
        b"mp4a" => 28,
        // ISO `meta` is a full box (4 bytes of version and flags); QuickTime's is not.
        b"meta" => {
            if payload.get(..4) == Some(&[0, 0, 0, 0]) {
                4
            } else {
                0
            }
        }
        _ => return None,
    })
}

fn walk(b: &[u8], start: usize, end: usize, depth: u32, in_ilst: bool) -> Result<()> {
    let bad = |what: &str| Err(MediaError::Corrupt(format!("MP4 box structure: {what}")));
    if depth > 12 {
        return bad("boxes nested too deeply");
    }
    let top = depth == 0;
    let mut pos = start;
    while pos < end {
        if end - pos < 8 {
            // Top level: trailing bytes (the crate stops with an error). Inside a container the
            // crate would read a header across the parent's end (a QuickTime `udta` zero
            // terminator included), which can loop forever: refuse.
            if top {
                break;
            }
            return bad("truncated box header");
        }
        let size32 = be32(b, pos);
        let kind = &b[pos + 4..pos + 8];
        let (header, size) = match size32 {
            0 if top => (8, end - pos),
            // Even zero padding: the crate would seek back to this header forever (fuzz finding 3).
            0 => return bad("box of size 0 inside a container"),
            1 => {
                let Some(large) = b.get(pos + 8..pos + 16) else {
                    return bad("truncated 64-bit box size");
                };
                let large = u64::from_be_bytes(large.try_into().expect("8 bytes"));
                if large < 16 {
                    return bad("64-bit box size under 16");
                }
                (16, usize::try_from(large).unwrap_or(usize::MAX))
            }
            s if s < 8 => return bad("box size under 8"),
            s => (8, s as usize),
        };
        let mut box_end = pos.saturating_add(size);
        if box_end > end {
            if !top {
                return bad("box larger than its parent");
            }
            // A truncated last top-level box: the crate may still parse what is there, so its
            // children are checked up to the end of the file (found by fuzzing).
            box_end = end;
        }
        // Items of an `ilst` (metadata) are containers of `data` boxes whatever their name.
        let skip = if in_ilst {
            Some(0)
        } else {
            children_at(kind, &b[pos + header..box_end])
        };
        if let Some(skip) = skip {
            let first = pos + header + skip;
            if first <= box_end {
                walk(b, first, box_end, depth + 1, kind == b"ilst")?;
            }
        }
        pos = box_end;
    }
    Ok(())
}

//! In-process H.264 decoding with OpenH264, for streams demuxed from MP4/MOV and AVI.
//!
//! Owns: the demuxed-stream type shared by the MP4 and AVI readers, AVCC-to-Annex-B conversion,
//! the SPS check that refuses absurd or unsupported streams *before* OpenH264 sees them (OpenH264
//! allocates from SPS dimensions and a C abort cannot be caught), the decode loop over the raw
//! `DecodeFrame2` API with the end-of-stream flush (the safe API of openh264-rs fails on B-frames,
//! openh264-rs#50), the decode plan (one decoder run per GOP that holds chosen frames, the runs
//! shared over up to two threads, pictures no other picture refers to skipped unless chosen), and
//! YUV 4:2:0 to RGB conversion (BT.601 limited range, as ffmpeg's default).
//! Does not own demuxing or sampling policy.

use std::collections::HashMap;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;
use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::OpenH264API;
use openh264_sys2::{
    videoFormatI420, SBufferInfo, DECODER_OPTION, DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER,
    DECODING_STATE,
};

use super::detect::Container;
use super::{sample, Budget, DecodeStrategy, Decoded, MediaError, MediaInfo, Result, SampleSpec};

/// One coded picture (access unit) inside the file's bytes.
#[derive(Clone, Debug)]
pub struct Packet {
    pub offset: usize,
    pub len: usize,
    /// Presentation time in seconds relative to the earliest frame (MP4); decode-order time (AVI).
    pub pts: f64,
}

/// A demuxed H.264 stream: packets in decode order plus what the container said.
#[derive(Debug)]
pub struct Stream {
    pub container: Container,
    pub packets: Vec<Packet>,
    /// `Some(n)`: packets are AVCC (n-byte big-endian NAL lengths); `None`: already Annex-B.
    pub nal_length_size: Option<usize>,
    /// SPS and PPS NAL units from the container (avcC), fed before the first packet.
    pub parameter_sets: Vec<Vec<u8>>,
    /// `true` when `pts` are presentation times (MP4). `false` when frames get their time in output
    /// order (AVI, where the container stores one time per chunk in decode order).
    pub pts_known: bool,
    pub width: u32,
    pub height: u32,
    pub duration_s: f64,
    /// Packets (decode order, ascending) the container's index marks as sync samples (MP4 `stss`,
    /// AVI `idx1` key-frame flags); `None` when it has no index. Only a hint: seeking confirms
    /// each one is an IDR picture before starting there.
    pub keyframes: Option<Vec<usize>>,
}

/// A stream that OpenH264 cannot decode but ffmpeg might (High 10, 4:2:2, interlaced, ...).
fn needs_ffmpeg(what: String) -> MediaError {
    MediaError::Unsupported {
        format: format!("H.264 {what}"),
        hint: String::new(),
    }
}

/// Width and height from an SPS NAL unit (header byte included); refuses what OpenH264 cannot do.
pub fn sps_dims(nal: &[u8]) -> Result<(u64, u64)> {
    let rbsp = unescape(nal.get(1..).unwrap_or(&[]));
    let mut r = Bits::new(&rbsp);
    let bad = || MediaError::Corrupt("malformed H.264 sequence parameter set".into());
    let profile = r.u(8).ok_or_else(bad)?;
    r.u(16).ok_or_else(bad)?; // constraint flags, level
    r.ue().ok_or_else(bad)?; // seq_parameter_set_id
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma = r.ue().ok_or_else(bad)?;
        if chroma == 3 {
            r.u(1).ok_or_else(bad)?;
        }
        let depth_luma = r.ue().ok_or_else(bad)?;
        let depth_chroma = r.ue().ok_or_else(bad)?;
        if chroma != 1 || depth_luma != 0 || depth_chroma != 0 {
            return Err(needs_ffmpeg(format!(
                "profile {profile} with chroma format {chroma} and {} bits",
                depth_luma + 8
            )));
        }
        r.u(1).ok_or_else(bad)?; // qpprime_y_zero_transform_bypass
        if r.u(1).ok_or_else(bad)? == 1 {
            for i in 0..8 {
                if r.u(1).ok_or_else(bad)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se().ok_or_else(bad)?;
                            next = (last + delta).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue().ok_or_else(bad)?; // log2_max_frame_num_minus4
    match r.ue().ok_or_else(bad)? {
        0 => {
            r.ue().ok_or_else(bad)?;
        }
        1 => {
            r.u(1).ok_or_else(bad)?;
            r.se().ok_or_else(bad)?;
            r.se().ok_or_else(bad)?;
            let cycle = r.ue().ok_or_else(bad)?;
            if cycle > 255 {
                return Err(bad());
            }
            for _ in 0..cycle {
                r.se().ok_or_else(bad)?;
            }
        }
        2 => {}
        _ => return Err(bad()),
    }
    r.ue().ok_or_else(bad)?; // max_num_ref_frames
    r.u(1).ok_or_else(bad)?; // gaps_in_frame_num_value_allowed_flag
    let w_mbs = r.ue().ok_or_else(bad)? + 1;
    let h_units = r.ue().ok_or_else(bad)? + 1;
    let frame_mbs_only = r.u(1).ok_or_else(bad)?;
    if frame_mbs_only == 0 {
        return Err(needs_ffmpeg("interlaced (field) coding".into()));
    }
    Ok((w_mbs * 16, h_units * 16))
}

/// Parses an `AVCDecoderConfigurationRecord` (avcC): NAL length size and the SPS/PPS NAL units.
/// `None` if it is not one or is cut short.
pub fn parse_avcc(b: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
    if b.len() < 7 || b[0] != 1 {
        return None;
    }
    let length_size = (b[4] & 3) as usize + 1;
    let mut sets = Vec::new();
    let mut pos = 5;
    for kind in 0..2 {
        let count = if kind == 0 { b[pos] & 0x1F } else { b[pos] };
        pos += 1;
        for _ in 0..count {
            let len = u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]) as usize;
            pos += 2;
            sets.push(b.get(pos..pos + len)?.to_vec());
            pos += len;
        }
        if kind == 0 && pos >= b.len() {
            return None;
        }
    }
    Some((length_size, sets))
}

/// Removes emulation-prevention bytes (00 00 03 -> 00 00).
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut zeros = 0;
    for &x in b {
        if zeros >= 2 && x == 3 {
            zeros = 0;
            continue;
        }
        zeros = if x == 0 { zeros + 1 } else { 0 };
        out.push(x);
    }
    out
}

/// A big-endian bit reader with Exp-Golomb codes; `None` past the end.
struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }
    fn bit(&mut self) -> Option<u64> {
        let byte = *self.b.get(self.pos / 8)?;
        let v = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u64)
    }
    fn u(&mut self, n: u32) -> Option<u64> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }
    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u64 << zeros) - 1 + self.u(zeros)?)
    }
    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Appends `nal` to `out` as an Annex-B NAL unit, checking any SPS on the way.
fn push_nal(nal: &[u8], out: &mut Vec<u8>, budget: &Budget) -> Result<()> {
    if nal.is_empty() {
        return Ok(());
    }
    if nal[0] & 0x1F == 7 {
        let (w, h) = sps_dims(nal)?;
        budget.check_dims(w, h)?;
    }
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(nal);
    Ok(())
}

/// Converts one packet to Annex-B in `out` (cleared first), validating every SPS it carries.
fn to_annexb(
    data: &[u8],
    nal_length_size: Option<usize>,
    out: &mut Vec<u8>,
    budget: &Budget,
) -> Result<()> {
    out.clear();
    match nal_length_size {
        Some(n) => {
            let mut rest = data;
            while !rest.is_empty() {
                if rest.len() < n {
                    return Err(MediaError::Corrupt("truncated NAL length".into()));
                }
                let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
                rest = &rest[n..];
                if len > rest.len() {
                    return Err(MediaError::Corrupt(format!(
                        "NAL unit of {len} bytes overruns its sample"
                    )));
                }
                push_nal(&rest[..len], out, budget)?;
                rest = &rest[len..];
            }
        }
        None => {
            for nal in split_annexb(data) {
                push_nal(nal, out, budget)?;
            }
        }
    }
    Ok(())
}

/// The NAL units of an Annex-B byte stream (start codes removed).
pub fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(_, body)) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&(s, _)| s);
        while end > body && data[end - 1] == 0 {
            end -= 1; // trailing zeros belong to the next 4-byte start code
        }
        out.push(&data[body..end]);
    }
    out
}

/// Whether an access unit holds an IDR slice (NAL type 5): a point where decoding can start with
/// no earlier picture, whatever the container's index claims. A malformed packet is not one.
fn is_idr(data: &[u8], nal_length_size: Option<usize>) -> bool {
    let idr = |nal: &[u8]| nal.first().is_some_and(|b| b & 0x1F == 5);
    match nal_length_size {
        Some(n) => {
            let mut rest = data;
            while rest.len() >= n {
                let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
                rest = &rest[n..];
                if len > rest.len() {
                    return false;
                }
                if idr(&rest[..len]) {
                    return true;
                }
                rest = &rest[len..];
            }
            false
        }
        None => split_annexb(data).into_iter().any(idr),
    }
}

/// Whether no other picture can refer to this access unit: it holds a coded slice and every NAL
/// unit in it has `nal_ref_idc` 0 (no parameter set, no IDR, no reference picture). Such a
/// picture can be left out of decoding without changing any other picture (H.264 7.4.1: a
/// picture with `nal_ref_idc` 0 is not used for inter prediction; 8.2.1 and 7.4.3: `frame_num`
/// and the POC state advance only on reference pictures). A malformed packet is not one.
fn is_disposable(data: &[u8], nal_length_size: Option<usize>) -> bool {
    let mut slices = 0;
    let mut check = |nal: &[u8]| match nal.first() {
        Some(&b) if b & 0x60 == 0 => {
            if b & 0x1F == 1 {
                slices += 1;
            }
            true
        }
        _ => false,
    };
    let all = match nal_length_size {
        Some(n) => {
            let mut rest = data;
            let mut ok = true;
            while ok && !rest.is_empty() {
                if rest.len() < n {
                    ok = false;
                    break;
                }
                let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
                rest = &rest[n..];
                match rest.get(..len) {
                    Some(nal) => ok = check(nal),
                    None => ok = false,
                }
                rest = rest.get(len..).unwrap_or(&[]);
            }
            ok
        }
        None => split_annexb(data).into_iter().all(check),
    };
    all && slices > 0
}

/// The SPS and PPS NAL units carried inside a packet (in-band parameter sets, as in Annex-B AVI).
fn inband_parameter_sets(data: &[u8], nal_length_size: Option<usize>) -> Vec<Vec<u8>> {
    let is_ps = |nal: &&[u8]| nal.first().is_some_and(|b| matches!(b & 0x1F, 7 | 8));
    match nal_length_size {
        Some(n) => {
            let mut out = Vec::new();
            let mut rest = data;
            while rest.len() >= n {
                let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
                rest = &rest[n..];
                let Some(nal) = rest.get(..len) else { break };
                if is_ps(&nal) {
                    out.push(nal.to_vec());
                }
                rest = &rest[len..];
            }
            out
        }
        None => split_annexb(data)
            .into_iter()
            .filter(is_ps)
            .map(<[u8]>::to_vec)
            .collect(),
    }
}

/// Packets a decoder may be fed past a chosen frame's own packet before we stop waiting for the
/// picture to come out of the reorder buffer and flush it (H.264 reorders at most 16 frames).
const REORDER_SLACK: usize = 32;

/// Most decoders (threads) one video's runs are spread over. An upload's decode is one stage of
/// its ingest; the encoder's pool has the machine's other cores, and with several uploads at once
/// their decodes overlap each other anyway, so two is where a single upload stops gaining.
const MAX_DECODE_THREADS: usize = 2;

/// Largest frame (pixels) decoded by two decoders at once: two decoders at 1080p hold less memory
/// than the one decoder a frame at the `max_pixels` default (4K UHD) may already need, so running
/// two never raises what one upload's decode can take.
const PARALLEL_MAX_PIXELS: u64 = 1920 * 1088;

/// Decodes the chosen frames of `stream`.
pub fn decode(
    bytes: &[u8],
    stream: Stream,
    spec: &SampleSpec,
    budget: &mut Budget,
    strategy: DecodeStrategy,
) -> Result<Decoded> {
    budget.check_dims(stream.width as u64, stream.height as u64)?;
    let n = stream.packets.len();
    budget.check_stream(stream.duration_s, n as u64)?;
    for p in &stream.packets {
        if p.offset
            .checked_add(p.len)
            .is_none_or(|end| end > bytes.len())
        {
            return Err(MediaError::Corrupt("sample lies outside the file".into()));
        }
    }
    // Presentation order: rank of each packet by pts (stable, so AVI keeps decode order).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| stream.packets[a].pts.total_cmp(&stream.packets[b].pts));
    let pts_sorted: Vec<f64> = order.iter().map(|&i| stream.packets[i].pts).collect();
    let chosen = sample::choose(&pts_sorted, spec.fps, spec.frames);
    let slot_of_rank: HashMap<usize, usize> = chosen
        .iter()
        .enumerate()
        .map(|(slot, &r)| (r, slot))
        .collect();
    let mut rank = vec![0usize; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    // The packet (decode order) each chosen frame comes from, and its rank, in decode order. For
    // AVI (no presentation times) the rank is the output count, and a closed GOP that starts at
    // packet k holds exactly the pictures of rank k.. up to the next IDR.
    let mut targets: Vec<(usize, usize)> = chosen.iter().map(|&r| (order[r], r)).collect();
    targets.sort_unstable();
    let runs = plan_runs(&targets, strategy, bytes, &stream);
    // Parameter sets for a decoder that starts past the first packet: Annex-B streams carry their
    // SPS/PPS in-band, usually in the first access unit only.
    let seek_sets = runs.iter().any(|r| r.key > 0).then(|| {
        let p = &stream.packets[0];
        let first = &bytes[p.offset..p.offset + p.len];
        let mut sets = stream.parameter_sets.clone();
        sets.extend(inband_parameter_sets(first, stream.nal_length_size));
        sets
    });
    let job = Job {
        bytes,
        stream: &stream,
        rank: &rank,
        slot_of_rank: &slot_of_rank,
        slots: chosen.len(),
        seek_sets: seek_sets.as_deref().unwrap_or(&[]),
        strategy,
        // Dropping a picture no other picture refers to is exact (H.264 8.2.1: frame_num and the
        // picture order count advance on reference pictures only); without presentation times
        // the sink ranks pictures by counting them, so every picture must come out.
        skip_disposable: strategy == DecodeStrategy::Seek && stream.pts_known,
        failed: AtomicBool::new(false),
    };
    let budget: &Budget = budget;
    let threads = if u64::from(stream.width) * u64::from(stream.height) <= PARALLEL_MAX_PIXELS {
        std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(MAX_DECODE_THREADS)
    } else {
        1
    };
    let shares = share_runs(&runs, threads);
    // The first share on this thread, the others on scoped threads; a panic on one of them
    // resumes here, where `media::run` turns it into `Corrupt` like any decoder panic.
    let results: Vec<Result<Sink>> = std::thread::scope(|scope| {
        let others: Vec<_> = shares[1..]
            .iter()
            .map(|share| scope.spawn(|| job.decode_runs(share, budget)))
            .collect();
        let mut results = vec![job.decode_runs(&shares[0], budget)];
        for h in others {
            results.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        results
    });
    let mut images: Vec<Option<RgbImage>> = vec![None; chosen.len()];
    let mut errors = 0;
    for sink in results {
        let sink = sink?;
        errors += sink.errors;
        for (slot, img) in sink.images.into_iter().enumerate() {
            if img.is_some() && images[slot].is_none() {
                images[slot] = img;
            }
        }
    }

    let mut timestamps = Vec::new();
    let mut out = Vec::new();
    for (slot, img) in images.into_iter().enumerate() {
        if let Some(img) = img {
            timestamps.push(pts_sorted[chosen[slot]]);
            out.push(img);
        }
    }
    if out.is_empty() {
        return Err(MediaError::Corrupt(format!(
            "H.264 stream produced no pictures ({errors} decode errors in {n} packets)"
        )));
    }
    let duration_s = stream.duration_s;
    Ok(Decoded {
        info: MediaInfo {
            container: stream.container.name().into(),
            codec: "h264".into(),
            duration_s,
            width: out[0].width(),
            height: out[0].height(),
            fps: if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            },
            decoder: "openh264".into(),
            frame_count: n as u64,
        },
        timestamps,
        images: out,
    })
}

/// Finds, for ascending target packets, the last IDR packet at or before each, scanning forward
/// once: only the packets the container's index lists as sync samples (all packets when it has
/// none), each confirmed by its NAL types, so an index that lies costs work, never wrong frames.
struct KeyScan<'a> {
    /// Sync samples from the container, ascending; `None`: every packet is a candidate.
    index: Option<&'a [usize]>,
    /// Position in `index` of the next candidate to check.
    next: usize,
    /// Packets below this have been considered (no-index case).
    scanned_to: usize,
    last_idr: usize,
}

impl KeyScan<'_> {
    fn last_idr_at_or_before(&mut self, target: usize, bytes: &[u8], stream: &Stream) -> usize {
        let check = |i: usize| {
            let p = &stream.packets[i];
            is_idr(&bytes[p.offset..p.offset + p.len], stream.nal_length_size)
        };
        match self.index {
            Some(index) => {
                while let Some(&k) = index.get(self.next) {
                    if k > target {
                        break;
                    }
                    self.next += 1;
                    if k < stream.packets.len() && check(k) {
                        self.last_idr = self.last_idr.max(k);
                    }
                }
            }
            None => {
                while self.scanned_to <= target {
                    if check(self.scanned_to) {
                        self.last_idr = self.scanned_to;
                    }
                    self.scanned_to += 1;
                }
            }
        }
        self.last_idr
    }
}

/// One decoder's work: start at the IDR packet `key` and decode until each target is out.
#[derive(Debug)]
struct Run {
    key: usize,
    /// (packet in decode order, presentation rank) of the chosen frames of this GOP, ascending.
    targets: Vec<(usize, usize)>,
}

/// Groups the targets (ascending in decode order) by the key frame each is decoded from: seeking,
/// the last confirmed IDR at or before it (one run per GOP holding chosen frames); sequential,
/// one run from the first packet.
fn plan_runs(
    targets: &[(usize, usize)],
    strategy: DecodeStrategy,
    bytes: &[u8],
    stream: &Stream,
) -> Vec<Run> {
    let mut keys = KeyScan {
        index: stream.keyframes.as_deref(),
        next: 0,
        scanned_to: 0,
        last_idr: 0,
    };
    let mut runs: Vec<Run> = Vec::new();
    for &(target, r) in targets {
        let key = match strategy {
            DecodeStrategy::Seek => keys.last_idr_at_or_before(target, bytes, stream),
            DecodeStrategy::Sequential => 0,
        };
        match runs.last_mut() {
            Some(run) if run.key == key => run.targets.push((target, r)),
            _ => runs.push(Run {
                key,
                targets: vec![(target, r)],
            }),
        }
    }
    runs
}

/// Splits the runs over at most `threads` decoders, balancing the packets each decodes (longest
/// run first to the least loaded); each share keeps decode order. Always at least one share.
fn share_runs(runs: &[Run], threads: usize) -> Vec<Vec<&Run>> {
    let cost = |r: &Run| r.targets.last().map_or(0, |&(t, _)| t + 1 - r.key);
    let threads = threads.clamp(1, runs.len().max(1));
    let mut by_cost: Vec<&Run> = runs.iter().collect();
    by_cost.sort_by_key(|r| std::cmp::Reverse(cost(r)));
    let mut shares: Vec<Vec<&Run>> = vec![Vec::new(); threads];
    let mut load = vec![0usize; threads];
    for run in by_cost {
        let least = (0..threads).min_by_key(|&w| load[w]).expect("threads >= 1");
        load[least] += cost(run);
        shares[least].push(run);
    }
    for share in &mut shares {
        share.sort_by_key(|r| r.key);
    }
    shares.retain(|s| !s.is_empty());
    if shares.is_empty() {
        shares.push(Vec::new());
    }
    shares
}

/// What every decoder of one video reads (shared by reference between its threads).
struct Job<'a> {
    bytes: &'a [u8],
    stream: &'a Stream,
    /// Presentation rank of each packet (decode order).
    rank: &'a [usize],
    /// Output slot of each chosen rank.
    slot_of_rank: &'a HashMap<usize, usize>,
    slots: usize,
    /// Parameter sets fed to a decoder that starts past the first packet.
    seek_sets: &'a [Vec<u8>],
    strategy: DecodeStrategy,
    /// Whether access units that no picture refers to and that hold no chosen frame are skipped.
    skip_disposable: bool,
    /// Set by the first decoder that fails, so the others stop early.
    failed: AtomicBool,
}

impl Job<'_> {
    /// Decodes `runs` with one decoder at a time on this thread; the sink holds the chosen
    /// frames of these runs only.
    fn decode_runs(&self, runs: &[&Run], budget: &Budget) -> Result<Sink> {
        let r = self.decode_runs_inner(runs, budget);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn decode_runs_inner(&self, runs: &[&Run], budget: &Budget) -> Result<Sink> {
        let n = self.stream.packets.len();
        let mut sink = Sink {
            slot_of_rank: runs
                .iter()
                .flat_map(|run| run.targets.iter())
                .map(|&(_, r)| (r, self.slot_of_rank[&r]))
                .collect(),
            images: vec![None; self.slots],
            remaining: runs.iter().map(|run| run.targets.len()).sum(),
            outputs: 0,
            pts_known: self.stream.pts_known,
            errors: 0,
        };
        let mut feeder = Feeder {
            bytes: self.bytes,
            stream: self.stream,
            rank: self.rank,
            annexb: Vec::new(),
            errors: 0,
            skip_disposable: self.skip_disposable,
        };
        for run in runs {
            let mut segment: Option<Segment> = None;
            for &(target, r) in &run.targets {
                if sink.has(r) {
                    continue;
                }
                if segment.is_none() {
                    let headers = if run.key == 0 {
                        self.stream.parameter_sets.clone()
                    } else {
                        self.seek_sets.to_vec()
                    };
                    segment = Some(Segment::start(run.key, headers, &mut sink)?);
                }
                let seg = segment.as_mut().expect("started above");
                let stop_at = match self.strategy {
                    DecodeStrategy::Seek => (target + 1 + REORDER_SLACK).min(n),
                    DecodeStrategy::Sequential => n,
                };
                while !sink.has(r) && seg.next < stop_at {
                    if self.failed.load(Ordering::Relaxed) {
                        return Ok(sink); // another decoder failed: its error is the answer
                    }
                    budget.check_time()?;
                    feeder.feed(seg, &mut sink, budget)?;
                }
                if !sink.has(r) {
                    // The picture is still buffered (end of stream, or a decoder that holds more
                    // than the slack): a flush lets it out, and this decoder is done.
                    let seg = segment.take().expect("present");
                    seg.drain(&mut sink, budget)?;
                    if self.strategy == DecodeStrategy::Sequential {
                        break; // the whole stream has been fed: nothing more will come out
                    }
                }
            }
        }
        sink.errors = feeder.errors;
        Ok(sink)
    }
}

/// One decoder run over consecutive packets, from a key frame on.
struct Segment {
    decoder: Decoder,
    /// The next packet (decode order) to feed.
    next: usize,
    /// Parameter sets to feed before the first packet (emptied once fed).
    headers: Vec<Vec<u8>>,
}

impl Segment {
    fn start(key: usize, headers: Vec<Vec<u8>>, sink: &mut Sink) -> Result<Self> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| MediaError::Corrupt(format!("cannot start the H.264 decoder: {e}")))?;
        // Without presentation times, pictures are ranked by output count from the key frame.
        sink.outputs = key;
        Ok(Self {
            decoder,
            next: key,
            headers,
        })
    }

    /// End of stream: reordered (B-frame) pictures still in the buffer come out only on a flush.
    fn drain(mut self, sink: &mut Sink, budget: &Budget) -> Result<()> {
        if sink.remaining == 0 {
            return Ok(());
        }
        let (_, info, dst) = decode_call(&mut self.decoder, None, 0);
        if info.iBufferStatus == 1 {
            sink.take(&info, &dst, budget)?;
        }
        for _ in 0..64 {
            if sink.remaining == 0 || frames_in_buffer(&mut self.decoder) == 0 {
                break;
            }
            let (info, dst) = flush_call(&mut self.decoder);
            if info.iBufferStatus != 1 {
                break;
            }
            sink.take(&info, &dst, budget)?;
        }
        Ok(())
    }
}

/// Turns packets into decoder input.
struct Feeder<'a> {
    bytes: &'a [u8],
    stream: &'a Stream,
    rank: &'a [usize],
    annexb: Vec<u8>,
    errors: usize,
    /// Skip access units no picture refers to unless the sink still waits for their picture.
    skip_disposable: bool,
}

impl Feeder<'_> {
    /// Feeds the segment's next packet and hands any picture that comes out to the sink.
    fn feed(&mut self, seg: &mut Segment, sink: &mut Sink, budget: &Budget) -> Result<()> {
        let i = seg.next;
        seg.next += 1;
        let p = &self.stream.packets[i];
        if self.skip_disposable
            && seg.headers.is_empty()
            && !sink.waits_for(self.rank[i])
            && is_disposable(
                &self.bytes[p.offset..p.offset + p.len],
                self.stream.nal_length_size,
            )
        {
            return Ok(());
        }
        let mut au = Vec::new();
        for ps in std::mem::take(&mut seg.headers) {
            push_nal(&ps, &mut au, budget)?;
        }
        to_annexb(
            &self.bytes[p.offset..p.offset + p.len],
            self.stream.nal_length_size,
            &mut self.annexb,
            budget,
        )?;
        au.extend_from_slice(&self.annexb);
        if au.is_empty() {
            return Ok(());
        }
        let ts = if self.stream.pts_known {
            self.rank[i]
        } else {
            i
        } as u64;
        for data in [Some(&au[..]), None] {
            let (state, info, dst) = decode_call(&mut seg.decoder, data, ts);
            if state != 0 {
                self.errors += 1;
            }
            if info.iBufferStatus == 1 {
                sink.take(&info, &dst, budget)?;
            }
        }
        Ok(())
    }
}

/// Where decoded pictures go: the chosen ones are converted and kept, the rest only counted.
struct Sink {
    slot_of_rank: HashMap<usize, usize>,
    images: Vec<Option<RgbImage>>,
    remaining: usize,
    /// Presentation rank of the next picture out, for streams without presentation times.
    outputs: usize,
    pts_known: bool,
    /// Access units the decoder refused (counted once this sink's decoding is over).
    errors: usize,
}

impl Sink {
    fn has(&self, rank: usize) -> bool {
        self.slot_of_rank
            .get(&rank)
            .is_some_and(|&slot| self.images[slot].is_some())
    }

    /// Whether the picture of `rank` is one this sink keeps and does not have yet.
    fn waits_for(&self, rank: usize) -> bool {
        self.slot_of_rank
            .get(&rank)
            .is_some_and(|&slot| self.images[slot].is_none())
    }

    fn take(&mut self, info: &SBufferInfo, dst: &[*mut u8; 3], budget: &Budget) -> Result<()> {
        budget.count_frame()?;
        let rank = if self.pts_known {
            // The rank we passed in as the input timestamp, carried through reordering.
            info.uiOutYuvTimeStamp as usize
        } else {
            self.outputs
        };
        self.outputs += 1;
        if let Some(&slot) = self.slot_of_rank.get(&rank) {
            if self.images[slot].is_none() {
                self.images[slot] = Some(budget.keep(to_rgb(info, dst, budget)?));
                self.remaining -= 1;
            }
        }
        Ok(())
    }
}

/// One `DecodeFrame2` call (`None` = end of access unit / end of stream).
fn decode_call(
    decoder: &mut Decoder,
    data: Option<&[u8]>,
    ts: u64,
) -> (DECODING_STATE, SBufferInfo, [*mut u8; 3]) {
    let mut dst = [null_mut::<u8>(); 3];
    // SAFETY: SBufferInfo is plain old data; zero is its documented initial state.
    let mut info: SBufferInfo = unsafe { std::mem::zeroed() };
    info.uiInBsTimeStamp = ts;
    let (ptr, len) = data.map_or((null(), 0), |d| (d.as_ptr(), d.len() as i32));
    // SAFETY: `ptr`/`len` describe a live slice (or are null/0, the documented end-of-stream call);
    // `dst` and `info` are valid out-parameters for the duration of the call.
    let state = unsafe {
        decoder
            .raw_api()
            .decode_frame2(ptr, len, dst.as_mut_ptr(), &mut info)
    };
    (state, info, dst)
}

/// One `FlushFrame` call.
fn flush_call(decoder: &mut Decoder) -> (SBufferInfo, [*mut u8; 3]) {
    let mut dst = [null_mut::<u8>(); 3];
    // SAFETY: as in `decode_call`.
    let mut info: SBufferInfo = unsafe { std::mem::zeroed() };
    unsafe { decoder.raw_api().flush_frame(dst.as_mut_ptr(), &mut info) };
    (info, dst)
}

fn frames_in_buffer(decoder: &mut Decoder) -> i32 {
    let mut n: DECODER_OPTION = 0;
    // SAFETY: the option takes a pointer to one int.
    let rc = unsafe {
        decoder.raw_api().get_option(
            DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER,
            (&mut n as *mut DECODER_OPTION).cast(),
        )
    };
    if rc == 0 {
        n
    } else {
        0
    }
}

/// Converts a decoded I420 picture to RGB (BT.601 limited range, nearest chroma, like ffmpeg's
/// default `yuv420p -> rgb24`).
fn to_rgb(info: &SBufferInfo, dst: &[*mut u8; 3], budget: &Budget) -> Result<RgbImage> {
    // SAFETY: the union has a single member.
    let sys = unsafe { info.UsrData.sSystemBuffer };
    let (w, h) = (sys.iWidth, sys.iHeight);
    let (ys, cs) = (sys.iStride[0], sys.iStride[1]);
    if w <= 0 || h <= 0 || ys < w || cs < (w + 1) / 2 || sys.iFormat != videoFormatI420 {
        return Err(MediaError::Corrupt(
            "decoder returned an invalid picture".into(),
        ));
    }
    budget.check_dims(w as u64, h as u64)?;
    let planes = [dst[0], dst[1], dst[2]];
    if planes.iter().any(|p| p.is_null()) {
        return Err(MediaError::Corrupt(
            "decoder returned an empty picture".into(),
        ));
    }
    let (w, h, ys, cs) = (w as usize, h as usize, ys as usize, cs as usize);
    let ch = h.div_ceil(2);
    // SAFETY: OpenH264 guarantees planes of `stride * rows` bytes for the returned picture, valid
    // until the next call on this decoder; we copy out before making another call.
    let (y, u, v) = unsafe {
        (
            std::slice::from_raw_parts(planes[0], ys * h),
            std::slice::from_raw_parts(planes[1], cs * ch),
            std::slice::from_raw_parts(planes[2], cs * ch),
        )
    };
    Ok(yuv420_to_rgb(y, u, v, w, h, ys, cs))
}

/// BT.601 limited-range YUV 4:2:0 to RGB in 16.16 fixed point.
pub fn yuv420_to_rgb(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    w: usize,
    h: usize,
    ys: usize,
    cs: usize,
) -> RgbImage {
    let mut rgb = vec![0u8; w * h * 3];
    for row in 0..h {
        let yrow = &y[row * ys..row * ys + w];
        let urow = &u[(row / 2) * cs..];
        let vrow = &v[(row / 2) * cs..];
        let out = &mut rgb[row * w * 3..(row + 1) * w * 3];
        for x in 0..w {
            let c = (yrow[x] as i32 - 16) * 76309;
            let d = urow[x / 2] as i32 - 128;
            let e = vrow[x / 2] as i32 - 128;
            let r = (c + 104597 * e + 32768) >> 16;
            let g = (c - 25675 * d - 53279 * e + 32768) >> 16;
            let b = (c + 132201 * d + 32768) >> 16;
            out[x * 3] = r.clamp(0, 255) as u8;
            out[x * 3 + 1] = g.clamp(0, 255) as u8;
            out[x * 3 + 2] = b.clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(w as u32, h as u32, rgb).expect("buffer has w*h*3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_split() {
        let s = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65];
        let nals = split_annexb(&s);
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65][..]]);
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 -> 0, 1, 2, 3
        let b = [0b1010_0110, 0b0100_0000];
        let mut r = Bits::new(&b);
        assert_eq!(
            (r.ue(), r.ue(), r.ue(), r.ue()),
            (Some(0), Some(1), Some(2), Some(3))
        );
    }

    /// A baseline-profile SPS NAL for a frame of `w_mbs` x `h_mbs` macroblocks.
    fn sps(w_mbs: u64, h_mbs: u64) -> Vec<u8> {
        let mut bits = String::new();
        let ue = |v: u64, bits: &mut String| {
            let code = format!("{:b}", v + 1);
            bits.push_str(&"0".repeat(code.len() - 1));
            bits.push_str(&code);
        };
        bits.push_str(&format!("{:08b}{:08b}{:08b}", 66, 0, 30));
        for v in [0, 0, 0, 0, 1] {
            ue(v, &mut bits); // sps id, log2_max_frame_num, poc type 0, log2_max_poc_lsb, refs
        }
        bits.push('0'); // gaps
        ue(w_mbs - 1, &mut bits);
        ue(h_mbs - 1, &mut bits);
        bits.push('1'); // frame_mbs_only
        bits.push('1'); // rbsp stop bit
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut nal = vec![0x67];
        nal.extend(
            bits.as_bytes()
                .chunks(8)
                .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap()),
        );
        nal
    }

    #[test]
    fn sps_dimensions() {
        assert_eq!(sps_dims(&sps(20, 15)).unwrap(), (320, 240));
        // 100000 x 100000 is read without allocating anything, then refused by the limits.
        assert_eq!(sps_dims(&sps(6250, 6250)).unwrap(), (100_000, 100_000));
        let limits = crate::media::MediaLimits::default();
        let budget = Budget {
            limits: &limits,
            deadline: std::time::Instant::now(),
            stats: Default::default(),
            shrink: None,
        };
        let mut out = Vec::new();
        let e = push_nal(&sps(6250, 6250), &mut out, &budget).unwrap_err();
        assert_eq!(e.code(), "too_large");
        assert!(out.is_empty());
    }

    /// AVCC access unit of NAL units (4-byte lengths).
    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
        out
    }

    #[test]
    fn only_non_reference_slices_are_disposable() {
        let b_slice: &[u8] = &[0x01, 0x9e]; // nal_ref_idc 0, type 1
        let sei: &[u8] = &[0x06, 0x05];
        let p_slice: &[u8] = &[0x41, 0x9a]; // nal_ref_idc 2, type 1
        let idr: &[u8] = &[0x65, 0x88];
        assert!(is_disposable(&avcc(&[b_slice]), Some(4)));
        assert!(is_disposable(&avcc(&[sei, b_slice]), Some(4)));
        assert!(!is_disposable(&avcc(&[p_slice]), Some(4)));
        assert!(!is_disposable(&avcc(&[sei, idr]), Some(4)));
        assert!(!is_disposable(&avcc(&[b_slice, p_slice]), Some(4)));
        assert!(!is_disposable(&avcc(&[sei]), Some(4)), "no slice");
        assert!(!is_disposable(&avcc(&[b_slice, &[]]), Some(4)), "empty NAL");
        let mut cut = avcc(&[b_slice]);
        cut[3] = 9; // length past the end
        assert!(!is_disposable(&cut, Some(4)));
        assert!(!is_disposable(&[], Some(4)));
        let annexb = [0, 0, 0, 1, 0x06, 0x05, 0, 0, 1, 0x01, 0x9e];
        assert!(is_disposable(&annexb, None));
        let annexb = [0, 0, 0, 1, 0x21, 0x9e]; // nal_ref_idc 1
        assert!(!is_disposable(&annexb, None));
    }

    fn run(key: usize, targets: &[usize]) -> Run {
        Run {
            key,
            targets: targets.iter().map(|&t| (t, t)).collect(),
        }
    }

    #[test]
    fn runs_are_shared_by_packets_to_decode() {
        // Costs: 10, 3, 8, 2 packets.
        let runs = [
            run(0, &[2, 9]),
            run(10, &[12]),
            run(20, &[27]),
            run(30, &[31]),
        ];
        let shares = share_runs(&runs, 2);
        assert_eq!(shares.len(), 2);
        let keys = |s: &Vec<&Run>| s.iter().map(|r| r.key).collect::<Vec<_>>();
        // 10 + 2 against 8 + 3; each share in decode order.
        assert_eq!(keys(&shares[0]), vec![0, 30]);
        assert_eq!(keys(&shares[1]), vec![10, 20]);
        assert_eq!(share_runs(&runs, 1).len(), 1);
        assert_eq!(share_runs(&runs, 8).len(), 4, "never more shares than runs");
        let one = share_runs(&runs[..1], 2);
        assert_eq!(one.len(), 1);
        assert_eq!(
            share_runs(&[], 2).len(),
            1,
            "an empty plan still has one share"
        );
    }

    #[test]
    fn sps_garbage_is_an_error_not_a_panic() {
        for n in 0..64 {
            let nal: Vec<u8> = (0..n).map(|i| (i * 37 + 7) as u8).collect();
            let _ = sps_dims(&nal);
        }
        assert!(sps_dims(&[0x67]).is_err());
    }
}

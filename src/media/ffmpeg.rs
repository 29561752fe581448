//! The fallback for every codec and container the in-process decoders do not cover (VP8/VP9/AV1 in
//! WebM/MKV, HEVC, MPEG-4 part 2, ...): the `ffprobe` and `ffmpeg` programs as child processes.
//!
//! Owns: finding the programs (`MVSERVE_FFMPEG`, else `PATH`), running them with an argument list
//! (never a shell), the demuxer forced to the format detected from the bytes, only the `file`
//! protocol, a wall-time limit (the child is killed) and an output size limit; reading the packet
//! times from `ffprobe` (or, for Matroska, from the file's block headers through [`super::mkv`]
//! when they can be read exactly) to choose frames exactly as the native path does, then reading
//! only the chosen frames as raw RGB from `ffmpeg`'s stdout, stopping it after the last one.
//! Without the programs, such a file is `MediaError::Unsupported` with a hint on enabling them.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::detect::Container;
use super::{sample, Budget, DecodeStrategy, Decoded, MediaError, MediaInfo, Result, SampleSpec};

/// Where to find `ffmpeg`: the `MVSERVE_FFMPEG` variable (path to the binary; `ffprobe` is looked
/// up beside it), else `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    if let Some(ffmpeg) = std::env::var_os("MVSERVE_FFMPEG") {
        let ffmpeg = PathBuf::from(ffmpeg);
        let p = if name == "ffmpeg" {
            ffmpeg
        } else {
            ffmpeg.with_file_name(name)
        };
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether both `ffmpeg` and `ffprobe` can be found.
pub fn available() -> bool {
    tool("ffmpeg").is_some() && tool("ffprobe").is_some()
}

/// The ffmpeg demuxer for a detected container (forcing it stops ffmpeg from guessing formats such
/// as playlists that would open other files).
fn demuxer(c: Container) -> Option<&'static str> {
    Some(match c {
        Container::Mp4 => "mov",
        Container::Avi => "avi",
        Container::Gif => "gif",
        Container::Matroska => "matroska",
        Container::MpegTs => "mpegts",
        Container::MpegPs => "mpeg",
        Container::Flv => "flv",
        Container::Ogg => "ogg",
        Container::Asf => "asf",
        Container::AnnexB => "h264",
        Container::Unknown => return None,
    })
}

fn container_name(bytes: &[u8], c: Container) -> String {
    let head = &bytes[..bytes.len().min(64)];
    if c == Container::Matroska && head.windows(4).any(|w| w == b"webm") {
        "webm".into()
    } else {
        c.name().into()
    }
}

/// The first video CodecID in a Matroska/WebM header, for error messages.
fn matroska_codec(bytes: &[u8]) -> Option<&'static str> {
    let head = &bytes[..bytes.len().min(64 << 10)];
    let ids: [(&[u8], &str); 6] = [
        (b"V_VP8", "vp8"),
        (b"V_VP9", "vp9"),
        (b"V_AV1", "av1"),
        (b"V_MPEG4/ISO/AVC", "h264"),
        (b"V_MPEGH/ISO/HEVC", "hevc"),
        (b"V_MPEG4/ISO", "mpeg4"),
    ];
    let first = |id: &[u8]| head.windows(id.len()).position(|w| w == id);
    ids.iter()
        .filter_map(|(id, name)| first(id).map(|p| (p, *name)))
        .min()
        .map(|(_, name)| name)
}

/// A temporary copy of in-memory bytes for ffmpeg to read; removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(bytes: &[u8]) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "mvserve-media-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let guard = TempFile(path);
        f.write_all(bytes)?;
        Ok(guard)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How long a child asked to stop may take to exit by itself before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running child with a watchdog that kills it at the deadline or when asked to stop.
struct Child {
    stdout: std::process::ChildStdout,
    stderr: std::thread::JoinHandle<Vec<u8>>,
    stop: Arc<AtomicBool>,
    watchdog: std::thread::JoinHandle<(Option<std::process::ExitStatus>, bool)>,
}

impl Child {
    fn spawn(program: &Path, args: &[String], deadline: Instant) -> Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            // Keep the last 4 KiB of diagnostics, however much there is.
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(k) = stderr.read(&mut buf) {
                if k == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..k]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            tail
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let watchdog = std::thread::spawn(move || {
            // Asked to stop, a child that has just closed its stdout is usually exiting on its
            // own: give it a moment, or a busy machine turns a clean exit into a kill (and a
            // readable file into "could not read").
            let mut stop_at: Option<Instant> = None;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => return (Some(status), false),
                    Ok(None) => {}
                    Err(_) => return (None, false),
                }
                let now = Instant::now();
                let timed_out = now > deadline;
                if stop_at.is_none() && stop2.load(Ordering::Relaxed) {
                    stop_at = Some(now + STOP_GRACE);
                }
                if timed_out || stop_at.is_some_and(|t| now > t) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (None, timed_out);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(Self {
            stdout,
            stderr,
            stop,
            watchdog,
        })
    }

    /// Stops the child (if still running) and returns (exit status, timed out, stderr tail).
    fn finish(self) -> (Option<std::process::ExitStatus>, bool, String) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.stdout);
        let (status, timed_out) = self.watchdog.join().unwrap_or((None, false));
        let tail = self.stderr.join().unwrap_or_default();
        (
            status,
            timed_out,
            String::from_utf8_lossy(&tail).trim().to_string(),
        )
    }
}

/// Longest line of `ffprobe` output we accept: a packet line is about 50 bytes, a stream line a
/// few hundred. A longer one means the output is not what we asked for.
const MAX_PROBE_LINE: u64 = 4096;

/// What `ffprobe` said about the first video stream: codec, coded size, container duration and
/// every packet's presentation (or decode) time, in file order.
#[derive(Debug, Default)]
struct Probe {
    codec: Option<String>,
    width: u64,
    height: u64,
    duration: Option<f64>,
    pts: Vec<f64>,
}

/// Reads `ffprobe -of compact` output line by line as it arrives, counting packets against
/// `max_packets`: a file that lists millions of packets is refused after `max_packets + 1` lines,
/// never buffered whole (the caller then stops the child). Lines are `section|key=value|...`;
/// ffprobe prints the packets first, then the stream, then the format.
fn read_probe(out: impl Read, max_packets: u64) -> Result<Probe> {
    let mut reader = std::io::BufReader::new(out);
    let mut probe = Probe::default();
    let mut line = Vec::new();
    let mut packets = 0u64;
    loop {
        line.clear();
        let k = (&mut reader)
            .take(MAX_PROBE_LINE + 1)
            .read_until(b'\n', &mut line)?;
        if k == 0 {
            return Ok(probe);
        }
        if k as u64 > MAX_PROBE_LINE {
            return Err(MediaError::Corrupt(format!(
                "ffprobe printed a line over {MAX_PROBE_LINE} bytes"
            )));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let (section, rest) = text.split_once('|').unwrap_or((text, ""));
        let value = |key: &str| -> Option<&str> {
            rest.split('|')
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        };
        match section {
            "packet" => {
                packets += 1;
                if packets > max_packets {
                    return Err(MediaError::TooLarge(format!(
                        "more than {max_packets} frames"
                    )));
                }
                let t = value("pts_time").and_then(|v| v.parse::<f64>().ok());
                let t = t.or_else(|| value("dts_time").and_then(|v| v.parse::<f64>().ok()));
                if let Some(t) = t.filter(|t| t.is_finite()) {
                    probe.pts.push(t);
                }
            }
            "stream" if probe.codec.is_none() => {
                probe.codec = Some(value("codec_name").unwrap_or("unknown").to_string());
                probe.width = value("width").and_then(|v| v.parse().ok()).unwrap_or(0);
                probe.height = value("height").and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            "format" => probe.duration = value("duration").and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
}

/// Below this many packets one pass over the whole video (one process) is cheaper than a process
/// per chosen frame: starting ffmpeg costs about as much as decoding a few dozen small frames, and
/// each seek decodes half a GOP (128-250 frames for common encoders) on average.
const SEEK_MIN_PACKETS: usize = 2000;

/// How far before a chosen frame's presentation time a seek aims. Demuxers seek by decode time
/// (MP4) or cue times, which run ahead of presentation times by the reorder delay; aiming a little
/// early keeps the key frame of the chosen frame's own GOP.
const SEEK_MARGIN_S: f64 = 1.0;

/// Most chosen frames one seeking ffmpeg run reads (one input, so one open of the file, each).
const SEEK_BATCH: usize = 16;

/// The arguments of one ffmpeg run that reads the frames at `pts[i]` for each `i` of `batch`:
/// one input per frame, each opened with the demuxer and protocol forced and seeked (by the
/// stream's own timestamps) to the last key frame `SEEK_MARGIN_S` before it; its chain keeps the
/// frames up to just past the target (`trim`, which also ends that input's decoding there), picks
/// the target by timestamp (`select`, as the single pass does) and at most one frame; `concat`
/// puts them out in `batch` order. An input that misses its frame puts out none, so the run
/// gives fewer frames than asked.
fn seek_args(
    input: &str,
    demux: &str,
    batch: &[usize],
    pts: &[f64],
    t0: f64,
    tol: f64,
) -> Vec<String> {
    let mut a: Vec<String> = ["-v", "error", "-nostdin", "-copyts"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut graph = String::new();
    for (k, &i) in batch.iter().enumerate() {
        let from = (pts[i] - SEEK_MARGIN_S).max(t0);
        a.extend(
            [
                "-protocol_whitelist",
                "file",
                "-f",
                demux,
                "-noautorotate",
                "-seek_timestamp",
                "1",
                "-noaccurate_seek",
                "-ss",
                &format!("{from:.6}"),
                "-i",
                input,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        graph.push_str(&format!(
            "[{k}:v:0]trim=end={:.6},select='lt(abs(t-{:.6})\\,{tol:.6})',trim=end_frame=1[v{k}];",
            pts[i] + tol,
            pts[i]
        ));
    }
    for k in 0..batch.len() {
        graph.push_str(&format!("[v{k}]"));
    }
    graph.push_str(&format!("concat=n={}:v=1:a=0[out]", batch.len()));
    let n = batch.len().to_string();
    a.extend(
        [
            "-filter_complex",
            &graph,
            "-map",
            "[out]",
            "-fps_mode",
            "passthrough",
            "-frames:v",
            &n,
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// Containers whose demuxer seeks through an index (so a seek lands on a key frame at or before
/// the target). The others (MPEG-TS/PS, FLV, Ogg, raw H.264) bisect or scan and are read in one
/// pass.
fn seeks_well(c: Container) -> bool {
    matches!(c, Container::Mp4 | Container::Matroska | Container::Avi)
}

/// Runs ffmpeg and reads up to `k` raw RGB frames of `dims` from its stdout, each counted against
/// the frame limit; then stops it. Returns the frames, its exit status and its stderr tail.
fn run_frames(
    ffmpeg: &Path,
    args: &[String],
    k: usize,
    (w, h): (u32, u32),
    budget: &mut Budget,
) -> Result<(Vec<RgbImage>, Option<std::process::ExitStatus>, String)> {
    let frame_bytes = w as usize * h as usize * 3;
    let mut child = Child::spawn(ffmpeg, args, budget.deadline)?;
    let mut images = Vec::with_capacity(k);
    let mut read_err = None;
    while images.len() < k {
        let mut buf = vec![0u8; frame_bytes];
        match child.stdout.read_exact(&mut buf) {
            Ok(()) => {
                if let Err(e) = budget.count_frame() {
                    read_err = Some(e);
                    break;
                }
                images.push(budget.keep(RgbImage::from_raw(w, h, buf).expect("w*h*3 bytes")));
            }
            Err(_) => break, // end of output (fewer frames than asked, or ffmpeg failed)
        }
    }
    let (status, timed_out, err) = child.finish();
    if timed_out {
        return Err(MediaError::TimedOut(budget.limits.max_wall_time));
    }
    if let Some(e) = read_err {
        return Err(e);
    }
    Ok((images, status, err))
}

/// Runs ffprobe on the first video stream: its codec and size, the container's duration and,
/// with `packets`, every packet's time (read line by line, at most `max_frames_decoded`).
fn run_probe(
    ffprobe: &Path,
    common: &[String],
    input: &str,
    packets: bool,
    format: &str,
    budget: &Budget,
) -> Result<Probe> {
    let entries = if packets {
        "stream=codec_name,width,height:format=duration:packet=pts_time,dts_time"
    } else {
        "stream=codec_name,width,height:format=duration"
    };
    let mut args = common.to_vec();
    args.extend(
        [
            "-select_streams",
            "v:0",
            "-show_entries",
            entries,
            "-of",
            "compact=p=1:nk=0",
            input,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut child = Child::spawn(ffprobe, &args, budget.deadline)?;
    let probe = read_probe(&mut child.stdout, budget.limits.max_frames_decoded);
    let (status, timed_out, err) = child.finish();
    // Over the frame limit, the child was stopped before it finished: that, not its exit, is the
    // answer.
    let probe = match probe {
        Err(e @ MediaError::TooLarge(_)) => return Err(e),
        _ if timed_out => return Err(MediaError::TimedOut(budget.limits.max_wall_time)),
        p => p?,
    };
    if !status.is_some_and(|s| s.success()) {
        return Err(MediaError::Corrupt(format!(
            "ffprobe could not read the {format}: {err}"
        )));
    }
    Ok(probe)
}

/// Decodes through ffprobe + ffmpeg, or explains how to enable them.
pub fn decode(
    bytes: &[u8],
    path: Option<&Path>,
    container: Container,
    codec_hint: &str,
    spec: &SampleSpec,
    budget: &mut Budget,
    strategy: DecodeStrategy,
) -> Result<Decoded> {
    let cname = container_name(bytes, container);
    let codec_hint = if codec_hint.is_empty() {
        matroska_codec(bytes).unwrap_or("")
    } else {
        codec_hint
    };
    let format = if codec_hint.is_empty() {
        cname.clone()
    } else {
        format!("{cname} with {codec_hint} video")
    };
    let (Some(ffmpeg), Some(ffprobe)) = (tool("ffmpeg"), tool("ffprobe")) else {
        return Err(MediaError::Unsupported {
            format,
            hint:
                "this format is decoded through the ffmpeg program, which was not found: install \
                   it (e.g. `apt-get install ffmpeg`) and put it on PATH, or set MVSERVE_FFMPEG to \
                   its path"
                    .into(),
        });
    };
    if !budget.limits.use_ffmpeg {
        return Err(MediaError::Unsupported {
            format,
            hint: "decoding through ffmpeg is disabled by configuration".into(),
        });
    }
    let demux = demuxer(container).ok_or_else(|| MediaError::Unsupported {
        format: format.clone(),
        hint: "unknown container".into(),
    })?;
    let temp;
    let input = match path {
        Some(p) => std::path::absolute(p)?,
        None => {
            temp = TempFile::new(bytes)?;
            temp.0.clone()
        }
    };
    let input = format!("file:{}", input.display());
    let common = |v: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["-v", "error", "-protocol_whitelist", "file", "-f", demux]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(v.iter().map(|s| s.to_string()));
        a
    };

    // 1. Stream facts and packet times (no decoding), read as they are printed. A Matroska file's
    // packet times come from its own block headers when they can be read exactly (`mkv`): then
    // ffprobe is asked for the stream facts only, not to list every packet of the file.
    let index = match (strategy, container) {
        (DecodeStrategy::Seek, Container::Matroska) => super::mkv::frame_times(bytes, budget)?,
        _ => None,
    };
    let mut probe = run_probe(
        &ffprobe,
        &common(&[]),
        &input,
        index.is_none(),
        &format,
        budget,
    )?;
    if let Some(times) = index {
        if probe.codec.as_deref() == Some(times.codec) {
            probe.pts = times.pts;
        } else {
            // Not the track ffprobe calls `v:0`, or another codec than the ID says: list.
            probe = run_probe(&ffprobe, &common(&[]), &input, true, &format, budget)?;
        }
    }
    let codec = probe
        .codec
        .ok_or_else(|| MediaError::Corrupt(format!("no video stream in the {format}")))?;
    let (w, h) = (probe.width, probe.height);
    budget.check_dims(w, h)?;
    let mut pts = probe.pts;
    pts.sort_by(f64::total_cmp);
    pts.dedup();
    if pts.is_empty() {
        return Err(MediaError::Corrupt(format!(
            "no video frames in the {format}"
        )));
    }
    let t0 = pts[0];
    let rel: Vec<f64> = pts.iter().map(|t| t - t0).collect();
    let n = rel.len();
    let step = if n > 1 {
        rel[n - 1] / (n - 1) as f64
    } else {
        0.0
    };
    let duration_s = probe
        .duration
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(rel[n - 1] + step);
    budget.check_stream(duration_s, n as u64)?;
    budget.check_time()?;
    let chosen = sample::choose(&rel, spec.fps, spec.frames);

    // 2. Only the chosen frames, as raw RGB. Timestamps are matched within half a frame interval.
    let tol = if n > 1 {
        (rel[1..]
            .iter()
            .zip(&rel)
            .map(|(a, b)| a - b)
            .fold(f64::INFINITY, f64::min)
            / 2.0)
            .max(1e-6)
    } else {
        1.0
    };
    let select = |idx: &[usize]| {
        let expr = idx
            .iter()
            .map(|&i| format!("lt(abs(t-{:.6})\\,{tol:.6})", pts[i]))
            .collect::<Vec<_>>()
            .join("+");
        format!("select='{expr}'")
    };
    // Input options (`-f demux` from `common`) must precede `-i`.
    let frames_args = |filter: String, k: usize| {
        let mut v = vec!["-nostdin", "-copyts", "-noautorotate"];
        let k = k.to_string();
        v.extend([
            "-i",
            input.as_str(),
            "-map",
            "0:v:0",
            "-an",
            "-sn",
            "-vf",
            filter.as_str(),
            "-fps_mode",
            "passthrough",
            "-frames:v",
            k.as_str(),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]);
        common(&v)
    };
    let dims = (w as u32, h as u32);
    let mut images = Vec::new();
    if strategy == DecodeStrategy::Seek && seeks_well(container) && n > SEEK_MIN_PACKETS {
        // Each chosen frame read from the key frame before it, SEEK_BATCH of them per ffmpeg run
        // (one input each: starting the program costs more than the decoding). Any frame missed
        // this way (a seek that landed past it) sends the whole video through the single pass
        // below, so the frames are the same either way.
        for batch in chosen.chunks(SEEK_BATCH) {
            let args = seek_args(&input, demux, batch, &pts, t0, tol);
            let (got, _, _) = run_frames(&ffmpeg, &args, batch.len(), dims, budget)?;
            if got.len() < batch.len() {
                images.clear();
                break;
            }
            images.extend(got);
        }
    }
    let k = chosen.len();
    let (status, err) = if images.len() == k {
        (None, String::new())
    } else {
        let (got, status, err) =
            run_frames(&ffmpeg, &frames_args(select(&chosen), k), k, dims, budget)?;
        images = got;
        (status, err)
    };
    if images.is_empty() {
        let why = if status.is_some_and(|s| !s.success()) {
            err
        } else {
            "no frames".into()
        };
        return Err(MediaError::Corrupt(format!(
            "ffmpeg could not decode the {format}: {why}"
        )));
    }
    let timestamps = chosen[..images.len()].iter().map(|&i| rel[i]).collect();
    Ok(Decoded {
        info: MediaInfo {
            container: cname,
            codec,
            duration_s,
            width: w as u32,
            height: h as u32,
            fps: if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            },
            decoder: "ffmpeg".into(),
            frame_count: n as u64,
        },
        timestamps,
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endless stream of packet lines, counting what was read from it.
    struct Endless {
        served: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let line = b"packet|pts_time=0.040000|dts_time=0.040000\n";
            let k = buf.len().min(line.len());
            buf[..k].copy_from_slice(&line[..k]);
            self.served += k as u64;
            Ok(k)
        }
    }

    #[test]
    fn endless_packets_stop_at_the_limit() {
        let mut out = Endless { served: 0 };
        let e = read_probe(&mut out, 100).unwrap_err();
        assert_eq!(e.code(), "too_large");
        // 101 lines of 43 bytes and at most one read-ahead buffer, not the whole stream.
        assert!(
            out.served < 101 * 43 + (16 << 10),
            "read {} bytes",
            out.served
        );
    }

    #[test]
    fn compact_output_is_parsed() {
        let text = "packet|pts_time=0.000000|dts_time=-0.066667\n\
                    packet|pts_time=N/A|dts_time=0.033333\n\
                    packet|pts_time=N/A|dts_time=N/A\n\
                    stream|codec_name=vp8|width=1280|height=720\n\
                    format|duration=1.000000\n";
        let p = read_probe(text.as_bytes(), 10).unwrap();
        assert_eq!(p.pts, vec![0.0, 0.033333]);
        assert_eq!(p.codec.as_deref(), Some("vp8"));
        assert_eq!((p.width, p.height), (1280, 720));
        assert_eq!(p.duration, Some(1.0));
        let e = read_probe(
            format!("format|duration={}\n", "9".repeat(5000)).as_bytes(),
            10,
        );
        assert_eq!(e.unwrap_err().code(), "corrupt_media");
    }

    fn limits_budget(limits: &crate::media::MediaLimits) -> Budget<'_> {
        Budget {
            limits,
            deadline: Instant::now() + Duration::from_secs(120),
            stats: crate::media::Stats::default(),
            shrink: None,
        }
    }

    /// ffprobe's packet times of `path`, in file order, as the listing path reads them.
    fn listed(ffprobe: &Path, path: &Path, budget: &Budget) -> Vec<f64> {
        let common: Vec<String> = [
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-f",
            "matroska",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let input = format!("file:{}", path.display());
        run_probe(ffprobe, &common, &input, true, "mkv", budget)
            .unwrap()
            .pts
    }

    /// The Matroska block-header walk (`mkv`) against ffprobe's listing, which it replaces on the
    /// seeking path: the same times in the same order, to the last bit, on the WebM fixtures and
    /// on Matroska files made from the H.264 fixtures (B-frames: times out of file order; NTSC
    /// rates; an interleaved audio track); and on mutated copies (block times changed, blocks
    /// of the video track renumbered, laced), where the walk must either agree or fall back.
    #[test]
    fn matroska_walk_equals_ffprobe_listing() {
        let (Some(ffmpeg), Some(ffprobe)) = (tool("ffmpeg"), tool("ffprobe")) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "ffmpeg is needed under CI"
            );
            eprintln!("NOTICE: matroska_walk_equals_ffprobe_listing: no ffmpeg, skipped");
            return;
        };
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos");
        let dir = std::env::temp_dir().join(format!("mvserve-mkv-walk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = vec![
            fixtures.join("gop2s.webm"),
            fixtures.join("big_buck_bunny_432_433.webm"),
        ];
        let make = |name: &str, args: &[&str]| {
            let out = dir.join(name);
            let ok = Command::new(&ffmpeg)
                .args(["-v", "error", "-y"])
                .args(args)
                .arg(&out)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ffmpeg could not make {name}");
            out
        };
        let src = |n: &str| fixtures.join(n).display().to_string();
        files.push(make(
            "bframes.mkv",
            &["-i", &src("gop2s_bframes.mp4"), "-c", "copy"],
        ));
        files.push(make(
            "ntsc.mkv",
            &["-i", &src("video7020.mp4"), "-c", "copy"],
        ));
        files.push(make(
            "audio.mkv",
            &[
                "-i",
                &src("gop2s_bframes.mp4"),
                "-f",
                "lavfi",
                "-i",
                "sine=duration=90",
                "-map",
                "1:a",
                "-map",
                "0:v",
                "-c:v",
                "copy",
                "-c:a",
                "pcm_s16le",
            ],
        ));
        let limits = crate::media::MediaLimits::default();
        let budget = limits_budget(&limits);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let walked = super::super::mkv::frame_times(&bytes, &budget)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: the walk fell back", f.display()));
            let list = listed(&ffprobe, f, &budget);
            assert_eq!(walked.pts.len(), list.len(), "{}", f.display());
            assert!(walked.pts == list, "{}: times differ", f.display());
        }
        // Mutations of the B-frame file: every 97th SimpleBlock's time, track or flags changed.
        let bytes = std::fs::read(dir.join("bframes.mkv")).unwrap();
        let blocks: Vec<usize> = (0..bytes.len() - 8)
            .filter(|&i| bytes[i] == 0xA3 && bytes[i + 1] & 0x80 != 0 && bytes[i + 2] == 0x81)
            .collect();
        assert!(blocks.len() > 1000, "{} blocks found", blocks.len());
        let (mut agreed, mut fell_back) = (0, 0);
        for (k, &at) in blocks.iter().enumerate().step_by(97) {
            let mut m = bytes.clone();
            let time = at + 3; // id, 1-byte size, track 0x81, then the 16-bit time
            match k % 3 {
                0 => m[time] ^= 0x7F,     // a time far off (maybe negative)
                1 => m[at + 2] = 0x82,    // another track's block
                _ => m[time + 2] |= 0x02, // laced
            }
            let path = dir.join("mutated.mkv");
            std::fs::write(&path, &m).unwrap();
            match super::super::mkv::frame_times(&m, &budget).unwrap() {
                Some(walked) => {
                    let list = listed(&ffprobe, &path, &budget);
                    assert!(walked.pts == list, "mutation at {at}: times differ");
                    agreed += 1;
                }
                None => fell_back += 1,
            }
        }
        assert!(
            agreed > 0 && fell_back > 0,
            "{agreed} agreed, {fell_back} fell back"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

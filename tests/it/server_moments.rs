//! Moments end to end (`--segment-seconds`): a generated three-minute clip with two events at
//! known times is indexed as segments next to a short clip that stays one vector; searches by
//! example with each event's own clip must find the long video with a moment around the event;
//! re-upload, delete, an adapter swap (re-embedding) and the Milvus backend keep a video's
//! segments together. With the tiny random backbone captions mean nothing, so these events are
//! found by example (the same encoder as uploads); the text path has its own test, with an
//! adapter trained on synthetic captioned clips first
//! ([`the_caption_of_an_event_returns_its_segment`]).

use crate::common;

use common::server::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the events of the long clip are, in seconds: on segment boundaries of 12 s segments
/// (hop 6 s), so one segment holds exactly the event.
const EVENT_A: (f64, f64) = (96.0, 108.0);
const EVENT_B: (f64, f64) = (150.0, 162.0);
const LONG_S: f64 = 180.0;
const SEGMENT_FLAGS: [&str; 4] = ["--segment-seconds", "12", "--segment-min-seconds", "60"];

/// The generated clips: the long one and each event's own clip.
struct Clips {
    long: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("running ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// H.264 MP4s (the in-process decoder, seeking) at 5 fps: three minutes of grey with a test
/// pattern during [`EVENT_A`] and colour bars during [`EVENT_B`], and the two patterns alone.
/// `None` (with a notice) without ffmpeg outside CI.
fn clips(test: &str, dir: &Path) -> Option<Clips> {
    if !common::have_ffmpeg(test) {
        return None;
    }
    let enc = ["-c:v", "libx264", "-g", "10", "-pix_fmt", "yuv420p"];
    let path = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (a, b, long) = (path("a.mp4"), path("b.mp4"), path("long.mp4"));
    for (src, out) in [("testsrc", &a), ("smptebars", &b)] {
        let input = format!("{src}=s=64x64:r=5:d=12");
        let mut args = vec!["-f", "lavfi", "-i", &input];
        args.extend(enc);
        args.push(out);
        ffmpeg(&args);
    }
    let grey = format!("color=c=gray:s=64x64:r=5:d={LONG_S}");
    let graph = format!(
        "[1]setpts=PTS+{a0}/TB[a];[2]setpts=PTS+{b0}/TB[b];\
         [0][a]overlay=eof_action=pass[x];[x][b]overlay=eof_action=pass",
        a0 = EVENT_A.0,
        b0 = EVENT_B.0
    );
    let mut args = vec!["-f", "lavfi", "-i", &grey, "-i", &a, "-i", &b];
    args.extend(["-filter_complex", &graph]);
    args.extend(enc);
    args.push(&long);
    ffmpeg(&args);
    let read = |p: &str| std::fs::read(p).unwrap();
    Some(Clips {
        long: read(&long),
        a: read(&a),
        b: read(&b),
    })
}

/// `POST /search?{query}` with a video as the body.
fn by_example(s: &Server, query: &str, body: &[u8]) -> Value {
    let (st, v) = json_of(
        ureq::post(&s.url(&format!("/search?{query}")))
            .set("Content-Type", "video/mp4")
            .send_bytes(body),
    );
    assert_eq!(st, 200, "{v}");
    v
}

fn upload(s: &Server, task: &str, parts: &[Part]) -> Value {
    let (st, v) = s.post_form(&format!("/index?task={task}"), parts, None);
    assert_eq!(st, 200, "{v}");
    v
}

/// `(videos, vectors)` of a task: a segmented video is one video and one vector per segment.
fn count(s: &Server, task: &str) -> (u64, u64) {
    let (st, t) = s.get(&format!("/tasks/{task}"));
    assert_eq!(st, 200, "{t}");
    (
        t["videos"].as_u64().unwrap(),
        t["vectors"].as_u64().unwrap(),
    )
}

/// The long clip's upload: segmented, one vector per segment.
fn upload_long(s: &Server, task: &str, clips: &Clips) -> u64 {
    let v = upload(
        s,
        task,
        &[
            Part::Text("id", "long"),
            Part::Text("meta", r#"{"kind": "long"}"#),
            Part::File("long.mp4", clips.long.clone()),
        ],
    );
    let n = v["indexed"][0]["segments"].as_u64().unwrap();
    // 12 s segments every 6 s over 180 s: starts 0, 6, ..., 168.
    assert_eq!(n, 29, "{v}");
    n
}

/// The top hit of an example search must be the long video, with a moment around `event`.
fn finds_event(s: &Server, task: &str, example: &[u8], event: (f64, f64)) {
    let v = by_example(s, &format!("task={task}&k=2&segments=3"), example);
    let top = &v["hits"][0];
    assert_eq!(top["id"], "long", "{v}");
    let m = &top["moment"];
    let (start, end) = (m["start_s"].as_f64().unwrap(), m["end_s"].as_f64().unwrap());
    let mid = (event.0 + event.1) / 2.0;
    assert!(
        start <= mid && mid <= end,
        "moment {m} misses {event:?}: {v}"
    );
    assert!(end - start <= 12.0 + 1e-6, "{v}");
    // The best segments, best first, the first of them the moment itself.
    let ms = top["moments"].as_array().unwrap();
    assert!(!ms.is_empty() && ms.len() <= 3, "{v}");
    assert_eq!(ms[0]["start_s"], m["start_s"]);
    for w in ms.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "{v}");
    }
    // One hit per video, however many of its segments are near.
    let ids = hit_ids(&v);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "{v}");
}

/// gRPC `Search` over both videos: the long one's hit has its span, the short one's none; with
/// `segments` the long one lists its best segments too, and too many segments is refused.
fn grpc_hits_carry_moments(s: &Server, task: &str) {
    use mvserve::server::grpc::proto::{mv_serve_client::MvServeClient, SearchRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let search = |segments: u32| {
        rt.block_on(async {
            let mut c = MvServeClient::connect(s.grpc.clone().unwrap())
                .await
                .unwrap();
            c.search(SearchRequest {
                task: task.into(),
                query: "anything".into(),
                k: 2,
                filter: String::new(),
                segments,
            })
            .await
            .map(|r| r.into_inner())
        })
    };
    for segments in [0, 3] {
        let r = search(segments).unwrap();
        assert_eq!(r.hits.len(), 2, "{r:?}");
        for h in &r.hits {
            match h.id.as_str() {
                "long" => {
                    let (a, b) = (h.start_s.unwrap(), h.end_s.unwrap());
                    assert!(a < b && b - a <= 12.0 + 1e-6, "{h:?}");
                    if segments == 0 {
                        assert!(h.moments.is_empty(), "{h:?}");
                    } else {
                        assert!((1..=3).contains(&h.moments.len()), "{h:?}");
                        assert_eq!((h.moments[0].start_s, h.moments[0].end_s), (a, b));
                        assert!(h.moments.windows(2).all(|w| w[0].score >= w[1].score));
                    }
                }
                _ => assert!(
                    h.start_s.is_none() && h.end_s.is_none() && h.moments.is_empty(),
                    "{h:?}"
                ),
            }
        }
    }
    let e = search(101).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("segments"), "{e:?}");
}

/// The whole story on one server (either backend) and task.
fn moments_story(s: &Server, task: &str, clips: &Clips) {
    let short = video("video7020.mp4");
    let v = upload(
        s,
        task,
        &[
            Part::Text("id", "short"),
            Part::Text("meta", r#"{"kind": "short"}"#),
            Part::File("video7020.mp4", short.clone()),
        ],
    );
    assert_eq!(v["indexed"][0]["segments"], 1, "{v}");
    let n = upload_long(s, task, clips);
    assert_eq!(count(s, task), (2, n + 1));

    finds_event(s, task, &clips.a, EVENT_A);
    finds_event(s, task, &clips.b, EVENT_B);
    grpc_hits_carry_moments(s, task);

    // A short clip stays one vector: no moment.
    let v = by_example(s, &format!("task={task}&k=5"), &short);
    assert_eq!(hit_ids(&v), ["short", "long"], "{v}");
    assert!(v["hits"][0]["moment"].is_null(), "{v}");
    assert!(v["hits"][0].get("moments").is_none(), "{v}");
    assert!(v["hits"][1]["moment"].is_object(), "{v}");
    // Filters apply to segments: the long video's meta is on each of them.
    let f = "filter=%7B%22eq%22%3A%5B%22kind%22%2C%22long%22%5D%7D";
    let v = by_example(s, &format!("task={task}&k=5&{f}"), &short);
    assert_eq!(hit_ids(&v), ["long"], "{v}");
    assert_eq!(v["hits"][0]["meta"]["kind"], "long", "{v}");
    // The video is one video to GET; a segment is not one.
    let (st, g) = s.get(&format!("/videos/{task}/long"));
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["meta"]["kind"], "long");
    let spans = g["segments"].as_array().unwrap();
    assert_eq!(spans.len() as u64, n, "{g}");
    assert_eq!(spans[0], serde_json::json!({"start_s": 0.0, "end_s": 12.0}));
    assert_eq!(spans[n as usize - 1]["end_s"], LONG_S, "{g}");
    let (_, g) = s.get(&format!("/videos/{task}/short"));
    assert!(g["segments"].is_null(), "{g}");
    assert_eq!(s.get(&format!("/videos/{task}/long%1F1")).0, 404);
    assert_eq!(s.delete(&format!("/videos/{task}/long%1F1")).0, 404);
    let (st, _) = s.get(&format!("/search?task={task}&q=x&segments=0"));
    assert_eq!(st, 400);

    // Re-uploading the id as a short clip replaces all its segments.
    upload(
        s,
        task,
        &[
            Part::Text("id", "long"),
            Part::File("video7021.mp4", video("video7021.mp4")),
        ],
    );
    assert_eq!(count(s, task), (2, 2));
    let v = by_example(s, &format!("task={task}&k=5"), &clips.a);
    assert_eq!(hit_ids(&v).len(), 2, "{v}");
    assert!(
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["moment"].is_null()),
        "{v}"
    );
    // ... and back: segments again, found again.
    upload_long(s, task, clips);
    assert_eq!(count(s, task), (2, n + 1));
    finds_event(s, task, &clips.a, EVENT_A);

    // Delete takes every segment with it.
    assert_eq!(s.delete(&format!("/videos/{task}/long")).0, 200);
    assert_eq!(count(s, task), (1, 1));
    let v = by_example(s, &format!("task={task}&k=5"), &clips.a);
    assert_eq!(hit_ids(&v), ["short"], "{v}");
    assert_eq!(s.get(&format!("/videos/{task}/long")).0, 404);
}

#[test]
fn long_videos_are_found_by_moment_on_the_embedded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips("long_videos_are_found_by_moment", tmp.path()) else {
        return;
    };
    let data = tmp.path().join("data");
    let s = Server::start(&data, &SEGMENT_FLAGS);
    moments_story(&s, "clip", &clips);
    // Two uploads of the long clip, 29 segments each.
    assert_eq!(
        metric(&s, r#"mvserve_segments_indexed_total{task="clip"}"#),
        58.0
    );
}

#[test]
fn moments_are_off_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips("moments_are_off_by_default", tmp.path()) else {
        return;
    };
    let s = Server::start(&tmp.path().join("data"), &[]);
    let v = upload(&s, "clip", &[Part::File("long.mp4", clips.long)]);
    assert_eq!(v["indexed"][0]["segments"], 1, "{v}");
    assert_eq!(count(&s, "clip"), (1, 1));
    let v = by_example(&s, "task=clip", &clips.a);
    assert!(v["hits"][0]["moment"].is_null(), "{v}");
}

/// A long video whose timeline would take more than `--segment-max-mb` stays one vector (the
/// three-minute clip's estimate is a few hundred MiB; 1 MiB is below it).
#[test]
fn a_video_over_the_segmenting_memory_budget_stays_one_vector() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips("a_video_over_the_segmenting_memory_budget", tmp.path()) else {
        return;
    };
    let flags = [&SEGMENT_FLAGS[..], &["--segment-max-mb", "1"]].concat();
    let s = Server::start(&tmp.path().join("data"), &flags);
    let v = upload(&s, "clip", &[Part::File("long.mp4", clips.long)]);
    assert_eq!(v["indexed"][0]["segments"], 1, "{v}");
    assert_eq!(count(&s, "clip"), (1, 1));
}

/// A crash between a delete's first write (the video record) and the removal of its segments
/// leaves the segments stored, answering nothing: the indexer sweeps them at its next start.
/// The crash is made exactly: the server is killed, the video record is deleted from the
/// store directly, and the server is started again on the same data.
#[test]
fn segments_a_crash_left_behind_are_swept_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips(
        "segments_a_crash_left_behind_are_swept_at_start",
        tmp.path(),
    ) else {
        return;
    };
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &SEGMENT_FLAGS);
    upload(
        &s,
        "clip",
        &[
            Part::Text("id", "short"),
            Part::File("video7020.mp4", video("video7020.mp4")),
        ],
    );
    let n = upload_long(&s, "clip", &clips);
    assert_eq!(count(&s, "clip"), (2, n + 1));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    {
        use mvserve::store::{StoreConfig, TaskStore};
        let dir = data.join("tasks/clip/gen-0");
        let store = TaskStore::open(&dir, 32, StoreConfig::default()).unwrap();
        assert!(store.delete("long").unwrap());
        assert_eq!(store.len() as u64, n);
    }
    let s = Server::start(&data, &SEGMENT_FLAGS);
    wait_until("the sweep", Duration::from_secs(20), || {
        count(&s, "clip") == (1, 1)
    });
    let v = by_example(&s, "task=clip&k=5", &clips.a);
    assert_eq!(hit_ids(&v), ["short"], "{v}");
    // The long clip uploads again as before.
    assert_eq!(upload_long(&s, "clip", &clips), n);
    assert_eq!(count(&s, "clip"), (2, n + 1));
}

#[test]
fn moments_survive_an_adapter_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips("moments_survive_an_adapter_swap", tmp.path()) else {
        return;
    };
    let data = tmp.path().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let (a1, a2) = (tmp.path().join("a1.st"), tmp.path().join("a2.st"));
    new_adapter(&a1, "news", 4);
    let d2 = new_adapter(&a2, "news", 4);
    let install = |file: &Path| {
        let staged = adapters.join(".news.staged");
        std::fs::copy(file, &staged).unwrap();
        std::fs::rename(&staged, adapters.join("news.safetensors")).unwrap();
    };
    let s = Server::start(&data, &SEGMENT_FLAGS);
    install(&a1);
    wait_until("news to be served", Duration::from_secs(5), || {
        s.get("/tasks/news").0 == 200
    });
    let n = upload_long(&s, "news", &clips);
    finds_event(&s, "news", &clips.a, EVENT_A);

    // The new adapter re-embeds every segment of the stored upload, then cuts over.
    install(&a2);
    wait_until(
        "the re-embedded generation",
        Duration::from_secs(120),
        || s.get("/tasks/news").1["generation"] == 1,
    );
    let (_, t) = s.get("/tasks/news");
    assert_eq!(t["model"]["digest"], d2.as_str(), "{t}");
    assert!(t["last_error"].is_null(), "{t}");
    assert_eq!(count(&s, "news"), (1, n));
    finds_event(&s, "news", &clips.a, EVENT_A);
    finds_event(&s, "news", &clips.b, EVENT_B);
    assert_eq!(s.delete("/videos/news/long").0, 200);
    assert_eq!(count(&s, "news"), (0, 0));
}

#[test]
fn long_videos_are_found_by_moment_on_milvus() {
    let Some(url) = common::milvus::url() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(clips) = clips("long_videos_are_found_by_moment_on_milvus", tmp.path()) else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = format!("{url}{sep}prefix=moments{}_", std::process::id());
    let blobs = tmp.path().join("blobs");
    let mut args: Vec<&str> = SEGMENT_FLAGS.to_vec();
    args.extend(["--store", &store, "--blob-dir", blobs.to_str().unwrap()]);
    let s = Server::start(&tmp.path().join("data"), &args);
    moments_story(&s, "clip", &clips);
}

/// The issue's own check, through the text path: the caption of an event returns its segment.
/// Captions mean nothing to the random test backbone, so a task adapter is trained first (with
/// `mvserve train`, as a user would) on eight synthetic clips whose captions name distinct
/// events (`mvserve synth`: the first clip of each contrast group, 4 s each). The long video is
/// the eight clips back to back (32 s), indexed as 4 s segments every 2 s, so clip `j` is
/// exactly the segment [4j, 4j + 4]; the video's other segments straddle two clips. Each
/// caption must return that segment as the video's moment, among the 15 segments of which 7
/// straddle two events. (No unrelated video is indexed beside it: an adapter fitted to eight
/// captions on the tiny random backbone does not rank real footage reliably below them.)
#[test]
fn the_caption_of_an_event_returns_its_segment() {
    const CLIP_S: f64 = 4.0;
    if !common::have_ffmpeg("the_caption_of_an_event_returns_its_segment") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let (ok, out, err) = common::mvserve(args);
        assert!(ok, "mvserve {args:?}: {out}{err}");
    };
    let synth = path("synth");
    run(&[
        "synth",
        "--out",
        &synth,
        "--n",
        "32",
        "--seed",
        "11",
        "--seconds",
        "4",
    ]);
    let rows: Vec<Value> = std::fs::read_to_string(dir.join("synth/captions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&Value> = rows.iter().step_by(4).collect();
    assert_eq!(events.len(), 8);
    let (mut train, mut list) = (String::new(), String::new());
    for e in &events {
        let video = format!("{synth}/{}", e["video"].as_str().unwrap());
        let line = serde_json::json!({"video": video, "caption": e["caption"]});
        train.push_str(&format!("{line}\n"));
        list.push_str(&format!("file '{video}'\n"));
    }
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(dir.join("list.txt"), list).unwrap();
    ffmpeg(&[
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        &path("list.txt"),
        "-c",
        "copy",
        &path("long.mp4"),
    ]);

    // Trained until it retrieves each of its eight clips from its caption (R@1 100% in
    // `mvserve eval`; 200 updates of the tiny backbone's adapter take ~15-20 s). The folder of
    // --out does not exist yet: `train` makes it.
    let adapter = path("trained/events.safetensors");
    run(&[
        "train",
        "--data",
        &path("train.jsonl"),
        "--model-dir",
        MODEL,
        "--task",
        "events",
        "--out",
        &adapter,
        "--epochs",
        "200",
        "--batch",
        "8",
        "--lr",
        "1e-3",
        "--scale",
        "1",
        "--frames",
        "4",
        "--words",
        "24",
        "--seed",
        "7",
        "--cache-dir",
        &path("frames"),
    ]);
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("adapters")).unwrap();
    std::fs::copy(&adapter, data.join("adapters/events.safetensors")).unwrap();

    let s = Server::start(
        &data,
        &["--segment-seconds", "4", "--segment-min-seconds", "8"],
    );
    let long = std::fs::read(dir.join("long.mp4")).unwrap();
    let v = upload(
        &s,
        "events",
        &[Part::Text("id", "long"), Part::File("long.mp4", long)],
    );
    // 4 s segments every 2 s over 32 s: starts 0, 2, ..., 28.
    assert_eq!(v["indexed"][0]["segments"], 15, "{v}");
    for (j, e) in events.iter().enumerate() {
        let caption = e["caption"].as_str().unwrap();
        let q: String = url::form_urlencoded::byte_serialize(caption.as_bytes()).collect();
        let (st, v) = s.get(&format!("/search?task=events&k=1&segments=3&q={q}"));
        assert_eq!(st, 200, "{v}");
        let top = &v["hits"][0];
        assert_eq!(top["id"], "long", "{caption:?}: {v}");
        let want = serde_json::json!([CLIP_S * j as f64, CLIP_S * (j + 1) as f64]);
        let got = serde_json::json!([top["moment"]["start_s"], top["moment"]["end_s"]]);
        assert_eq!(got, want, "{caption:?} returned the wrong moment: {v}");
    }
}

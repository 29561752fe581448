//! What is acknowledged is never lost, tested as a property on the real binary: seeded random
//! uploads (odd ids, metadata with deep nesting, Unicode, escapes and numbers at their limits,
//! odd file names, parts in any order, several videos per request), re-uploads, deletes and
//! refused hostile inputs, with the server killed by SIGKILL at random moments. After every
//! restart each acknowledged id is there with identical meta, each deleted id is gone, nothing a
//! refused request sent is there, and searches give every untouched video the same score.
//! `MVSERVE_CRASH_ROUNDS` sets the number of kills (50 by default, as CI runs it) and
//! `MVSERVE_CRASH_SEED` the seed. The same runs against a real Milvus (`--store milvus://`) when
//! `MVSERVE_TEST_MILVUS` is set (always in CI), `MVSERVE_CRASH_ROUNDS_MILVUS` kills (15), and
//! with moments on (videos stored as segments), `MVSERVE_CRASH_ROUNDS_SEGMENTS` kills (20).

use crate::common;

use common::server::{json_of, multipart, video, Part, Server};
use common::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STRINGS: &[&str] = &[
    "",
    "plain",
    "ünïcödé",
    "日本語のテキスト",
    "emoji 🎬🍿👩‍👩‍👧",
    "rtl עברית العربية",
    "e\u{301} combining",
    "quote \" backslash \\ slash /",
    "newline\nand\ttab",
    "nul \u{0} inside",
    "\u{2028}\u{2029} separators",
    "\u{FEFF}bom",
    "surrogate pair 𝄞",
];

fn number(r: &mut Rng) -> Value {
    match r.below(10) {
        0 => json!(i64::MIN),
        1 => json!(u64::MAX),
        2 => json!(f64::MAX),
        3 => json!(f64::MIN_POSITIVE),
        4 => json!(5e-324),
        5 => json!(-0.0),
        6 => json!(0.1),
        7 => json!(1.000_000_000_000_000_2),
        8 => json!(r.next_u64() as f64 / 7.0),
        _ => json!(r.next_u64() as i64),
    }
}

fn meta(r: &mut Rng, depth: usize) -> Value {
    let leaf = depth >= 5 || r.below(3) == 0;
    match r.below(if leaf { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(r.below(2) == 0),
        2 => number(r),
        3 => json!(r.pick(STRINGS)),
        4 => Value::Array((0..r.below(4)).map(|_| meta(r, depth + 1)).collect()),
        _ => Value::Object(
            (0..r.below(4))
                .map(|_| (r.pick(STRINGS).to_string(), meta(r, depth + 1)))
                .collect(),
        ),
    }
}

/// A meta value as the client sends it: random, or nested exactly as deep as allowed.
fn random_meta(r: &mut Rng) -> Value {
    match r.below(6) {
        0 => {
            let mut v = json!("core");
            for i in 0..32 {
                v = if i % 2 == 0 {
                    json!([v])
                } else {
                    json!({"k": v})
                };
            }
            v
        }
        1 => json!({"blob": "x".repeat(60 << 10)}),
        _ => meta(r, 0),
    }
}

const IDS: &[&str] = &[
    "plain",
    "ünïcödé",
    "with space",
    "slash/inside",
    "../../etc/passwd",
    "emoji 🎬",
    "日本語のid",
    "quote\"back\\slash",
    "%2F%00",
    "a",
];

fn long_id() -> String {
    "é".repeat(128)
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const CLIPS: &[&str] = &["carphone_distorted.mp4", "realshort.mp4", "video740.mp4"];

/// What the test knows about the store.
#[derive(Default)]
struct Model {
    live: BTreeMap<String, Value>,
    gone: BTreeSet<String>,
    /// Sent but not answered when the server died: (id, the meta it would have, or None for a
    /// delete).
    uncertain: Vec<(String, Option<Value>)>,
    /// Scores for the fixed query at the last check, of ids untouched since.
    scores: HashMap<String, f32>,
    /// How many acknowledged ids, and how many deleted ones, the checks after restarts read
    /// back: the run must have checked both kinds, whatever state it ends in.
    checked_live: usize,
    checked_gone: usize,
}

impl Model {
    fn touch(&mut self, id: &str) {
        self.scores.remove(id);
    }
}

struct Worker {
    base: String,
    clips: Vec<Vec<u8>>,
}

impl Worker {
    /// One random operation; returns false once the server is gone.
    fn step(&self, r: &mut Rng, model: &Mutex<Model>) -> bool {
        match r.below(10) {
            0..=5 => self.upload(r, model),
            6 | 7 => self.delete(r, model),
            _ => self.refused(r, model),
        }
    }

    fn upload(&self, r: &mut Rng, model: &Mutex<Model>) -> bool {
        let n_videos = 1 + r.below(2);
        // (id, whether the request names it, meta, file name, clip)
        let mut plan: Vec<(String, bool, Value, String, usize)> = Vec::new();
        for _ in 0..n_videos {
            let id = match r.below(8) {
                0 => None,
                1 => Some(long_id()),
                _ => Some(r.pick(IDS).to_string()),
            };

            let name = match r.below(4) {
                0 => String::new(),
                1 => "ﬁlé name (1).mp4".to_string(),
                2 => "n".repeat(255),
                _ => "clip.mp4".to_string(),
            };
            let clip = r.below(self.clips.len());
            // Without an id the server names the video by its content's hash.
            let named = id.is_some();
            let id =
                id.unwrap_or_else(|| blake3::hash(&self.clips[clip]).to_hex()[..16].to_string());
            plan.push((id, named, random_meta(r), name, clip));
        }
        // One request sends each id once: later parts would replace earlier ones.
        let mut seen = BTreeSet::new();
        plan.retain(|(id, ..)| seen.insert(id.clone()));
        let meta_texts: Vec<String> = plan.iter().map(|(_, _, m, ..)| m.to_string()).collect();
        let mut parts = Vec::new();
        for (i, (id, named, _, name, clip)) in plan.iter().enumerate() {
            let id_part = named.then(|| Part::Text("id", id));
            let meta_part = Part::Text("meta", &meta_texts[i]);
            let video = Part::File(name, self.clips[*clip].clone());
            // Fields apply to the next video, in either order.
            if r.below(2) == 0 {
                parts.extend(id_part);
                parts.push(meta_part);
            } else {
                parts.push(meta_part);
                parts.extend(id_part);
            }
            parts.push(video);
        }
        {
            let mut m = model.lock().unwrap();
            for (id, _, meta, ..) in &plan {
                m.uncertain.push((id.clone(), Some(meta.clone())));
            }
        }
        let (ct, body) = multipart(&parts);
        let resp = ureq::post(&format!("{}/index?task=clip", self.base))
            .set("Content-Type", &ct)
            .timeout(Duration::from_secs(60))
            .send_bytes(&body);
        let (status, body) = match resp {
            Err(ureq::Error::Transport(_)) => return false,
            r => json_of(r),
        };
        let mut m = model.lock().unwrap();
        m.uncertain.clear();
        if status == 503 {
            // A restart's re-embedding or a full queue: nothing was stored.
            return true;
        }
        assert_eq!(status, 200, "upload refused: {body}");
        let indexed = body["indexed"].as_array().unwrap();
        assert_eq!(indexed.len(), plan.len());
        for (v, (id, _, meta, ..)) in indexed.iter().zip(&plan) {
            assert_eq!(v["id"].as_str(), Some(id.as_str()));
            let id = id.clone();
            m.touch(&id);
            m.gone.remove(&id);
            m.live.insert(id, meta.clone());
        }
        true
    }

    fn delete(&self, r: &mut Rng, model: &Mutex<Model>) -> bool {
        let id = {
            let mut m = model.lock().unwrap();
            let ids: Vec<String> = m.live.keys().cloned().collect();
            if ids.is_empty() {
                return true;
            }
            let id = r.pick(&ids).clone();
            m.uncertain.push((id.clone(), None));
            id
        };
        let resp = ureq::delete(&format!("{}/videos/clip/{}", self.base, path_segment(&id)))
            .timeout(Duration::from_secs(30))
            .call();
        let (status, body) = match resp {
            Err(ureq::Error::Transport(_)) => return false,
            r => json_of(r),
        };
        let mut m = model.lock().unwrap();
        m.uncertain.clear();
        assert_eq!(status, 200, "delete of {id:?}: {body}");
        m.touch(&id);
        m.live.remove(&id);
        m.gone.insert(id);
        true
    }

    /// A request the server must refuse whole; it names ids the test never acknowledges.
    fn refused(&self, r: &mut Rng, _model: &Mutex<Model>) -> bool {
        let deep = "[".repeat(33) + &"]".repeat(33);
        let (id, meta) = match r.below(3) {
            0 => ("refused-deep", deep.as_str()),
            1 => ("refused\u{7}bell", "{}"),
            _ => ("refused-json", "{\"a\": 1e999}"),
        };
        let clip = self.clips[0].clone();
        let (ct, body) = multipart(&[
            Part::Text("id", id),
            Part::Text("meta", meta),
            Part::File("x.mp4", clip),
        ]);
        let resp = ureq::post(&format!("{}/index?task=clip", self.base))
            .set("Content-Type", &ct)
            .timeout(Duration::from_secs(30))
            .send_bytes(&body);
        let (status, body) = match resp {
            Err(ureq::Error::Transport(_)) => return false,
            r => json_of(r),
        };
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        true
    }
}

fn get_meta(s: &Server, id: &str) -> Option<Value> {
    let (status, body) = s.get(&format!("/videos/clip/{}", path_segment(id)));
    match status {
        200 => Some(body["meta"].clone()),
        404 => None,
        _ => panic!("GET {id:?}: {status} {body}"),
    }
}

/// Resolves what was in flight at the kill, then checks everything the model knows.
fn verify(s: &Server, m: &mut Model, round: usize) {
    for (id, intended) in std::mem::take(&mut m.uncertain) {
        m.touch(&id);
        match (get_meta(s, &id), intended) {
            (Some(actual), Some(meta)) => {
                // Either the upload committed, or the id kept its old record.
                assert!(
                    actual == meta || m.live.get(&id) == Some(&actual),
                    "round {round}: {id:?} has meta that was never sent"
                );
                m.live.insert(id.clone(), actual);
                m.gone.remove(&id);
            }
            (Some(actual), None) => assert_eq!(m.live.get(&id), Some(&actual), "round {round}"),
            (None, _) => {
                m.live.remove(&id);
                m.gone.insert(id);
            }
        }
    }
    for (id, meta) in &m.live {
        let actual = get_meta(s, id);
        assert_eq!(
            actual.as_ref(),
            Some(meta),
            "round {round}: acknowledged {id:?} lost or changed"
        );
    }
    for id in &m.gone {
        assert_eq!(
            get_meta(s, id),
            None,
            "round {round}: deleted {id:?} is back"
        );
    }
    m.checked_live += m.live.len();
    m.checked_gone += m.gone.len();
    for id in ["refused-deep", "refused\u{7}bell", "refused-json"] {
        assert_eq!(
            get_meta(s, id),
            None,
            "round {round}: a refused upload was stored"
        );
    }
    let (status, body) = s.get("/search?task=clip&q=a%20video&k=1000");
    assert_eq!(status, 200, "{body}");
    let hits: HashMap<String, f32> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    for id in hits.keys() {
        assert!(
            m.live.contains_key(id),
            "round {round}: search found {id:?}, never acknowledged"
        );
    }
    assert_eq!(
        hits.len(),
        m.live.len(),
        "round {round}: search misses videos"
    );
    for (id, score) in &m.scores {
        let now = hits.get(id).copied();
        assert!(
            now.is_some_and(|x| (x - score).abs() <= 1e-6),
            "round {round}: score of {id:?} changed from {score} to {now:?}"
        );
    }
    m.scores = hits;
}

/// With moments on: once the start's sweep has run, the task holds exactly the vectors of its
/// live videos (one per segment of each, as its record lists them): no segment a crash left
/// behind stays stored, and no live video lost one.
fn verify_segments(s: &Server, m: &Model, round: usize) {
    let mut want = 0;
    for id in m.live.keys() {
        let (status, v) = s.get(&format!("/videos/clip/{}", path_segment(id)));
        assert_eq!(status, 200, "round {round}: {id:?}: {v}");
        want += v["segments"].as_array().map_or(1, |spans| spans.len());
    }
    let vectors = || s.get("/tasks/clip").1["vectors"].as_u64().unwrap_or(0) as usize;
    let settled = (0..100).any(|_| {
        let ok = vectors() == want;
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(
        settled,
        "round {round}: {} vectors stored, {want} expected for {} live videos",
        vectors(),
        m.live.len()
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn acknowledged_uploads_survive_sigkill_at_random_points() {
    let rounds = env_or("MVSERVE_CRASH_ROUNDS", 50);
    let seed = env_or("MVSERVE_CRASH_SEED", 0x5eed);
    let data = tempfile::tempdir().unwrap();
    crash_rounds(data.path(), rounds, seed, 1, &["--no-grpc"]);
}

/// The same against a real Milvus (`--store milvus://`, one process in `--role all`): an
/// upload is acknowledged only once Milvus holds it, and a kill between the insert and the
/// answer leaves a record the client was never told of, which `verify` accepts as it does for
/// the embedded store. Fewer rounds (`MVSERVE_CRASH_ROUNDS_MILVUS`, 15 by default): each start
/// waits for Milvus and lists the generation's rows to sweep unowned files.
#[test]
fn acknowledged_uploads_survive_sigkill_on_milvus() {
    let Some(url) = common::milvus::url() else {
        return;
    };
    let rounds = env_or("MVSERVE_CRASH_ROUNDS_MILVUS", 15);
    let seed = env_or("MVSERVE_CRASH_SEED", 0x5eed);
    let data = tempfile::tempdir().unwrap();
    let store = format!("{url}?prefix=crash{}_&timeout_ms=5000", std::process::id());
    let blobs = data.path().join("blobs");
    let args = [
        "--no-grpc",
        "--store",
        &store,
        "--blob-dir",
        blobs.to_str().unwrap(),
    ];
    // Each acknowledgement waits for a strongly consistent read from Milvus (a time tick, about
    // 200 ms here), so a round runs three times as long to see as many operations.
    crash_rounds(&data.path().join("server"), rounds, seed, 3, &args);
}

/// Moments on (`--segment-seconds 2`): the fixture clips of 4 s and 10.7 s become 3 and 10
/// segments, the 1.2 s one stays one vector, so re-uploads of an id move between layouts and
/// a kill can fall between a commit and the removal of the segments it left behind (a
/// shorter re-upload, a delete). After every restart the sweep must leave exactly the live
/// videos' segments. `MVSERVE_CRASH_ROUNDS_SEGMENTS` kills (20 by default).
#[test]
fn acknowledged_segmented_uploads_survive_sigkill() {
    let rounds = env_or("MVSERVE_CRASH_ROUNDS_SEGMENTS", 20);
    let seed = env_or("MVSERVE_CRASH_SEED", 0x5eed);
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--no-grpc",
        "--segment-seconds",
        "2",
        "--segment-min-seconds",
        "3",
    ];
    // Segmenting decodes a video twice and encodes each segment: rounds run twice as long.
    crash_rounds(data.path(), rounds, seed, 2, &args);
}

/// `rounds` kills of a server started with `args` on `data`, checking everything after each;
/// each kill comes 50-1550 ms after the start, times `slow`.
fn crash_rounds(data: &std::path::Path, rounds: usize, seed: u64, slow: u64, args: &[&str]) {
    eprintln!("crash test: {rounds} kills, seed {seed} (MVSERVE_CRASH_SEED), args {args:?}");
    std::fs::create_dir_all(data).unwrap();
    let clips: Vec<Vec<u8>> = CLIPS.iter().map(|c| video(c)).collect();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut r = Rng(seed);
    let mut acknowledged_ops = 0usize;
    for round in 0..=rounds {
        let mut s = Server::start(data, args);
        verify(&s, &mut model.lock().unwrap(), round);
        if args.contains(&"--segment-seconds") {
            verify_segments(&s, &model.lock().unwrap(), round);
        }
        if round == rounds {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let w = Worker {
                base: s.base.clone(),
                clips: clips.clone(),
            };
            let model = model.clone();
            let stop = stop.clone();
            let mut wr = Rng(r.next_u64());
            std::thread::spawn(move || {
                let mut ops = 0;
                while !stop.load(Ordering::Acquire) && w.step(&mut wr, &model) {
                    ops += 1;
                }
                ops
            })
        };
        std::thread::sleep(Duration::from_millis(slow * (50 + r.below(1500) as u64)));
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        stop.store(true, Ordering::Release);
        acknowledged_ops += worker.join().unwrap();
    }
    let m = model.lock().unwrap();
    eprintln!(
        "crash test: {acknowledged_ops} operations answered, {} live and {} deleted ids at the end",
        m.live.len(),
        m.gone.len()
    );
    assert!(
        acknowledged_ops >= rounds,
        "too few operations ran to mean anything"
    );
    eprintln!(
        "crash test: the checks read back {} acknowledged and {} deleted ids in all",
        m.checked_live, m.checked_gone
    );
    // Over the run, not at its end: ids are re-uploaded after a delete, so a run can end with
    // every deleted id live again (the default seed did on Milvus) after checking many deletes.
    if rounds >= 10 {
        assert!(
            m.checked_live > 0 && m.checked_gone > 0,
            "the checks never saw both an acknowledged and a deleted id"
        );
    }
}

//! Durability of `store::TaskStore`: persistence, recovery from a log cut at any point, damaged
//! snapshots, and a child process killed with SIGKILL while it ingests.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvserve::store::{BlobKind, StoreConfig, StoreError, TaskStore};
use serde_json::json;

const DIM: usize = 16;

/// splitmix64: a deterministic generator so that vectors can be recomputed from their id.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn vec_for(id: &str) -> Vec<f32> {
    let seed = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut r = Rng::new(seed);
    (0..DIM).map(|_| r.f32()).collect()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn config() -> StoreConfig {
    StoreConfig {
        snapshot_every: 0,
        ..StoreConfig::default()
    }
}

fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

/// The state a store should show: id -> meta.
type Model = BTreeMap<String, serde_json::Value>;

fn assert_matches(store: &TaskStore, model: &Model, what: &str) {
    assert_eq!(store.len(), model.len(), "{what}: len");
    for (id, meta) in model {
        let rec = store
            .get(id)
            .unwrap_or_else(|| panic!("{what}: {id} missing"));
        assert_eq!(&rec.meta, meta, "{what}: meta of {id}");
        let v = store.vector(id).unwrap();
        let want = unit(&vec_for(id));
        let err: f32 = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum();
        assert!(err < 1e-4, "{what}: vector of {id}");
    }
    let ids: HashSet<String> = store.ids().into_iter().collect();
    assert_eq!(ids, model.keys().cloned().collect(), "{what}: ids");
}

#[test]
fn persistence_round_trip_with_snapshot_deletes_and_replacements() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    {
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        assert_eq!(s.digest(), None);
        for i in 0..40 {
            let id = format!("v{i}");
            s.add(&id, &vec_for(&id), "dig-a", json!({"i": i})).unwrap();
            model.insert(id, json!({"i": i}));
        }
        s.snapshot().unwrap();
        for i in 0..10 {
            assert!(s.delete(&format!("v{i}")).unwrap());
            model.remove(&format!("v{i}"));
        }
        assert!(!s.delete("never-added").unwrap());
        // Re-adding an id replaces its meta (the vector is recomputed from the id).
        s.add("v20", &vec_for("v20"), "dig-a", json!({"replaced": true}))
            .unwrap();
        model.insert("v20".into(), json!({"replaced": true}));
        assert_matches(&s, &model, "before reopen");
    }
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_matches(&s, &model, "after reopen");
    assert_eq!(s.digest().as_deref(), Some("dig-a"));
    let hits = s.search(&vec_for("v33"), 3).unwrap();
    assert_eq!(hits[0].id, "v33");
    assert!((hits[0].score - 1.0).abs() < 1e-4);
    assert_eq!(hits[0].meta, json!({"i": 33}));
    // A second snapshot, then reopen from it.
    s.snapshot().unwrap();
    drop(s);
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_matches(&s, &model, "after second snapshot");
    assert_eq!(
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snap"))
            .count(),
        2,
        "keeps two snapshots"
    );
}

#[test]
fn recovery_after_a_cut_at_every_record_boundary_and_inside_every_record() {
    let dir = tempfile::tempdir().unwrap();
    // (log length after the op, model after the op)
    let mut states: Vec<(u64, Model)> = vec![(0, Model::new())];
    {
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        let mut model = Model::new();
        for i in 0..24 {
            if i % 5 == 4 {
                let victim = format!("id{}", i - 3);
                s.delete(&victim).unwrap();
                model.remove(&victim);
            } else {
                let id = format!("id{i}");
                s.add(&id, &vec_for(&id), "dig", json!({"n": i})).unwrap();
                model.insert(id, json!({"n": i}));
            }
            let len = fs::metadata(&wal_segments(dir.path())[0]).unwrap().len();
            states.push((len, model.clone()));
        }
    }
    let segs = wal_segments(dir.path());
    assert_eq!(segs.len(), 1);
    let full = fs::read(&segs[0]).unwrap();
    let mut cuts = Vec::new();
    for w in states.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        cuts.extend([a, a + 1, a + 4, a + 8, (a + b) / 2, b - 1]);
    }
    cuts.push(full.len() as u64);
    for cut in cuts {
        let want = &states.iter().rev().find(|(len, _)| *len <= cut).unwrap().1;
        let copy = tempfile::tempdir().unwrap();
        let seg = copy.path().join(segs[0].file_name().unwrap());
        fs::write(&seg, &full[..cut as usize]).unwrap();
        let s = TaskStore::open(copy.path(), DIM, config()).unwrap();
        assert_matches(&s, want, &format!("cut at {cut}"));
        // The torn tail was cut off, so new records land after the intact ones.
        s.add("after", &vec_for("after"), "dig", json!(null))
            .unwrap();
        drop(s);
        let s = TaskStore::open(copy.path(), DIM, config()).unwrap();
        let mut want = want.clone();
        want.insert("after".into(), json!(null));
        assert_matches(&s, &want, &format!("append after cut at {cut}"));
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        for id in ["a", "b", "c"] {
            s.add(id, &vec_for(id), "dig", json!(id)).unwrap();
        }
    }
    let seg = &wal_segments(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    fs::write(seg, &bytes).unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    let model: Model = [("a", json!("a")), ("b", json!("b"))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_matches(&s, &model, "after bit flip");
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    {
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        for i in 0..30 {
            let id = format!("x{i}");
            s.add(&id, &vec_for(&id), "dig", json!(i)).unwrap();
            model.insert(id, json!(i));
            if i == 9 || i == 19 {
                s.snapshot().unwrap();
            }
        }
    }
    let mut snaps: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    snaps.sort();
    assert_eq!(snaps.len(), 2);
    let newest = snaps.last().unwrap();
    let mut b = fs::read(newest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    fs::write(newest, &b).unwrap();
    // A crash in the middle of writing a snapshot leaves a temp file; it must be ignored.
    fs::write(
        dir.path().join("snapshot-00000000000000000099.snap.tmp"),
        b"junk",
    )
    .unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_matches(&s, &model, "after damaged snapshot");
}

#[test]
fn typed_errors_for_bad_input_and_digest_mixing() {
    let dir = tempfile::tempdir().unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    let v = vec_for("a");
    assert!(matches!(
        s.add("a", &v[..3], "d1", json!(null)),
        Err(StoreError::Dimension {
            expected: 16,
            got: 3
        })
    ));
    assert!(matches!(
        s.add("a", &[0.0; DIM], "d1", json!(null)),
        Err(StoreError::InvalidVector)
    ));
    let mut nan = v.clone();
    nan[2] = f32::NAN;
    assert!(matches!(
        s.add("a", &nan, "d1", json!(null)),
        Err(StoreError::InvalidVector)
    ));
    assert!(matches!(
        s.add("", &v, "d1", json!(null)),
        Err(StoreError::EmptyId)
    ));
    s.add("a", &v, "d1", json!(null)).unwrap();
    assert!(matches!(
        s.add("b", &v, "d2", json!(null)),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(s.len(), 1);
    // Emptied, the store accepts a new adapter generation.
    s.delete("a").unwrap();
    assert_eq!(s.digest(), None);
    s.add("b", &v, "d2", json!(null)).unwrap();
    assert_eq!(s.get("b").unwrap().adapter_digest, "d2");
    assert!(matches!(
        TaskStore::open(dir.path(), DIM, config()),
        Err(StoreError::Locked(_))
    ));
    drop(s);
    assert!(matches!(
        TaskStore::open(dir.path(), DIM + 1, config()),
        Err(StoreError::Dimension {
            expected: 17,
            got: 16
        })
    ));
    {
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        s.snapshot().unwrap();
    }
    assert!(matches!(
        TaskStore::open(dir.path(), DIM + 1, config()),
        Err(StoreError::Dimension {
            expected: 17,
            got: 16
        })
    ));
    let bad = StoreConfig {
        hnsw_m: 300,
        ..config()
    };
    assert!(matches!(
        TaskStore::open(dir.path(), DIM, bad),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn blobs_are_named_safely_and_removed_with_their_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    let outside = dir.path().join("outside.txt");
    for (id, body) in [("../../outside.txt", "evil"), ("ok/id", "fine")] {
        let tmp = dir.path().join("upload.tmp");
        fs::write(&tmp, body).unwrap();
        s.put_blob(id, BlobKind::Original, &tmp).unwrap();
        assert!(!tmp.exists());
        let p = s.blob_path(id, BlobKind::Original).unwrap();
        assert!(p.starts_with(dir.path().join("blobs")));
        assert_eq!(fs::read_to_string(&p).unwrap(), body);
        s.add(id, &vec_for(id), "d", json!(null)).unwrap();
    }
    assert!(!outside.exists());
    assert!(s.blob_path("ok/id", BlobKind::Thumbnail).is_none());
    let p = s.blob_path("ok/id", BlobKind::Original).unwrap();
    assert!(s.delete("ok/id").unwrap());
    assert!(!p.exists());
    // A blob whose add never happened (crash between the two) is swept on the next open.
    let tmp = dir.path().join("orphan.tmp");
    fs::write(&tmp, "x").unwrap();
    s.put_blob("orphan", BlobKind::Thumbnail, &tmp).unwrap();
    let orphan = s.blob_path("orphan", BlobKind::Thumbnail).unwrap();
    drop(s);
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert!(!orphan.exists());
    assert!(s
        .blob_path("../../outside.txt", BlobKind::Original)
        .is_some());
}

/// Child side of the SIGKILL test: ingests until killed, printing each acknowledged operation.
/// Does nothing unless the parent set `STORE_CRASH_CHILD_DIR`.
#[test]
fn crash_child_ingest() {
    let Ok(dir) = std::env::var("STORE_CRASH_CHILD_DIR") else {
        return;
    };
    let round: usize = std::env::var("STORE_CRASH_ROUND").unwrap().parse().unwrap();
    let cfg = StoreConfig {
        snapshot_every: 25,
        ..StoreConfig::default()
    };
    let s = TaskStore::open(Path::new(&dir), DIM, cfg).unwrap();
    let mut out = std::io::stdout().lock();
    // libtest has printed "test crash_child_ingest ... " without a newline; end that line.
    writeln!(out).unwrap();
    for i in 0.. {
        let id = format!("r{round}-{i}");
        if i % 6 == 5 {
            let victim = format!("r{round}-{}", i - 4);
            writeln!(out, "DELETING {victim}").unwrap();
            out.flush().unwrap();
            s.delete(&victim).unwrap();
            writeln!(out, "DEL {victim}").unwrap();
        } else {
            s.add(&id, &vec_for(&id), "dig", json!({"round": round, "i": i}))
                .unwrap();
            writeln!(out, "ACK {id}").unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    const ROUNDS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut rng = Rng::new(0x5eed);
    let mut acked: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_ingest",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STORE_CRASH_CHILD_DIR", dir.path())
            .env("STORE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Only whole lines count: a line cut by the kill is not an acknowledgement.
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                if buf.ends_with(b"\n") {
                    lines.push(String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned());
                }
                buf.clear();
            }
            lines
        });
        // Up to 250 ms: some kills land while the child is still opening (replaying) the store.
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 250));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut in_flight = HashSet::new();
        for line in &lines {
            if let Some(id) = line.strip_prefix("ACK ") {
                let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
                acked.insert(id.to_string(), json!({"round": round, "i": i}));
                total_acks += 1;
            } else if let Some(id) = line.strip_prefix("DELETING ") {
                in_flight.insert(id.to_string());
            } else if let Some(id) = line.strip_prefix("DEL ") {
                in_flight.remove(id);
                acked.remove(id);
                deleted.insert(id.to_string());
            }
        }
        let s = TaskStore::open(dir.path(), DIM, StoreConfig::default())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        // A delete that was in flight may or may not have happened; everything else must match.
        let mut model = acked.clone();
        for id in &in_flight {
            if s.get(id).is_none() {
                model.remove(id);
            }
        }
        for id in &deleted {
            assert!(s.get(id).is_none(), "round {round}: deleted {id} came back");
        }
        for (id, meta) in &model {
            let rec = s
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} lost"));
            assert_eq!(&rec.meta, meta);
        }
        // At most the one unacknowledged add may be extra.
        let extra: Vec<String> = s
            .ids()
            .into_iter()
            .filter(|id| !model.contains_key(id))
            .collect();
        assert!(
            extra.len() <= 1,
            "round {round}: stored but never acknowledged: {extra:?}; last lines {:?}",
            &lines[lines.len().saturating_sub(4)..]
        );
        acked = s
            .ids()
            .into_iter()
            .map(|id| {
                let meta = s.get(&id).unwrap().meta;
                (id, meta)
            })
            .collect();
        drop(s);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "crash test ran too long"
        );
    }
    assert!(total_acks > 0, "the child never acknowledged anything");
    eprintln!(
        "{ROUNDS} SIGKILL rounds, {total_acks} acknowledged adds, {} live, {:?}",
        acked.len(),
        started.elapsed()
    );
}

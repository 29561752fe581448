//! Durability of `store::TaskStore`: persistence, recovery from a log cut at any point, damaged
//! snapshots, and a child process killed with SIGKILL while it ingests.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mvserve::store::{BlobKind, BlobVersion, NewRecord, StoreConfig, StoreError, TaskStore};
use serde_json::json;

use crate::common::Rng;

const DIM: usize = 16;

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
        let v = BlobVersion::fresh();
        s.put_blob(id, v, BlobKind::Original, &tmp).unwrap();
        assert!(!tmp.exists());
        // Not the record's until the record is added.
        assert!(s.blob_path(id, BlobKind::Original).is_none());
        s.add_records("d", vec![record(id, v)]).unwrap();
        let p = s.blob_path(id, BlobKind::Original).unwrap();
        assert!(p.starts_with(dir.path().join("blobs")));
        assert_eq!(fs::read_to_string(&p).unwrap(), body);
    }
    assert!(!outside.exists());
    assert!(s.blob_path("ok/id", BlobKind::Thumbnail).is_none());
    let p = s.blob_path("ok/id", BlobKind::Original).unwrap();
    assert!(s.delete("ok/id").unwrap());
    assert!(!p.exists());
    // A blob whose add never happened (crash between the two) is swept on the next open.
    let tmp = dir.path().join("orphan.tmp");
    fs::write(&tmp, "x").unwrap();
    s.put_blob("orphan", BlobVersion::fresh(), BlobKind::Thumbnail, &tmp)
        .unwrap();
    let blob_files = || {
        walk_files(&dir.path().join("blobs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .count()
    };
    assert_eq!(blob_files(), 1);
    drop(s);
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_eq!(blob_files(), 0);
    assert!(s
        .blob_path("../../outside.txt", BlobKind::Original)
        .is_some());
}

fn record(id: &str, blobs: BlobVersion) -> NewRecord {
    NewRecord {
        id: id.to_string(),
        vector: vec_for(id),
        meta: json!(null),
        blobs,
    }
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Review item: a re-upload put its new files over the old ones before the log record was
/// written, so a failed commit left the old record with the new files. Now the new files live
/// under their own version until the record that owns them is durable.
#[test]
fn a_failed_re_upload_leaves_the_old_record_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    let put = |body: &str| {
        let tmp = dir.path().join("upload.tmp");
        fs::write(&tmp, body).unwrap();
        let v = BlobVersion::fresh();
        s.put_blob("clip", v, BlobKind::Original, &tmp).unwrap();
        v
    };
    let v1 = put("old bytes");
    s.add_records("d", vec![record("clip", v1)]).unwrap();
    // The re-upload's files land, then its record is refused (a digest from another model).
    let v2 = put("new bytes");
    assert!(s.add_records("other", vec![record("clip", v2)]).is_err());
    let p = s.blob_path("clip", BlobKind::Original).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "old bytes");
    s.discard_blobs("clip", v2).unwrap();
    // discard never touches the live version.
    s.discard_blobs("clip", v1).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "old bytes");
    // A successful re-upload owns its new files, and the old version is gone.
    let v3 = put("newer bytes");
    s.add_records("d", vec![record("clip", v3)]).unwrap();
    let p3 = s.blob_path("clip", BlobKind::Original).unwrap();
    assert_eq!(fs::read_to_string(&p3).unwrap(), "newer bytes");
    assert!(!p.exists());
    assert_eq!(s.get("clip").unwrap().blobs, v3);
    drop(s);
    // And it reads back so after a restart.
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_eq!(s.get("clip").unwrap().blobs, v3);
    assert_eq!(
        fs::read_to_string(s.blob_path("clip", BlobKind::Original).unwrap()).unwrap(),
        "newer bytes"
    );
    assert_eq!(walk_files(&dir.path().join("blobs")).len(), 1);
}

/// A frame as the log writes it: `[u32 len][u32 crc32][payload]`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Review item: a record whose checksum is right but which does not decode used to be taken for a
/// torn tail, and replay cut it off with every record after it. It is corruption: the store
/// refuses to open and names the file and offset; `check` shows it; `repair` cuts the log there
/// and keeps the bytes.
#[test]
fn a_checksummed_record_that_does_not_decode_is_corruption_with_check_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    for id in ["a", "b"] {
        s.add(id, &vec_for(id), "d", json!({"id": id})).unwrap();
    }
    drop(s);
    let seg = wal_segments(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len() as usize;
    // seq 3, an unknown tag, then a valid record after it (seq 4 would follow).
    let mut payload = 3u64.to_le_bytes().to_vec();
    payload.push(0x63);
    let mut bytes = frame(&payload);
    let mut next = 4u64.to_le_bytes().to_vec();
    next.push(2); // delete
    next.extend_from_slice(&1u32.to_le_bytes());
    next.push(b'a');
    bytes.extend_from_slice(&frame(&next));
    fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let seg_name = seg.file_name().unwrap().to_str().unwrap().to_string();
    match TaskStore::open(dir.path(), DIM, config()) {
        Err(StoreError::Corrupt(m)) => {
            assert!(m.contains(&seg_name), "{m}");
            assert!(m.contains(&format!("byte {good_len}")), "{m}");
            assert!(
                !m.contains(dir.path().to_str().unwrap()),
                "no absolute path: {m}"
            );
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a corrupt log must not open"),
    }
    // Nothing was cut off by the failed open.
    assert_eq!(
        fs::metadata(&seg).unwrap().len() as usize,
        good_len + bytes.len()
    );
    let report = mvserve::store::check(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.records, 2);
    assert!(report.problems[0].contains(&format!("{seg_name} at byte {good_len}")));
    let repaired = mvserve::store::repair(dir.path()).unwrap();
    let kept = repaired.kept_in.unwrap();
    let saved = fs::read(kept.join(format!("{seg_name}.from-{good_len}"))).unwrap();
    assert_eq!(saved, bytes);
    assert!(mvserve::store::check(dir.path()).unwrap().is_ok());
    let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s.get("a").unwrap().meta, json!({"id": "a"}));
}

/// `mvserve store check` finds the store below a data folder, exits 1 on corruption naming the
/// file and offset, and `--repair` makes it open again.
#[test]
fn store_check_command_reports_and_repairs() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("tasks/news/gen-0");
    let s = TaskStore::open(&dir, DIM, config()).unwrap();
    s.add("a", &vec_for("a"), "d", json!(1)).unwrap();
    drop(s);
    let seg = wal_segments(&dir).pop().unwrap();
    let mut junk = frame(&[2u8; 9]);
    junk.extend_from_slice(&frame(&[3u8; 9]));
    fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&junk)
        .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mvserve"))
            .args(["store", "check"])
            .arg(data.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DAMAGED") && text.contains("at byte"),
        "{text}"
    );
    let out = run(&["--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("repaired"), "{text}");
    let out = run(&["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["store"]["live_ids"], 1);
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
    let started = Instant::now();
    let mut rng = Rng::new(0x5eed);
    let mut acked: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut child = crate::common::this_test_alone("store_durability::crash_child_ingest")
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

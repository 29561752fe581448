//! One suite for every store backend: the embedded store and a real Milvus must keep the same
//! promises (what is written reads back exactly, replaces and deletes are visible at once,
//! generations hold one adapter digest, the served generation switches in one step, blobs follow
//! their records, and everything survives reopening).
//!
//! The Milvus half needs a server: `MVSERVE_TEST_MILVUS=milvus://127.0.0.1:19530` (CI starts one
//! from the `milvus` PyPI package; see `.ci/run`). Outside CI it is skipped with a notice when the
//! variable is unset; in CI (`CI=true`) a missing server fails the suite.

use mvserve::store::milvus::{MilvusBackend, MilvusUrl};
use mvserve::store::{
    BlobKind, BlobVersion, EmbeddedBackend, NewRecord, StoreBackend, StoreConfig, StoreError,
};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

const DIM: usize = 16;

/// A backend rooted at `root`. Each Milvus backend gets a prefix of its own, so tests running at
/// once (and earlier runs) never see each other's collections.
type Make = fn(&Path, &str) -> Option<Arc<dyn StoreBackend>>;

fn embedded(root: &Path, _prefix: &str) -> Option<Arc<dyn StoreBackend>> {
    Some(Arc::new(EmbeddedBackend::new(
        root,
        DIM,
        StoreConfig::default(),
    )))
}

fn milvus(_root: &Path, prefix: &str) -> Option<Arc<dyn StoreBackend>> {
    let Ok(url) = std::env::var("MVSERVE_TEST_MILVUS") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the Milvus tests: set MVSERVE_TEST_MILVUS (see .ci/run)"
        );
        eprintln!("skipped: set MVSERVE_TEST_MILVUS=milvus://HOST:PORT to run the Milvus half");
        return None;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = MilvusUrl::parse(&format!("{url}{sep}prefix={prefix}"), None).unwrap();
    Some(Arc::new(
        MilvusBackend::new(url, DIM, StoreConfig::default()).unwrap(),
    ))
}

/// A prefix no other test or run uses.
fn prefix(case: &str) -> String {
    format!(
        "t{}_{}_",
        std::process::id(),
        case.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    )
}

fn unit(seed: u64) -> Vec<f32> {
    // A deterministic spread of directions (xorshift), normalised by the store.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 2001) as f32 / 1000.0) - 1.0
        })
        .collect()
}

fn rec(id: &str, seed: u64, meta: serde_json::Value, blobs: BlobVersion) -> NewRecord {
    NewRecord {
        id: id.to_string(),
        vector: unit(seed),
        meta,
        blobs,
    }
}

fn tmp_file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("up-{}", rand_u64()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// Cleans Milvus collections up after a case (the embedded ones go with the temp dir).
struct Cleanup(Arc<dyn StoreBackend>, Vec<&'static str>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for task in &self.1 {
            for g in self.0.generations(task).unwrap_or_default() {
                let _ = self.0.discard(task, g);
            }
        }
    }
}

fn writes_read_back_exactly(make: Make) {
    let root = tempfile::tempdir().unwrap();
    let Some(b) = make(root.path(), &prefix("rb")) else {
        return;
    };
    let _c = Cleanup(b.clone(), vec!["news"]);
    let dir = root.path().join("tasks/news/gen-0");
    let s = b.open("news", 0, &dir, Some("d1")).unwrap();
    let deep = (0..31).fold(json!(1), |v, _| json!([v]));
    let hostile = [
        "plain",
        "quote\"d",
        "back\\slash",
        "é🎬 ünïcode",
        "../../etc/passwd",
        "space and 'single'",
        "x".repeat(256).leak(),
    ];
    let big = "y".repeat(60_000);
    let records: Vec<NewRecord> = hostile
        .iter()
        .enumerate()
        .map(|(i, id)| {
            rec(
                id,
                i as u64 + 1,
                json!({"i": i, "id": id, "deep": deep, "f": 0.1 + i as f64, "big": if i == 0 { big.as_str() } else { "" }}),
                BlobVersion::fresh(),
            )
        })
        .collect();
    let want: Vec<(String, serde_json::Value, BlobVersion)> = records
        .iter()
        .map(|r| (r.id.clone(), r.meta.clone(), r.blobs))
        .collect();
    s.add_records("d1", records).unwrap();
    assert_eq!(s.count().unwrap(), hostile.len());
    for (id, meta, blobs) in &want {
        let r = s
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id:?} missing"));
        assert_eq!(&r.id, id);
        assert_eq!(&r.meta, meta, "{id:?}");
        assert_eq!(r.blobs, *blobs);
        assert_eq!(r.adapter_digest, "d1");
    }
    let mut ids = s.ids().unwrap();
    ids.sort();
    let mut expect: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
    expect.sort();
    assert_eq!(ids, expect);
    assert!(s.get("not there").unwrap().is_none());
    assert!(
        s.get("plain\"").unwrap().is_none(),
        "a quote must not widen the match"
    );
}

fn search_finds_nearest(make: Make) {
    let root = tempfile::tempdir().unwrap();
    let Some(b) = make(root.path(), &prefix("se")) else {
        return;
    };
    let _c = Cleanup(b.clone(), vec!["t"]);
    let s = b.open("t", 0, &root.path().join("g"), Some("d")).unwrap();
    let n = 300;
    let records = (0..n)
        .map(|i| {
            rec(
                &format!("v{i}"),
                i,
                json!({"i": i}),
                BlobVersion::UNVERSIONED,
            )
        })
        .collect();
    s.add_records("d", records).unwrap();
    for i in [0u64, 17, 299] {
        let hits = s.search(&unit(i), 5).unwrap();
        assert_eq!(hits.len(), 5);
        assert_eq!(hits[0].id, format!("v{i}"));
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
        assert_eq!(hits[0].meta, json!({"i": i}));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
    assert_eq!(s.search(&unit(1), 1000).unwrap().len(), n as usize);
    assert!(s.search(&unit(1), 0).unwrap().is_empty());
    assert!(matches!(
        s.search(&[0.0; DIM], 3),
        Err(StoreError::InvalidVector)
    ));
    assert!(matches!(
        s.search(&[1.0; 3], 3),
        Err(StoreError::Dimension { .. })
    ));
}

fn replace_and_delete_are_visible_at_once(make: Make) {
    let root = tempfile::tempdir().unwrap();
    let Some(b) = make(root.path(), &prefix("rd")) else {
        return;
    };
    let _c = Cleanup(b.clone(), vec!["t"]);
    let dir = root.path().join("tasks/t/gen-0");
    let s = b.open("t", 0, &dir, Some("d")).unwrap();
    let tmp = root.path().join("tmp");
    let v1 = BlobVersion::fresh();
    s.put_blob("a", v1, BlobKind::Original, &tmp_file(&tmp, b"one"))
        .unwrap();
    s.add_records("d", vec![rec("a", 1, json!({"n": 1}), v1)])
        .unwrap();
    let p1 = s.blob_path("a", BlobKind::Original).unwrap().unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), b"one");
    // A re-upload: new blobs under a new version, then the record; the old files go.
    let v2 = BlobVersion::fresh();
    s.put_blob("a", v2, BlobKind::Original, &tmp_file(&tmp, b"two"))
        .unwrap();
    s.add_records("d", vec![rec("a", 2, json!({"n": 2}), v2)])
        .unwrap();
    assert_eq!(s.count().unwrap(), 1);
    assert_eq!(s.get("a").unwrap().unwrap().meta, json!({"n": 2}));
    let p2 = s.blob_path("a", BlobKind::Original).unwrap().unwrap();
    assert_eq!(std::fs::read(&p2).unwrap(), b"two");
    assert!(!p1.exists(), "the replaced version's file is removed");
    assert_eq!(s.search(&unit(2), 1).unwrap()[0].id, "a");
    // A failed upload's blobs are discarded; the live version stays.
    let v3 = BlobVersion::fresh();
    s.put_blob("a", v3, BlobKind::Thumbnail, &tmp_file(&tmp, b"t"))
        .unwrap();
    s.discard_blobs("a", v3).unwrap();
    s.discard_blobs("a", v2).unwrap();
    assert!(p2.exists(), "discarding the live version is a no-op");
    // Several records of one id in one batch: the last wins.
    s.add_records(
        "d",
        vec![
            rec("b", 3, json!("first"), BlobVersion::UNVERSIONED),
            rec("b", 4, json!("last"), BlobVersion::UNVERSIONED),
        ],
    )
    .unwrap();
    assert_eq!(s.get("b").unwrap().unwrap().meta, json!("last"));
    assert!(s.delete("a").unwrap());
    assert!(!s.delete("a").unwrap());
    assert!(s.get("a").unwrap().is_none());
    assert!(!p2.exists(), "a deleted record's files are removed");
    assert_eq!(s.count().unwrap(), 1);
    assert!(s.search(&unit(2), 5).unwrap().iter().all(|h| h.id != "a"));
}

fn refuses_what_it_cannot_hold(make: Make) {
    let root = tempfile::tempdir().unwrap();
    let Some(b) = make(root.path(), &prefix("rf")) else {
        return;
    };
    let _c = Cleanup(b.clone(), vec!["t"]);
    let s = b.open("t", 0, &root.path().join("g"), Some("d")).unwrap();
    s.add("x", &unit(1), "d", json!(null)).unwrap();
    assert!(matches!(
        s.add("y", &unit(1), "other", json!(null)),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(matches!(
        s.add("y", &[0.0; DIM], "d", json!(null)),
        Err(StoreError::InvalidVector)
    ));
    assert!(matches!(
        s.add("y", &[1.0, f32::NAN].repeat(DIM / 2), "d", json!(null)),
        Err(StoreError::InvalidVector)
    ));
    assert!(matches!(
        s.add("", &unit(1), "d", json!(null)),
        Err(StoreError::EmptyId)
    ));
    assert!(matches!(
        s.add("y", &[1.0; 3], "d", json!(null)),
        Err(StoreError::Dimension { .. })
    ));
    // A refused batch changes nothing.
    assert!(s
        .add_records(
            "d",
            vec![
                rec("ok", 2, json!(1), BlobVersion::UNVERSIONED),
                rec("", 3, json!(1), BlobVersion::UNVERSIONED),
            ],
        )
        .is_err());
    assert!(s.get("ok").unwrap().is_none());
    assert_eq!(s.count().unwrap(), 1);
}

fn generations_switch_in_one_step_and_survive_reopening(make: Make) {
    let root = tempfile::tempdir().unwrap();
    let p = prefix("gs");
    let Some(b) = make(root.path(), &p) else {
        return;
    };
    let _c = Cleanup(b.clone(), vec!["news-1", "news_1"]);
    // Task names that differ only in '-' and '_' stay apart.
    for task in ["news-1", "news_1"] {
        assert_eq!(b.served(task).unwrap(), None);
        let g0 = b
            .open(task, 0, &root.path().join(task).join("gen-0"), Some("a"))
            .unwrap();
        g0.add("v", &unit(1), "a", json!({"task": task})).unwrap();
        b.serve(task, 0).unwrap();
    }
    assert_eq!(b.served("news-1").unwrap(), Some(0));
    let g1 = b
        .open("news-1", 1, &root.path().join("news-1/gen-1"), Some("b"))
        .unwrap();
    g1.add("w", &unit(2), "b", json!(2)).unwrap();
    assert_eq!(
        b.served("news-1").unwrap(),
        Some(0),
        "not served before serve()"
    );
    b.serve("news-1", 1).unwrap();
    assert_eq!(b.served("news-1").unwrap(), Some(1));
    assert_eq!(b.served("news_1").unwrap(), Some(0));
    let mut tasks = b.tasks().unwrap();
    tasks.retain(|t| t.starts_with("news"));
    assert_eq!(tasks, vec!["news-1", "news_1"]);
    drop(g1);
    // Reopen through a fresh backend, as a restarted process would.
    let b2 = make(root.path(), &p).unwrap();
    assert_eq!(b2.served("news-1").unwrap(), Some(1));
    let g1 = b2
        .open("news-1", 1, &root.path().join("news-1/gen-1"), None)
        .unwrap();
    assert_eq!(g1.digest().unwrap().as_deref(), Some("b"));
    assert_eq!(g1.get("w").unwrap().unwrap().meta, json!(2));
    let g0 = b2
        .open("news_1", 0, &root.path().join("news_1/gen-0"), None)
        .unwrap();
    assert_eq!(
        g0.get("v").unwrap().unwrap().meta,
        json!({"task": "news_1"})
    );
    // Opening a generation for another adapter than the one it holds is refused (the embedded
    // store allows one handle per directory: let go of this one first).
    drop(g1);
    match b2.open("news-1", 1, &root.path().join("news-1/gen-1"), Some("zzz")) {
        Ok(s) => assert!(matches!(
            s.add("q", &unit(3), "zzz", json!(0)),
            Err(StoreError::DigestMismatch { .. })
        )),
        Err(e) => assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}"),
    }
}

macro_rules! conformance {
    ($($backend:ident),*) => {$(
        mod $backend {
            #[test]
            fn writes_read_back_exactly() {
                super::writes_read_back_exactly(super::$backend)
            }
            #[test]
            fn search_finds_nearest() {
                super::search_finds_nearest(super::$backend)
            }
            #[test]
            fn replace_and_delete_are_visible_at_once() {
                super::replace_and_delete_are_visible_at_once(super::$backend)
            }
            #[test]
            fn refuses_what_it_cannot_hold() {
                super::refuses_what_it_cannot_hold(super::$backend)
            }
            #[test]
            fn generations_switch_in_one_step_and_survive_reopening() {
                super::generations_switch_in_one_step_and_survive_reopening(super::$backend)
            }
        }
    )*};
}

conformance!(embedded, milvus);

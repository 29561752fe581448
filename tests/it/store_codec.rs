//! Property tests of the store's log codec through its public API: every `meta` the upload edge
//! accepts comes back from the log exactly as acknowledged (after a reopen, which replays the
//! log, and after a snapshot), and arbitrary bytes where the log or a snapshot should be never
//! panic: opening and `store::check` answer with a value or a typed error.

use mvserve::server::fields::parse_meta;
use mvserve::store::{StoreConfig, TaskStore};
use proptest::prelude::*;
use serde_json::{json, Value};

const DIM: usize = 4;

fn config() -> StoreConfig {
    StoreConfig {
        snapshot_every: 0,
        ..StoreConfig::default()
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        Just(json!(f64::MAX)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(5e-324)),
        Just(json!(-0.0)),
        any::<String>().prop_map(Value::String),
        "[\\\\\"\\n\\t\\u{0}\\u{1F3AC}\\u{FEFF}\\u{2028}a-z]{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(12, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Wraps `v` in `levels` arrays (to reach the depth limit and past it).
fn nest(v: Value, levels: usize) -> Value {
    (0..levels).fold(v, |v, _| json!([v]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn accepted_meta_reads_back_exactly_after_replay_and_snapshot(v in value(), extra in 0usize..40) {
        let v = nest(v, extra);
        let text = v.to_string();
        let Ok(accepted) = parse_meta(&text) else {
            // Refused at the edge (too deep or too large): nothing is stored, nothing to check.
            return Ok(());
        };
        prop_assert_eq!(&accepted, &v);
        // As the server stores it: the user's meta one level down.
        let stored = json!({"meta": accepted, "file_name": "f.mp4", "bytes": 1, "media": {}, "frames": 4});
        let dir = tempfile::tempdir().unwrap();
        {
            let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
            s.add("id", &[1.0, 2.0, 3.0, 4.0], "d", stored.clone()).unwrap();
        }
        {
            let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
            prop_assert_eq!(&s.get("id").unwrap().meta, &stored);
            s.snapshot().unwrap();
        }
        let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
        prop_assert_eq!(&s.get("id").unwrap().meta, &stored);
    }

    #[test]
    fn arbitrary_log_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), valid_first in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        if valid_first {
            let s = TaskStore::open(dir.path(), DIM, config()).unwrap();
            s.add("a", &[1.0, 0.0, 0.0, 0.0], "d", json!({"x": 1})).unwrap();
        }
        let seg = dir.path().join(format!("wal-{:020}.log", 1));
        let mut all = std::fs::read(&seg).unwrap_or_default();
        all.extend_from_slice(&bytes);
        std::fs::write(&seg, &all).unwrap();
        let _ = mvserve::store::check(dir.path());
        let _ = TaskStore::open(dir.path(), DIM, config());
        let _ = mvserve::store::repair(dir.path());
        // After a repair the store always opens.
        prop_assert!(TaskStore::open(dir.path(), DIM, config()).is_ok());
    }

    #[test]
    fn arbitrary_snapshot_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = b"MVSNAP02".to_vec();
        b.extend_from_slice(&bytes);
        std::fs::write(dir.path().join(format!("snapshot-{:020}.snap", 3)), &b).unwrap();
        let _ = mvserve::store::check(dir.path());
        let _ = TaskStore::open(dir.path(), DIM, config());
    }
}

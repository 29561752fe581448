//! Milvus itself killed and started again under a running deployment: an indexer and a query
//! replica against a Milvus of this test's own (`.ci/milvus spawn`; restarting the shared one
//! would break the other Milvus tests running beside this one).
//!
//! Milvus is killed (`kill -9`) while uploads stream into the indexer. While it is away,
//! searches and uploads answer 503 with `Retry-After` and both processes' `/readyz` is 503. It
//! is started again on the same data, and both processes recover by themselves (neither is
//! restarted); every upload acknowledged before the kill or after the recovery is then found
//! through both processes with the same scores, and an upload refused during the outage is not.
//! The files such refused uploads left are removed when the indexer next starts.
//!
//! Needs `MVSERVE_TEST_MILVUS` and `.ci/milvus start` (the spawned server uses its binaries).

use crate::common;

use super::server_distributed::{ranked, upload, Q};
use common::milvus::OwnMilvus;
use common::server::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ports of the spawned Milvus: the shared one's plus this.
const PORT_OFFSET: u16 = 200;

#[test]
fn milvus_killed_and_restarted_mid_upload() {
    if common::milvus::url().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut milvus) = OwnMilvus::start(&tmp.path().join("milvus"), PORT_OFFSET) else {
        return;
    };
    let store = milvus.store_url("prefix=restart_&timeout_ms=3000");
    let blobs = tmp.path().join("blobs");
    let start = |dir: &str, role: &str| {
        let data = tmp.path().join(dir);
        std::fs::create_dir_all(data.join("adapters")).unwrap();
        let blobs = blobs.to_str().unwrap();
        let args = [
            "--role",
            role,
            "--store",
            &store,
            "--blob-dir",
            blobs,
            "--no-grpc",
        ];
        Server::start(&data, &args)
    };
    let indexer = start("indexer", "indexer");
    let query = start("query", "query");
    for id in ["v0", "v1"] {
        let (st, v) = upload(&indexer, "clip", id, "bikes.mp4");
        assert_eq!(st, 200, "{v}");
    }

    // Uploads stream in; each answered 200 is acknowledged. Errors (503s while Milvus is away,
    // a request cut off by the kill) are not, and the stream goes on until told to stop.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let uploader = {
        let (base, acked, refused, stop) = (
            indexer.base.clone(),
            acked.clone(),
            refused.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let files = ["bikes.mp4", "carphone_distorted.mp4", "realshort.mp4"];
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let id = format!("s{i}");
                let (ct, body) = multipart(&[
                    Part::Text("id", &id),
                    Part::File(files[i % 3], video(files[i % 3])),
                ]);
                let r = ureq::post(&format!("{base}/index?task=clip"))
                    .timeout(Duration::from_secs(30))
                    .set("Content-Type", &ct)
                    .send_bytes(&body);
                match r {
                    Ok(resp) if resp.status() == 200 => acked.lock().unwrap().push(id),
                    Err(ureq::Error::Status(503, resp)) => {
                        assert!(
                            resp.header("retry-after").is_some(),
                            "503 without Retry-After"
                        );
                        *refused.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(resp) => panic!("upload {id}: unexpected {}", resp.status()),
                    Err(ureq::Error::Status(st, resp)) => {
                        panic!("upload {id}: {st} {}", resp.into_string().unwrap())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
    };
    wait_until("two acknowledged uploads", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 2
    });
    // A moment that varies from run to run: mid-upload, most likely.
    let pause = (std::process::id() as u64 % 7) * 60;
    std::thread::sleep(Duration::from_millis(pause));
    milvus.kill();
    let before = acked.lock().unwrap().clone();
    eprintln!(
        "Milvus killed {pause} ms after the second streamed upload; {} acknowledged by then",
        before.len()
    );

    // While it is away: 503 with Retry-After, unready, uploads refused.
    wait_until("both unready", Duration::from_secs(60), || {
        indexer.get("/readyz").0 == 503 && query.get("/readyz").0 == 503
    });
    match ureq::get(&query.url(&format!("{Q}clip"))).call() {
        Err(ureq::Error::Status(503, resp)) => {
            assert!(resp.header("retry-after").is_some());
        }
        other => panic!("a search while Milvus is away: expected 503, got {other:?}"),
    }
    let (st, v) = upload(&indexer, "clip", "during-outage", "bikes.mp4");
    assert_eq!(st, 503, "{v}");
    wait_until("a streamed upload refused", Duration::from_secs(60), || {
        *refused.lock().unwrap() >= 1
    });

    // Back on the same data: both recover by themselves.
    milvus.restart();
    let recovery = wait_until("recovery", Duration::from_secs(180), || {
        indexer.get("/readyz").0 == 200
            && query.get("/readyz").0 == 200
            && query.get(&format!("{Q}clip")).0 == 200
    });
    let n = acked.lock().unwrap().len();
    wait_until(
        "two uploads acknowledged after the restart",
        Duration::from_secs(120),
        || acked.lock().unwrap().len() >= n + 2,
    );
    stop.store(true, Ordering::SeqCst);
    uploader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "recovered {:.1} s after Milvus was healthy again; {} uploads acknowledged in all, {} refused",
        recovery.as_secs_f64(),
        acked.len(),
        refused.lock().unwrap()
    );

    // Nothing acknowledged is lost; both processes give the same answer.
    let q = "/search?q=a+bike&k=1000&task=clip";
    let on_query = ranked(&query.get(q).1);
    assert_eq!(on_query, ranked(&indexer.get(q).1));
    for id in acked.iter().map(String::as_str).chain(["v0", "v1"]) {
        assert!(
            on_query.iter().any(|h| h.0 == id),
            "acknowledged {id} lost: {on_query:?}"
        );
        assert_eq!(query.get(&format!("/videos/clip/{id}")).0, 200);
    }
    assert!(
        !on_query.iter().any(|h| h.0 == "during-outage"),
        "an upload refused during the outage is there"
    );

    // Files of uploads refused while Milvus was away are kept then (their insert may have
    // landed); the indexer's next start removes those no record owns, and only those.
    let files = || {
        let root = blobs.join("tasks/clip/gen-0/blobs");
        walk(&root).len()
    };
    let before = files();
    let mut indexer = indexer;
    indexer.child.kill().unwrap();
    indexer.child.wait().unwrap();
    drop(indexer);
    let indexer = start("indexer", "indexer");
    eprintln!(
        "blob files: {before} before the indexer's restart, {} after",
        files()
    );
    assert_eq!(
        files(),
        2 * on_query.len(),
        "a video and a thumbnail per record"
    );
    assert_eq!(ranked(&indexer.get(q).1), on_query);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        match p.is_dir() {
            true => out.extend(walk(&p)),
            false => out.push(p),
        }
    }
    out
}

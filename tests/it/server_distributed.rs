//! The distributed mode end to end on the real binary: one indexer and two query replicas (three
//! processes, different ports and data dirs, one shared blob dir) against one real Milvus.
//!
//! Uploads through the indexer are found through both replicas with the same ids and scores; a
//! replica refuses writes; an adapter swap switches both replicas to the new generation with no
//! answer mixing the two; `kill -9` of one replica leaves the other serving; a `kill -9` of the
//! indexer loses nothing acknowledged; Milvus unreachable mid-test gives 503s with `Retry-After`
//! and an unready `/readyz`, then recovery by itself, with every acknowledged video still there.
//!
//! The processes reach Milvus through a TCP relay in this test, and the outage drill cuts it
//! (open connections reset, new ones refused) and restores it: the network going away while
//! Milvus keeps running. Milvus itself killed and restarted is `milvus_restart`, on a server of
//! its own (the one here is shared with the other Milvus tests).
//!
//! Needs `MVSERVE_TEST_MILVUS` (see tests/it/store_conformance.rs).

use crate::common;

use common::server::*;
use serde_json::Value;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn install(dir: &Path, file: &Path, task: &str) {
    let staged = dir.join(format!(".{task}.staged"));
    std::fs::copy(file, &staged).unwrap();
    std::fs::rename(&staged, dir.join(format!("{task}.safetensors"))).unwrap();
}

/// `(id, score)` of a search, in rank order.
pub(crate) fn ranked(v: &Value) -> Vec<(String, f64)> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {v}"))
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

pub(crate) const Q: &str = "/search?q=a+man+is+riding+a+bike&k=10&task=";

pub(crate) fn upload(s: &Server, task: &str, id: &str, file: &str) -> (u16, Value) {
    s.post_form(
        &format!("/index?task={task}"),
        &[
            Part::Text("id", id),
            Part::Text("meta", &format!(r#"{{"n": "{id}"}}"#)),
            Part::File(file, video(file)),
        ],
        None,
    )
}

/// A TCP relay from a local port to Milvus that can be cut and restored.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
        };
        let (up, conns) = (relay.up.clone(), relay.conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut c = conns.lock().unwrap();
                c.push(client.try_clone().unwrap());
                c.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    /// Resets every open connection and refuses new ones until [`Relay::restore`].
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn one_indexer_two_query_replicas_on_one_milvus() {
    let Some(url) = common::milvus::url() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("shared-blobs");
    let milvus_addr = url
        .strip_prefix("milvus://")
        .unwrap()
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_string();
    let relay = Relay::start(milvus_addr);
    let store = format!(
        "milvus://127.0.0.1:{}?prefix=e2e{}_&timeout_ms=3000",
        relay.port,
        std::process::id()
    );
    let indexer_args = |_: &Path| -> Vec<String> {
        vec![
            "--role".into(),
            "indexer".into(),
            "--store".into(),
            store.clone(),
            "--blob-dir".into(),
            blobs.to_str().unwrap().into(),
        ]
    };
    let query_args: Vec<String> = vec![
        "--role".into(),
        "query".into(),
        "--store".into(),
        store.clone(),
        "--blob-dir".into(),
        blobs.to_str().unwrap().into(),
        "--no-grpc".into(),
    ];
    let start = |dir: &str, args: &[String]| {
        let data = tmp.path().join(dir);
        std::fs::create_dir_all(data.join("adapters")).unwrap();
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Server::start(&data, &a)
    };
    let idx_data = tmp.path().join("indexer");
    let indexer = start("indexer", &indexer_args(&idx_data));
    let q1 = start("q1", &query_args);
    let q2 = start("q2", &query_args);

    // A query replica takes no writes.
    let (st, v) = upload(&q1, "clip", "nope", "bikes.mp4");
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "wrong_role");
    assert_eq!(q1.delete("/videos/clip/x").0, 403);
    // A second indexer on the same blob directory is refused at start.
    let second = Command::new(env!("CARGO_BIN_EXE_mvserve"))
        .args(["serve", "--model-dir", MODEL, "--port", "0", "--no-grpc"])
        .args(indexer_args(&idx_data))
        .arg("--data-dir")
        .arg(tmp.path().join("second"))
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second indexer started");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("exactly one"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Uploads through the indexer are found through both replicas, at once, alike.
    let files = ["bikes.mp4", "carphone_distorted.mp4", "realshort.mp4"];
    for (i, f) in files.iter().enumerate() {
        let (st, v) = upload(&indexer, "clip", &format!("v{i}"), f);
        assert_eq!(st, 200, "{v}");
        let (a, b) = (q1.get(&format!("{Q}clip")), q2.get(&format!("{Q}clip")));
        assert_eq!(a.0, 200, "{}", a.1);
        assert_eq!(
            ranked(&a.1).len(),
            i + 1,
            "upload {i} not visible at once: {}",
            a.1
        );
        assert_eq!(ranked(&a.1), ranked(&b.1));
    }
    let on_indexer = indexer.get(&format!("{Q}clip")).1;
    assert_eq!(ranked(&on_indexer), ranked(&q1.get(&format!("{Q}clip")).1));
    // Replicas serve the shared files too.
    let (st, v) = q2.get("/videos/clip/v1");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta"]["n"], "v1");
    assert_eq!(
        ureq::get(&q2.url("/videos/clip/v1/thumbnail.jpg"))
            .call()
            .unwrap()
            .status(),
        200
    );

    // A replica answers a search by example (a read, though a POST): the video is its own top hit.
    let (st, v) = json_of(
        ureq::post(&q1.url("/search?task=clip&k=3"))
            .set("Content-Type", "video/mp4")
            .send_bytes(&video("carphone_distorted.mp4")),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"][0]["id"], "v1", "{v}");
    assert!(v["hits"][0]["score"].as_f64().unwrap() > 0.999, "{v}");

    // An adapter task, then a swap: the indexer re-embeds into generation 1 and cuts over; each
    // answer on the replicas comes whole from generation 0 or whole from generation 1.
    let adapters = idx_data.join("adapters");
    let (a1, a2) = (tmp.path().join("a1"), tmp.path().join("a2"));
    let (d1, d2) = (new_adapter(&a1, "news", 4), new_adapter(&a2, "news", 4));
    install(&adapters, &a1, "news");
    wait_until("task news", Duration::from_secs(60), || {
        q1.get(&format!("{Q}news")).0 == 200
    });
    for (i, f) in files.iter().enumerate() {
        let (st, v) = upload(&indexer, "news", &format!("n{i}"), f);
        assert_eq!(st, 200, "{v}");
    }
    let old = q1.get(&format!("{Q}news")).1;
    assert_eq!(old["adapter_digest"], d1.as_str());
    assert_eq!(ranked(&old).len(), 3);
    install(&adapters, &a2, "news");
    let mut seen_new = [false, false];
    let t0 = Instant::now();
    let mut new_answer: Option<Vec<(String, f64)>> = None;
    while !(seen_new[0] && seen_new[1]) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "replicas never switched"
        );
        for (r, q) in [&q1, &q2].iter().enumerate() {
            let (st, v) = q.get(&format!("{Q}news"));
            assert_eq!(st, 200, "{v}");
            let got = ranked(&v);
            match v["adapter_digest"].as_str().unwrap() {
                d if d == d1 => {
                    assert!(!seen_new[r], "replica {r} went back to the old generation");
                    assert_eq!(got, ranked(&old), "an old-generation answer changed");
                }
                d if d == d2 => {
                    seen_new[r] = true;
                    assert_eq!(v["generation"], 1);
                    assert_eq!(got.len(), 3, "a new-generation answer is incomplete: {v}");
                    match &new_answer {
                        Some(n) => assert_eq!(&got, n, "two different new answers"),
                        None => new_answer = Some(got),
                    }
                }
                d => panic!("unknown digest {d}"),
            }
        }
    }
    assert_ne!(
        new_answer.unwrap(),
        ranked(&old),
        "the swap changed nothing"
    );

    // kill -9 of one replica leaves the other serving.
    let mut q1 = q1;
    q1.child.kill().unwrap();
    q1.child.wait().unwrap();
    assert_eq!(q2.get(&format!("{Q}clip")).0, 200);

    // kill -9 of the indexer while uploads stream in: every upload acknowledged before the kill
    // is there after the restart, found through the replica that kept running.
    let mut indexer = indexer;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let uploader = {
        let (base, acked) = (indexer.base.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..40 {
                let id = format!("k{i}");
                let (ct, body) = multipart(&[
                    Part::Text("id", &id),
                    Part::File("bikes.mp4", video("bikes.mp4")),
                ]);
                let r = ureq::post(&format!("{base}/index?task=clip"))
                    .set("Content-Type", &ct)
                    .send_bytes(&body);
                // The kill cuts a request off mid-way (a transport error): not acknowledged.
                match r {
                    Ok(resp) if resp.status() == 200 => acked.lock().unwrap().push(id),
                    _ => return,
                }
            }
        })
    };
    // Once a few are acknowledged, at a moment that varies from run to run (mid-upload, most
    // likely: an upload takes a few hundred ms here).
    wait_until("two acknowledged uploads", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 2
    });
    let pause = (std::process::id() as u64 % 7) * 60;
    std::thread::sleep(Duration::from_millis(pause));
    indexer.child.kill().unwrap();
    indexer.child.wait().unwrap();
    uploader.join().unwrap();
    drop(indexer);
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} uploads acknowledged before the kill ({pause} ms after the second)",
        acked.len()
    );
    let indexer = start("indexer", &indexer_args(&idx_data));
    let found = ranked(&q2.get("/search?q=a+bike&k=100&task=clip").1);
    for id in acked.iter().map(String::as_str).chain(["v0", "v1", "v2"]) {
        assert!(
            found.iter().any(|h| h.0 == id),
            "acknowledged {id} lost: {found:?}"
        );
        assert_eq!(q2.get(&format!("/videos/clip/{id}")).0, 200);
    }
    assert_eq!(ranked(&q2.get(&format!("{Q}news")).1).len(), 3);

    // kill -9 of the indexer right after a new adapter arrives, while it re-embeds: after the
    // restart the half-built generation is discarded and rebuilt, and every answer meanwhile
    // comes whole from a complete generation.
    let a3 = tmp.path().join("a3");
    let d3 = new_adapter(&a3, "news", 4);
    install(&adapters, &a3, "news");
    std::thread::sleep(Duration::from_millis(150));
    let mut indexer = indexer;
    indexer.child.kill().unwrap();
    indexer.child.wait().unwrap();
    drop(indexer);
    let indexer = start("indexer", &indexer_args(&idx_data));
    wait_until(
        "the re-embedding after the restart",
        Duration::from_secs(120),
        || {
            let (st, v) = q2.get(&format!("{Q}news"));
            assert_eq!(st, 200, "{v}");
            assert_eq!(
                ranked(&v).len(),
                3,
                "an incomplete generation answered: {v}"
            );
            v["adapter_digest"] == d3.as_str()
        },
    );

    // Milvus goes away: 503 with Retry-After, readiness drops; it comes back: recovery by
    // itself, nothing acknowledged lost. (The `clip` search below resolves its generation first,
    // which is what fails while Milvus is away.)
    relay.cut();
    let r = ureq::get(&q2.url(&format!("{Q}clip"))).call();
    match r {
        Err(ureq::Error::Status(503, resp)) => {
            assert!(resp.header("retry-after").is_some());
        }
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(q2.get("/readyz").0, 503);
    let (st, _) = upload(&indexer, "clip", "during-outage", "bikes.mp4");
    assert_eq!(st, 503);
    relay.restore();
    wait_until(
        "recovery after Milvus returned",
        Duration::from_secs(180),
        || q2.get(&format!("{Q}clip")).0 == 200 && indexer.get("/readyz").0 == 200,
    );
    let (st, v) = upload(&indexer, "clip", "after-outage", "bikes.mp4");
    assert_eq!(st, 200, "{v}");
    let hits = ranked(&q2.get("/search?q=a+bike&k=100&task=clip").1);
    let ids: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
    for id in acked
        .iter()
        .map(String::as_str)
        .chain(["v0", "v1", "v2", "after-outage"])
    {
        assert!(
            ids.contains(&id),
            "acknowledged {id} lost after the outage: {ids:?}"
        );
    }
    assert!(!ids.contains(&"during-outage"), "a refused upload is there");
    assert_eq!(ranked(&q2.get(&format!("{Q}news")).1).len(), 3);
}

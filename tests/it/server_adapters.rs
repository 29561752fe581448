//! Adapter tasks end to end: the real server with the tiny backbone, adapter files dropped into
//! its watched folder (added, replaced, corrupted, removed), the LRU of loaded adapters with a
//! pinned task, and a restart.

use crate::common;

use common::server::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Moves `file` into the adapters folder as `<task>.safetensors` in one rename, as an operator
/// (or a deploy tool) should.
fn install(dir: &Path, file: &Path, task: &str) {
    let staged = dir.join(format!(".{task}.staged"));
    std::fs::copy(file, &staged).unwrap();
    std::fs::rename(&staged, dir.join(format!("{task}.safetensors"))).unwrap();
}

/// How long a file event may take to show in `/tasks` before the test fails.
const SETTLE: Duration = Duration::from_secs(30);

fn search(s: &Server, task: &str) -> Value {
    let (st, v) = s.get(&format!("/search?task={task}&q=a+man+is+driving&k=5"));
    assert_eq!(st, 200, "{v}");
    v
}

fn scores(v: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn adapter_files_are_served_swapped_rejected_and_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let a1 = tmp.path().join("a1.safetensors");
    let a2 = tmp.path().join("a2.safetensors");
    let d1 = new_adapter(&a1, "news", 4);
    let d2 = new_adapter(&a2, "news", 4);
    assert_ne!(d1, d2);

    let s = Server::start(&data, &[]);
    assert_eq!(s.get("/tasks/news").0, 404);

    // A new file becomes a task. How fast is measured by `benches/registry.rs` (p50 ~40 ms);
    // here the limit only has to survive a loaded CI machine (one second did not, once).
    install(&adapters, &a1, "news");
    let took = wait_until("news to be served", SETTLE, || {
        s.get("/tasks/news").0 == 200
    });
    eprintln!("new adapter served after {took:?}");
    let (_, t) = s.get("/tasks/news");
    assert_eq!(t["model"]["kind"], "adapter");
    assert_eq!(t["model"]["digest"], d1.as_str());
    assert_eq!(t["model"]["frames"], 4);

    // Uploads and searches go through the adapter: other vectors than plain CLIP's.
    let (bunny_name, bunny) =
        ffmpeg_clip("adapter_files_are_served_swapped_rejected_and_survive_restart");
    for task in ["news", "clip"] {
        let (st, v) = s.post_form(
            &format!("/index?task={task}"),
            &[
                Part::Text("id", "drive"),
                Part::File("video7020.mp4", video("video7020.mp4")),
                Part::Text("id", "bunny"),
                Part::File(bunny_name, bunny.clone()),
            ],
            None,
        );
        assert_eq!(st, 200, "{v}");
    }
    let v = search(&s, "news");
    assert_eq!(v["adapter_digest"], d1.as_str());
    assert_eq!(v["generation"], 0);
    let with_adapter = scores(&v);
    let plain = scores(&search(&s, "clip"));
    assert_eq!(with_adapter.len(), 2);
    let moved = with_adapter
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a.1 - b.1).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "the adapter did not change the scores: {with_adapter:?} vs {plain:?}"
    );

    // Replace: the old generation answers (old digest, both videos) until the new one has
    // re-embedded both, then every answer comes from the new one.
    install(&adapters, &a2, "news");
    let mut seen_old_after_swap = 0;
    wait_until(
        "the cutover to the new adapter",
        Duration::from_secs(60),
        || {
            let v = search(&s, "news");
            let ids: Vec<String> = scores(&v).into_iter().map(|x| x.0).collect();
            assert_eq!(
                ids,
                ["bunny", "drive"],
                "a generation answered partially: {v}"
            );
            match v["adapter_digest"].as_str().unwrap() {
                d if d == d1 => {
                    assert_eq!(v["generation"], 0);
                    seen_old_after_swap += 1;
                    false
                }
                d if d == d2 => {
                    assert_eq!(v["generation"], 1);
                    true
                }
                d => panic!("unknown digest {d}"),
            }
        },
    );
    eprintln!("old generation answered {seen_old_after_swap} searches before the cutover");
    let after = scores(&search(&s, "news"));
    assert!(after
        .iter()
        .zip(&with_adapter)
        .any(|(a, b)| (a.1 - b.1).abs() > 1e-4));
    let (_, t) = s.get("/tasks/news");
    assert_eq!(t["generation"], 1);
    assert_eq!(t["videos"], 2);
    assert!(t["pending_generation"].is_null());

    // A corrupt file is rejected, shown, and the good adapter keeps serving.
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"oops\": tru").unwrap();
    install(&adapters, &bad, "news");
    wait_until("the rejection to show", SETTLE, || {
        !s.get("/tasks/news").1["last_error"].is_null()
    });
    let (_, t) = s.get("/tasks/news");
    assert_eq!(t["model"]["digest"], d2.as_str());
    assert!(t["state"].as_str().unwrap().contains("rejected"), "{t}");
    assert_eq!(search(&s, "news")["adapter_digest"], d2.as_str());
    assert!(metric(&s, "mvserve_adapter_updates_total{outcome=\"rejected\"}") >= 1.0);
    assert!(metric(&s, "mvserve_adapter_updates_total{outcome=\"added\"}") >= 1.0);
    assert!(metric(&s, "mvserve_adapter_updates_total{outcome=\"reembedding\"}") >= 1.0);

    // Put the good file back, restart: the task comes back with its generation and videos.
    install(&adapters, &a2, "news");
    wait_until("the good file to be accepted", SETTLE, || {
        s.get("/tasks/news").1["last_error"].is_null()
    });
    s.stop();
    let s = Server::start(&data, &[]);
    let (st, t) = s.get("/tasks/news");
    assert_eq!(st, 200);
    assert_eq!(t["generation"], 1);
    assert_eq!(t["videos"], 2);
    assert_eq!(scores(&search(&s, "news")), after);

    // Removing the file takes the task out of service; its data stays.
    std::fs::remove_file(adapters.join("news.safetensors")).unwrap();
    wait_until("news to leave service", SETTLE, || {
        s.get("/tasks/news").0 == 404
    });
    assert!(data.join("tasks/news/gen-1").is_dir());
}

#[test]
fn lru_evicts_unpinned_adapters_and_reloads_them_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    for task in ["a", "b", "c"] {
        let f: PathBuf = tmp.path().join(format!("{task}.safetensors"));
        new_adapter(&f, task, 4);
        install(&adapters, &f, task);
    }
    // Two slots for three adapters; `a` is pinned. The query cache is off: repeated searches
    // must reach the adapters for this test to see them evicted and reloaded.
    let s = Server::start(
        &data,
        &[
            "--max-loaded-adapters",
            "2",
            "--pin",
            "a",
            "--query-cache",
            "0",
        ],
    );
    for task in ["a", "b", "c"] {
        let (st, v) = s.post_form(
            &format!("/index?task={task}"),
            &[Part::File("v.mp4", video("video7021.mp4"))],
            None,
        );
        assert_eq!(st, 200, "{v}");
    }
    let first: Vec<Vec<(String, f64)>> = ["a", "b", "c"]
        .iter()
        .map(|t| scores(&search(&s, t)))
        .collect();
    for _ in 0..3 {
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            // Reloaded adapters give the very same answers.
            assert_eq!(scores(&search(&s, t)), first[i], "task {t}");
        }
    }
    assert_eq!(metric(&s, "mvserve_adapters_loaded"), 2.0);
    // Loading reads the files in the watched folder: those reads must not count as changes
    // (they once made the watcher reload every file forever).
    assert_eq!(
        metric(&s, "mvserve_adapter_updates_total{outcome=\"unchanged\"}"),
        0.0
    );
    assert_eq!(
        metric(&s, "mvserve_adapter_loads_total{task=\"a\"}"),
        1.0,
        "a pinned adapter is never reloaded"
    );
    assert_eq!(
        metric(&s, "mvserve_adapter_evictions_total{task=\"a\"}"),
        0.0
    );
    for t in ["b", "c"] {
        assert!(
            metric(
                &s,
                &format!("mvserve_adapter_evictions_total{{task=\"{t}\"}}")
            ) >= 3.0
        );
        assert!(metric(&s, &format!("mvserve_adapter_loads_total{{task=\"{t}\"}}")) >= 4.0);
    }
}

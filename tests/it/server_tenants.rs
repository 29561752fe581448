//! Hardening of the real server between tenants and towards the network: listings show only the
//! caller's tasks (HTTP and gRPC), `/metrics` needs an admin key or its own port, a server without
//! authentication answers only requests addressed to localhost from localhost pages, and no error
//! a client sees names a path of the server.

use crate::common;

use common::server::*;
use mvserve::server::grpc::proto::{mv_serve_client::MvServeClient, ListTasksRequest};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tonic::Request;

const KEYS: &str = r#"{"admin_keys": ["admin-key-123"],
    "keys": [{"key": "reader-news-1", "tasks": ["clip", "news"], "scope": "read"},
             {"key": "writer-all-12", "tasks": ["*"], "scope": "write"}]}"#;

/// A random adapter for the tiny backbone (4 frames).
fn new_adapter(out: &Path, task: &str) {
    common::server::new_adapter(out, task, 4);
}

/// Waits up to 30 s.
fn wait_until(what: &str, ok: impl FnMut() -> bool) {
    common::server::wait_until(what, Duration::from_secs(30), ok);
}

fn names(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {list}"))
        .iter()
        .map(|t| t["task"].as_str().unwrap().to_string())
        .collect()
}

fn rejected(list: &Value) -> Vec<String> {
    list["rejected"]
        .as_object()
        .unwrap_or_else(|| panic!("no rejected in {list}"))
        .keys()
        .cloned()
        .collect()
}

/// gRPC `ListTasks` with this key (none: no key): the task names, sorted refused task names, and
/// the whole answer as text.
fn list_tasks_grpc(s: &Server, key: Option<&str>) -> (Vec<String>, Vec<String>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = MvServeClient::connect(s.grpc.clone().unwrap())
            .await
            .unwrap();
        let mut req = Request::new(ListTasksRequest {});
        if let Some(key) = key {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        let r = c.list_tasks(req).await.unwrap().into_inner();
        let text = format!("{r:?}");
        let mut rejected: Vec<String> = r.rejected.into_keys().collect();
        rejected.sort();
        (
            r.tasks.into_iter().map(|t| t.task).collect(),
            rejected,
            text,
        )
    })
}

#[test]
fn listings_show_only_the_tasks_a_key_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    new_adapter(&adapters.join("news.safetensors"), "news");
    new_adapter(&adapters.join("sports.safetensors"), "sports");
    // Two refused files: one of a task the reader may read, one of a task it may not.
    std::fs::write(
        adapters.join("secret.safetensors"),
        b"not an adapter at all",
    )
    .unwrap();
    let s = Server::start_with_keys(&data, KEYS, &[]);
    wait_until("both adapter tasks", || {
        names(&s.get_key("/tasks", "admin-key-123").1).len() == 3
    });
    // A bad update of a readable task shows as its last_error, to the reader too.
    std::fs::write(adapters.join(".news.tmp"), b"garbage").unwrap();
    std::fs::rename(
        adapters.join(".news.tmp"),
        adapters.join("news.safetensors"),
    )
    .unwrap();
    wait_until("the rejected update of news", || {
        !s.get_key("/tasks/news", "admin-key-123").1["last_error"].is_null()
    });

    let (st, admin) = s.get_key("/tasks", "admin-key-123");
    assert_eq!(st, 200, "{admin}");
    assert_eq!(names(&admin), ["clip", "news", "sports"]);
    assert_eq!(rejected(&admin), ["secret"]);
    let (st, reader) = s.get_key("/tasks", "reader-news-1");
    assert_eq!(st, 200, "{reader}");
    assert_eq!(names(&reader), ["clip", "news"]);
    assert!(rejected(&reader).is_empty(), "{reader}");
    let news = &reader["tasks"][1];
    assert!(!news["last_error"].is_null(), "{news}");
    assert!(!reader.to_string().contains("sports") && !reader.to_string().contains("secret"));
    // A key for every task sees every task.
    assert_eq!(
        names(&s.get_key("/tasks", "writer-all-12").1),
        ["clip", "news", "sports"]
    );
    // gRPC's ListTasks filters the same way.
    let (tasks, refused, _) = list_tasks_grpc(&s, Some("reader-news-1"));
    assert_eq!(
        (tasks, refused),
        (vec!["clip".into(), "news".into()], vec![])
    );
    let (tasks, refused, _) = list_tasks_grpc(&s, Some("admin-key-123"));
    assert_eq!(tasks, ["clip", "news", "sports"]);
    assert_eq!(refused, ["secret"]);
    // A single task outside the key stays refused.
    assert_eq!(s.get_key("/tasks/sports", "reader-news-1").0, 403);
}

#[test]
fn metrics_need_an_admin_key_or_the_metrics_port() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        KEYS,
        &["--no-grpc", "--metrics-port", "0"],
    );
    assert_eq!(s.get("/metrics").1["error"]["code"], "unauthenticated");
    assert_eq!(s.get("/metrics").0, 401);
    assert_eq!(s.get_key("/metrics", "reader-news-1").0, 403);
    // A task in the query does not turn /metrics into a read of that task.
    assert_eq!(s.get_key("/metrics?task=clip", "reader-news-1").0, 403);
    let (st, text) = s.get_key("/metrics", "admin-key-123");
    assert_eq!(st, 200);
    assert!(text.as_str().unwrap().contains("mvserve_tasks"));
    // The probes stay open.
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.get("/readyz").0, 200);

    let port = s.metrics.clone().expect("the metrics port was printed");
    let resp = ureq::get(&format!("{port}/metrics"))
        .call()
        .expect("the metrics port needs no key");
    assert_eq!(resp.status(), 200);
    assert!(resp.into_string().unwrap().contains("mvserve_tasks"));
    // It serves nothing else.
    let (st, _) = json_of(ureq::get(&format!("{port}/tasks")).call());
    assert_eq!(st, 404);
    let (st, _) = json_of(ureq::get(&format!("{port}/search?task=clip&q=x")).call());
    assert_eq!(st, 404);
}

#[test]
fn without_auth_only_localhost_hosts_and_origins_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--no-grpc", "--metrics-port", "0"],
    );
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let host = |h: &str| format!("{h}:{port}");

    // The page and the API, addressed as a browser on this machine addresses them.
    for h in [
        host("127.0.0.1"),
        host("localhost"),
        host("[::1]"),
        "localhost".into(),
    ] {
        let (st, page) = s.raw_get("/", &[("Host", &h)]);
        assert_eq!(st, 200, "{h}");
        assert!(page.as_str().unwrap().contains(r#"<form id="search""#));
        let (st, body) = s.raw_get("/tasks", &[("Host", &h)]);
        assert_eq!(st, 200, "{h}: {body}");
    }
    // The page's own calls carry its origin (POSTs always do).
    for origin in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let (st, body) = s.raw_get(
            "/tasks",
            &[("Host", &host("127.0.0.1")), ("Origin", &origin)],
        );
        assert_eq!(st, 200, "{origin}: {body}");
    }

    // DNS rebinding: the attacker's name, pointed at 127.0.0.1, arrives as the Host.
    for h in [
        host("rebind.attacker.example"),
        host("localhost.attacker.example"),
        host("10.1.2.3"),
    ] {
        for path in ["/tasks", "/", "/healthz", "/search?task=clip&q=x"] {
            let (st, body) = s.raw_get(path, &[("Host", &h)]);
            assert_eq!(st, 403, "{h} {path}: {body}");
            if path != "/" {
                assert_eq!(body["error"]["code"], "bad_host", "{body}");
            }
        }
    }
    let (st, body) = s.raw_get("/tasks", &[]);
    assert_eq!(
        (st, &body["error"]["code"]),
        (403, &Value::from("bad_host"))
    );

    // CSRF: a page elsewhere calling the API through the user's browser.
    for origin in [
        "https://attacker.example",
        "null",
        "http://localhost.attacker.example",
    ] {
        let (st, body) = s.raw_get(
            "/tasks",
            &[("Host", &host("127.0.0.1")), ("Origin", origin)],
        );
        assert_eq!(st, 403, "{origin}");
        assert_eq!(body["error"]["code"], "bad_origin", "{body}");
    }
    // (A small body: the refusal comes before the body is read.)
    let (ct, form) = multipart(&[Part::File("a.mp4", b"not read".to_vec())]);
    let (st, body) = json_of(
        ureq::post(&s.url("/index?task=clip"))
            .set("Content-Type", &ct)
            .set("Origin", "https://attacker.example")
            .send_bytes(&form),
    );
    assert_eq!(
        (st, &body["error"]["code"]),
        (403, &Value::from("bad_origin"))
    );

    // The metrics port is just as local.
    let metrics = s.metrics.clone().unwrap();
    let mport = metrics.rsplit(':').next().unwrap();
    let (st, _) = raw_get(
        &metrics,
        "/metrics",
        &[("Host", &format!("rebind.attacker.example:{mport}"))],
    );
    assert_eq!(st, 403);
    assert_eq!(
        ureq::get(&format!("{metrics}/metrics"))
            .call()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn errors_name_no_path_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::canonicalize(dir.path()).unwrap().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    new_adapter(&adapters.join("news.safetensors"), "news");
    // Unreadable (a folder), not an adapter, and a good adapter whose task folder cannot be made
    // (a file is in its way): the last fails deep in the registry, with the path in its error.
    std::fs::create_dir(adapters.join("folder.safetensors")).unwrap();
    std::fs::write(adapters.join("garbled.safetensors"), b"garbled bytes").unwrap();
    // Refused by the registry itself, with the file's full path in its message.
    std::fs::write(adapters.join("clip.safetensors"), b"would shadow clip").unwrap();
    new_adapter(&adapters.join("blocked.safetensors"), "blocked");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    std::fs::write(data.join("tasks").join("blocked"), b"in the way").unwrap();

    let s = Server::start(&data, &[]);
    let leaks = |what: &str, text: &str| {
        for dir in [data.to_str().unwrap(), dir.path().to_str().unwrap()] {
            assert!(!text.contains(dir), "{what} names {dir}: {text}");
        }
    };
    wait_until("the four refused files", || {
        rejected(&s.get("/tasks").1).len() == 4
    });
    let (_, list) = s.get("/tasks");
    leaks("/tasks", &list.to_string());
    let why = &list["rejected"];
    assert!(
        why["folder"]
            .as_str()
            .unwrap()
            .contains("folder.safetensors"),
        "{why}"
    );
    assert!(
        why["garbled"]
            .as_str()
            .unwrap()
            .contains("garbled.safetensors"),
        "{why}"
    );
    assert!(
        why["blocked"].as_str().unwrap().contains("<data-dir>"),
        "{why}"
    );
    assert!(
        why["clip"].as_str().unwrap().contains("<adapters-dir>"),
        "{why}"
    );
    let (_, news) = s.get("/tasks/news");
    assert_eq!(news["model"]["file"], "news.safetensors", "{news}");
    leaks("/tasks/news", &news.to_string());
    leaks("ListTasks", &list_tasks_grpc(&s, None).2);

    // A damaged WebM goes to ffmpeg, whose messages quote its input file (in the data folder).
    let mut webm = video("big_buck_bunny_432_433.webm");
    webm.truncate(300);
    webm.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let (st, body) = s.post_form("/index?task=clip", &[Part::File("cut.webm", webm)], None);
    assert!(st == 415 || st == 422, "{st} {body}");
    leaks("a refused upload", &body.to_string());

    // An internal failure (the upload folder is gone, a file in its place) is a generic 500; the
    // detail is in the log.
    let tmp = data.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let (st, body) = s.post_form(
        "/index?task=clip",
        &[Part::File("a.mp4", video("carphone_distorted.mp4"))],
        None,
    );
    assert_eq!(
        (st, &body["error"]["code"]),
        (500, &Value::from("internal")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    leaks("a 500", message);
    assert!(!message.contains("os error"), "{message}");
}

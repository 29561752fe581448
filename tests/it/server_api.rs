//! End-to-end tests of `mvserve serve`: the real binary on an ephemeral port with the tiny fixture
//! backbone, real videos, real HTTP.

use crate::common;

use common::server::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn upload_search_delete_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let (bunny_name, bunny) = ffmpeg_clip("upload_search_delete_and_restart");
    let (st, body) = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("id", "short"),
            Part::Text("meta", r#"{"title": "a short clip"}"#),
            Part::File("realshort.mp4", video("realshort.mp4")),
            Part::Text("id", "bunny"),
            Part::File(bunny_name, bunny),
            Part::File("video740.mp4", video("video740.mp4")),
        ],
        None,
    );
    assert_eq!(st, 200, "{body}");
    let indexed = body["indexed"].as_array().unwrap();
    assert_eq!(indexed.len(), 3);
    assert_eq!(indexed[0]["id"], "short");
    assert_eq!(indexed[1]["id"], "bunny");
    let third = indexed[2]["id"].as_str().unwrap().to_string();
    assert_eq!(third.len(), 16, "a generated id is a content hash");

    let (st, res) = s.get("/search?task=clip&q=a%20person%20riding%20a%20bike&k=10");
    assert_eq!(st, 200, "{res}");
    let mut ids = hit_ids(&res);
    let scores: Vec<f64> = res["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(scores.iter().all(|s| s.is_finite() && s.abs() <= 1.0001));
    ids.sort();
    let mut want = vec!["bunny".to_string(), "short".to_string(), third.clone()];
    want.sort();
    assert_eq!(ids, want);
    let short_hit = res["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "short")
        .unwrap();
    assert_eq!(short_hit["meta"]["title"], "a short clip");

    let (st, k1) = s.get("/search?task=clip&q=bike&k=1");
    assert_eq!(st, 200);
    assert_eq!(hit_ids(&k1).len(), 1);

    let (st, v) = s.get("/videos/clip/short");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta"]["title"], "a short clip");
    assert_eq!(v["file_name"], "realshort.mp4");
    assert_eq!(v["bytes"], 96822);
    let thumb = ureq::get(&s.url("/videos/clip/short/thumbnail.jpg"))
        .call()
        .unwrap();
    assert_eq!(thumb.content_type(), "image/jpeg");
    let mut jpeg = Vec::new();
    thumb.into_reader().read_to_end(&mut jpeg).unwrap();
    assert!(jpeg.starts_with(&[0xff, 0xd8]), "not a JPEG");

    let (st, _) = s.delete("/videos/clip/bunny");
    assert_eq!(st, 200);
    assert_eq!(s.get("/videos/clip/bunny").0, 404);
    assert_eq!(s.get("/videos/clip/bunny/thumbnail.jpg").0, 404);
    let (st, e) = s.delete("/videos/clip/bunny");
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "unknown_video");

    let (st, tasks) = s.get("/tasks");
    assert_eq!(st, 200);
    let clip = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "clip")
        .expect("clip is listed");
    assert_eq!(clip["videos"], 2);
    assert_eq!(s.get("/tasks/clip").1["videos"], 2);
    assert_eq!(s.get("/tasks/nope").0, 404);

    let metrics = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("mvserve_videos_indexed_total{task=\"clip\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("mvserve_batch_size_count{kind=\"video\"}"));
    assert!(metrics.contains("mvserve_task_requests_total{op=\"search\",task=\"clip\"} 2"));

    // A graceful stop, then a restart on the same data keeps every video.
    s.stop();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(s.get("/tasks/clip").1["videos"], 2);
    let (st, res) = s.get("/search?task=clip&q=bike");
    assert_eq!(st, 200);
    let mut ids = hit_ids(&res);
    ids.sort();
    let mut want = vec!["short".to_string(), third.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        s.get("/videos/clip/short").1["meta"]["title"],
        "a short clip"
    );
    // kill -9 loses nothing acknowledged either.
    let (st, _) = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("id", "car"),
            Part::File("c.mp4", video("carphone_distorted.mp4")),
        ],
        None,
    );
    assert_eq!(st, 200);
    drop(s);
    let s = Server::start(dir.path(), &[]);
    assert_eq!(s.get("/tasks/clip").1["videos"], 3);
    assert_eq!(s.get("/videos/clip/car").0, 200);
}

#[test]
fn errors_have_json_bodies_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--max-upload-mb", "1"]);
    let code = |r: &(u16, Value)| r.1["error"]["code"].as_str().unwrap_or("").to_string();

    let r = s.get("/search?task=nope&q=x");
    assert_eq!((r.0, code(&r).as_str()), (404, "unknown_task"));
    let r = s.get("/search?task=clip&q=");
    assert_eq!((r.0, code(&r).as_str()), (400, "empty_query"));
    let r = s.get("/search?task=clip");
    assert_eq!((r.0, code(&r).as_str()), (400, "empty_query"));
    let r = s.get("/search?q=x");
    assert_eq!((r.0, code(&r).as_str()), (400, "missing_task"));
    for k in ["0", "1001", "abc", "-1"] {
        let r = s.get(&format!("/search?task=clip&q=x&k={k}"));
        assert_eq!((r.0, code(&r).as_str()), (400, "bad_k"), "k={k}");
    }
    let r = s.post_form(
        "/index?task=nope",
        &[Part::File("a.mp4", video("realshort.mp4"))],
        None,
    );
    assert_eq!((r.0, code(&r).as_str()), (404, "unknown_task"));
    let r = s.post_form("/index?task=clip", &[Part::Text("id", "x")], None);
    assert_eq!((r.0, code(&r).as_str()), (400, "missing_video"));
    let r = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("meta", "{not json"),
            Part::File("a.mp4", video("realshort.mp4")),
        ],
        None,
    );
    assert_eq!((r.0, code(&r).as_str()), (400, "bad_meta"));
    // Over the 1 MiB cap: refused while streaming.
    let r = s.post_form(
        "/index?task=clip",
        &[Part::File("big.mp4", vec![7u8; 1_300_000])],
        None,
    );
    assert_eq!((r.0, code(&r).as_str()), (413, "too_large"));
    // Not a video at all.
    let r = s.post_form(
        "/index?task=clip",
        &[Part::File(
            "notes.txt",
            b"these are not the frames you are looking for".to_vec(),
        )],
        None,
    );
    assert_eq!((r.0, code(&r).as_str()), (415, "unsupported_media"));
    // An MP4 cut short: a known container that does not decode.
    let mut cut = video("video740.mp4");
    cut.truncate(2000);
    let r = s.post_form("/index?task=clip", &[Part::File("cut.mp4", cut)], None);
    assert_eq!(r.0, 422, "{}", r.1);
    // None of the refused uploads was stored.
    assert_eq!(s.get("/tasks/clip").1["videos"], 0);
    let r = s.get("/videos/clip/none");
    assert_eq!((r.0, code(&r).as_str()), (404, "unknown_video"));
    let metrics = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("mvserve_errors_total{code=\"too_large\"} 1"),
        "{metrics}"
    );
}

#[test]
fn overload_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // A text queue of zero places: every query is turned away instead of waiting.
    let s = Server::start(dir.path(), &["--text-queue", "0"]);
    let resp = match ureq::get(&s.url("/search?task=clip&q=hello")).call() {
        Err(ureq::Error::Status(503, r)) => r,
        other => panic!("expected 503, got {:?}", other.map(|r| r.status())),
    };
    assert_eq!(resp.header("retry-after"), Some("1"));
    let body: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
}

#[test]
fn api_keys_scope_tasks_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        r#"{"admin_keys": ["admin-key-123"],
            "keys": [{"key": "reader-clip-1", "tasks": ["clip"], "scope": "read"},
                     {"key": "writer-other-1", "tasks": ["other"], "scope": "write"},
                     {"key": "writer-all-12", "tasks": ["*"], "scope": "write"}]}"#,
        &[],
    );
    let q = "/search?task=clip&q=hello";
    let r = s.get(q);
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(s.get_key(q, "wrong-key-999").0, 401);
    assert_eq!(s.get_key(q, "reader-clip-1").0, 200);
    let r = s.get_key(q, "writer-other-1");
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(s.get_key(q, "admin-key-123").0, 200);
    assert_eq!(s.get_key("/tasks", "reader-clip-1").0, 200);
    let form = [
        Part::Text("id", "a"),
        Part::File("a.mp4", video("carphone_distorted.mp4")),
    ];
    let r = s.post_form("/index?task=clip", &form, Some("reader-clip-1"));
    assert_eq!(r.0, 403, "{}", r.1);
    let r = s.post_form("/index?task=clip", &form, Some("writer-all-12"));
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(s.delete("/videos/clip/a").0, 401);
    // Probes stay open for orchestrators.
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.get("/readyz").0, 200);
}

#[test]
fn refuses_public_bind_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mvserve"))
        .args([
            "serve",
            "--model-dir",
            MODEL,
            "--port",
            "0",
            "--bind",
            "0.0.0.0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without authentication"));
}

#[test]
fn search_page_is_served_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        r#"{"admin_keys": ["admin-key-123"]}"#,
        &["--no-grpc"],
    );
    let resp = ureq::get(&s.url("/")).call().expect("GET / needs no key");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_type(), "text/html");
    let csp = resp.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = resp.into_string().unwrap();
    assert!(html.contains(r#"<form id="search""#));
    assert!(html.contains(r#"<form id="upload""#));
    assert!(html.contains(r#"id="apikey""#));
    // The data it would show still needs the key.
    assert_eq!(s.get("/tasks").0, 401);
    assert_eq!(s.get_key("/tasks", "admin-key-123").0, 200);
}

/// The page inserts response data with textContent only and loads nothing from elsewhere.
#[test]
fn search_page_builds_the_dom_without_html_strings() {
    let html = include_str!("../../src/server/page.html");
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "http://",
        "https://",
        "src=\"//",
    ] {
        assert!(!html.contains(banned), "page.html uses {banned}");
    }
    assert!(html.contains("textContent"));
}

#[test]
fn a_stalled_upload_does_not_hold_shutdown_past_the_drain_timeout() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &["--drain-timeout-s", "1"]);
    // Half a multipart request, then silence: the handler waits for the rest of the body.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /index?task=clip HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"video\"; filename=\"v.mp4\"\r\n\r\nabc"
    )
    .unwrap();
    conn.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    s.stop();
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "shutdown took {took:?}"
    );
    drop(conn);
}

/// `GET /videos/{task}/{id}/video`: the stored upload byte for byte, its detected content type,
/// byte ranges (206 with Content-Range, 416 outside the file), and the record's auth.
#[test]
fn stored_uploads_stream_with_ranges_under_the_record_auth() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        r#"{"admin_keys": ["admin-key-123"],
            "keys": [{"key": "reader-clip-1", "tasks": ["clip"], "scope": "read"},
                     {"key": "reader-other-1", "tasks": ["other"], "scope": "read"}]}"#,
        &["--no-grpc"],
    );
    let mp4 = video("realshort.mp4");
    let gif = video("newtonscradle.gif");
    let (st, body) = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("id", "short"),
            // The client's name says AVI; the type served comes from the bytes.
            Part::File("short.avi", mp4.clone()),
            Part::Text("id", "cradle"),
            Part::File("cradle.gif", gif.clone()),
        ],
        Some("admin-key-123"),
    );
    assert_eq!(st, 200, "{body}");
    let get = |path: &str, key: Option<&str>, range: Option<&str>| {
        let mut req = ureq::get(&s.url(path));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        if let Some(r) = range {
            req = req.set("Range", r);
        }
        match req.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        }
    };
    let bytes_of = |r: ureq::Response| {
        let mut b = Vec::new();
        r.into_reader().read_to_end(&mut b).unwrap();
        b
    };
    let url = "/videos/clip/short/video";

    let r = get(url, Some("reader-clip-1"), None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_type(), "video/mp4");
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(bytes_of(r), mp4);

    let r = get(url, Some("reader-clip-1"), Some("bytes=100-1099"));
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-1099/{}", mp4.len()).as_str())
    );
    assert_eq!(bytes_of(r), &mp4[100..1100]);
    // A suffix range, as a browser asks for an MP4's trailing moov.
    let r = get(url, Some("reader-clip-1"), Some("bytes=-500"));
    assert_eq!(r.status(), 206);
    assert_eq!(bytes_of(r), &mp4[mp4.len() - 500..]);
    // Not a byte range at all: ignored (RFC 9110 allows it), the whole file.
    for junk in ["null", "bytes=abc", "lines=1-2"] {
        let r = get(url, Some("reader-clip-1"), Some(junk));
        assert_eq!(r.status(), 200, "Range: {junk}");
        assert_eq!(bytes_of(r), mp4);
    }
    let r = get(
        url,
        Some("reader-clip-1"),
        Some(&format!("bytes={}-", mp4.len() + 10)),
    );
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", mp4.len()).as_str())
    );

    let r = get("/videos/clip/cradle/video", Some("reader-clip-1"), None);
    assert_eq!(r.content_type(), "image/gif");
    assert_eq!(bytes_of(r), gif);
    let (_, info) = s.get_key("/videos/clip/short", "reader-clip-1");
    assert_eq!(info["video"], url);
    assert_eq!(info["content_type"], "video/mp4");
    let (_, hits) = s.get_key("/search?task=clip&q=cradle", "reader-clip-1");
    assert!(hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["video"].as_str().unwrap().ends_with("/video")));

    // Same auth as the record: no key 401, a key for another task 403, unknown ids 404 JSON.
    let r = get(url, None, None);
    assert_eq!(r.status(), 401);
    assert_eq!(get(url, Some("reader-other-1"), None).status(), 403);
    let r = get("/videos/clip/nope/video", Some("reader-clip-1"), None);
    assert_eq!(r.status(), 404);
    let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "unknown_video");
    let r = ureq::delete(&s.url("/videos/clip/short"))
        .set("x-api-key", "admin-key-123")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(url, Some("reader-clip-1"), None).status(), 404);
}

//! Search by example end to end (`POST /search`, gRPC `SearchByExample`): the real binary with the
//! tiny fixture backbone, real videos uploaded and then searched with their own bytes (raw and as
//! a form), frames of them as JPEG and PNG, hostile and oversized examples, the example slots, the
//! idle timeout, keys, and an adapter task.

use crate::common;

use common::server::*;
use futures_util::stream;
use mvserve::server::grpc::proto::{
    mv_serve_client::MvServeClient, search_by_example_request::Part as ExPart, ExampleHeader,
    SearchByExampleRequest, SearchRequest,
};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;
use tonic::{Code, Request};

/// `POST /search?{query}` with `body` as it is, under `content_type`.
fn post_raw(s: &Server, query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    json_of(
        ureq::post(&s.url(&format!("/search?{query}")))
            .set("Content-Type", content_type)
            .send_bytes(body),
    )
}

/// `POST /search?{query}` as a form with one `file` part holding `body`.
fn post_form_file(s: &Server, query: &str, body: &[u8], key: Option<&str>) -> (u16, Value) {
    let boundary = "mvserve-example-boundary-51";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut req = ureq::post(&s.url(&format!("/search?{query}"))).set(
        "Content-Type",
        &format!("multipart/form-data; boundary={boundary}"),
    );
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    json_of(req.send_bytes(&form))
}

fn top(v: &Value) -> (String, f64) {
    let h = &v["hits"][0];
    (
        h["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no hits in {v}"))
            .to_string(),
        h["score"].as_f64().unwrap(),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The JPEG thumbnail the server made of a stored video (its middle sampled frame).
fn thumbnail(s: &Server, task: &str, id: &str, key: Option<&str>) -> Vec<u8> {
    let mut req = ureq::get(&s.url(&format!("/videos/{task}/{id}/thumbnail.jpg")));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let mut out = Vec::new();
    req.call()
        .unwrap()
        .into_reader()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn as_png(jpeg: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(jpeg).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn metrics(s: &Server) -> String {
    s.get("/metrics").1.as_str().unwrap().to_string()
}

/// Uploads the four fixture videos the tests search for, as ids `short`, `v740`, `car`, `gif`.
fn seed(s: &Server, task: &str, key: Option<&str>) {
    let (st, body) = s.post_form(
        &format!("/index?task={task}"),
        &[
            Part::Text("id", "short"),
            Part::Text("meta", r#"{"title": "a short clip"}"#),
            Part::File("realshort.mp4", video("realshort.mp4")),
            Part::Text("id", "v740"),
            Part::File("video740.mp4", video("video740.mp4")),
            Part::Text("id", "car"),
            Part::File("carphone.mp4", video("carphone_distorted.mp4")),
            Part::Text("id", "gif"),
            Part::File("newtonscradle.gif", video("newtonscradle.gif")),
        ],
        key,
    );
    assert_eq!(st, 200, "{body}");
}

#[test]
fn videos_and_images_find_their_source_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    seed(&s, "clip", None);

    // A video searched by example is the top hit of itself once uploaded: the same decoder,
    // sampling and model as its upload. Raw bodies and forms alike; the content type does not
    // decide (the bytes do).
    let (st, r) = post_raw(&s, "task=clip&k=4", "video/mp4", &video("realshort.mp4"));
    assert_eq!(st, 200, "{r}");
    let (id, score) = top(&r);
    assert_eq!(id, "short", "{r}");
    assert!(score > 0.999, "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 4);
    // The answer of `GET /search`, field for field.
    let (_, text) = s.get("/search?task=clip&q=a+clip&k=4");
    assert_eq!(r["task"], "clip");
    assert_eq!(r["generation"], text["generation"]);
    assert_eq!(r["adapter_digest"], text["adapter_digest"]);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v["hits"][0].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&r), keys(&text));
    assert_eq!(r["hits"][0]["meta"]["title"], "a short clip");
    assert_eq!(
        r["hits"][0]["thumbnail"],
        "/videos/clip/short/thumbnail.jpg"
    );
    assert_eq!(r["hits"][0]["video"], "/videos/clip/short/video");
    // `filter=` applies as for a text search: only `short` has a title, so excluding it leaves
    // the other three, and a bad filter is refused before the body is read.
    let not_titled = "filter=%7B%22not%22%3A%7B%22exists%22%3A%22title%22%7D%7D";
    let (st, r) = post_raw(
        &s,
        &format!("task=clip&k=4&{not_titled}"),
        "video/mp4",
        &video("realshort.mp4"),
    );
    assert_eq!(st, 200, "{r}");
    let ids = hit_ids(&r);
    assert_eq!(ids.len(), 3, "{r}");
    assert!(!ids.contains(&"short".to_string()), "{r}");
    let (st, r) = post_raw(
        &s,
        "task=clip&filter=%7B%22xx%22%3A1%7D",
        "video/mp4",
        &video("realshort.mp4"),
    );
    assert_eq!((st, code(&r)), (400, "bad_filter"), "{r}");

    let (st, r) = post_form_file(&s, "task=clip", &video("video740.mp4"), None);
    assert_eq!(st, 200, "{r}");
    let (id, score) = top(&r);
    assert_eq!((id.as_str(), score > 0.999), ("v740", true), "{r}");
    let (st, r) = post_raw(
        &s,
        "task=clip",
        "application/octet-stream",
        &video("newtonscradle.gif"),
    );
    assert_eq!(st, 200, "{r}");
    let (id, score) = top(&r);
    assert_eq!((id.as_str(), score > 0.999), ("gif", true), "{r}");

    // An image that is a frame of an uploaded video ranks that video first: the server's own
    // thumbnail (JPEG, the middle sampled frame), and the same frame as PNG.
    for (id, kind) in [("car", "jpeg"), ("v740", "png"), ("short", "jpeg")] {
        let jpeg = thumbnail(&s, "clip", id, None);
        let (ct, bytes) = match kind {
            "png" => ("image/png", as_png(&jpeg)),
            _ => ("image/jpeg", jpeg),
        };
        let (st, r) = post_raw(&s, "task=clip&k=2", ct, &bytes);
        assert_eq!(st, 200, "{r}");
        assert_eq!(top(&r).0, id, "{kind} frame of {id}: {r}");
        assert_eq!(r["hits"].as_array().unwrap().len(), 2);
        // As a form, the same answer.
        let (_, f) = post_form_file(&s, "task=clip&k=2", &bytes, None);
        assert_eq!(f["hits"], r["hits"]);
    }

    let m = metrics(&s);
    for want in [
        // 3 videos, 1 of them again with a filter; 6 images.
        "mvserve_example_searches_total{kind=\"video\",task=\"clip\"} 4",
        "mvserve_example_searches_total{kind=\"image\",task=\"clip\"} 6",
        "mvserve_filtered_searches_total{task=\"clip\"} 1",
        "mvserve_task_requests_total{op=\"search_example\",task=\"clip\"} 10",
        "mvserve_http_requests_total{method=\"POST\",route=\"/search\",status=\"200\"} 10",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }
    s.stop();
}

/// A raw HTTP request whose body stalls after `sent` bytes (read its answer with [`status_of`]).
fn stalled_example(s: &Server, query: &str, declared: usize, sent: &[u8]) -> TcpStream {
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /search?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\n\
         Content-Length: {declared}\r\n\r\n"
    )
    .unwrap();
    c.write_all(sent).unwrap();
    c
}

fn status_of(mut c: TcpStream) -> u16 {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"))
}

/// A small PNG whose header then claims `claim` x `claim` pixels (its CRC fixed up).
fn png_claiming(claim: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&claim.to_be_bytes());
    png[20..24].copy_from_slice(&claim.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[test]
fn hostile_and_oversized_examples_are_typed_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--max-example-mb",
            "1",
            "--max-concurrent-examples",
            "1",
            "--idle-timeout-s",
            "1",
        ],
    );
    seed(&s, "clip", None);
    let mp4 = video("realshort.mp4");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", vec![], 400, "empty_video"),
        ("not media", b"{\"q\": \"a cat\"}".to_vec(), 415, "unsupported_media"),
        ("truncated mp4", mp4[..mp4.len() / 3].to_vec(), 422, "corrupt_media"),
        ("truncated jpeg", thumbnail(&s, "clip", "car", None)[..600].to_vec(), 422, "corrupt_media"),
        ("huge png", png_claiming(100_000), 413, "too_large"),
        // A GIF whose screen is 65535 x 65535: refused from its header, nothing allocated.
        (
            "gif bomb",
            b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;"
                .to_vec(),
            413,
            "too_large",
        ),
        ("over --max-example-mb", vec![0u8; (1 << 20) + 1], 413, "too_large"),
    ];
    for (what, body, status, want) in &cases {
        let (st, r) = post_raw(&s, "task=clip", "image/jpeg", body);
        assert_eq!((st, code(&r)), (*status, *want), "{what}: {r}");
    }
    // The same refusals through a form.
    let (st, r) = post_form_file(&s, "task=clip", b"", None);
    assert_eq!((st, code(&r)), (400, "empty_video"), "{r}");
    let (st, r) = post_form_file(&s, "task=clip", &vec![7u8; (1 << 20) + 10], None);
    assert_eq!((st, code(&r)), (413, "too_large"), "{r}");
    let (st, r) = s.post_form("/search?task=clip", &[Part::Text("id", "x")], None);
    assert_eq!((st, code(&r)), (400, "unknown_field"), "{r}");
    let (ct, empty_form) = multipart(&[]);
    let (st, r) = post_raw(&s, "task=clip", &ct, &empty_form);
    assert_eq!((st, code(&r)), (400, "missing_video"), "{r}");
    // The query is checked before the body.
    for (q, status, want) in [
        ("task=nope", 404, "unknown_task"),
        ("k=3", 400, "missing_task"),
        ("task=clip&k=0", 400, "bad_k"),
        ("task=clip&k=lots", 400, "bad_k"),
        ("task=clip&k=1001", 400, "bad_k"),
    ] {
        let (st, r) = post_raw(&s, q, "video/mp4", &mp4);
        assert_eq!((st, code(&r)), (status, want), "{q}: {r}");
    }

    // A declared length over the limit is refused before the body is read.
    let c = stalled_example(&s, "task=clip", 5 << 20, b"");
    assert_eq!(status_of(c), 413);
    // A body that stalls: 408 after --idle-timeout-s.
    let c = stalled_example(&s, "task=clip", mp4.len(), &mp4[..1000]);
    assert_eq!(status_of(c), 408);
    // One example slot (--max-concurrent-examples 1): while a stalled example holds it, the next
    // gets 503 at once, and uploads, which have their own slots, go on.
    let held = stalled_example(&s, "task=clip", mp4.len(), &mp4[..1000]);
    std::thread::sleep(Duration::from_millis(200));
    let resp = match ureq::post(&s.url("/search?task=clip"))
        .set("Content-Type", "video/mp4")
        .send_bytes(&mp4)
    {
        Err(ureq::Error::Status(503, r)) => r,
        other => panic!("expected 503, got {:?}", other.map(|r| r.status())),
    };
    assert_eq!(resp.header("retry-after"), Some("1"));
    let body: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    assert_eq!(code(&body), "overloaded");
    let (st, r) = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("id", "during"),
            Part::File("a.mp4", video("video7020.mp4")),
        ],
        None,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(status_of(held), 408);
    // The slot is free again, and nothing above disturbed the server.
    let (st, r) = post_raw(&s, "task=clip", "video/mp4", &mp4);
    assert_eq!((st, top(&r).0.as_str()), (200, "short"), "{r}");
    let m = metrics(&s);
    assert!(
        m.contains("mvserve_errors_total{code=\"corrupt_media\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("mvserve_example_searches_total{kind=\"video\",task=\"clip\"} 1"),
        "{m}"
    );
    s.stop();
}

#[test]
fn example_search_needs_the_tasks_read_right() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        r#"{"admin_keys": ["admin-key-123"],
            "keys": [{"key": "reader-clip-1", "tasks": ["clip"], "scope": "read"},
                     {"key": "writer-other-1", "tasks": ["other"], "scope": "write"}]}"#,
        &[],
    );
    seed(&s, "clip", Some("admin-key-123"));
    let jpeg = thumbnail(&s, "clip", "car", Some("admin-key-123"));
    let (st, r) = post_form_file(&s, "task=clip", &jpeg, None);
    assert_eq!((st, code(&r)), (401, "unauthenticated"), "{r}");
    let (st, r) = post_form_file(&s, "task=clip", &jpeg, Some("wrong-key-999"));
    assert_eq!(st, 401, "{r}");
    // A read key suffices: a search by example is a read, though it is a POST.
    let (st, r) = post_form_file(&s, "task=clip", &jpeg, Some("reader-clip-1"));
    assert_eq!((st, top(&r).0.as_str()), (200, "car"), "{r}");
    let (st, r) = post_form_file(&s, "task=clip", &jpeg, Some("writer-other-1"));
    assert_eq!((st, code(&r)), (403, "forbidden"), "{r}");
    let r = json_of(
        ureq::post(&s.url("/search?task=clip"))
            .set("x-api-key", "reader-clip-1")
            .set("Content-Type", "image/jpeg")
            .send_bytes(&jpeg),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    // gRPC: the same keys and rights.
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&s).await;
        let err = c
            .search_by_example(example_request("clip", 1, &jpeg, None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .search_by_example(example_request("clip", 1, &jpeg, Some("writer-other-1")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let r = c
            .search_by_example(example_request("clip", 1, &jpeg, Some("reader-clip-1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.hits[0].id, "car");
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(s: &Server) -> MvServeClient<tonic::transport::Channel> {
    MvServeClient::connect(s.grpc.clone().expect("the server serves gRPC"))
        .await
        .unwrap()
}

/// A header, then the example in 64 KiB chunks, with the key in metadata when given.
fn example_request(
    task: &str,
    k: u32,
    bytes: &[u8],
    key: Option<&str>,
) -> Request<impl futures_util::Stream<Item = SearchByExampleRequest>> {
    let mut msgs = vec![SearchByExampleRequest {
        part: Some(ExPart::Header(ExampleHeader {
            task: task.into(),
            k,
            filter: String::new(),
            segments: 0,
        })),
    }];
    msgs.extend(bytes.chunks(64 << 10).map(|c| SearchByExampleRequest {
        part: Some(ExPart::Chunk(c.to_vec())),
    }));
    let mut r = Request::new(stream::iter(msgs));
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

fn error_code(s: &tonic::Status) -> (Code, String) {
    let c = s
        .metadata()
        .get("mvserve-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (s.code(), c)
}

/// Installs a random adapter as task `news` and waits until it is served.
fn adapter_task(tmp: &Path, adapters: &Path) {
    let file = tmp.join("news.safetensors");
    new_adapter(&file, "news", 4);
    let staged = adapters.join(".news.staged");
    std::fs::copy(&file, &staged).unwrap();
    std::fs::rename(&staged, adapters.join("news.safetensors")).unwrap();
}

#[test]
fn grpc_examples_match_http_and_go_through_the_task_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let adapters = data.join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    adapter_task(tmp.path(), &adapters);
    let s = Server::start(&data, &[]);
    wait_until("news to be served", Duration::from_secs(10), || {
        s.get("/tasks/news").0 == 200
    });
    seed(&s, "clip", None);
    seed(&s, "news", None);
    let mp4 = video("video740.mp4");
    let jpeg = thumbnail(&s, "news", "short", None);
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&s).await;
        for task in ["clip", "news"] {
            // Self-retrieval through the task's own model (the adapter's temporal modules and
            // pooling for `news`), the same hits and scores as over HTTP.
            let g = c
                .search_by_example(example_request(task, 4, &mp4, None))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(g.hits[0].id, "v740", "{task}");
            assert!(g.hits[0].score > 0.999, "{task}: {}", g.hits[0].score);
            let (st, h) = post_raw(&s, &format!("task={task}&k=4"), "video/mp4", &mp4);
            assert_eq!(st, 200, "{h}");
            assert_eq!(g.adapter_digest, h["adapter_digest"].as_str().unwrap());
            for (gh, hh) in g.hits.iter().zip(h["hits"].as_array().unwrap()) {
                assert_eq!(gh.id, hh["id"].as_str().unwrap());
                assert!((gh.score as f64 - hh["score"].as_f64().unwrap()).abs() < 1e-6);
            }
            let g = c
                .search_by_example(example_request(task, 0, &jpeg, None))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(g.hits[0].id, "short", "{task}");
            assert_eq!(g.hits.len(), 4, "k 0 is the default, 10: all four");
        }
        // The adapter makes other vectors than plain CLIP: the image's scores differ.
        let clip = c
            .search_by_example(example_request("clip", 4, &jpeg, None))
            .await
            .unwrap()
            .into_inner();
        let news = c
            .search_by_example(example_request("news", 4, &jpeg, None))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(clip.adapter_digest, news.adapter_digest);
        let score = |r: &mvserve::server::grpc::proto::SearchResponse, id: &str| {
            r.hits.iter().find(|h| h.id == id).unwrap().score
        };
        let moved = ["short", "v740", "car", "gif"]
            .iter()
            .map(|id| (score(&clip, id) - score(&news, id)).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-3, "the adapter changed no score by over 1e-3");

        // Errors: the same codes as HTTP.
        let err = |r: Result<_, tonic::Status>| error_code(&r.unwrap_err());
        let chunk_first = Request::new(stream::iter(vec![SearchByExampleRequest {
            part: Some(ExPart::Chunk(mp4[..100].to_vec())),
        }]));
        assert_eq!(
            err(c.search_by_example(chunk_first).await),
            (Code::InvalidArgument, "bad_stream".into())
        );
        assert_eq!(
            err(c
                .search_by_example(example_request("nope", 1, &mp4, None))
                .await),
            (Code::NotFound, "unknown_task".into())
        );
        assert_eq!(
            err(c
                .search_by_example(example_request("clip", 1, &[], None))
                .await),
            (Code::InvalidArgument, "empty_video".into())
        );
        assert_eq!(
            err(c
                .search_by_example(example_request("clip", 1, b"hello", None))
                .await),
            (Code::InvalidArgument, "unsupported_media".into())
        );
        assert_eq!(
            err(c
                .search_by_example(example_request("clip", 1001, &mp4, None))
                .await),
            (Code::InvalidArgument, "bad_k".into())
        );
        // Still a plain text search afterwards.
        let t = c
            .search(SearchRequest {
                task: "clip".into(),
                query: "a clip".into(),
                k: 2,
                filter: String::new(),
                segments: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.hits.len(), 2);
    });
    let m = metrics(&s);
    assert!(
        m.contains("mvserve_example_searches_total{kind=\"video\",task=\"news\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("mvserve_grpc_requests_total{code=\"Ok\",method=\"SearchByExample\"} 6"),
        "{m}"
    );
    // Close the client's connections first (an idle runtime never answers the server's goodbye).
    drop(rt);
    s.stop();
}

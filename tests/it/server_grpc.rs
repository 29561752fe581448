//! End-to-end tests of the gRPC API: the real binary with the tiny fixture backbone, real videos
//! streamed through `Index`, and the same searches over gRPC and HTTP.

use crate::common;

use common::server::*;
use futures_util::stream;
use mvserve::server::grpc::proto::{
    index_request::Part, mv_serve_client::MvServeClient, GetTaskRequest, IndexHeader, IndexRequest,
    ListTasksRequest, SearchRequest, VideoRef,
};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const CHUNK: usize = 64 << 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(s: &Server) -> MvServeClient<Channel> {
    MvServeClient::connect(s.grpc.clone().expect("the server serves gRPC"))
        .await
        .expect("connecting to the gRPC port")
}

fn header(task: &str, id: &str, meta: &str, filename: &str) -> IndexRequest {
    IndexRequest {
        part: Some(Part::Header(IndexHeader {
            task: task.into(),
            id: id.into(),
            meta: meta.into(),
            filename: filename.into(),
        })),
    }
}

/// A header, then the bytes in chunks.
fn video_messages(task: &str, id: &str, meta: &str, name: &str, bytes: &[u8]) -> Vec<IndexRequest> {
    let mut out = vec![header(task, id, meta, name)];
    out.extend(bytes.chunks(CHUNK).map(|c| IndexRequest {
        part: Some(Part::Chunk(c.to_vec())),
    }));
    out
}

fn search_req(task: &str, query: &str, k: u32) -> SearchRequest {
    SearchRequest {
        task: task.into(),
        query: query.into(),
        k,
        filter: String::new(),
        segments: 0,
    }
}

/// The status code and the `mvserve-error-code` metadata of a failed call.
fn codes(s: &Status) -> (Code, String) {
    let code = s
        .metadata()
        .get("mvserve-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (s.code(), code)
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

#[test]
fn index_search_get_delete_over_grpc_match_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let rt = runtime();
    let mut c = rt.block_on(client(&s));

    // Two videos in one streamed call: the first with id and meta, the second id-less.
    let mut msgs = video_messages(
        "clip",
        "short",
        r#"{"title": "a short clip"}"#,
        "realshort.mp4",
        &video("realshort.mp4"),
    );
    let (bunny_name, bunny) = ffmpeg_clip("index_search_get_delete_over_grpc_match_http");
    msgs.extend(video_messages("", "", "", bunny_name, &bunny));
    let resp = rt
        .block_on(c.index(stream::iter(msgs)))
        .expect("Index")
        .into_inner();
    assert_eq!(resp.task, "clip");
    let ids: Vec<&str> = resp.indexed.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids[0], "short");
    assert_eq!(ids[1].len(), 16, "a generated id is a content hash");
    assert_eq!(resp.indexed[0].bytes, 96822);
    assert!(resp.indexed[0].frames >= 1);
    let media: Value = serde_json::from_str(&resp.indexed[0].media).unwrap();
    assert!(media.is_object(), "{media}");
    let bunny = ids[1].to_string();

    // The same query over both transports: same ids, order and scores.
    let q = "a person riding a bike";
    let g = rt
        .block_on(c.search(search_req("clip", q, 10)))
        .expect("Search")
        .into_inner();
    let (st, h) = s.get("/search?task=clip&q=a%20person%20riding%20a%20bike&k=10");
    assert_eq!(st, 200, "{h}");
    let hh = h["hits"].as_array().unwrap();
    assert_eq!(g.hits.len(), 2);
    assert_eq!(g.hits.len(), hh.len());
    for (gh, hh) in g.hits.iter().zip(hh) {
        assert_eq!(gh.id, hh["id"].as_str().unwrap());
        assert_eq!(gh.score, hh["score"].as_f64().unwrap() as f32, "{}", gh.id);
        assert_eq!(gh.thumbnail, hh["thumbnail"].as_str().unwrap());
        let meta = if gh.meta.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&gh.meta).unwrap()
        };
        assert_eq!(meta, hh["meta"]);
    }
    assert!(g.hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(g.adapter_digest, h["adapter_digest"].as_str().unwrap());
    // k = 0 is the default (10); k = 1 is one hit.
    let k0 = rt.block_on(c.search(search_req("clip", q, 0))).unwrap();
    assert_eq!(k0.into_inner().hits.len(), 2);
    let k1 = rt.block_on(c.search(search_req("clip", q, 1))).unwrap();
    assert_eq!(k1.into_inner().hits.len(), 1);

    // Uploaded over gRPC, visible over HTTP (and the reverse for metadata).
    let v = rt
        .block_on(c.get_video(VideoRef {
            task: "clip".into(),
            id: "short".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!((v.file_name.as_str(), v.bytes), ("realshort.mp4", 96822));
    assert_eq!(
        serde_json::from_str::<Value>(&v.meta).unwrap()["title"],
        "a short clip"
    );
    assert_eq!(s.get("/videos/clip/short").1["bytes"], 96822);
    let t = rt
        .block_on(c.get_task(GetTaskRequest {
            task: "clip".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!((t.videos, t.model.unwrap().kind.as_str()), (2, "builtin"));
    let l = rt
        .block_on(c.list_tasks(ListTasksRequest {}))
        .unwrap()
        .into_inner();
    assert!(l.tasks.iter().any(|t| t.task == "clip"));

    // Delete, then the id is gone on both transports.
    let bunny_ref = || VideoRef {
        task: "clip".into(),
        id: bunny.clone(),
    };
    let d = rt
        .block_on(c.delete_video(bunny_ref()))
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, bunny);
    assert_eq!(s.get(&format!("/videos/clip/{bunny}")).0, 404);
    let e = rt.block_on(c.delete_video(bunny_ref())).unwrap_err();
    assert_eq!(codes(&e), (Code::NotFound, "unknown_video".into()));
    let e = rt.block_on(c.get_video(bunny_ref())).unwrap_err();
    assert_eq!(codes(&e), (Code::NotFound, "unknown_video".into()));

    // Errors: unknown task, bad input, a stream that does not start with a header.
    let e = rt.block_on(c.search(search_req("nope", q, 3))).unwrap_err();
    assert_eq!(codes(&e), (Code::NotFound, "unknown_task".into()));
    let e = rt
        .block_on(c.get_task(GetTaskRequest {
            task: "nope".into(),
        }))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::NotFound, "unknown_task".into()));
    let e = rt
        .block_on(c.index(stream::iter(video_messages(
            "nope",
            "x",
            "",
            "a.mp4",
            &video("carphone_distorted.mp4"),
        ))))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::NotFound, "unknown_task".into()));
    let e = rt
        .block_on(c.search(search_req("clip", " ", 3)))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::InvalidArgument, "empty_query".into()));
    let e = rt
        .block_on(c.search(search_req("clip", q, 1001)))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::InvalidArgument, "bad_k".into()));
    let chunk_first = vec![IndexRequest {
        part: Some(Part::Chunk(vec![1, 2, 3])),
    }];
    let e = rt.block_on(c.index(stream::iter(chunk_first))).unwrap_err();
    assert_eq!(codes(&e), (Code::InvalidArgument, "bad_stream".into()));
    let e = rt
        .block_on(c.index(stream::iter(video_messages(
            "clip",
            "bad",
            "{not json",
            "a.mp4",
            &video("carphone_distorted.mp4"),
        ))))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::InvalidArgument, "bad_meta".into()));
    let e = rt
        .block_on(c.index(stream::iter(video_messages(
            "clip",
            "txt",
            "",
            "notes.txt",
            b"these are not the frames you are looking for",
        ))))
        .unwrap_err();
    assert_eq!(
        codes(&e),
        (Code::InvalidArgument, "unsupported_media".into())
    );
    assert_eq!(s.get("/tasks/clip").1["videos"], 1);

    // The standard health service says the API is serving.
    let channel = rt
        .block_on(
            Channel::from_shared(s.grpc.clone().unwrap())
                .unwrap()
                .connect(),
        )
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = rt
        .block_on(health.check(tonic_health::pb::HealthCheckRequest {
            service: "mvserve.v1.MvServe".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for want in [
        "mvserve_grpc_requests_total{code=\"Ok\",method=\"Search\"} 3",
        "mvserve_grpc_requests_total{code=\"NotFound\",method=\"Search\"} 1",
        "mvserve_grpc_requests_total{code=\"Ok\",method=\"Index\"} 1",
        "mvserve_videos_indexed_total{task=\"clip\"} 2",
        "mvserve_errors_total{code=\"unknown_task\"} 3",
        // One HTTP search and three gRPC ones, counted per task alike.
        "mvserve_task_requests_total{op=\"search\",task=\"clip\"} 4",
    ] {
        assert!(metrics.contains(want), "{want} missing in\n{metrics}");
    }
    // Close the client's connections (an idle runtime would never answer the server's goodbye),
    // then SIGTERM stops both listeners and the process exits cleanly.
    drop((c, health, rt));
    s.stop();
}

#[test]
fn oversize_grpc_upload_is_refused_while_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--max-upload-mb", "1"]);
    let rt = runtime();
    let mut c = rt.block_on(client(&s));
    // A 256 MiB upload produced lazily: refused at the 1 MiB cap, long before its end.
    let sent = Arc::new(AtomicUsize::new(0));
    let total_chunks = (256 << 20) / CHUNK;
    let counter = sent.clone();
    let chunk = vec![7u8; CHUNK];
    let msgs = stream::iter(std::iter::once(header("clip", "big", "", "big.mp4")).chain(
        (0..total_chunks).map(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            IndexRequest {
                part: Some(Part::Chunk(chunk.clone())),
            }
        }),
    ));
    let e = rt.block_on(c.index(msgs)).unwrap_err();
    assert_eq!(
        codes(&e),
        (Code::ResourceExhausted, "too_large".into()),
        "{e:?}"
    );
    let pulled = sent.load(Ordering::Relaxed) * CHUNK;
    assert!(
        pulled < 16 << 20,
        "the client was allowed to send {pulled} bytes before the refusal"
    );
    assert_eq!(s.get("/tasks/clip").1["videos"], 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // The server is fine afterwards.
    let mut c = rt.block_on(client(&s));
    let ok = rt.block_on(c.index(stream::iter(video_messages(
        "clip",
        "small",
        "",
        "c.mp4",
        &video("carphone_distorted.mp4"),
    ))));
    assert_eq!(ok.unwrap().into_inner().indexed[0].id, "small");
}

#[test]
fn grpc_uses_the_same_api_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_keys(
        &dir.path().join("data"),
        r#"{"admin_keys": ["admin-key-123"],
            "keys": [{"key": "reader-clip-1", "tasks": ["clip"], "scope": "read"},
                     {"key": "writer-other-1", "tasks": ["other"], "scope": "write"}]}"#,
        &[],
    );
    let rt = runtime();
    let mut c = rt.block_on(client(&s));
    let q = || search_req("clip", "hello", 5);

    let e = rt.block_on(c.search(q())).unwrap_err();
    assert_eq!(codes(&e), (Code::Unauthenticated, "unauthenticated".into()));
    let e = rt
        .block_on(c.search(with_key(q(), "wrong-key-999")))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    rt.block_on(c.search(with_key(q(), "reader-clip-1")))
        .expect("a reader may search its task");
    let mut via_x_api_key = Request::new(q());
    via_x_api_key
        .metadata_mut()
        .insert("x-api-key", "reader-clip-1".parse().unwrap());
    rt.block_on(c.search(via_x_api_key))
        .expect("x-api-key works too");
    let e = rt
        .block_on(c.search(with_key(q(), "writer-other-1")))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::PermissionDenied, "forbidden".into()));
    rt.block_on(c.list_tasks(with_key(ListTasksRequest {}, "reader-clip-1")))
        .expect("any key lists tasks");

    let upload = |key: &str| {
        with_key(
            stream::iter(video_messages(
                "clip",
                "a",
                "",
                "a.mp4",
                &video("carphone_distorted.mp4"),
            )),
            key,
        )
    };
    let e = rt.block_on(c.index(upload("reader-clip-1"))).unwrap_err();
    assert_eq!(codes(&e), (Code::PermissionDenied, "forbidden".into()));
    rt.block_on(c.index(upload("admin-key-123")))
        .expect("an admin may upload");
    let e = rt
        .block_on(c.delete_video(with_key(
            VideoRef {
                task: "clip".into(),
                id: "a".into(),
            },
            "reader-clip-1",
        )))
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(s.get_key("/videos/clip/a", "reader-clip-1").0, 200);
}

#[test]
fn overload_is_resource_exhausted_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // A text queue of zero places: every query is turned away instead of waiting.
    let s = Server::start(dir.path(), &["--text-queue", "0"]);
    let rt = runtime();
    let mut c = rt.block_on(client(&s));
    let e = rt
        .block_on(c.search(search_req("clip", "hello", 5)))
        .unwrap_err();
    assert_eq!(codes(&e), (Code::ResourceExhausted, "overloaded".into()));
    let retry = e
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok());
    assert_eq!(retry, Some("1"));
}

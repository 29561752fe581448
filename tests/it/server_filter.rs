//! Metadata filters on search, end to end: the real server with the tiny fixture backbone, videos
//! uploaded with `meta`, and filtered searches over HTTP and gRPC (only passing hits, unicode keys
//! and values, every invalid filter a 400 `bad_filter` naming the problem, and the metric).

use crate::common;

use common::server::*;
use mvserve::server::grpc::proto::{mv_serve_client::MvServeClient, SearchRequest};
use tonic::Code;

/// `s` percent-encoded for a query string (every byte but the unreserved ones).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn filtered_search_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let clip = video("realshort.mp4");
    let (st, body) = s.post_form(
        "/index?task=clip",
        &[
            Part::Text("id", "a"),
            Part::Text(
                "meta",
                r#"{"lang": "en", "year": 2020, "tags": {"kind": "news"}}"#,
            ),
            Part::File("a.mp4", clip.clone()),
            Part::Text("id", "b"),
            Part::Text("meta", r#"{"lang": "de", "year": 2021.0, "a.b": true}"#),
            Part::File("b.mp4", clip.clone()),
            Part::Text("id", "c"),
            Part::Text(
                "meta",
                r#"{"lang": "en", "year": 2019, "ключ": "значение 🎬"}"#,
            ),
            Part::File("c.mp4", clip.clone()),
            Part::Text("id", "d"),
            Part::File("d.mp4", video("video740.mp4")),
        ],
        None,
    );
    assert_eq!(st, 200, "{body}");

    let http = |filter: &str| {
        let (st, res) = s.get(&format!(
            "/search?task=clip&q=a%20clip&filter={}",
            enc(filter)
        ));
        assert_eq!(st, 200, "{filter}: {res}");
        sorted(hit_ids(&res))
    };
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: &[(&str, &[&str])] = &[
        (r#"{"eq": ["lang", "en"]}"#, &["a", "c"]),
        (r#"{"gte": ["year", 2020]}"#, &["a", "b"]),
        (r#"{"eq": ["year", 2021]}"#, &["b"]),
        (
            r#"{"and": [{"eq": ["lang", "en"]}, {"gte": ["year", 2020]}]}"#,
            &["a"],
        ),
        (
            r#"{"or": [{"eq": ["lang", "de"]}, {"lt": ["year", 2020]}]}"#,
            &["b", "c"],
        ),
        (r#"{"ne": ["lang", "en"]}"#, &["b", "d"]),
        (r#"{"not": {"exists": "lang"}}"#, &["d"]),
        (r#"{"in": ["lang", ["de", "fr"]]}"#, &["b"]),
        (r#"{"eq": ["tags.kind", "news"]}"#, &["a"]),
        (r#"{"eq": ["a\\.b", true]}"#, &["b"]),
        (r#"{"eq": ["ключ", "значение 🎬"]}"#, &["c"]),
        (r#"{"eq": ["lang", "xx"]}"#, &[]),
        // The stored record's own fields (file name, media) are not the user's meta.
        (r#"{"exists": "file_name"}"#, &[]),
    ];
    for (filter, want) in cases {
        assert_eq!(http(filter), ids(want), "{filter}");
    }
    // No filter, or an empty one: everything.
    assert_eq!(http(""), ids(&["a", "b", "c", "d"]));
    let (_, res) = s.get("/search?task=clip&q=a%20clip");
    assert_eq!(sorted(hit_ids(&res)), ids(&["a", "b", "c", "d"]));
    // A filtered hit carries the user's meta as given.
    let (_, res) = s.get(&format!(
        "/search?task=clip&q=clip&filter={}",
        enc(r#"{"eq": ["ключ", "значение 🎬"]}"#)
    ));
    assert_eq!(res["hits"][0]["meta"]["ключ"], "значение 🎬");

    // Invalid filters: 400 `bad_filter`, the message naming the problem; nothing is searched.
    let too_deep = (0..9).fold(r#"{"exists": "a"}"#.to_string(), |f, _| {
        format!(r#"{{"not": {f}}}"#)
    });
    let too_long = format!(r#"{{"eq": ["a", "{}"]}}"#, "x".repeat(5000));
    let bad: &[(&str, &str)] = &[
        ("{not json", "not JSON"),
        (r#"{"xx": ["lang", "en"]}"#, "unknown operator `xx`"),
        (r#"{"gte": ["year", "2020"]}"#, "`gte` needs [key, number]"),
        (r#"{"eq": ["lang", null]}"#, "`eq` needs"),
        (r#"{"in": ["lang", []]}"#, "`in` needs"),
        (r#"{"eq": ["a..b", 1]}"#, "empty key segment"),
        (
            r#"{"eq": ["lang", "en"], "gt": ["year", 1]}"#,
            "exactly one operator",
        ),
        (&too_deep, "deeper than 8"),
        (&too_long, "at most 4096"),
    ];
    for (filter, want) in bad {
        let (st, e) = s.get(&format!("/search?task=clip&q=x&filter={}", enc(filter)));
        assert_eq!(st, 400, "{filter}: {e}");
        assert_eq!(e["error"]["code"], "bad_filter", "{filter}: {e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{filter}: {msg:?} lacks {want:?}");
    }

    // gRPC: the same filters, the same hits; a bad one is INVALID_ARGUMENT `bad_filter`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt
        .block_on(MvServeClient::connect(s.grpc.clone().unwrap()))
        .unwrap();
    let req = |filter: &str| SearchRequest {
        task: "clip".into(),
        query: "a clip".into(),
        k: 10,
        filter: filter.into(),
        segments: 0,
    };
    for (filter, want) in cases {
        let r = rt.block_on(c.search(req(filter))).unwrap().into_inner();
        let got = sorted(r.hits.into_iter().map(|h| h.id).collect());
        assert_eq!(got, ids(want), "gRPC {filter}");
    }
    let all = rt.block_on(c.search(req(""))).unwrap().into_inner();
    assert_eq!(all.hits.len(), 4);
    let e = rt
        .block_on(c.search(req(r#"{"gte": ["year", "x"]}"#)))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.metadata().get("mvserve-error-code").unwrap(),
        "bad_filter"
    );
    assert!(e.message().contains("`gte` needs"), "{}", e.message());

    // Successful filtered searches are counted per task (HTTP and gRPC alike).
    let filtered = cases.len() * 2 + 1;
    let metrics = ureq::get(&s.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let line = format!("mvserve_filtered_searches_total{{task=\"clip\"}} {filtered}");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    assert!(metrics.contains("mvserve_errors_total{code=\"bad_filter\"}"));
}

//! The OpenAPI document against the router: every route has an operation and every operation a
//! route (the router is built from `server::routes::table()`), each operation documents its
//! statuses with typed bodies, and the real binary serves the same document at `/openapi.json`,
//! with and without keys. The contract fuzzing itself is `.ci/fuzz-api` (schemathesis).

use crate::common;

use common::server::*;
use mvserve::server::{openapi, routes};
use serde_json::Value;
use std::collections::BTreeSet;

fn document() -> Value {
    serde_json::to_value(openapi::document()).unwrap()
}

#[test]
fn every_route_is_documented_and_every_operation_is_routed() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let routed: BTreeSet<(String, String)> = routes::table()
        .iter()
        .map(|r| (r.method().as_str().to_lowercase(), r.path().to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations without a route: {unrouted:?}"
    );
    assert_eq!(routed.len(), 14);
}

#[test]
fn operations_document_their_parameters_statuses_and_bodies() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success status"
            );
            // Every {param} of the path is a documented path parameter.
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(params, in_path, "{what}");
            // Error statuses with a body use the one error schema.
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    if let Some(c) = r.get("content") {
                        assert_eq!(
                            c["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{what} {status}"
                        );
                    }
                }
            }
            // Anything about a task can be refused for a missing or wrong key.
            if path.contains("{task}") || path == "/search" || path == "/index" {
                for s in ["401", "403", "404"] {
                    assert!(responses.contains_key(s), "{what}: no {s}");
                }
            }
        }
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("bearer") && schemes.contains_key("api_key"));
}

#[test]
fn the_binary_serves_the_document_with_and_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("open"), &["--no-grpc"]);
    let (st, served) = s.get("/openapi.json");
    assert_eq!(st, 200);
    assert_eq!(served, document());
    s.stop();

    let s = Server::start_with_keys(
        &dir.path().join("keyed"),
        r#"{"admin_keys": ["admin-key-123"]}"#,
        &["--no-grpc"],
    );
    let (st, served) = s.get("/openapi.json");
    assert_eq!(st, 200, "the document holds no data and needs no key");
    assert_eq!(served, document());
    s.stop();
}

//! The monitoring files in deploy/ query only metrics the server exports: every `mvserve_*` name in
//! the alert rules and the Grafana dashboard (less a histogram's `_bucket`/`_sum`/`_count`) must be
//! registered in `src/server/metrics.rs`, so renaming a metric there fails here, not on a dashboard.
//! And Prometheus scrapes the metrics port the manifests give the server (where `/metrics` needs no
//! key), not the API port (where it needs an admin key).

use std::collections::BTreeSet;

const METRICS_RS: &str = include_str!("../../src/server/metrics.rs");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const ALERT_TESTS: &str = include_str!("../../deploy/prometheus/alerts_test.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboards/mvserve.json");
const CONFIGMAP: &str = include_str!("../../deploy/k8s/configmap.yaml");
const DEPLOYMENT: &str = include_str!("../../deploy/k8s/deployment.yaml");
const COMPOSE: &str = include_str!("../../deploy/docker-compose.yml");
const PROMETHEUS: &str = include_str!("../../deploy/prometheus/prometheus.yml");

/// Every `mvserve_[a-z_]+` word in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mvserve_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Names registered in metrics.rs: string literals starting with `mvserve_`.
fn exported() -> BTreeSet<String> {
    names(METRICS_RS)
        .into_iter()
        .filter(|n| METRICS_RS.contains(&format!("\"{n}\"")))
        .collect()
}

fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[test]
fn deploy_files_query_only_exported_metrics() {
    let exported = exported();
    assert!(
        exported.len() >= 15,
        "found only {exported:?} in metrics.rs"
    );
    for (file, text) in [
        ("alerts.yml", ALERTS),
        ("alerts_test.yml", ALERT_TESTS),
        ("mvserve.json", DASHBOARD),
    ] {
        let used = names(text);
        assert!(!used.is_empty(), "{file} names no metric");
        for n in &used {
            assert!(
                exported.contains(n) || exported.contains(base(n)),
                "{file} uses {n}, which src/server/metrics.rs does not export"
            );
        }
    }
}

#[test]
fn the_dashboard_is_json_and_every_panel_queries_something() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(d["uid"], "mvserve");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().unwrap().contains("mvserve_")
                    || t["expr"].as_str().unwrap().contains("up{")
            );
        }
    }
}

/// The value of the first `key: value` line (quotes removed) in a YAML file.
fn yaml_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in the file"))
        .trim()
        .trim_matches('"')
}

#[test]
fn prometheus_scrapes_the_metrics_port() {
    let port = yaml_value(CONFIGMAP, "MVSERVE_METRICS_PORT");
    assert!(port.parse::<u16>().is_ok(), "{port}");
    assert_ne!(port, yaml_value(CONFIGMAP, "MVSERVE_PORT"));
    // Kubernetes: the pod annotation Prometheus discovers, and the container port it names.
    assert_eq!(yaml_value(DEPLOYMENT, "prometheus.io/port"), port);
    assert!(DEPLOYMENT.contains(&format!("containerPort: {port}")));
    // Compose: the server's setting and the static target.
    assert_eq!(yaml_value(COMPOSE, "MVSERVE_METRICS_PORT"), port);
    assert!(
        PROMETHEUS.contains(&format!("\"mvserve:{port}\"")),
        "{PROMETHEUS}"
    );
}

//! The Kubernetes manifests in deploy/k8s, checked offline (no cluster): every file parses as YAML
//! and names its kind; every server container has the probes; and the distributed kustomization
//! (deploy/k8s/distributed) holds together: the query replicas and the indexer share the same
//! ReadWriteMany claims, their environment names the server's flags, the HPA scales the query
//! Deployment, the indexer is a StatefulSet of one, the Services select the right pods, and the
//! store URL names the Service of the Milvus resource.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// The environment variables of the distributed mode's flags (`--role`, `--store`, `--blob-dir`)
/// and the Milvus token.
const DISTRIBUTED_ENV: [&str; 4] = [
    "MVSERVE_ROLE",
    "MVSERVE_STORE",
    "MVSERVE_BLOB_DIR",
    "MVSERVE_MILVUS_TOKEN",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The documents of one YAML file (a `---` separates them); panics naming the file if it does not
/// parse.
fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// The resources a kustomization applies, with their documents, from the files it lists.
fn kustomize(dir: &Path) -> Vec<Yaml> {
    let k = &load(&dir.join("kustomization.yaml"))[0];
    assert_eq!(s(&k["kind"]), "Kustomization");
    list(&k["resources"])
        .iter()
        .flat_map(|r| load(&dir.join(s(r))))
        .collect()
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| s(&d["kind"]) == kind && s(&d["metadata"]["name"]) == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &'a str) -> impl Iterator<Item = &'a Yaml> {
    docs.iter().filter(move |d| s(&d["kind"]) == kind)
}

/// The one container of a workload's pod template.
fn container(workload: &Yaml) -> &Yaml {
    let cs = list(&workload["spec"]["template"]["spec"]["containers"]);
    assert_eq!(cs.len(), 1, "{:?}", workload["metadata"]["name"]);
    &cs[0]
}

/// A container's environment: the ConfigMap it loads (`envFrom`) overlaid with its own `env`.
/// Values from a Secret read as `secret:NAME/KEY`.
fn env(docs: &[Yaml], c: &Yaml) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for from in list(&c["envFrom"]) {
        let cm = find(docs, "ConfigMap", s(&from["configMapRef"]["name"]));
        for (k, v) in cm["data"].as_hash().unwrap() {
            out.push((s(k).to_string(), s(v).to_string()));
        }
    }
    for e in list(&c["env"]) {
        let v = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                let r = &e["valueFrom"]["secretKeyRef"];
                format!("secret:{}/{}", s(&r["name"]), s(&r["key"]))
            }
        };
        out.retain(|(k, _)| k != s(&e["name"]));
        out.push((s(&e["name"]).to_string(), v));
    }
    out
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{name} not set"))
}

/// The claim mounted at `path` in a workload's pod, with whether the mount is read-only.
fn claim_at<'a>(workload: &'a Yaml, path: &str) -> (&'a str, bool) {
    let c = container(workload);
    let mount = list(&c["volumeMounts"])
        .iter()
        .find(|m| s(&m["mountPath"]) == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let volume = list(&workload["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    let claim = s(&volume["persistentVolumeClaim"]["claimName"]);
    (claim, mount["readOnly"].as_bool().unwrap_or(false))
}

/// The pod labels a workload's template carries, as `key=value`.
fn pod_labels(workload: &Yaml) -> BTreeSet<String> {
    let labels = workload["spec"]["template"]["metadata"]["labels"]
        .as_hash()
        .unwrap();
    labels
        .iter()
        .map(|(k, v)| format!("{}={}", s(k), s(v)))
        .collect()
}

fn selects(service: &Yaml, workload: &Yaml) -> bool {
    let sel = service["spec"]["selector"].as_hash().unwrap();
    let labels = pod_labels(workload);
    sel.iter()
        .all(|(k, v)| labels.contains(&format!("{}={}", s(k), s(v))))
}

/// Every `MVSERVE_*` environment name the server's source defines (as a string literal).
fn source_env_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split('"').skip(1).step_by(2) {
                    if part.starts_with("MVSERVE_")
                        && part.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    {
                        out.insert(part.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root().join("src"), &mut out);
    out
}

#[test]
fn every_manifest_parses_and_every_server_container_has_probes() {
    let files = yaml_files(&root().join("deploy/k8s"));
    assert!(files.len() >= 10, "{files:?}");
    let mut workloads = 0;
    for f in &files {
        let docs = load(f);
        assert!(!docs.is_empty(), "{} is empty", f.display());
        for d in &docs {
            assert!(
                d["apiVersion"].as_str().is_some() && d["kind"].as_str().is_some(),
                "{}: a document without apiVersion and kind",
                f.display()
            );
            let kind = s(&d["kind"]);
            if kind == "Kustomization" {
                for r in list(&d["resources"]) {
                    let p = f.parent().unwrap().join(s(r));
                    assert!(p.exists(), "{} lists {}", f.display(), p.display());
                }
                continue;
            }
            assert!(
                d["metadata"]["name"].as_str().is_some(),
                "{}: a {kind} without a name",
                f.display()
            );
            // gpu-patch.yaml is a partial Deployment (a strategic-merge patch): no probes.
            let patch = f.ends_with("gpu-patch.yaml");
            if (kind == "Deployment" || kind == "StatefulSet") && !patch {
                workloads += 1;
                for c in list(&d["spec"]["template"]["spec"]["containers"]) {
                    let what = format!("{}: container {:?}", f.display(), c["name"]);
                    assert_eq!(
                        s(&c["readinessProbe"]["httpGet"]["path"]),
                        "/readyz",
                        "{what}"
                    );
                    assert_eq!(
                        s(&c["livenessProbe"]["httpGet"]["path"]),
                        "/healthz",
                        "{what}"
                    );
                }
            }
        }
    }
    // The single node's Deployment, the query Deployment and the indexer StatefulSet.
    assert_eq!(workloads, 3);
}

#[test]
fn the_distributed_kustomization_lists_every_file_in_its_folder() {
    let dir = root().join("deploy/k8s/distributed");
    let k = &load(&dir.join("kustomization.yaml"))[0];
    let listed: BTreeSet<&str> = list(&k["resources"]).iter().map(s).collect();
    for f in yaml_files(&dir) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name == "kustomization.yaml" || listed.contains(name),
            "{name} is not in the kustomization"
        );
    }
}

#[test]
fn query_replicas_and_the_indexer_share_the_rwx_claims_and_name_the_flags() {
    let docs = kustomize(&root().join("deploy/k8s/distributed"));
    let query = find(&docs, "Deployment", "mvserve-query");
    let indexer = find(&docs, "StatefulSet", "mvserve-indexer");
    let (qenv, ienv) = (env(&docs, container(query)), env(&docs, container(indexer)));

    // The roles.
    assert_eq!(var(&qenv, "MVSERVE_ROLE"), "query");
    assert_eq!(var(&ienv, "MVSERVE_ROLE"), "indexer");
    assert_eq!(indexer["spec"]["replicas"].as_i64(), Some(1));

    // Every MVSERVE_* name is one the source reads (a flag's, or the Milvus token).
    let known = source_env_names();
    assert!(known.contains("MVSERVE_ADAPTERS_DIR"), "{known:?}");
    for name in DISTRIBUTED_ENV {
        assert!(known.contains(name), "{name} is not read by the server");
    }
    for (k, _) in qenv.iter().chain(&ienv) {
        if k.starts_with("MVSERVE_") {
            assert!(known.contains(k), "{k} is no flag's environment variable");
        }
    }

    // The same store, a milvus:// URL naming the Service of the Milvus resource.
    for e in [&qenv, &ienv] {
        assert_eq!(var(e, "MVSERVE_STORE"), var(&qenv, "MVSERVE_STORE"));
        assert_eq!(
            var(e, "MVSERVE_MILVUS_TOKEN"),
            var(&qenv, "MVSERVE_MILVUS_TOKEN")
        );
    }
    let store = var(&qenv, "MVSERVE_STORE");
    let rest = store.strip_prefix("milvus://").expect(store);
    let host_port = rest.split('/').next().unwrap();
    let (host, port) = host_port.split_once(':').expect(store);
    assert_eq!(port, "19530", "{store}");
    let milvus = of_kind(&docs, "Milvus").next().expect("no Milvus resource");
    assert_eq!(host, format!("{}-milvus", s(&milvus["metadata"]["name"])));
    assert!(var(&qenv, "MVSERVE_MILVUS_TOKEN").starts_with("secret:"));

    // The blob dir and the adapters folder: the same ReadWriteMany claims in both, read-only in
    // the query replicas.
    for dir_var in ["MVSERVE_BLOB_DIR", "MVSERVE_ADAPTERS_DIR"] {
        let path = var(&qenv, dir_var);
        assert_eq!(var(&ienv, dir_var), path);
        let (qclaim, qro) = claim_at(query, path);
        let (iclaim, iro) = claim_at(indexer, path);
        assert_eq!(qclaim, iclaim, "{dir_var}");
        assert!(
            qro && !iro,
            "{dir_var}: read-only in the query replicas only"
        );
        let pvc = find(&docs, "PersistentVolumeClaim", qclaim);
        let modes: Vec<&str> = list(&pvc["spec"]["accessModes"]).iter().map(s).collect();
        assert_eq!(modes, ["ReadWriteMany"], "{qclaim}");
    }
    // The backbone: the same models volume (HF_HOME).
    let models = var(&qenv, "HF_HOME");
    assert_eq!(claim_at(query, models).0, claim_at(indexer, models).0);

    // Prometheus scrapes both on the metrics port.
    for (w, e) in [(query, &qenv), (indexer, &ienv)] {
        let ann = &w["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(s(&ann["prometheus.io/scrape"]), "true");
        assert_eq!(
            s(&ann["prometheus.io/port"]),
            var(e, "MVSERVE_METRICS_PORT")
        );
        let ports: Vec<String> = list(&container(w)["ports"])
            .iter()
            .map(|p| p["containerPort"].as_i64().unwrap().to_string())
            .collect();
        assert!(ports.contains(&var(e, "MVSERVE_METRICS_PORT").to_string()));
    }
}

#[test]
fn the_hpa_scales_the_query_deployment_and_the_services_select_their_pods() {
    let docs = kustomize(&root().join("deploy/k8s/distributed"));
    let query = find(&docs, "Deployment", "mvserve-query");
    let indexer = find(&docs, "StatefulSet", "mvserve-indexer");
    assert_eq!(query["spec"]["replicas"].as_i64(), Some(2));

    let hpas: Vec<&Yaml> = of_kind(&docs, "HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), 1);
    let hpa = hpas[0];
    assert_eq!(s(&hpa["apiVersion"]), "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (s(&target["kind"]), s(&target["name"])),
        ("Deployment", "mvserve-query")
    );
    assert_eq!(hpa["spec"]["minReplicas"].as_i64(), Some(2));
    assert!(hpa["spec"]["maxReplicas"].as_i64().unwrap() > 2);
    let metrics = list(&hpa["spec"]["metrics"]);
    assert!(metrics
        .iter()
        .any(|m| s(&m["type"]) == "Resource" && s(&m["resource"]["name"]) == "cpu"));
    assert!(container(query)["resources"]["requests"]["cpu"]
        .as_str()
        .is_some());

    // Search traffic to the query replicas only, uploads to the indexer only.
    let qsvc = find(&docs, "Service", "mvserve-query");
    let isvc = find(&docs, "Service", "mvserve-indexer");
    assert!(selects(qsvc, query) && !selects(qsvc, indexer));
    assert!(selects(isvc, indexer) && !selects(isvc, query));
    // The StatefulSet's governing Service is headless.
    let gov = find(&docs, "Service", s(&indexer["spec"]["serviceName"]));
    assert_eq!(s(&gov["spec"]["clusterIP"]), "None");
    assert!(selects(gov, indexer));
}

#[test]
fn milvus_runs_in_cluster_mode_with_its_dependencies_in_the_cluster() {
    let docs = kustomize(&root().join("deploy/k8s/distributed"));
    let milvus = of_kind(&docs, "Milvus").next().expect("no Milvus resource");
    assert_eq!(s(&milvus["apiVersion"]), "milvus.io/v1beta1");
    let spec = &milvus["spec"];
    assert_eq!(s(&spec["mode"]), "cluster");
    let deps = &spec["dependencies"];
    let stream = s(&deps["msgStreamType"]);
    for dep in ["etcd", "storage", stream] {
        assert!(
            deps[dep]["inCluster"].as_hash().is_some(),
            "{dep} is not in the cluster"
        );
        assert_ne!(deps[dep]["external"].as_bool(), Some(true), "{dep}");
    }
    for c in ["proxy", "queryNode", "dataNode", "indexNode", "mixCoord"] {
        assert!(
            spec["components"][c]["replicas"].as_i64().unwrap() >= 1,
            "{c}"
        );
    }
}

//! The Milvus backend: each task generation is a Milvus collection, each task an alias that
//! names the generation being served.
//!
//! Owns the mapping of the store interface onto Milvus: collection and alias names, the fields
//! (`id` VarChar primary key, `vector` FloatVector with an HNSW inner-product index built with the
//! embedded store's M and efConstruction, `meta` JSON, `added_ms`, `blobs` Int64), the adapter
//! digest each collection records in its description (a generation never mixes embedding spaces,
//! and a replica refuses to serve a collection with another adapter), and the consistency rules.
//!
//! Consistency. Milvus's `Strong` level makes every search wait for the next time tick (200 ms on
//! a default server, measured) even with no writes. Instead a write is acknowledged only after a
//! `Strong` read confirms it: that read returns once every query node serving the collection
//! has consumed the write, so every later search, from any replica, at level `Eventually` (no
//! wait) sees it. The read also checks the record came back as written. `?consistency=strong`
//! in the store URL makes reads `Strong` too, for Milvus deployments with more than one
//! in-memory replica per collection, where the confirming read reaches only one of them.
//!
//! Blobs (originals, thumbnails) stay files, under the generation's directory on the shared blob
//! directory, exactly as the embedded store lays them out (`store::blob`).

mod rpc;

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use milvus::proto::common::ConsistencyLevel;
use serde::{Deserialize, Serialize};

use super::backend::{StoreBackend, VectorStore};
use super::blob::{self, Placement};
use super::index::normalize;
use super::{BlobKind, BlobVersion, Filter, Hit, NewRecord, Record, StoreConfig, StoreError};
pub(crate) use rpc::string_literal;
use rpc::{Row, Rows, Rpc, RpcError, Target};

/// Longest id Milvus is told to hold (the server's limit is lower).
const MAX_ID_BYTES: usize = 1024;
/// Milvus's limit on one JSON value (`meta` wrapped as `{"v": ...}`), in bytes.
pub const MAX_JSON_BYTES: usize = 65_536;
/// Rows per page when listing a collection (Milvus refuses more than 16384 per query).
const PAGE: usize = 10_000;
/// Rows per upsert request, to stay far below Milvus's message size limit.
const UPSERT_ROWS: usize = 512;
/// How long a replaced generation's collection stays after the last local reader lets go, so
/// that other replicas still searching it (they resolve the alias per search) finish first.
const RETIRED_GRACE: Duration = Duration::from_secs(30);
/// How long opening a generation waits for Milvus to load it.
const LOAD_WAIT: Duration = Duration::from_secs(120);
/// `settle` stops waiting for Milvus's index once its progress stalls this long.
const SETTLE_STALL: Duration = Duration::from_secs(20);
/// The deadline of one call unless the URL says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find Milvus and how to use it, from `milvus://[user:password@]HOST:PORT[/DATABASE]`
/// `[?prefix=NAME_&consistency=eventual|strong&timeout_ms=N]`.
#[derive(Clone, Debug)]
pub struct MilvusUrl {
    target: Target,
    prefix: String,
    strong_reads: bool,
}

impl MilvusUrl {
    /// Parses the URL; `token` (from the environment) wins over a password in the URL.
    pub fn parse(s: &str, token: Option<String>) -> Result<MilvusUrl, String> {
        let u = url::Url::parse(s).map_err(|e| format!("store URL {s:?}: {e}"))?;
        if u.scheme() != "milvus" {
            return Err(format!("store URL {s:?}: the scheme must be milvus://"));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("store URL {s:?} has no host"))?;
        let port = u.port().unwrap_or(19530);
        let database = Some(u.path().trim_matches('/').to_string()).filter(|d| !d.is_empty());
        let from_url = (!u.username().is_empty()).then(|| {
            let user = percent(u.username());
            match u.password() {
                Some(p) => format!("{user}:{}", percent(p)),
                None => user,
            }
        });
        let mut out = MilvusUrl {
            target: Target {
                endpoint: format!("http://{host}:{port}"),
                token: token.or(from_url),
                database,
                timeout: DEFAULT_TIMEOUT,
            },
            prefix: "mvserve_".to_string(),
            strong_reads: false,
        };
        for (k, v) in u.query_pairs() {
            match &*k {
                "prefix" => {
                    let ok = v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && v.len() <= 32
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ok {
                        return Err(format!(
                            "store URL: prefix {v:?} must be 1-32 letters, digits or '_', starting with a letter"
                        ));
                    }
                    out.prefix = v.to_string();
                }
                "consistency" => {
                    out.strong_reads = match &*v {
                        "strong" => true,
                        "eventual" => false,
                        _ => {
                            return Err(format!(
                                "store URL: consistency must be eventual or strong, not {v:?}"
                            ))
                        }
                    }
                }
                "timeout_ms" => {
                    let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        format!("store URL: timeout_ms {v:?} is not a positive integer")
                    })?;
                    out.target.timeout = Duration::from_millis(ms);
                }
                other => return Err(format!("store URL: unknown option {other:?}")),
            }
        }
        Ok(out)
    }

    /// The URL without credentials, for logs.
    pub fn display(&self) -> String {
        format!(
            "milvus {}{} (collections {}*)",
            self.target.endpoint,
            self.target
                .database
                .as_ref()
                .map(|d| format!("/{d}"))
                .unwrap_or_default(),
            self.prefix
        )
    }
}

/// A URL's user or password as written (`Url` keeps them percent-encoded).
fn percent(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Task names allow `-`, Milvus names do not: `_` becomes `_u` and `-` becomes `_d`, so that the
/// mapping is one to one and `_G` can separate the generation number.
fn escape_task(task: &str) -> String {
    let mut out = String::with_capacity(task.len() * 2);
    for c in task.chars() {
        match c {
            '_' => out.push_str("_u"),
            '-' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

fn unescape_task(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '_' => match it.next()? {
                'u' => out.push('_'),
                'd' => out.push('-'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// What a collection's description records, so that any replica can tell what it holds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Description {
    mvserve: u32,
    task: String,
    generation: u64,
    digest: String,
    dim: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a not-loaded collection reads in a `StoreError::Unavailable`, so `Shared::loaded` can
/// tell it from an unreachable server.
const NOT_LOADED: &str = " is not loaded";

fn store_err(e: RpcError) -> StoreError {
    match e {
        RpcError::Unavailable(m) => StoreError::Unavailable(m),
        RpcError::NotLoaded(n) => StoreError::Unavailable(format!("collection {n}{NOT_LOADED}")),
        RpcError::NotFound(n) => StoreError::MissingGeneration(n),
        e @ (RpcError::Refused { .. } | RpcError::Protocol { .. }) => {
            StoreError::Backend(e.to_string())
        }
    }
}

/// The client and the runtime its calls run on, shared by the backend and its stores.
struct Shared {
    url: MilvusUrl,
    rpc: Rpc,
    /// A runtime of its own: store calls come from blocking threads of any runtime (or none),
    /// and wait here for their answer.
    rt: Option<tokio::runtime::Runtime>,
    dim: usize,
    config: StoreConfig,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context panics; this never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Shared {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime lives as long as Shared")
    }

    /// Runs `f` on the client's runtime and waits for it on this thread.
    fn call<T, F>(&self, f: impl FnOnce(Rpc) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, RpcError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.rpc.clone());
        self.rt().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the Milvus client stopped".into()))?
            .map_err(store_err)
    }

    /// Runs `op`; when Milvus has not loaded `collection` (it restarted and has not reloaded it
    /// yet), loads it and runs `op` again.
    fn loaded<T>(
        &self,
        collection: &str,
        op: impl Fn() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match op() {
            Err(StoreError::Unavailable(m)) if m.ends_with(NOT_LOADED) => {
                tracing::info!(collection, "reloading a collection Milvus has not loaded");
                let name = collection.to_string();
                self.call(move |r| async move { load_and_wait(&r, &name).await })?;
                op()
            }
            other => other,
        }
    }

    fn read_level(&self) -> ConsistencyLevel {
        match self.url.strong_reads {
            true => ConsistencyLevel::Strong,
            false => ConsistencyLevel::Eventually,
        }
    }

    fn alias(&self, task: &str) -> String {
        format!("{}{}", self.url.prefix, escape_task(task))
    }

    fn collection(&self, task: &str, number: u64) -> String {
        format!("{}_G{number}", self.alias(task))
    }

    /// `(task, generation)` of a collection name of this deployment.
    fn parse_collection(&self, name: &str) -> Option<(String, u64)> {
        let rest = name.strip_prefix(&self.url.prefix)?;
        let (task, n) = rest.rsplit_once("_G")?;
        Some((unescape_task(task)?, n.parse().ok()?))
    }
}

/// Loads `name` and waits until Milvus can search it.
async fn load_and_wait(r: &Rpc, name: &str) -> Result<(), RpcError> {
    r.load(name).await?;
    let t0 = tokio::time::Instant::now();
    loop {
        if r.loading_progress(name).await? >= 100 {
            return Ok(());
        }
        if t0.elapsed() > LOAD_WAIT {
            return Err(RpcError::Unavailable(format!(
                "collection {name} did not load within {LOAD_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Milvus backend of a deployment (`--store milvus://...`).
pub struct MilvusBackend {
    shared: Arc<Shared>,
}

impl MilvusBackend {
    /// A backend that connects on first use (and reconnects by itself), so the server starts
    /// whether or not Milvus is up; `/readyz` says when it is.
    pub fn new(url: MilvusUrl, dim: usize, config: StoreConfig) -> Result<MilvusBackend, String> {
        config.validate().map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("milvus-rpc")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the Milvus client runtime: {e}"))?;
        let rpc = {
            let _in = rt.enter();
            Rpc::connect_lazy(&url.target).map_err(|e| e.to_string())?
        };
        tracing::info!(store = %url.display(), "using Milvus");
        Ok(MilvusBackend {
            shared: Arc::new(Shared {
                url,
                rpc,
                rt: Some(rt),
                dim,
                config,
            }),
        })
    }

    /// Describes `collection`, checking it is one of ours with vectors of this dimension.
    fn describe(&self, collection: &str) -> Result<Description, StoreError> {
        let name = collection.to_string();
        let (_, text) = self
            .shared
            .call(move |r| async move { r.describe_collection(&name).await })?;
        let d: Description = serde_json::from_str(&text).map_err(|_| {
            StoreError::Backend(format!(
                "collection {collection} was not made by mvserve (description {text:?})"
            ))
        })?;
        if d.dim != self.shared.dim {
            return Err(StoreError::Dimension {
                expected: self.shared.dim,
                got: d.dim,
            });
        }
        Ok(d)
    }

    fn create(&self, task: &str, number: u64, digest: &str) -> Result<(), StoreError> {
        let name = self.shared.collection(task, number);
        let description = serde_json::to_string(&Description {
            mvserve: 1,
            task: task.to_string(),
            generation: number,
            digest: digest.to_string(),
            dim: self.shared.dim,
        })
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        let (dim, m, efc) = (
            self.shared.dim,
            self.shared.config.hnsw_m,
            self.shared.config.ef_construction,
        );
        self.shared.call(move |r| async move {
            r.create_collection(&name, &description, dim, MAX_ID_BYTES)
                .await?;
            r.create_hnsw(&name, m, efc).await
        })?;
        tracing::info!(task, generation = number, "created a Milvus collection");
        Ok(())
    }

    fn load(&self, collection: &str) -> Result<(), StoreError> {
        let name = collection.to_string();
        self.shared
            .call(move |r| async move { load_and_wait(&r, &name).await })
    }

    fn collections(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let names = self
            .shared
            .call(|r| async move { r.list_collections().await })?;
        Ok(names
            .iter()
            .filter_map(|n| self.shared.parse_collection(n))
            .collect())
    }
}

impl StoreBackend for MilvusBackend {
    fn kind(&self) -> &'static str {
        "milvus"
    }

    fn open(
        &self,
        task: &str,
        number: u64,
        dir: &Path,
        digest: Option<&str>,
    ) -> Result<Arc<dyn VectorStore>, StoreError> {
        let collection = self.shared.collection(task, number);
        let described = match self.describe(&collection) {
            Err(StoreError::MissingGeneration(_)) => {
                let digest =
                    digest.ok_or_else(|| StoreError::MissingGeneration(collection.clone()))?;
                self.create(task, number, digest)?;
                self.describe(&collection)?
            }
            other => other?,
        };
        if let Some(want) = digest.filter(|d| *d != described.digest) {
            return Err(StoreError::DigestMismatch {
                store: described.digest,
                got: want.to_string(),
            });
        }
        self.load(&collection)?;
        let store = MilvusStore {
            shared: self.shared.clone(),
            collection,
            digest: described.digest,
            dir: dir.to_path_buf(),
            blob_root: dir.join("blobs"),
            retired: AtomicBool::new(false),
        };
        if digest.is_some() {
            store.sweep_blobs()?;
        }
        Ok(Arc::new(store))
    }

    fn served(&self, task: &str) -> Result<Option<u64>, StoreError> {
        let alias = self.shared.alias(task);
        let target = self
            .shared
            .call(move |r| async move { r.resolve_alias(&alias).await })?;
        Ok(target
            .and_then(|c| self.shared.parse_collection(&c))
            .filter(|(t, _)| t == task)
            .map(|(_, n)| n))
    }

    fn serve(&self, task: &str, number: u64) -> Result<(), StoreError> {
        let alias = self.shared.alias(task);
        let collection = self.shared.collection(task, number);
        self.shared
            .call(move |r| async move { r.set_alias(&alias, &collection).await })
    }

    fn discard(&self, task: &str, number: u64) -> Result<(), StoreError> {
        let collection = self.shared.collection(task, number);
        self.shared
            .call(move |r| async move { r.drop_collection(&collection).await })?;
        tracing::info!(task, generation = number, "dropped a Milvus collection");
        Ok(())
    }

    fn generations(&self, task: &str) -> Result<Vec<u64>, StoreError> {
        let mut out: Vec<u64> = self
            .collections()?
            .into_iter()
            .filter(|(t, _)| t == task)
            .map(|(_, n)| n)
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn tasks(&self) -> Result<Vec<String>, StoreError> {
        let mut tasks: Vec<String> = self
            .collections()?
            .into_iter()
            .map(|(t, _)| t)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        tasks.sort();
        let mut out = Vec::new();
        for t in tasks {
            if self.served(&t)?.is_some() {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn check_available(&self) -> Result<(), StoreError> {
        self.shared.call(|r| async move { r.health().await })
    }
}

/// One generation: a Milvus collection plus its blob directory.
pub struct MilvusStore {
    shared: Arc<Shared>,
    collection: String,
    digest: String,
    dir: PathBuf,
    blob_root: PathBuf,
    retired: AtomicBool,
}

impl Drop for MilvusStore {
    fn drop(&mut self) {
        if !self.retired.load(Ordering::Acquire) {
            return;
        }
        let (rpc, name, dir) = (
            self.shared.rpc.clone(),
            self.collection.clone(),
            self.dir.clone(),
        );
        // Other replicas may still be answering from this generation; give them time.
        self.shared.rt().spawn(async move {
            tokio::time::sleep(RETIRED_GRACE).await;
            match rpc.drop_collection(&name).await {
                Ok(()) => tracing::info!(collection = %name, "dropped a retired generation"),
                Err(e) => {
                    tracing::warn!(collection = %name, error = %e, "could not drop a retired generation; the next start does")
                }
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a retired generation's files");
            }
        });
    }
}

/// `meta` as stored: wrapped, because Milvus JSON fields hold objects only.
fn wrap_meta(meta: &serde_json::Value) -> Result<Vec<u8>, StoreError> {
    let bytes = serde_json::to_vec(&serde_json::json!({ "v": meta }))
        .map_err(|e| StoreError::Unstorable(e.to_string()))?;
    if bytes.len() > MAX_JSON_BYTES {
        return Err(StoreError::Unstorable(format!(
            "meta is {} bytes as stored; Milvus holds at most {MAX_JSON_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn unwrap_meta(bytes: &[u8]) -> Result<serde_json::Value, StoreError> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("stored meta does not parse: {e}")))?;
    Ok(v.get_mut("v")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

fn ids_expr(ids: &[String]) -> String {
    let list: Vec<String> = ids.iter().map(|i| string_literal(i)).collect();
    format!("id in [{}]", list.join(", "))
}

impl MilvusStore {
    fn record(&self, row: Row) -> Result<Record, StoreError> {
        Ok(Record {
            id: row.id,
            adapter_digest: self.digest.clone(),
            added_ms: row.added_ms as u64,
            blobs: BlobVersion::from_raw(row.blobs as u64),
            meta: unwrap_meta(&row.meta)?,
        })
    }

    /// Rows for `ids`, read at `level`.
    fn rows(&self, ids: Vec<String>, level: ConsistencyLevel) -> Result<Vec<Row>, StoreError> {
        self.shared.loaded(&self.collection, || {
            let (name, ids) = (self.collection.clone(), ids.clone());
            self.shared.call(move |r| async move {
                let mut out = Vec::new();
                for chunk in ids.chunks(PAGE) {
                    out.extend(r.query(&name, &ids_expr(chunk), false, None, level).await?);
                }
                Ok(out)
            })
        })
    }
}

impl VectorStore for MilvusStore {
    fn dim(&self) -> usize {
        self.shared.dim
    }

    fn add_records(&self, digest: &str, records: Vec<NewRecord>) -> Result<(), StoreError> {
        if digest.is_empty() {
            return Err(StoreError::EmptyDigest);
        }
        if digest != self.digest {
            return Err(StoreError::DigestMismatch {
                store: self.digest.clone(),
                got: digest.to_string(),
            });
        }
        // The last of several records for one id wins, as in the embedded store.
        let mut seen = HashSet::new();
        let mut unique: Vec<NewRecord> = records
            .into_iter()
            .rev()
            .filter(|r| seen.insert(r.id.clone()))
            .collect();
        unique.reverse();
        let added_ms = now_ms();
        let dim = self.shared.dim;
        let mut prepared = Vec::with_capacity(unique.len());
        for NewRecord {
            id,
            mut vector,
            meta,
            blobs,
        } in unique
        {
            if id.is_empty() {
                return Err(StoreError::EmptyId);
            }
            if id.len() > MAX_ID_BYTES {
                return Err(StoreError::Unstorable(format!(
                    "ids are limited to {MAX_ID_BYTES} bytes"
                )));
            }
            if vector.len() != dim {
                return Err(StoreError::Dimension {
                    expected: dim,
                    got: vector.len(),
                });
            }
            if !normalize(&mut vector) {
                return Err(StoreError::InvalidVector);
            }
            prepared.push((id, vector, wrap_meta(&meta)?, blobs.raw()));
        }
        if prepared.is_empty() {
            return Ok(());
        }
        // Which blob versions the ids own now, to remove them once replaced.
        let ids: Vec<String> = prepared.iter().map(|p| p.0.clone()).collect();
        let before = self.rows(ids.clone(), self.shared.read_level())?;
        let name = self.collection.clone();
        let expect: Vec<(String, Vec<u8>, i64)> = prepared
            .iter()
            .map(|(id, _, m, b)| (id.clone(), m.clone(), *b as i64))
            .collect();
        self.shared.call(move |r| async move {
            for chunk in prepared.chunks(UPSERT_ROWS) {
                let rows = Rows {
                    ids: chunk.iter().map(|p| p.0.clone()).collect(),
                    vectors: chunk.iter().flat_map(|p| p.1.iter().copied()).collect(),
                    dim,
                    metas: chunk.iter().map(|p| p.2.clone()).collect(),
                    added_ms: vec![added_ms as i64; chunk.len()],
                    blobs: chunk.iter().map(|p| p.3 as i64).collect(),
                };
                r.upsert(&name, rows).await?;
            }
            Ok(())
        })?;
        // The confirming read: returns once the write is visible everywhere (see the module
        // doc), and must give back what was written.
        let after = self.rows(ids, ConsistencyLevel::Strong)?;
        let got: std::collections::HashMap<&str, &Row> =
            after.iter().map(|r| (r.id.as_str(), r)).collect();
        for (id, meta, blobs) in &expect {
            match got.get(id.as_str()) {
                Some(r)
                    if r.meta == *meta && r.blobs == *blobs && r.added_ms == added_ms as i64 => {}
                Some(_) => {
                    return Err(StoreError::Unstorable(format!(
                        "Milvus did not read back record {id:?} as written"
                    )))
                }
                None => {
                    return Err(StoreError::Unavailable(format!(
                        "record {id:?} was not visible after the write"
                    )))
                }
            }
        }
        for old in before {
            let new = expect.iter().find(|e| e.0 == old.id).map(|e| e.2);
            if new != Some(old.blobs) {
                if let Err(e) = blob::remove(&self.blob_root, &old.id, old.blobs as u64) {
                    tracing::warn!(id = %old.id, error = %e, "could not remove the blobs of a replaced record");
                }
            }
        }
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let Some(old) = self
            .rows(vec![id.to_string()], ConsistencyLevel::Strong)?
            .pop()
        else {
            return Ok(false);
        };
        let name = self.collection.clone();
        let expr = ids_expr(&[id.to_string()]);
        self.shared
            .call(move |r| async move { r.delete(&name, &expr).await })?;
        if !self
            .rows(vec![id.to_string()], ConsistencyLevel::Strong)?
            .is_empty()
        {
            return Err(StoreError::Unavailable(format!(
                "{id:?} was still visible after the delete"
            )));
        }
        if let Err(e) = blob::remove(&self.blob_root, id, old.blobs as u64) {
            tracing::warn!(id, error = %e, "could not remove blobs of a deleted id");
        }
        Ok(true)
    }

    fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        match self
            .rows(vec![id.to_string()], self.shared.read_level())?
            .pop()
        {
            Some(row) => Ok(Some(self.record(row)?)),
            None => Ok(None),
        }
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, StoreError> {
        if query.len() != self.shared.dim {
            return Err(StoreError::Dimension {
                expected: self.shared.dim,
                got: query.len(),
            });
        }
        let mut q = query.to_vec();
        if !normalize(&mut q) {
            return Err(StoreError::InvalidVector);
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let name = self.collection.clone();
        let ef = self.shared.config.ef_search;
        let level = self.shared.read_level();
        // The stored JSON is `{"v": meta}` (see `wrap_meta`): filter paths start below "v".
        let expr = filter
            .map(|f| f.to_milvus(&format!("{}[\"v\"]", rpc::F_META)))
            .unwrap_or_default();
        let rows = self.shared.loaded(&name, || {
            let (name, q, expr) = (name.clone(), q.clone(), expr.clone());
            self.shared
                .call(move |r| async move { r.search(&name, &q, k, ef, &expr, level).await })
        })?;
        rows.into_iter()
            .map(|row| {
                Ok(Hit {
                    score: row.score,
                    meta: unwrap_meta(&row.meta)?,
                    id: row.id,
                })
            })
            .collect()
    }

    fn count(&self) -> Result<usize, StoreError> {
        let name = self.collection.clone();
        let level = self.shared.read_level();
        let n = self.shared.loaded(&name, || {
            let name = name.clone();
            self.shared
                .call(move |r| async move { r.count(&name, level).await })
        })?;
        Ok(n as usize)
    }

    fn count_videos(&self) -> Result<usize, StoreError> {
        // Only a segment record has a top-level `video` field (store::moments), so one
        // server-side count answers without listing ids. (Milvus 2.3's `like` matches prefixes
        // only, so the separator in segment keys cannot be searched for.)
        let name = self.collection.clone();
        let level = self.shared.read_level();
        let segment = Filter::parse(r#"{"exists": "video"}"#).expect("a valid filter");
        let expr = format!(
            "not ({})",
            segment.to_milvus(&format!("{}[\"v\"]", rpc::F_META))
        );
        let n = self.shared.loaded(&name, || {
            let (name, expr) = (name.clone(), expr.clone());
            self.shared
                .call(move |r| async move { r.count_where(&name, &expr, level).await })
        })?;
        Ok(n as usize)
    }

    fn ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.live()?.into_iter().map(|(id, _)| id).collect())
    }

    fn digest(&self) -> Result<Option<String>, StoreError> {
        Ok(Some(self.digest.clone()))
    }

    fn put_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src_tmp_file: &Path,
    ) -> Result<(), StoreError> {
        blob::put(
            &self.blob_root,
            id,
            version,
            kind,
            src_tmp_file,
            Placement::Move,
        )
    }

    fn copy_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src: &Path,
    ) -> Result<(), StoreError> {
        blob::put(&self.blob_root, id, version, kind, src, Placement::Copy)
    }

    fn discard_blobs(&self, id: &str, version: BlobVersion) -> Result<(), StoreError> {
        let live = self.rows(vec![id.to_string()], ConsistencyLevel::Strong)?;
        if live.first().map(|r| r.blobs as u64) == Some(version.raw()) {
            return Ok(());
        }
        blob::remove(&self.blob_root, id, version.raw())
    }

    fn blob_path(&self, id: &str, kind: BlobKind) -> Result<Option<PathBuf>, StoreError> {
        let Some(row) = self
            .rows(vec![id.to_string()], self.shared.read_level())?
            .pop()
        else {
            return Ok(None);
        };
        let p = blob::path_for(&self.blob_root, id, row.blobs as u64, kind);
        Ok(p.is_file().then_some(p))
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    fn check_available(&self) -> Result<(), StoreError> {
        self.shared.call(|r| async move { r.health().await })
    }

    fn settle(&self) -> Result<(), StoreError> {
        let name = self.collection.clone();
        self.shared.call(move |r| async move {
            r.flush(&name).await?;
            // Milvus leaves segments below its minimum size unindexed (searched exactly), so
            // the count of indexed rows may never reach the total: wait until it stops moving.
            let (mut last, mut since) = (-1, tokio::time::Instant::now());
            loop {
                let (done, total) = r.index_progress(&name).await?;
                if done >= total || since.elapsed() > SETTLE_STALL {
                    return Ok(());
                }
                if done != last {
                    (last, since) = (done, tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

impl MilvusStore {
    /// Every live `(id, blob version)`, page by page in primary-key order (Milvus returns a
    /// limited query's rows sorted by primary key). Should a page ever come back in another
    /// order, ids would be skipped: the listing is checked against a count taken first, and a
    /// short one is an error (a re-embedding then retries rather than leaving videos out).
    /// Removes the blobs no row owns. Only generations opened to write are swept: only the
    /// one indexer opens them so (query replicas open them as they are), and it does so before
    /// it writes to them, so no upload is between `put_blob` and its insert. What it finds:
    /// files of uploads that failed while Milvus was away (kept then, because the insert may
    /// have landed: see `discard_blobs`) and of a crash between `put_blob` and the insert.
    fn sweep_blobs(&self) -> Result<(), StoreError> {
        let live: HashSet<(String, u64)> = self.live()?.into_iter().collect();
        let removed = blob::sweep(&self.blob_root, &live)?;
        if removed > 0 {
            tracing::info!(
                collection = %self.collection,
                removed,
                "removed blob files no record owns"
            );
        }
        Ok(())
    }

    fn live(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let name = self.collection.clone();
        self.shared.call(move |r| async move {
            let expected = r.count(&name, ConsistencyLevel::Strong).await?;
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let expr = match &after {
                    Some(a) => format!("id > {}", string_literal(a)),
                    None => "id != \"\"".to_string(),
                };
                let page = r
                    .query(&name, &expr, false, Some(PAGE), ConsistencyLevel::Strong)
                    .await?;
                let last = page.iter().map(|r| &r.id).max().cloned();
                let n = page.len();
                out.extend(page.into_iter().map(|r| (r.id, r.blobs as u64)));
                match last {
                    Some(last) if n == PAGE => after = Some(last),
                    _ if (out.len() as u64) < expected => {
                        return Err(RpcError::Protocol {
                            call: "Query",
                            why: format!(
                                "listing {name} found {} of its {expected} rows",
                                out.len()
                            ),
                        })
                    }
                    _ => return Ok(out),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_map_one_to_one() {
        for t in ["a", "a_b", "a-b", "a__b", "_-_", "clip", "x_u", "x_d"] {
            let e = escape_task(t);
            assert!(e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            assert_eq!(unescape_task(&e).as_deref(), Some(t));
        }
        assert_ne!(escape_task("a_b"), escape_task("a-b"));
        assert_ne!(escape_task("a_ub"), escape_task("a__b"));
    }

    #[test]
    fn urls_parse() {
        let u = MilvusUrl::parse(
            "milvus://m.example:1234/db1?prefix=t_&consistency=strong",
            None,
        )
        .unwrap();
        assert_eq!(u.target.endpoint, "http://m.example:1234");
        assert_eq!(u.target.database.as_deref(), Some("db1"));
        assert!(u.strong_reads);
        assert_eq!(u.prefix, "t_");
        let u = MilvusUrl::parse("milvus://root:p%40ss@h", None).unwrap();
        assert_eq!(u.target.token.as_deref(), Some("root:p@ss"));
        assert_eq!(u.target.endpoint, "http://h:19530");
        assert!(!u.display().contains("p@ss"));
        // A '+' in a password is a '+' (form decoding would make it a space).
        let u = MilvusUrl::parse("milvus://root:a+b@h", None).unwrap();
        assert_eq!(u.target.token.as_deref(), Some("root:a+b"));
        let u = MilvusUrl::parse("milvus://root:x@h", Some("tok".into())).unwrap();
        assert_eq!(u.target.token.as_deref(), Some("tok"));
        for bad in [
            "http://h:1",
            "milvus://h?prefix=1a",
            "milvus://h?consistency=maybe",
            "milvus://h?timeout_ms=0",
            "milvus://h?what=1",
        ] {
            assert!(MilvusUrl::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn collection_names_round_trip() {
        let url = MilvusUrl::parse("milvus://h", None).unwrap();
        let b = MilvusBackend::new(url, 4, StoreConfig::default()).unwrap();
        let name = b.shared.collection("my-task_1", 12);
        assert_eq!(name, "mvserve_my_dtask_u1_G12");
        assert_eq!(
            b.shared.parse_collection(&name),
            Some(("my-task_1".to_string(), 12))
        );
        assert_eq!(b.shared.parse_collection("other_G1"), None);
    }

    #[test]
    fn ids_are_quoted_exactly() {
        assert_eq!(string_literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string_literal("é🎬"), "\"é🎬\"");
    }
}

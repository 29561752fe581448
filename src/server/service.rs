//! The server's operations, independent of the transport: HTTP ([`super::api`]) and gRPC
//! ([`super::grpc`]) parse their own input, call these, and render the plain results. Owns task
//! lookup, input validation (query, `k`), the API-key check, which tasks a caller may see, per-task
//! metrics and thumbnail URLs. Uploads live in [`super::upload`].

use super::auth::{Caller, Denied, Need};
use super::{ApiError, AppState};
use crate::registry::{Generation, Task, TaskStatus};
use crate::store::BlobKind;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Largest `k` a search may ask for.
pub const MAX_K: usize = 1000;
/// `k` when the request gives none.
pub const DEFAULT_K: usize = 10;
/// Longest query in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// The key a request carries: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
pub fn api_key<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Option<&'a str> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(x_api_key)
}

/// Checks a request's key against what it needs and says who the caller is; always passes (as
/// [`Caller::Local`]) when auth is off.
pub fn authorize(state: &AppState, key: Option<&str>, need: Need<'_>) -> Result<Caller, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(Caller::Local);
    };
    auth.check(key, need).map_err(|d| match d {
        Denied::Unauthenticated => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid API key is required (Authorization: Bearer KEY)",
        ),
        Denied::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
    })
}

/// The task named by a request and its current generation.
pub fn task_of(
    state: &AppState,
    task: Option<&str>,
) -> Result<(Arc<Task>, Arc<Generation>), ApiError> {
    let core = state.core()?;
    let name = task
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_task", "give ?task=NAME"))?;
    let t = core
        .registry
        .get(name)
        .ok_or_else(|| ApiError::unknown_task(name))?;
    let g = t.current();
    Ok((t, g))
}

/// Counts a successful operation on a task and its latency.
pub fn record(state: &AppState, task: &str, op: &str, t0: Instant) {
    let m = &state.metrics;
    m.task_requests.with_label_values(&[task, op]).inc();
    m.task_latency
        .with_label_values(&[task, op])
        .observe(t0.elapsed().as_secs_f64());
}

/// The HTTP path of a video's thumbnail.
pub fn thumb_url(task: &str, id: &str) -> String {
    format!(
        "/videos/{}/{}/thumbnail.jpg",
        url_segment(task),
        url_segment(id)
    )
}

fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user's `meta` inside a stored record (which also holds file name, size, media info).
fn user_meta(stored: &Value) -> Value {
    stored.get("meta").cloned().unwrap_or(Value::Null)
}

#[derive(Debug, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    pub meta: Value,
    pub thumbnail: String,
}

#[derive(Debug, Serialize)]
pub struct SearchResult {
    pub task: String,
    pub generation: u64,
    pub adapter_digest: String,
    pub hits: Vec<SearchHit>,
}

/// Encodes `q` through the task's model and returns the `k` nearest videos (default
/// [`DEFAULT_K`]), best first.
pub async fn search(
    state: &AppState,
    task: Option<&str>,
    q: &str,
    k: Option<usize>,
) -> Result<SearchResult, ApiError> {
    let t0 = Instant::now();
    let (task, gen) = task_of(state, task)?;
    if q.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_query",
            "give a non-empty query",
        ));
    }
    if q.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(
            "query_too_long",
            format!("queries are limited to {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let k = k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::bad_request(
            "bad_k",
            format!("k must be an integer in 1..={MAX_K}"),
        ));
    }
    let core = state.core()?;
    let vector = core.encoder.encode_text(gen.model.clone(), q).await?;
    let g = gen.clone();
    let hits = tokio::task::spawn_blocking(move || g.store.search(&vector, k)).await??;
    let hits = hits
        .into_iter()
        .map(|h| SearchHit {
            thumbnail: thumb_url(&task.name, &h.id),
            meta: user_meta(&h.meta),
            score: h.score,
            id: h.id,
        })
        .collect();
    record(state, &task.name, "search", t0);
    Ok(SearchResult {
        task: task.name.clone(),
        generation: gen.number,
        adapter_digest: gen.model.digest().to_string(),
        hits,
    })
}

/// A stored video as `GET /videos/{task}/{id}` shows it; the fields kept at upload are `null`
/// when absent.
#[derive(Debug, Serialize)]
pub struct VideoInfo {
    pub id: String,
    pub task: String,
    pub generation: u64,
    pub adapter_digest: String,
    pub added_ms: u64,
    pub meta: Value,
    pub file_name: Value,
    pub bytes: Value,
    pub frames: Value,
    pub media: Value,
    pub thumbnail: String,
}

fn unknown_video(task: &str, id: &str) -> ApiError {
    ApiError::not_found("unknown_video", format!("no video {id:?} in task {task:?}"))
}

pub fn get_video(state: &AppState, task: &str, id: &str) -> Result<VideoInfo, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(state, Some(task))?;
    let r = gen.store.get(id).ok_or_else(|| unknown_video(task, id))?;
    record(state, &t.name, "get", t0);
    let field = |name: &str| r.meta.get(name).cloned().unwrap_or(Value::Null);
    Ok(VideoInfo {
        task: t.name.clone(),
        generation: gen.number,
        adapter_digest: r.adapter_digest.clone(),
        added_ms: r.added_ms,
        meta: user_meta(&r.meta),
        file_name: field("file_name"),
        bytes: field("bytes"),
        frames: field("frames"),
        media: field("media"),
        thumbnail: thumb_url(&t.name, &r.id),
        id: r.id,
    })
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    pub deleted: String,
    pub task: String,
}

/// Removes a video (logged before it returns); unknown ids are `unknown_video`.
pub async fn delete_video(state: &AppState, task: &str, id: &str) -> Result<Deleted, ApiError> {
    let t0 = Instant::now();
    let (t, _) = task_of(state, Some(task))?;
    let i = id.to_string();
    let tt = t.clone();
    let existed = tokio::task::spawn_blocking(move || {
        // Writers hold the gate shared so a re-embedding cutover cannot lose this delete.
        let _gate = tt.write_gate.read();
        tt.current().store.delete(&i)
    })
    .await??;
    if !existed {
        return Err(unknown_video(task, id));
    }
    record(state, &t.name, "delete", t0);
    Ok(Deleted {
        deleted: id.to_string(),
        task: t.name.clone(),
    })
}

/// The JPEG thumbnail of a stored video.
pub async fn thumbnail(state: &AppState, task: &str, id: &str) -> Result<Vec<u8>, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(state, Some(task))?;
    let missing = || {
        ApiError::not_found(
            "unknown_video",
            format!("no thumbnail for {id:?} in task {task:?}"),
        )
    };
    if gen.store.get(id).is_none() {
        return Err(missing());
    }
    let path = gen
        .store
        .blob_path(id, BlobKind::Thumbnail)
        .ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    record(state, &t.name, "thumbnail", t0);
    Ok(bytes)
}

#[derive(Debug, Serialize)]
pub struct TaskList {
    pub tasks: Vec<TaskStatus>,
    /// Adapter files refused for tasks that are not served: task -> why.
    pub rejected: BTreeMap<String, String>,
}

/// The tasks `caller` may read, with the adapter files refused for tasks it may read.
pub fn tasks(state: &AppState, caller: &Caller) -> Result<TaskList, ApiError> {
    let core = state.core()?;
    let rejected = core
        .registry
        .rejected
        .read()
        .iter()
        .filter(|(task, _)| caller.may_read(task))
        .map(|(task, why)| (task.clone(), redact_paths(state, why)))
        .collect();
    let tasks = core
        .registry
        .statuses()
        .into_iter()
        .filter(|s| caller.may_read(&s.task))
        .map(|s| redacted(state, s))
        .collect();
    Ok(TaskList { tasks, rejected })
}

pub fn task(state: &AppState, task: &str) -> Result<TaskStatus, ApiError> {
    let status = state
        .core()?
        .registry
        .status(task)
        .ok_or_else(|| ApiError::unknown_task(task))?;
    Ok(redacted(state, status))
}

fn redacted(state: &AppState, mut s: TaskStatus) -> TaskStatus {
    s.last_error = s.last_error.map(|e| redact_paths(state, &e));
    s
}

/// `message` with the server's data and adapter folders written as `<data-dir>` and
/// `<adapters-dir>`. Adapter-load errors already name files relative to the adapters folder; this
/// is the backstop for errors from deeper down (the store, re-embedding, the file system) that
/// reach clients through `last_error` and `rejected`: clients never learn the server's layout.
fn redact_paths(state: &AppState, message: &str) -> String {
    let c = &state.config;
    let mut dirs: Vec<(String, &str)> = Vec::new();
    for (dir, label) in [
        (&c.data_dir, "<data-dir>"),
        (&c.adapters_dir, "<adapters-dir>"),
    ] {
        // As resolved (symlinks followed) and as written (made absolute): errors carry either.
        for abs in [std::fs::canonicalize(dir), std::path::absolute(dir)]
            .into_iter()
            .flatten()
        {
            dirs.push((abs.display().to_string(), label));
        }
    }
    // Longest first, so a folder inside the other is replaced as itself.
    dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
    let mut out = message.to_string();
    for (dir, label) in dirs {
        let dir = dir.trim_end_matches('/');
        if !dir.is_empty() {
            out = out.replace(dir, label);
        }
    }
    out
}

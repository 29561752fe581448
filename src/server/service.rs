//! The server's operations, independent of the transport: HTTP ([`super::api`]) and gRPC
//! ([`super::grpc`]) parse their own input, call these, and render the plain results. Owns task
//! lookup, input validation (query, `k`, the search filter), the API-key check, which tasks a caller may see, per-task
//! metrics and thumbnail URLs. Uploads live in [`super::upload`].

use super::auth::{Caller, Denied, Need};
use super::error::ErrorKind;
use super::{ApiError, AppState};
use crate::registry::{Generation, Task, TaskStatus};
use crate::store::{BlobKind, Filter};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// Largest `k` a search may ask for.
pub const MAX_K: usize = 1000;
/// `k` when the request gives none.
pub const DEFAULT_K: usize = 10;
/// Longest query in characters (the OpenAPI document's `maxLength`, which counts characters).
pub const MAX_QUERY_CHARS: usize = 4096;

/// A query with nothing but white space: Rust's White_Space plus U+001C..U+001F, which is
/// Python's `str.isspace()` (and so `\s` for schemathesis), so the OpenAPI document's
/// `pattern: \S` and the server agree on what "blank" is.
fn blank(q: &str) -> bool {
    q.chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

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
            ErrorKind::Unauthenticated,
            "unauthenticated",
            "a valid API key is required (Authorization: Bearer KEY)",
        ),
        Denied::Forbidden(m) => ApiError::new(ErrorKind::Forbidden, "forbidden", m),
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

/// A query replica takes no writes: they go to the deployment's one indexer.
pub fn refuse_writes_on_replica(state: &AppState) -> Result<(), ApiError> {
    match state.config.role.writes() {
        true => Ok(()),
        false => Err(ApiError::wrong_role(
            "this replica only searches (--role query); send uploads and deletes to the indexer",
        )),
    }
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

/// The HTTP path of a video's stored upload.
pub fn video_url(task: &str, id: &str) -> String {
    format!("/videos/{}/{}/video", url_segment(task), url_segment(id))
}

/// The content type of a stored upload, from the container (and codec) detected at upload.
/// Matroska holding only WebM's codecs is `video/webm`, which browsers play.
pub fn content_type(stored: &Value) -> &'static str {
    let media = stored.get("media");
    let field = |k: &str| {
        media
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    match (field("container"), field("codec")) {
        ("mp4", _) => "video/mp4",
        ("matroska", "vp8" | "vp9" | "av1") => "video/webm",
        ("matroska", _) => "video/x-matroska",
        ("avi", _) => "video/x-msvideo",
        ("gif", _) => "image/gif",
        ("ogg", _) => "video/ogg",
        ("mpegts", _) => "video/mp2t",
        _ => "application/octet-stream",
    }
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

/// The key of a stored record (written by `upload`) that holds the user's `meta`.
const USER_META_KEY: &str = "meta";

/// The user's `meta` inside a stored record (which also holds file name, size, media info).
fn user_meta(stored: &Value) -> Value {
    stored.get(USER_META_KEY).cloned().unwrap_or(Value::Null)
}

/// The search filter a request gives (`None` for none or an empty one), over the user's `meta`.
/// Stores evaluate filters on the stored record, so this is the one place that moves the
/// user's paths below [`USER_META_KEY`], beside [`user_meta`] which reads the same key.
pub fn parse_filter(text: Option<&str>) -> Result<Option<Filter>, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => Ok(Some(Filter::parse(t)?.under(USER_META_KEY))),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub id: String,
    /// Cosine similarity of the query and the video, in [-1, 1].
    pub score: f32,
    /// The `meta` JSON given at upload (`null` without one).
    pub meta: Value,
    /// URL path of the thumbnail JPEG.
    pub thumbnail: String,
    /// URL path of the stored upload (Range requests supported).
    pub video: String,
    /// The upload's content type, from the container detected at upload.
    pub content_type: String,
    /// Where in the video its best match is, for a video indexed as segments (see the README's
    /// "Moments"); `null` for a video stored as one vector.
    pub moment: Option<Moment>,
    /// With `segments=N`: the video's best segments (up to N), best first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moments: Option<Vec<Moment>>,
}

/// A segment of a video: its span in seconds from the start and its score.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Moment {
    pub start_s: f64,
    pub end_s: f64,
    /// Cosine similarity of the query and this segment.
    pub score: f32,
}

/// Most segments per video a search may ask for.
pub const MAX_SEGMENTS: usize = 100;

/// `segments` as a search takes it: absent (only the best one, as `moment`), else 1..=
/// [`MAX_SEGMENTS`].
pub fn check_segments(n: Option<usize>) -> Result<Option<usize>, ApiError> {
    match n {
        Some(n) if !(1..=MAX_SEGMENTS).contains(&n) => Err(ApiError::bad_request(
            "bad_segments",
            format!("segments must be an integer in 1..={MAX_SEGMENTS}"),
        )),
        n => Ok(n),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub task: String,
    /// The generation (model + its vectors) that answered.
    pub generation: u64,
    /// Digest of the model that embedded the query and the videos.
    pub adapter_digest: String,
    pub hits: Vec<SearchHit>,
}

/// The task a read names, as this replica serves it right now: a query replica first catches up
/// with the generation its indexer serves (see `registry::follow`), so the query vector and the
/// store searched come from one generation.
pub async fn task_for_read(
    state: &AppState,
    task: Option<&str>,
) -> Result<(Arc<Task>, Arc<Generation>), ApiError> {
    if let (Some(f), Some(name)) = (state.core()?.follower.clone(), task) {
        if crate::registry::valid_task_name(name) {
            let name = name.to_string();
            tokio::task::spawn_blocking(move || f.sync(&name)).await??;
        }
    }
    task_of(state, task)
}

/// `k` as a search takes it: [`DEFAULT_K`] when absent, else 1..=[`MAX_K`].
pub fn check_k(k: Option<usize>) -> Result<usize, ApiError> {
    let k = k.unwrap_or(DEFAULT_K);
    if !(1..=MAX_K).contains(&k) {
        return Err(ApiError::bad_request(
            "bad_k",
            format!("k must be an integer in 1..={MAX_K}"),
        ));
    }
    Ok(k)
}

/// What a search asks of the store besides its query vector, checked before any work is done.
pub struct Wanted {
    /// How many hits: see [`check_k`].
    pub k: usize,
    /// Which videos may be among them: see [`parse_filter`].
    pub filter: Option<Filter>,
    /// How many segments of each video to list: see [`check_segments`].
    pub segments: Option<usize>,
}

/// The `wanted.k` videos of `gen` nearest to `vector` (a query embedded by `gen`'s model) whose
/// `meta` passes `wanted.filter`, best first, as every search answers them; counted as `op`
/// (started at `t0`). Text and example searches differ only in how they make the vector.
pub async fn search_vector(
    state: &AppState,
    task: &Task,
    gen: &Arc<Generation>,
    vector: Vec<f32>,
    wanted: Wanted,
    op: &str,
    t0: Instant,
) -> Result<SearchResult, ApiError> {
    let Wanted {
        k,
        filter,
        segments,
    } = wanted;
    let filtered = filter.is_some();
    let g = gen.clone();
    let per_video = segments.unwrap_or(1);
    let hits = tokio::task::spawn_blocking(move || {
        super::moments::search(g.store.as_ref(), &vector, k, per_video, filter.as_ref())
    })
    .await??;
    let hits = hits
        .into_iter()
        .map(|h| {
            let moments: Vec<Moment> = h
                .moments
                .iter()
                .map(|&(start_s, end_s, score)| Moment {
                    start_s,
                    end_s,
                    score,
                })
                .collect();
            SearchHit {
                thumbnail: thumb_url(&task.name, &h.id),
                video: video_url(&task.name, &h.id),
                content_type: content_type(&h.stored).to_string(),
                meta: user_meta(&h.stored),
                score: h.score,
                moment: moments.first().copied(),
                moments: segments.map(|_| moments),
                id: h.id,
            }
        })
        .collect();
    record(state, &task.name, op, t0);
    if filtered {
        let m = &state.metrics.filtered_searches;
        m.with_label_values(&[task.name.as_str()]).inc();
    }
    Ok(SearchResult {
        task: task.name.clone(),
        generation: gen.number,
        adapter_digest: gen.model.digest().to_string(),
        hits,
    })
}

/// Encodes `q` through the task's model and returns the `k` nearest videos (default
/// [`DEFAULT_K`]) whose `meta` passes `filter` (JSON text, see `store::Filter`), best first.
pub async fn search(
    state: &AppState,
    task: Option<&str>,
    q: &str,
    k: Option<usize>,
    filter: Option<&str>,
    segments: Option<usize>,
) -> Result<SearchResult, ApiError> {
    let t0 = Instant::now();
    let (task, gen) = task_for_read(state, task).await?;
    if blank(q) {
        return Err(ApiError::bad_request(
            "empty_query",
            "give a non-empty query",
        ));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            "query_too_long",
            format!("queries are limited to {MAX_QUERY_CHARS} characters"),
        ));
    }
    let k = check_k(k)?;
    let filter = parse_filter(filter)?;
    let segments = check_segments(segments)?;
    let core = state.core()?;
    let vector = core.encoder.encode_text(gen.model.clone(), q).await?;
    let wanted = Wanted {
        k,
        filter,
        segments,
    };
    search_vector(state, &task, &gen, vector, wanted, "search", t0).await
}

/// A stored video as `GET /videos/{task}/{id}` shows it; the fields kept at upload are `null`
/// when absent.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoInfo {
    pub id: String,
    pub task: String,
    pub generation: u64,
    pub adapter_digest: String,
    /// Milliseconds since the Unix epoch when it was indexed.
    pub added_ms: u64,
    /// The `meta` JSON given at upload.
    pub meta: Value,
    /// The uploaded file's name (string or null).
    pub file_name: Value,
    /// The upload's size in bytes (integer or null).
    pub bytes: Value,
    /// Frames embedded (integer or null).
    pub frames: Value,
    /// Container, codec, duration, size, fps, decoder, frame count.
    pub media: Value,
    pub thumbnail: String,
    /// URL path of the stored upload (Range requests supported).
    pub video: String,
    pub content_type: String,
    /// The spans of its segments, in order, for a video indexed as segments (see the README's
    /// "Moments"); `null` for a video stored as one vector.
    pub segments: Option<Vec<Span>>,
}

/// A segment's time span, in seconds from the start of its video.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Span {
    pub start_s: f64,
    pub end_s: f64,
}

fn unknown_video(task: &str, id: &str) -> ApiError {
    ApiError::not_found("unknown_video", format!("no video {id:?} in task {task:?}"))
}

pub async fn get_video(state: &AppState, task: &str, id: &str) -> Result<VideoInfo, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(state, Some(task))?;
    // A segment is part of its video, never a video of its own.
    if crate::store::moments::is_segment_key(id) {
        return Err(unknown_video(task, id));
    }
    let i = id.to_string();
    let store = gen.store.clone();
    let r = tokio::task::spawn_blocking(move || store.get(&i))
        .await??
        .ok_or_else(|| unknown_video(task, id))?;
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
        video: video_url(&t.name, &r.id),
        content_type: content_type(&r.meta).to_string(),
        segments: crate::store::moments::Layout::of(&r.meta).map(|l| {
            l.spans
                .iter()
                .map(|&(start_s, end_s)| Span { start_s, end_s })
                .collect()
        }),
        id: r.id,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
    pub task: String,
}

/// Removes a video (logged before it returns); unknown ids are `unknown_video`.
pub async fn delete_video(state: &AppState, task: &str, id: &str) -> Result<Deleted, ApiError> {
    let t0 = Instant::now();
    refuse_writes_on_replica(state)?;
    let (t, _) = task_of(state, Some(task))?;
    if crate::store::moments::is_segment_key(id) {
        return Err(unknown_video(task, id));
    }
    let i = id.to_string();
    let tt = t.clone();
    let existed = tokio::task::spawn_blocking(move || {
        // Writers hold the gate shared so a re-embedding cutover cannot lose this delete.
        let _gate = tt.write_guard();
        crate::store::moments::delete_video(tt.current().store.as_ref(), &i)
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
    let i = id.to_string();
    let store = gen.store.clone();
    let path = tokio::task::spawn_blocking(move || store.blob_path(&i, BlobKind::Thumbnail))
        .await??
        .ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    record(state, &t.name, "thumbnail", t0);
    Ok(bytes)
}

/// A stored upload on disk and the content type to serve it with.
pub struct VideoFile {
    pub path: PathBuf,
    pub content_type: &'static str,
}

/// Where a stored video's upload is; the transport streams it (with Range support).
pub async fn video_file(state: &AppState, task: &str, id: &str) -> Result<VideoFile, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(state, Some(task))?;
    let i = id.to_string();
    let store = gen.store.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        let Some(r) = store.get(&i)? else {
            return Ok(None);
        };
        Ok(store.blob_path(&i, BlobKind::Original)?.map(|p| (r, p)))
    })
    .await??;
    let (r, path) = found.ok_or_else(|| unknown_video(task, id))?;
    record(state, &t.name, "video", t0);
    Ok(VideoFile {
        path,
        content_type: content_type(&r.meta),
    })
}

#[derive(Debug, Serialize, ToSchema)]
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
        .rejected()
        .into_iter()
        .filter(|(task, _)| caller.may_read(task))
        .map(|(task, why)| (task, redact_paths(state, &why)))
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

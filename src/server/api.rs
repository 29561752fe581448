//! The route handlers. Each parses and validates its input, calls the core (registry, encoder,
//! store; blocking work on the blocking pool) and returns JSON or an [`ApiError`].
//!
//! Uploads (`POST /index`) are streamed part by part to files under `<data-dir>/tmp/` with a size
//! cap, never held whole in memory; then every video is decoded and encoded, and only when all of
//! them succeeded are they stored, with one log write (all or nothing).

use super::{ApiError, AppState};
use crate::registry::{Generation, Task};
use crate::store::BlobKind;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Largest `k` a search may ask for.
pub const MAX_K: usize = 1000;
/// Longest query in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
const MAX_ID_BYTES: usize = 256;
const MAX_META_BYTES: usize = 64 << 10;

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn task_of(state: &AppState, task: Option<&str>) -> Result<(Arc<Task>, Arc<Generation>), ApiError> {
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

fn record(state: &AppState, task: &str, op: &str, t0: Instant) {
    state
        .metrics
        .task_requests
        .with_label_values(&[task, op])
        .inc();
    state
        .metrics
        .task_latency
        .with_label_values(&[task, op])
        .observe(t0.elapsed().as_secs_f64());
}

fn thumb_url(task: &str, id: &str) -> String {
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

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    task: Option<String>,
    k: Option<String>,
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let t0 = Instant::now();
    let (task, gen) = task_of(&state, p.task.as_deref())?;
    let q = p.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::bad_request("empty_query", "give a non-empty ?q="));
    }
    if q.len() > MAX_QUERY_BYTES {
        return Err(ApiError::bad_request(
            "query_too_long",
            format!("queries are limited to {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let k = match p.k.as_deref() {
        None => 10,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=MAX_K).contains(k))
            .ok_or_else(|| {
                ApiError::bad_request("bad_k", format!("k must be an integer in 1..={MAX_K}"))
            })?,
    };
    let core = state.core()?;
    let vector = core.encoder.encode_text(gen.model.clone(), &q).await?;
    let g = gen.clone();
    let hits = tokio::task::spawn_blocking(move || g.store.search(&vector, k)).await??;
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            json!({
                "id": h.id,
                "score": h.score,
                "meta": h.meta.get("meta").cloned().unwrap_or(Value::Null),
                "thumbnail": thumb_url(&task.name, &h.id),
            })
        })
        .collect();
    record(&state, &task.name, "search", t0);
    Ok(Json(json!({
        "task": task.name,
        "generation": gen.number,
        "adapter_digest": gen.model.digest(),
        "hits": hits,
    })))
}

#[derive(Deserialize)]
pub struct IndexParams {
    task: Option<String>,
}

/// One uploaded video waiting in a temporary file.
struct Upload {
    id: Option<String>,
    meta: Value,
    file_name: Option<String>,
    path: std::path::PathBuf,
    bytes: u64,
}

/// Removes the temporary files of a request however it ends.
struct TmpFiles(Vec<std::path::PathBuf>);
impl Drop for TmpFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::bad_request("bad_multipart", e.body_text())
    }
}

static UPLOAD_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Most bytes of a refused upload read and thrown away so that the client sees the error response
/// instead of a reset connection; beyond this the connection is closed.
const DRAIN_BYTES: usize = 16 << 20;

pub async fn index(
    State(state): State<Arc<AppState>>,
    Query(p): Query<IndexParams>,
    mut form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let result = index_inner(&state, p, &mut form).await;
    if result.is_err() {
        let drain = async {
            let mut n = 0;
            while let Ok(Some(mut f)) = form.next_field().await {
                while let Ok(Some(c)) = f.chunk().await {
                    n += c.len();
                    if n > DRAIN_BYTES {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    }
    result
}

async fn index_inner(
    state: &Arc<AppState>,
    p: IndexParams,
    form: &mut Multipart,
) -> Result<Json<Value>, ApiError> {
    let state = state.clone();
    let t0 = Instant::now();
    let (task, gen) = task_of(&state, p.task.as_deref())?;
    let cap = state.config.max_upload_bytes;
    let mut tmp = TmpFiles(Vec::new());
    let mut uploads: Vec<Upload> = Vec::new();
    let mut next_id: Option<String> = None;
    let mut next_meta: Option<Value> = None;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "id" | "meta" => {
                let limit = if name == "id" {
                    MAX_ID_BYTES
                } else {
                    MAX_META_BYTES
                };
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > limit {
                        return Err(ApiError::bad_request(
                            "field_too_long",
                            format!("the {name} field is limited to {limit} bytes"),
                        ));
                    }
                }
                let text = String::from_utf8(buf).map_err(|_| {
                    ApiError::bad_request("bad_field", format!("the {name} field is not UTF-8"))
                })?;
                if name == "id" {
                    if text.is_empty() {
                        return Err(ApiError::bad_request("bad_id", "the id field is empty"));
                    }
                    next_id = Some(text);
                } else {
                    let v: Value = serde_json::from_str(&text).map_err(|e| {
                        ApiError::bad_request("bad_meta", format!("meta is not JSON: {e}"))
                    })?;
                    next_meta = Some(v);
                }
            }
            "video" => {
                if uploads.len() >= state.config.max_videos_per_request {
                    return Err(ApiError::too_large(format!(
                        "at most {} videos per request",
                        state.config.max_videos_per_request
                    )));
                }
                let file_name = field.file_name().map(str::to_string);
                let n = UPLOAD_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = state
                    .tmp_dir
                    .join(format!("upload-{}-{n}", std::process::id()));
                tmp.0.push(path.clone());
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| ApiError::internal(format!("creating upload file: {e}")))?;
                let mut bytes = 0u64;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    bytes += chunk.len() as u64;
                    if bytes > cap {
                        return Err(ApiError::too_large(format!(
                            "a video may be at most {cap} bytes"
                        )));
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::internal(format!("writing upload: {e}")))?;
                }
                file.flush()
                    .await
                    .map_err(|e| ApiError::internal(format!("writing upload: {e}")))?;
                if bytes == 0 {
                    return Err(ApiError::bad_request(
                        "empty_video",
                        "a video part is empty",
                    ));
                }
                uploads.push(Upload {
                    id: next_id.take(),
                    meta: next_meta.take().unwrap_or(Value::Null),
                    file_name,
                    path,
                    bytes,
                });
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unexpected form field {other:?} (id, meta and video are known)"),
                ))
            }
        }
    }
    if uploads.is_empty() {
        return Err(ApiError::bad_request(
            "missing_video",
            "the form has no part named video",
        ));
    }
    let core = state.core()?;
    let size = core.encoder.backbone().image_size;
    let frames = gen.model.frames();
    // Decode and encode every video; nothing is stored unless all succeed.
    let mut prepared = Vec::with_capacity(uploads.len());
    for up in uploads {
        let _admitted = state
            .decode_admission
            .try_acquire()
            .map_err(|_| ApiError::overloaded("too many videos waiting to be decoded", 2))?;
        let slot = state
            .decode_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("decoder closed"))?;
        let decoder = state.decoder.clone();
        let path = up.path.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            decoder.decode(&path, frames, size)
        })
        .await??;
        let vector = core
            .encoder
            .encode_video(gen.model.clone(), decoded.pixels, decoded.mask.clone())
            .await?;
        let id = match &up.id {
            Some(id) => id.clone(),
            None => {
                let path = up.path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                    let mut h = blake3::Hasher::new();
                    h.update_reader(std::fs::File::open(path)?)?;
                    Ok(h.finalize().to_hex()[..16].to_string())
                })
                .await?
                .map_err(|e| ApiError::internal(e.to_string()))?
            }
        };
        let frames_used = decoded.mask.iter().filter(|&&m| m).count();
        prepared.push((
            up,
            id,
            vector,
            decoded.thumbnail_jpeg,
            decoded.info,
            frames_used,
        ));
    }
    let task_name = task.name.clone();
    let g = gen.clone();
    let tmp_dir = state.tmp_dir.clone();
    let t = task.clone();
    let results = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        // Writers hold the gate shared; a re-embedding cutover takes it exclusively.
        let _gate = t.write_gate.read();
        if t.current().number != g.number {
            return Err(ApiError::overloaded(
                "the task's adapter changed while this upload was encoded; send it again",
                1,
            ));
        }
        let mut items = Vec::with_capacity(prepared.len());
        let mut out = Vec::with_capacity(prepared.len());
        for (i, (up, id, vector, jpeg, info, frames_used)) in prepared.into_iter().enumerate() {
            g.store.put_blob(&id, BlobKind::Original, &up.path)?;
            if !jpeg.is_empty() {
                let tp = tmp_dir.join(format!("thumb-{}-{i}", std::process::id()));
                let n = UPLOAD_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tp = tp.with_extension(n.to_string());
                let written = std::fs::File::create(&tp).and_then(|mut f| {
                    f.write_all(&jpeg)?;
                    f.sync_all()
                });
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tp);
                    return Err(ApiError::internal(format!("writing thumbnail: {e}")));
                }
                g.store.put_blob(&id, BlobKind::Thumbnail, &tp)?;
            }
            let stored = json!({
                "meta": up.meta,
                "file_name": up.file_name,
                "bytes": up.bytes,
                "media": info,
                "frames": frames_used,
            });
            out.push(json!({
                "id": id,
                "bytes": up.bytes,
                "frames": frames_used,
                "media": info,
                "thumbnail": thumb_url(&task_name, &id),
            }));
            items.push((id, vector, stored));
        }
        g.store.add_batch(g.model.digest(), items)?;
        Ok(out)
    })
    .await??;
    state
        .metrics
        .videos_indexed
        .with_label_values(&[task.name.as_str()])
        .inc_by(results.len() as u64);
    record(&state, &task.name, "index", t0);
    tracing::info!(task = %task.name, videos = results.len(), "indexed");
    Ok(Json(json!({
        "task": task.name,
        "generation": gen.number,
        "indexed": results,
    })))
}

pub async fn get_video(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(&state, Some(&task))?;
    let r = gen.store.get(&id).ok_or_else(|| {
        ApiError::not_found("unknown_video", format!("no video {id:?} in task {task:?}"))
    })?;
    record(&state, &t.name, "get", t0);
    Ok(Json(json!({
        "id": r.id,
        "task": t.name,
        "generation": gen.number,
        "adapter_digest": r.adapter_digest,
        "added_ms": r.added_ms,
        "meta": r.meta.get("meta").cloned().unwrap_or(Value::Null),
        "file_name": r.meta.get("file_name").cloned().unwrap_or(Value::Null),
        "bytes": r.meta.get("bytes").cloned().unwrap_or(Value::Null),
        "frames": r.meta.get("frames").cloned().unwrap_or(Value::Null),
        "media": r.meta.get("media").cloned().unwrap_or(Value::Null),
        "thumbnail": thumb_url(&t.name, &r.id),
    })))
}

pub async fn delete_video(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let t0 = Instant::now();
    let (t, _) = task_of(&state, Some(&task))?;
    let i = id.clone();
    let tt = t.clone();
    let existed = tokio::task::spawn_blocking(move || {
        let _gate = tt.write_gate.read();
        tt.current().store.delete(&i)
    })
    .await??;
    if !existed {
        return Err(ApiError::not_found(
            "unknown_video",
            format!("no video {id:?} in task {task:?}"),
        ));
    }
    record(&state, &t.name, "delete", t0);
    Ok(Json(json!({"deleted": id, "task": t.name})))
}

pub async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let (t, gen) = task_of(&state, Some(&task))?;
    let missing = || {
        ApiError::not_found(
            "unknown_video",
            format!("no thumbnail for {id:?} in task {task:?}"),
        )
    };
    if gen.store.get(&id).is_none() {
        return Err(missing());
    }
    let path = gen
        .store
        .blob_path(&id, BlobKind::Thumbnail)
        .ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    record(&state, &t.name, "thumbnail", t0);
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

pub async fn tasks(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let core = state.core()?;
    let rejected = core.registry.rejected.read().clone();
    Ok(Json(
        json!({ "tasks": core.registry.statuses(), "rejected": rejected }),
    ))
}

pub async fn task(
    State(state): State<Arc<AppState>>,
    Path(task): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let core = state.core()?;
    let s = core
        .registry
        .status(&task)
        .ok_or_else(|| ApiError::unknown_task(&task))?;
    Ok(Json(json!(s)))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let core = state.core()?;
    Ok(Json(
        json!({"status": "ready", "tasks": core.registry.len()}),
    ))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(core) = state.core.get() {
        let (t, v) = core.encoder.queue_depths();
        state
            .metrics
            .queue_depth
            .with_label_values(&["text"])
            .set(t as i64);
        state
            .metrics
            .queue_depth
            .with_label_values(&["video"])
            .set(v as i64);
        state.metrics.tasks.set(core.registry.len() as i64);
        for s in core.registry.statuses() {
            state
                .metrics
                .videos
                .with_label_values(&[s.task.as_str()])
                .set(s.videos as i64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

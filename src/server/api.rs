//! The HTTP route handlers: each parses its input, calls [`super::service`] (or
//! [`super::upload`] for `POST /index`) and returns JSON or an [`ApiError`]. No logic of the
//! operations lives here, so gRPC serves exactly the same thing.
//!
//! `POST /index` reads the multipart form part by part and streams each video into an
//! [`IndexBatch`]; nothing is buffered whole in memory.

use super::auth::Caller;
use super::service::{self, DEFAULT_K};
use super::upload::{self, IndexBatch, MAX_ID_BYTES, MAX_META_BYTES};
use super::{ApiError, AppState};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

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

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    task: Option<String>,
    k: Option<String>,
}

pub async fn search(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SearchParams>,
) -> Result<Json<service::SearchResult>, ApiError> {
    // Anything that is not a count becomes 0, which the service refuses as `bad_k`.
    let k =
        p.k.as_deref()
            .map(|s| s.parse::<usize>().unwrap_or(0))
            .or(Some(DEFAULT_K));
    let q = p.q.unwrap_or_default();
    Ok(Json(
        service::search(&state, p.task.as_deref(), &q, k).await?,
    ))
}

#[derive(Deserialize)]
pub struct IndexParams {
    task: Option<String>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::bad_request("bad_multipart", e.body_text())
    }
}

/// Most bytes of a refused upload read and thrown away so that the client sees the error response
/// instead of a reset connection; beyond this the connection is closed.
const DRAIN_BYTES: usize = 16 << 20;

pub async fn index(
    State(state): State<Arc<AppState>>,
    Query(p): Query<IndexParams>,
    mut form: Multipart,
) -> Result<Json<upload::IndexResult>, ApiError> {
    let result = index_form(&state, p, &mut form).await;
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
    result.map(Json)
}

/// Form fields: `id` and `meta` apply to the next `video` part.
async fn index_form(
    state: &Arc<AppState>,
    p: IndexParams,
    form: &mut Multipart,
) -> Result<upload::IndexResult, ApiError> {
    let mut batch = IndexBatch::begin(state, p.task.as_deref())?;
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
                        return Err(upload::field_too_long(&name, limit));
                    }
                }
                let text = String::from_utf8(buf).map_err(|_| {
                    ApiError::bad_request("bad_field", format!("the {name} field is not UTF-8"))
                })?;
                if name == "id" {
                    next_id = Some(upload::parse_id(&text)?);
                } else {
                    next_meta = Some(upload::parse_meta(&text)?);
                }
            }
            "video" => {
                let file_name = field.file_name().map(str::to_string);
                let mut spool = batch.open_video().await?;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    spool.write(&chunk).await?;
                }
                batch
                    .push(
                        spool,
                        next_id.take(),
                        next_meta.take().unwrap_or(Value::Null),
                        file_name,
                    )
                    .await?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unexpected form field {other:?} (id, meta and video are known)"),
                ))
            }
        }
    }
    batch.commit().await
}

pub async fn get_video(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<service::VideoInfo>, ApiError> {
    Ok(Json(service::get_video(&state, &task, &id)?))
}

pub async fn delete_video(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<service::Deleted>, ApiError> {
    Ok(Json(service::delete_video(&state, &task, &id).await?))
}

pub async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = service::thumbnail(&state, &task, &id).await?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

/// The tasks the caller's key may read (`auth_mw` always names the caller).
pub async fn tasks(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<service::TaskList>, ApiError> {
    Ok(Json(service::tasks(&state, &caller)?))
}

pub async fn task(
    State(state): State<Arc<AppState>>,
    Path(task): Path<String>,
) -> Result<Json<crate::registry::TaskStatus>, ApiError> {
    Ok(Json(service::task(&state, &task)?))
}

/// The search page: one self-contained file (no external resources; the server may be offline).
/// It holds no data, so it needs no key; the API calls it makes do.
pub async fn page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; \
             script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )],
        Html(include_str!("page.html")),
    )
        .into_response()
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

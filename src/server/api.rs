//! The HTTP route handlers: each parses its input, calls [`super::service`] (or
//! [`super::upload`] for `POST /index`) and returns JSON or an [`ApiError`]. No logic of the
//! operations lives here, so gRPC serves exactly the same thing.
//!
//! `POST /index` hands its body to [`super::multipart`], which reads the form part by part into
//! an upload batch with every bound applied as bytes arrive.

use super::auth::Caller;
use super::service::{self, DEFAULT_K};
use super::upload;
use super::{multipart, ApiError, AppState};
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
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

pub async fn index(
    State(state): State<Arc<AppState>>,
    Query(p): Query<IndexParams>,
    req: Request,
) -> Result<Json<upload::IndexResult>, ApiError> {
    Ok(Json(
        multipart::index(&state, p.task.as_deref(), req).await?,
    ))
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

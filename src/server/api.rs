//! The HTTP route handlers: each parses its input, calls [`super::service`] (or
//! [`super::upload`] for `POST /index`) and returns JSON or an [`ApiError`]. No logic of the
//! operations lives here, so gRPC serves exactly the same thing.
//!
//! `POST /index` hands its body to [`super::multipart`], which reads the form part by part into
//! an upload batch with every bound applied as bytes arrive; `POST /search` (search by example)
//! hands it its example the same way.
//!
//! Each handler carries its `#[utoipa::path]` entry (parameters, bodies, every status it can
//! answer) for the OpenAPI document in [`super::openapi`]. Extractor rejections (a malformed
//! query, path or form) are turned into the same JSON errors as everything else.

use super::auth::Caller;
use super::openapi::ErrorBody;
use super::service::{self, DEFAULT_K};
use super::upload;
use super::{multipart, ApiError, AppState};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tower::ServiceExt;
use utoipa::{IntoParams, ToSchema};

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

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::bad_request("bad_query", e.body_text())
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::bad_request("bad_path", e.body_text())
}

/// `{task}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskPath {
    /// A task name (`clip`, or an adapter file's name).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task: String,
}

/// `{task}/{id}` in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VideoPath {
    /// A task name.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task: String,
    /// A video id as given at upload (or the generated one).
    #[param(min_length = 1)]
    id: String,
}

/// A count in a query string; anything that is not one becomes 0, which the service refuses.
fn count_param(s: Option<&str>) -> Option<usize> {
    s.map(|s| s.parse::<usize>().unwrap_or(0))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The text query: at most 4096 characters, not blank.
    #[param(required = true, min_length = 1, max_length = 4096, pattern = r"\S")]
    q: Option<String>,
    /// The task to search.
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task: Option<String>,
    /// How many hits (1..=1000, default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    k: Option<String>,
    /// Only videos whose upload `meta` passes this filter: JSON text (URL-encoded), at most
    /// 4096 bytes, e.g. `{"and": [{"eq": ["lang", "en"]}, {"gte": ["year", 2020]}]}`.
    /// Operators: `eq`, `ne`, `in`, `lt`, `lte`, `gt`, `gte`, `exists`, `and`, `or`, `not`;
    /// keys are dotted paths (`a.b`, a literal dot as `\.`). See the README's "Filters".
    #[param(max_length = 4096)]
    filter: Option<String>,
    /// Also list each video's best segments, up to this many (1..=100), as `moments` (see the
    /// README's "Moments"); the best one is always `moment`.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    segments: Option<String>,
}

#[utoipa::path(
    get, path = "/search", tag = "search",
    params(SearchParams),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Hits, best first", body = service::SearchResult),
        (status = 400, description = "`missing_task`, `empty_query`, `query_too_long`, `bad_k`, `bad_filter` (the message names the problem), `bad_segments`, `bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or unknown key (auth on)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key may not read this task", body = ErrorBody),
        (status = 404, description = "`unknown_task`", body = ErrorBody),
        (status = 408, description = "Over `--request-timeout-s`"),
        (status = 503, description = "`not_ready` or `overloaded`; see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn search(
    State(state): State<Arc<AppState>>,
    p: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<service::SearchResult>, ApiError> {
    let Query(p) = p.map_err(bad_query)?;
    // Anything that is not a count becomes 0, which the service refuses as `bad_k`.
    let k =
        p.k.as_deref()
            .map(|s| s.parse::<usize>().unwrap_or(0))
            .or(Some(DEFAULT_K));
    let q = p.q.unwrap_or_default();
    let segments = count_param(p.segments.as_deref());
    Ok(Json(
        service::search(
            &state,
            p.task.as_deref(),
            &q,
            k,
            p.filter.as_deref(),
            segments,
        )
        .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExampleParams {
    /// The task to search.
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task: Option<String>,
    /// How many hits (1..=1000, default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    k: Option<String>,
    /// Only videos whose upload `meta` passes this filter, as for `GET /search` (see the
    /// README's "Filters").
    #[param(max_length = 4096)]
    filter: Option<String>,
    /// Also list each video's best segments, up to this many (1..=100), as `moments` (see the
    /// README's "Moments"); the best one is always `moment`.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    segments: Option<String>,
}

/// Search by example: the same answer as `GET /search`, for an image or a video instead of text.
#[utoipa::path(
    post, path = "/search", tag = "search",
    params(ExampleParams),
    request_body(
        description = "The example: the image or video itself as the body (any content type \
            but a form; what it is comes from its bytes), or a form with one `file` part. A JPEG \
            or PNG is an image, searched as a video that shows it in every frame; anything else \
            is decoded as an upload is. At most `--max-example-mb`.",
        content(
            (super::openapi::ExampleBody = "image/jpeg"),
            (super::openapi::ExampleBody = "image/png"),
            (super::openapi::ExampleBody = "image/gif"),
            (super::openapi::ExampleBody = "video/mp4"),
            (super::openapi::ExampleBody = "video/webm"),
            (super::openapi::ExampleBody = "video/x-msvideo"),
            (super::openapi::ExampleBody = "application/octet-stream"),
            (super::openapi::ExampleForm = "multipart/form-data"),
        )
    ),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Hits, best first (as `GET /search`)", body = service::SearchResult),
        (status = 400, description = "`missing_task`, `bad_k`, `bad_filter`, `bad_segments`, `bad_query`, `empty_video` (an empty example), `missing_video` (a form without `file`), `unknown_field`, `bad_multipart`, `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`: no or unknown key (auth on)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key may not read this task", body = ErrorBody),
        (status = 404, description = "`unknown_task`", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body sent nothing for `--idle-timeout-s`; or over `--request-timeout-s`"),
        (status = 413, description = "`too_large`: over `--max-example-mb`, or the pixel, frame or duration limits", body = ErrorBody),
        (status = 415, description = "`unsupported_media`: neither an image (JPEG, PNG) nor a video this server decodes", body = ErrorBody),
        (status = 422, description = "`corrupt_media`: the bytes do not decode (or took too long to)", body = ErrorBody),
        (status = 503, description = "`not_ready` or `overloaded` (example slots, decode queue or encoder full); see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn search_by_example(
    State(state): State<Arc<AppState>>,
    p: Result<Query<ExampleParams>, QueryRejection>,
    req: Request,
) -> Result<Json<service::SearchResult>, ApiError> {
    let Query(p) = p.map_err(bad_query)?;
    // As for `GET /search`: anything that is not a count is refused as `bad_k`.
    let k =
        p.k.as_deref()
            .map(|s| s.parse::<usize>().unwrap_or(0))
            .or(Some(DEFAULT_K));
    Ok(Json(
        multipart::example(
            &state,
            p.task.as_deref(),
            k,
            p.filter.as_deref(),
            count_param(p.segments.as_deref()),
            req,
        )
        .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IndexParams {
    /// The task to index into.
    #[param(required = true, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    task: Option<String>,
}

#[utoipa::path(
    post, path = "/index", tag = "search",
    params(IndexParams),
    request_body(content = super::openapi::IndexForm, content_type = "multipart/form-data",
        description = "`id`, `meta` and `video` parts; every video of a request is stored, or none"),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Every video indexed", body = upload::IndexResult),
        (status = 400, description = "`missing_task`, `missing_video`, `bad_meta`, `bad_id`, `bad_file_name`, `field_too_long`, `bad_field`, `unknown_field`, `bad_multipart`, `bad_query`, `unstorable`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key may not write this task", body = ErrorBody),
        (status = 404, description = "`unknown_task`", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the upload sent nothing for `--idle-timeout-s`; or over `--request-timeout-s`"),
        (status = 413, description = "`too_large`: over `--max-upload-mb`, the body limit, 16 videos or 48 parts, the pixel, frame or duration limits", body = ErrorBody),
        (status = 415, description = "`unsupported_media`: a format this server cannot decode", body = ErrorBody),
        (status = 422, description = "`corrupt_media` or `timed_out`: the bytes do not decode", body = ErrorBody),
        (status = 500, description = "`internal`: storage failed", body = ErrorBody),
        (status = 503, description = "`not_ready` or `overloaded`; see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn index(
    State(state): State<Arc<AppState>>,
    p: Result<Query<IndexParams>, QueryRejection>,
    req: Request,
) -> Result<Json<upload::IndexResult>, ApiError> {
    let Query(p) = p.map_err(bad_query)?;
    Ok(Json(
        multipart::index(&state, p.task.as_deref(), req).await?,
    ))
}

#[utoipa::path(
    get, path = "/videos/{task}/{id}", tag = "search",
    params(VideoPath),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The stored record", body = service::VideoInfo),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`unknown_task` or `unknown_video`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn get_video(
    State(state): State<Arc<AppState>>,
    p: Result<Path<VideoPath>, PathRejection>,
) -> Result<Json<service::VideoInfo>, ApiError> {
    let Path(p) = p.map_err(bad_path)?;
    Ok(Json(service::get_video(&state, &p.task, &p.id).await?))
}

#[utoipa::path(
    delete, path = "/videos/{task}/{id}", tag = "search",
    params(VideoPath),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Deleted: vector, upload and thumbnail (durable on return)", body = service::Deleted),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the key may not write this task", body = ErrorBody),
        (status = 404, description = "`unknown_task` or `unknown_video`", body = ErrorBody),
        (status = 500, description = "`internal`: storage failed", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn delete_video(
    State(state): State<Arc<AppState>>,
    p: Result<Path<VideoPath>, PathRejection>,
) -> Result<Json<service::Deleted>, ApiError> {
    let Path(p) = p.map_err(bad_path)?;
    Ok(Json(service::delete_video(&state, &p.task, &p.id).await?))
}

#[utoipa::path(
    get, path = "/videos/{task}/{id}/thumbnail.jpg", tag = "search",
    params(VideoPath),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The JPEG of the middle sampled frame", content_type = "image/jpeg", body = Vec<u8>),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`unknown_task` or `unknown_video`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn thumbnail(
    State(state): State<Arc<AppState>>,
    p: Result<Path<VideoPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(p) = p.map_err(bad_path)?;
    let bytes = service::thumbnail(&state, &p.task, &p.id).await?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

/// The stored upload, byte for byte, with HTTP Range support so a browser can seek. Served by
/// tower-http's `ServeFile` (Range, If-Range, conditional GETs, 206/416) once the service has
/// checked the record and named the file; the content type comes from the container detected at
/// upload, never from the client's file name, and is never one a browser would run.
#[utoipa::path(
    get, path = "/videos/{task}/{id}/video", tag = "search",
    params(
        VideoPath,
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The whole upload, with `Accept-Ranges: bytes`", content(
            (Vec<u8> = "video/mp4"), (Vec<u8> = "video/webm"), (Vec<u8> = "video/x-matroska"),
            (Vec<u8> = "video/x-msvideo"), (Vec<u8> = "image/gif"), (Vec<u8> = "video/ogg"),
            (Vec<u8> = "video/mp2t"), (Vec<u8> = "application/octet-stream"))),
        (status = 206, description = "The requested range, with `Content-Range`", content(
            (Vec<u8> = "video/mp4"), (Vec<u8> = "video/webm"), (Vec<u8> = "video/x-matroska"),
            (Vec<u8> = "video/x-msvideo"), (Vec<u8> = "image/gif"), (Vec<u8> = "video/ogg"),
            (Vec<u8> = "video/mp2t"), (Vec<u8> = "application/octet-stream"))),
        (status = 304, description = "Not modified since `If-Modified-Since`"),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`unknown_task` or `unknown_video`", body = ErrorBody),
        (status = 416, description = "The range is outside the file (`Content-Range: bytes */LEN`)"),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn video(
    State(state): State<Arc<AppState>>,
    p: Result<Path<VideoPath>, PathRejection>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let Path(p) = p.map_err(bad_path)?;
    let file = service::video_file(&state, &p.task, &p.id).await?;
    // RFC 9110 section 14.2 lets a server ignore Range; one that is not a byte-range set at all
    // is ignored (the whole file, 200) rather than ServeFile's 416, which then means only
    // "outside the file" (found by schemathesis: `Range: null` got 416).
    if let Some(v) = req.headers().get(header::RANGE) {
        let parses = v
            .to_str()
            .is_ok_and(|s| http_range_header::parse_range_header(s).is_ok());
        if !parses {
            req.headers_mut().remove(header::RANGE);
        }
    }
    let mime: mime::Mime = file
        .content_type
        .parse()
        .map_err(|_| ApiError::internal(format!("bad content type {}", file.content_type)))?;
    let mut resp = tower_http::services::ServeFile::new_with_mime(&file.path, &mime)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::internal(format!("reading the upload: {e}")))?;
    if resp.status() == StatusCode::NOT_FOUND {
        // Deleted between the record check and the open.
        return Err(ApiError::not_found(
            "unknown_video",
            format!("no video {:?} in task {:?}", p.id, p.task),
        ));
    }
    let h = resp.headers_mut();
    // Uploads are untrusted bytes: never sniffed into something a browser would run.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(resp.map(axum::body::Body::new))
}

/// The tasks the caller's key may read (`auth_mw` always names the caller).
#[utoipa::path(
    get, path = "/tasks", tag = "tasks",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Every served task, and adapter files refused for unserved ones", body = service::TaskList),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn tasks(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<service::TaskList>, ApiError> {
    Ok(Json(service::tasks(&state, &caller)?))
}

#[utoipa::path(
    get, path = "/tasks/{task}", tag = "tasks",
    params(TaskPath),
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The task: state, generation, videos, model, last error", body = crate::registry::TaskStatus),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`unknown_task`", body = ErrorBody),
        (status = 503, description = "`not_ready`", body = ErrorBody),
    )
)]
pub async fn task(
    State(state): State<Arc<AppState>>,
    p: Result<Path<TaskPath>, PathRejection>,
) -> Result<Json<crate::registry::TaskStatus>, ApiError> {
    let Path(p) = p.map_err(bad_path)?;
    Ok(Json(service::task(&state, &p.task)?))
}

/// The search page: one self-contained file (no external resources; the server may be offline).
/// It holds no data, so it needs no key; the API calls it makes do.
#[utoipa::path(
    get, path = "/", tag = "ops",
    responses((status = 200, description = "The search page", content_type = "text/html", body = String))
)]
pub async fn page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
             style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
        )],
        Html(include_str!("page.html")),
    )
        .into_response()
}

/// This API's OpenAPI 3.1 document; holds no data, so it needs no key.
#[utoipa::path(
    get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// Tasks served.
    tasks: usize,
}

#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "The backbone is loaded", body = Ready),
        (status = 503, description = "`not_ready`: still loading (or waiting for the store); `store_unavailable`: the vector store does not answer", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Ready>, ApiError> {
    let core = state.core()?;
    // A replica that cannot reach its store cannot answer: take it out of the load balancer.
    let registry = core.registry.clone();
    tokio::task::spawn_blocking(move || registry.backend().check_available()).await??;
    Ok(Json(Ready {
        status: "ready",
        tasks: core.registry.len(),
    }))
}

#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus text format, every name `mvserve_*`", content_type = "text/plain", body = String),
        (status = 401, description = "`unauthenticated`, where metrics need a key", body = ErrorBody),
        (status = 403, description = "`forbidden`, where metrics need a key", body = ErrorBody),
    )
)]
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
                .set(s.videos.unwrap_or_default() as i64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

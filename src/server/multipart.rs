//! Request bodies that carry media, read with every bound applied while the bytes arrive:
//! `POST /index` forms, part by part into an [`IndexBatch`]; and `POST /search` examples
//! ([`example`]), a raw body or a form with one `file` part, into an [`ExampleQuery`].
//!
//! The parser (multer, through axum) buffers a part's headers until it finds their end, with no
//! limit of its own: a header that never ends would grow without bound. [`HeaderBudget`] wraps the
//! body stream and fails it when more than [`MAX_BETWEEN_PARTS`] bytes are pulled while the parser
//! is between parts (finishing a boundary and reading the next part's headers), which bounds that
//! buffer. The number of parts is bounded by [`max_parts`], each field by its own limit, each video
//! by the spool's cap, and the whole body by the router's body limit.

use super::error::ErrorKind;
use super::example::ExampleQuery;
use super::fields::{self, MAX_ID_BYTES, MAX_META_BYTES};
use super::service::SearchResult;
use super::upload::{self, IndexBatch};
use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Waits for the parser, refusing a client that sends nothing for `idle`.
async fn idle_bound<T>(
    idle: Duration,
    read: impl std::future::Future<Output = Result<T, axum::extract::multipart::MultipartError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(idle, read).await {
        Ok(r) => r.map_err(multipart_error),
        Err(_) => Err(ApiError::new(
            ErrorKind::Timeout,
            "body_timeout",
            format!("the upload sent nothing for {} s", idle.as_secs()),
        )),
    }
}

/// Most bytes the parser may pull while between parts: a boundary line, a part's headers (a few
/// hundred bytes in practice), and the read-ahead of one body chunk.
pub const MAX_BETWEEN_PARTS: usize = 1 << 20;
/// Most bytes of a refused upload read and thrown away so that the client sees the error response
/// instead of a reset connection; beyond this the connection is closed.
const DRAIN_BYTES: usize = 16 << 20;
/// How long draining a refused upload may take.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Parts one request may have: an `id`, a `meta` and a `video` per video.
pub fn max_parts(max_videos: usize) -> usize {
    3 * max_videos
}

/// Largest body a request with `max_videos` videos of at most `max_video_bytes` each can need:
/// the videos, their fields, and the multipart framing around every part.
pub fn max_body_bytes(max_videos: usize, max_video_bytes: u64) -> u64 {
    let per_part_framing = 4096u64;
    let fields = (MAX_ID_BYTES + MAX_META_BYTES) as u64;
    max_videos as u64 * (max_video_bytes + fields + 3 * per_part_framing) + per_part_framing
}

/// Shared between the body stream and the reader: whether the parser is between parts (or the
/// request is being drained), how much it pulled since, and how much it may.
struct Budget {
    counting: AtomicBool,
    pulled: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    fn start(&self, limit: usize) {
        self.pulled.store(0, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
        self.counting.store(true, Ordering::Relaxed);
    }
}

/// The request body, failing once the parser pulls too much while between parts.
struct HeaderBudget<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> Stream for HeaderBudget<S>
where
    S: Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    type Item = Result<axum::body::Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &item {
            if self.budget.counting.load(Ordering::Relaxed) {
                let pulled =
                    self.budget.pulled.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
                let limit = self.budget.limit.load(Ordering::Relaxed);
                if pulled > limit {
                    return Poll::Ready(Some(Err(axum::Error::new(format!(
                        "the multipart body went past its bound of {limit} bytes between parts"
                    )))));
                }
            }
        }
        item
    }
}

/// The form, read through a [`HeaderBudget`].
struct Form {
    multipart: Multipart,
    budget: Arc<Budget>,
    parts: usize,
    max_parts: usize,
    /// Longest wait for the next bytes of the body.
    idle: Duration,
}

impl Form {
    async fn new(req: Request, idle: Duration) -> Result<Form, ApiError> {
        let budget = Arc::new(Budget {
            counting: AtomicBool::new(false),
            pulled: AtomicUsize::new(0),
            limit: AtomicUsize::new(MAX_BETWEEN_PARTS),
        });
        let (parts, body) = req.into_parts();
        let guarded = HeaderBudget {
            inner: body.into_data_stream(),
            budget: budget.clone(),
        };
        let req = Request::from_parts(parts, Body::from_stream(guarded));
        let multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
        Ok(Form {
            multipart,
            budget,
            parts: 0,
            max_parts: usize::MAX,
            idle,
        })
    }

    /// The next part, with the header budget and the idle timeout but no part count.
    async fn next_part(&mut self) -> Result<Option<axum::extract::multipart::Field<'_>>, ApiError> {
        self.budget.start(MAX_BETWEEN_PARTS);
        let field = idle_bound(self.idle, self.multipart.next_field()).await;
        self.budget.counting.store(false, Ordering::Relaxed);
        field
    }

    async fn next_field(
        &mut self,
    ) -> Result<Option<axum::extract::multipart::Field<'_>>, ApiError> {
        let max_parts = self.max_parts;
        self.parts += 1;
        let over = self.parts > max_parts;
        let field = self.next_part().await?;
        if field.is_some() && over {
            return Err(ApiError::too_large(format!(
                "a request may have at most {max_parts} parts"
            )));
        }
        Ok(field)
    }

    /// Reads what is left of a refused request, up to [`DRAIN_BYTES`] in all (the rest of a
    /// refused part included), so the client gets the answer.
    async fn drain(&mut self) {
        self.budget.start(DRAIN_BYTES);
        let drain = async {
            while let Ok(Some(mut f)) = self.multipart.next_field().await {
                while let Ok(Some(_)) = f.chunk().await {}
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
}

/// Reads and drops up to [`DRAIN_BYTES`] of a body within [`DRAIN_TIMEOUT`].
async fn drain_raw(body: Body) {
    drain_stream(&mut body.into_data_stream()).await
}

/// Reads and drops up to [`DRAIN_BYTES`] of what is left of a body within [`DRAIN_TIMEOUT`].
async fn drain_stream(stream: &mut axum::body::BodyDataStream) {
    let drain = async {
        let mut n = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            n += chunk.len();
            if n > DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(e.body_text())
    } else {
        ApiError::bad_request("bad_multipart", e.body_text())
    }
}

/// Reads a `POST /index` form into the task's batch and commits it. Form fields: `id` and `meta`
/// apply to the next `video` part.
pub async fn index(
    state: &Arc<AppState>,
    task: Option<&str>,
    req: Request,
) -> Result<upload::IndexResult, ApiError> {
    // The slot is taken (or refused) before the body is parsed, and so is a body that says it
    // is larger than any request can be.
    let limit = max_body_bytes(
        state.config.max_videos_per_request,
        state.config.max_upload_bytes,
    );
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(format!(
            "a request body may be at most {limit} bytes"
        )));
    }
    let batch = match IndexBatch::begin(state, task) {
        Ok(b) => b,
        Err(e) => {
            // Read (a bounded part of) what the client is sending, so it gets the answer
            // rather than a reset connection.
            drain_raw(req.into_body()).await;
            return Err(e);
        }
    };
    let mut form = Form::new(req, state.config.idle_timeout).await?;
    form.max_parts = max_parts(state.config.max_videos_per_request);
    let result = read_form(batch, &mut form).await;
    if let Err(e) = &result {
        tracing::info!(code = e.code, message = %e.message, "upload refused");
        form.drain().await;
    }
    result
}

async fn read_form(
    mut batch: IndexBatch,
    form: &mut Form,
) -> Result<upload::IndexResult, ApiError> {
    let mut next_id: Option<String> = None;
    let mut next_meta: Option<Value> = None;
    let mut videos = 0usize;
    let idle = form.idle;
    while let Some(mut field) = form.next_field().await? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "id" | "meta" => {
                let limit = if name == "id" {
                    MAX_ID_BYTES
                } else {
                    MAX_META_BYTES
                };
                let mut buf = Vec::new();
                while let Some(chunk) = idle_bound(idle, field.chunk()).await? {
                    if buf.len() + chunk.len() > limit {
                        return Err(fields::field_too_long(&name, limit));
                    }
                    buf.extend_from_slice(&chunk);
                }
                let text = String::from_utf8(buf).map_err(|_| {
                    ApiError::bad_request("bad_field", format!("the {name} field is not UTF-8"))
                })?;
                if name == "id" {
                    next_id = Some(fields::parse_id(&text)?);
                } else {
                    next_meta = Some(fields::parse_meta(&text)?);
                }
            }
            "video" => {
                let file_name = fields::parse_file_name(field.file_name())?;
                let mut spool = batch.open_video().await?;
                while let Some(chunk) = idle_bound(idle, field.chunk()).await? {
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
                videos += 1;
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unexpected form field {other:?} (id, meta and video are known)"),
                ))
            }
        }
    }
    // Fields after the last video would describe nothing; ignoring them would store the video
    // without the id or meta its sender meant for it.
    // (With no video at all, `commit` answers missing_video.)
    if let Some(name) = [("id", next_id.is_some()), ("meta", next_meta.is_some())]
        .into_iter()
        .find_map(|(n, left)| (left && videos > 0).then_some(n))
    {
        return Err(ApiError::bad_request(
            "bad_multipart",
            format!("the {name} field has no video after it (id and meta describe the video that follows them)"),
        ));
    }
    batch.commit().await
}

/// The multipart framing an example form may add around its file: boundaries, one part's headers.
const EXAMPLE_FRAMING: u64 = 64 << 10;

/// Largest body a search by example can need: the example and, in a form, its framing.
pub fn max_example_body_bytes(max_example_bytes: u64) -> u64 {
    max_example_bytes + EXAMPLE_FRAMING
}

fn body_timeout(idle: Duration) -> ApiError {
    ApiError::new(
        ErrorKind::Timeout,
        "body_timeout",
        format!("the request sent nothing for {} s", idle.as_secs()),
    )
}

/// Reads a `POST /search` example and answers it. The body is the example itself (any content
/// type but a form: what it is comes from its bytes), or a `multipart/form-data` form with
/// exactly one part, `file`.
pub async fn example(
    state: &Arc<AppState>,
    task: Option<&str>,
    k: Option<usize>,
    filter: Option<&str>,
    segments: Option<usize>,
    req: Request,
) -> Result<SearchResult, ApiError> {
    // As for uploads: a body that says it is larger than any example can be, and a request that
    // cannot be served (unknown task, bad k, no free slot) are refused before the body is read.
    let limit = max_example_body_bytes(state.config.max_example_bytes);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(format!(
            "an example may be at most {} bytes (--max-example-mb)",
            state.config.max_example_bytes
        )));
    }
    let query = match ExampleQuery::begin(state, task, k, filter, segments).await {
        Ok(q) => q,
        Err(e) => {
            drain_raw(req.into_body()).await;
            return Err(e);
        }
    };
    let idle = state.config.idle_timeout;
    let is_form = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    // A refused example's remaining bytes are read (bounded) so the client hears why, unless
    // the client itself stopped sending.
    let drain = |r: &Result<SearchResult, ApiError>| {
        r.as_ref().is_err_and(|e| e.kind != ErrorKind::Timeout)
    };
    let result = if is_form {
        let mut form = Form::new(req, idle).await?;
        let r = read_example_form(query, &mut form).await;
        if drain(&r) {
            form.drain().await;
        }
        r
    } else {
        let mut stream = req.into_body().into_data_stream();
        let r = read_example_raw(query, &mut stream, idle).await;
        if drain(&r) {
            drain_stream(&mut stream).await;
        }
        r
    };
    if let Err(e) = &result {
        tracing::info!(code = e.code, message = %e.message, "search by example refused");
    }
    result
}

async fn read_example_raw(
    mut query: ExampleQuery,
    stream: &mut axum::body::BodyDataStream,
    idle: Duration,
) -> Result<SearchResult, ApiError> {
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(body_timeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    "bad_body",
                    format!("reading the body failed: {e}"),
                ))
            }
            Ok(Some(Ok(chunk))) => query.write(&chunk).await?,
        }
    }
    query.search().await
}

async fn read_example_form(
    mut query: ExampleQuery,
    form: &mut Form,
) -> Result<SearchResult, ApiError> {
    let idle = form.idle;
    let mut files = 0;
    while let Some(mut field) = form.next_part().await? {
        let name = field.name().unwrap_or("").to_string();
        if name != "file" {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!("unexpected form field {name:?} (an example form has one part, file)"),
            ));
        }
        files += 1;
        if files > 1 {
            return Err(ApiError::bad_request(
                "bad_multipart",
                "an example form has exactly one file part",
            ));
        }
        while let Some(chunk) = idle_bound(idle, field.chunk()).await? {
            query.write(&chunk).await?;
        }
    }
    if files == 0 {
        return Err(ApiError::bad_request(
            "missing_video",
            "the form has no file part: send the image or video as `file`",
        ));
    }
    query.search().await
}

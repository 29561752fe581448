//! The gRPC transport (`proto/mvserve.proto`, package `mvserve.v1`), served by tonic on its own
//! port beside HTTP, plus the standard `grpc.health.v1` service. Owns only what is gRPC's: reading
//! the API key from metadata, the streamed upload and example protocols, turning [`ApiError`]s into statuses (with the code
//! [`super::error::ErrorKind`] names), and
//! converting results to messages. The operations themselves are [`super::service`] and
//! [`super::upload`], shared with HTTP; metrics are the same per-task ones plus
//! `mvserve_grpc_requests_total` and `mvserve_grpc_request_duration_seconds` by method.

use super::auth::{Caller, Need, Scope};
use super::example::ExampleQuery;
use super::fields;
use super::service;
use super::upload::{self, IndexBatch, Spool};
use super::{ApiError, AppState};
use proto::mv_serve_server::{MvServe, MvServeServer};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

/// The generated messages, server and client.
pub mod proto {
    tonic::include_proto!("mvserve.v1");
}

/// The metadata key that carries the error code of the HTTP API's error body.
pub const ERROR_CODE_KEY: &str = "mvserve-error-code";

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut md = MetadataMap::new();
        md.insert(ERROR_CODE_KEY, MetadataValue::from_static(e.code));
        if let Some(s) = e.kind.retry_after_s() {
            md.insert("retry-after", MetadataValue::from(s));
        }
        Status::with_metadata(e.kind.grpc_code(), e.message, md)
    }
}

/// JSON as text for a `string` field; `null` is the empty string.
fn json_text(v: &Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}

fn key_of<T>(req: &Request<T>) -> Option<String> {
    let get = |name| req.metadata().get(name).and_then(|v| v.to_str().ok());
    service::api_key(get("authorization"), get("x-api-key")).map(str::to_string)
}

/// What a task-scoped call needs; without a task any valid key may go on to be told so.
fn need(task: &str, scope: Scope) -> Need<'_> {
    if task.is_empty() {
        Need::AnyKey
    } else {
        Need::Task(task, scope)
    }
}

pub struct GrpcApi {
    state: Arc<AppState>,
}

impl GrpcApi {
    pub fn new(state: Arc<AppState>) -> MvServeServer<GrpcApi> {
        MvServeServer::new(GrpcApi { state })
    }

    fn authorize(&self, key: Option<&str>, need: Need<'_>) -> Result<Caller, ApiError> {
        service::authorize(&self.state, key, need)
    }

    /// Runs one call: times and counts it by method and status, counts errors by code like HTTP
    /// does, and turns the result into a response or a status.
    async fn observe<R>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<R, ApiError>>,
    ) -> Result<Response<R>, Status> {
        let t0 = Instant::now();
        let r = call.await;
        let m = &self.state.metrics;
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(e) => {
                m.errors.with_label_values(&[e.code]).inc();
                e.kind.grpc_code()
            }
        };
        let code_label = format!("{code:?}");
        m.grpc_requests
            .with_label_values(&[method, code_label.as_str()])
            .inc();
        m.grpc_latency
            .with_label_values(&[method])
            .observe(t0.elapsed().as_secs_f64());
        tracing::info!(method, code = %code_label, ms = t0.elapsed().as_millis() as u64, "grpc call");
        r.map(Response::new).map_err(Status::from)
    }
}

/// One part of an `Index` stream.
enum Part {
    Header(proto::IndexHeader),
    Chunk(Vec<u8>),
}

fn stream_error(s: Status) -> ApiError {
    match s.code() {
        // A message over the decoder's limit.
        Code::OutOfRange | Code::ResourceExhausted => ApiError::too_large(s.message().to_string()),
        _ => ApiError::bad_request("bad_stream", s.message().to_string()),
    }
}

async fn next_part(stream: &mut Streaming<proto::IndexRequest>) -> Result<Option<Part>, ApiError> {
    use proto::index_request::Part as P;
    let msg = stream.message().await.map_err(stream_error)?;
    match msg.map(|m| m.part) {
        None => Ok(None),
        Some(Some(P::Header(h))) => Ok(Some(Part::Header(h))),
        Some(Some(P::Chunk(c))) => Ok(Some(Part::Chunk(c))),
        Some(None) => Err(ApiError::bad_request(
            "bad_stream",
            "a message holds neither a header nor a chunk",
        )),
    }
}

/// Reads a `SearchByExample` stream: a header naming the task, then the example's bytes.
async fn example_stream(
    api: &GrpcApi,
    key: Option<&str>,
    mut stream: Streaming<proto::SearchByExampleRequest>,
) -> Result<service::SearchResult, ApiError> {
    use proto::search_by_example_request::Part as P;
    let mut next = async || -> Result<Option<P>, ApiError> {
        let msg = stream.message().await.map_err(stream_error)?;
        match msg.map(|m| m.part) {
            None => Ok(None),
            Some(Some(p)) => Ok(Some(p)),
            Some(None) => Err(ApiError::bad_request(
                "bad_stream",
                "a message holds neither a header nor a chunk",
            )),
        }
    };
    let Some(P::Header(h)) = next().await? else {
        return Err(ApiError::bad_request(
            "bad_stream",
            "the first message must be a header naming the task",
        ));
    };
    api.authorize(key, need(&h.task, Scope::Read))?;
    let k = (h.k > 0).then_some(h.k as usize);
    let segments = (h.segments > 0).then_some(h.segments as usize);
    let mut query =
        ExampleQuery::begin(&api.state, Some(&h.task), k, Some(&h.filter), segments).await?;
    while let Some(part) = next().await? {
        match part {
            P::Chunk(c) => query.write(&c).await?,
            P::Header(_) => {
                return Err(ApiError::bad_request(
                    "bad_stream",
                    "a SearchByExample call has one header, its first message",
                ))
            }
        }
    }
    query.search().await
}

fn search_response(r: service::SearchResult) -> proto::SearchResponse {
    proto::SearchResponse {
        task: r.task,
        generation: r.generation,
        adapter_digest: r.adapter_digest,
        hits: r
            .hits
            .into_iter()
            .map(|h| proto::Hit {
                meta: json_text(&h.meta),
                id: h.id,
                score: h.score,
                thumbnail: h.thumbnail,
                start_s: h.moment.map(|m| m.start_s),
                end_s: h.moment.map(|m| m.end_s),
                moments: h
                    .moments
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| proto::Moment {
                        start_s: m.start_s,
                        end_s: m.end_s,
                        score: m.score,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A header's fields as the upload takes them: id (none: content hash), meta, file name.
type VideoFields = (Option<String>, Value, Option<String>);

fn header_fields(h: proto::IndexHeader) -> Result<VideoFields, ApiError> {
    let id = match h.id.as_str() {
        "" => None,
        id => Some(fields::parse_id(id)?),
    };
    let meta = match h.meta.as_str() {
        "" => Value::Null,
        m => fields::parse_meta(m)?,
    };
    Ok((id, meta, fields::parse_file_name(Some(&h.filename))?))
}

/// Reads an `Index` stream into a batch: a header starts each video, chunks are its bytes.
async fn index_stream(
    api: &GrpcApi,
    key: Option<&str>,
    mut stream: Streaming<proto::IndexRequest>,
) -> Result<upload::IndexResult, ApiError> {
    let Some(Part::Header(first)) = next_part(&mut stream).await? else {
        return Err(ApiError::bad_request(
            "bad_stream",
            "the first message must be a header naming the task",
        ));
    };
    api.authorize(key, need(&first.task, Scope::Write))?;
    let mut batch = IndexBatch::begin(&api.state, Some(&first.task))?;
    let mut current: (Spool, VideoFields) = (batch.open_video().await?, header_fields(first)?);
    while let Some(part) = next_part(&mut stream).await? {
        match part {
            Part::Chunk(c) => current.0.write(&c).await?,
            Part::Header(h) => {
                if !h.task.is_empty() && h.task != batch.task() {
                    return Err(ApiError::bad_request(
                        "task_changed",
                        "all videos of one Index call go to the task of its first header",
                    ));
                }
                let fields = header_fields(h)?;
                let (spool, (id, meta, name)) = current;
                batch.push(spool, id, meta, name).await?;
                current = (batch.open_video().await?, fields);
            }
        }
    }
    let (spool, (id, meta, name)) = current;
    batch.push(spool, id, meta, name).await?;
    batch.commit().await
}

#[tonic::async_trait]
impl MvServe for GrpcApi {
    async fn search(
        &self,
        req: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        self.observe("Search", async {
            let key = key_of(&req);
            let m = req.get_ref();
            self.authorize(key.as_deref(), need(&m.task, Scope::Read))?;
            let k = (m.k > 0).then_some(m.k as usize);
            let filter = Some(m.filter.as_str());
            let segments = (m.segments > 0).then_some(m.segments as usize);
            let r =
                service::search(&self.state, Some(&m.task), &m.query, k, filter, segments).await?;
            Ok(search_response(r))
        })
        .await
    }

    async fn search_by_example(
        &self,
        req: Request<Streaming<proto::SearchByExampleRequest>>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        self.observe("SearchByExample", async {
            let key = key_of(&req);
            let r = example_stream(self, key.as_deref(), req.into_inner()).await?;
            Ok(search_response(r))
        })
        .await
    }

    async fn index(
        &self,
        req: Request<Streaming<proto::IndexRequest>>,
    ) -> Result<Response<proto::IndexResponse>, Status> {
        self.observe("Index", async {
            let key = key_of(&req);
            let r = index_stream(self, key.as_deref(), req.into_inner()).await?;
            Ok(proto::IndexResponse {
                task: r.task,
                generation: r.generation,
                indexed: r
                    .indexed
                    .into_iter()
                    .map(|v| proto::IndexedVideo {
                        id: v.id,
                        bytes: v.bytes,
                        frames: v.frames as u32,
                        media: json_text(&v.media),
                        thumbnail: v.thumbnail,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn get_video(
        &self,
        req: Request<proto::VideoRef>,
    ) -> Result<Response<proto::Video>, Status> {
        self.observe("GetVideo", async {
            let key = key_of(&req);
            let m = req.get_ref();
            self.authorize(key.as_deref(), need(&m.task, Scope::Read))?;
            let v = service::get_video(&self.state, &m.task, &m.id).await?;
            Ok(proto::Video {
                id: v.id,
                task: v.task,
                generation: v.generation,
                adapter_digest: v.adapter_digest,
                added_ms: v.added_ms,
                meta: json_text(&v.meta),
                file_name: v.file_name.as_str().unwrap_or_default().to_string(),
                bytes: v.bytes.as_u64().unwrap_or_default(),
                frames: v.frames.as_u64().unwrap_or_default() as u32,
                media: json_text(&v.media),
                thumbnail: v.thumbnail,
            })
        })
        .await
    }

    async fn delete_video(
        &self,
        req: Request<proto::VideoRef>,
    ) -> Result<Response<proto::DeleteVideoResponse>, Status> {
        self.observe("DeleteVideo", async {
            let key = key_of(&req);
            let m = req.get_ref();
            self.authorize(key.as_deref(), need(&m.task, Scope::Write))?;
            let d = service::delete_video(&self.state, &m.task, &m.id).await?;
            Ok(proto::DeleteVideoResponse {
                task: d.task,
                deleted: d.deleted,
            })
        })
        .await
    }

    async fn list_tasks(
        &self,
        req: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        self.observe("ListTasks", async {
            let caller = self.authorize(key_of(&req).as_deref(), Need::AnyKey)?;
            let l = service::tasks(&self.state, &caller)?;
            Ok(proto::ListTasksResponse {
                tasks: l.tasks.into_iter().map(task_status).collect(),
                rejected: l.rejected.into_iter().collect(),
            })
        })
        .await
    }

    async fn get_task(
        &self,
        req: Request<proto::GetTaskRequest>,
    ) -> Result<Response<proto::TaskStatus>, Status> {
        self.observe("GetTask", async {
            let key = key_of(&req);
            let m = req.get_ref();
            self.authorize(key.as_deref(), need(&m.task, Scope::Read))?;
            Ok(task_status(service::task(&self.state, &m.task)?))
        })
        .await
    }
}

fn task_status(s: crate::registry::TaskStatus) -> proto::TaskStatus {
    let m = s.model;
    proto::TaskStatus {
        task: s.task,
        state: s.state.to_string(),
        generation: s.generation,
        pending_generation: s.pending_generation,
        videos: s.videos.unwrap_or_default() as u64,
        vectors: s.vectors.unwrap_or_default() as u64,
        model: Some(proto::ModelInfo {
            kind: m.kind,
            digest: m.digest,
            parameters: m.parameters as u64,
            file_bytes: m.file_bytes,
            file: m.file,
            loaded_at: m.loaded_at,
            load_ms: m.load_ms,
            frames: m.frames as u32,
            text_len: m.text_len as u32,
        }),
        last_error: s.last_error,
    }
}

/// The gRPC server on `listener` until `shutdown` resolves (then in-flight calls finish). The
/// returned reporter says `mvserve.v1.MvServe` is NOT_SERVING until [`set_ready`] is called.
pub async fn start(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    tonic_health::server::HealthReporter,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<MvServeServer<GrpcApi>>().await;
    let timeout = state.config.request_timeout;
    let router = tonic::transport::Server::builder()
        .timeout(timeout)
        .add_service(health_service)
        .add_service(GrpcApi::new(state));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let handle = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    });
    (health, handle)
}

/// Marks the API as serving in the health service (the backbone is loaded).
pub async fn set_ready(health: &tonic_health::server::HealthReporter) {
    health.set_serving::<MvServeServer<GrpcApi>>().await;
}

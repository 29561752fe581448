//! The OpenAPI 3.1 document served at `GET /openapi.json`. utoipa builds it from the handlers'
//! `#[utoipa::path]` attributes (in [`super::api`]) and the response types' `ToSchema` derives,
//! so the document is compiled from the same code that answers; `tests/it/openapi.rs` checks that
//! it covers every route of [`super::routes`], and `.ci/fuzz-api` fuzzes the real binary against
//! it with schemathesis.
//!
//! What the attributes cannot say is here: the error body, the multipart forms of `POST /index`
//! and `POST /search`, the raw example body, and the two ways to send an API key.

use super::{api, service, upload};
use crate::registry::{ModelInfo, TaskStatus};
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error response: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unknown_task`, `too_large`, `overloaded`, ...
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
}

/// The multipart form of `POST /index`. Parts may repeat: each `video` takes the `id` and `meta`
/// sent before it (at most 16 videos per request).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler reads the parts as they stream in
pub struct IndexForm {
    /// The next video's id (1-256 bytes); without it the id is the first 16 hex digits of the
    /// file's blake3.
    #[schema(min_length = 1)]
    id: Option<String>,
    /// JSON stored with the next video and returned with its hits (at most 64 KiB).
    meta: Option<String>,
    /// A video file: MP4/MOV/AVI (H.264), GIF, or anything ffmpeg decodes when it is installed.
    #[schema(value_type = String, format = Binary)]
    video: Vec<u8>,
}

/// The form of `POST /search` (search by example): one part.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler streams the part to a temporary file
pub struct ExampleForm {
    /// The example: a JPEG or PNG image, or a video as `POST /index` takes it.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The raw body of `POST /search`: the example's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // a schema only
pub struct ExampleBody(Vec<u8>);

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mvserve",
        description = "Text-to-video retrieval: one frozen CLIP backbone shared by many tasks, each \
            an MV-Adapter plus its own vector index. Keys are needed only when the server runs \
            with `--auth-file` (then 401 without a valid key, 403 without the right); errors are \
            `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        api::page,
        api::openapi,
        api::index,
        api::search,
        api::search_by_example,
        api::get_video,
        api::delete_video,
        api::thumbnail,
        api::video,
        api::tasks,
        api::task,
        api::healthz,
        api::readyz,
        api::metrics,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        IndexForm,
        ExampleForm,
        ExampleBody,
        service::SearchResult,
        service::SearchHit,
        service::Moment,
        service::Span,
        service::VideoInfo,
        service::Deleted,
        service::TaskList,
        upload::IndexResult,
        upload::IndexedVideo,
        TaskStatus,
        ModelInfo,
        api::Health,
        api::Ready,
    )),
    modifiers(&Security),
    tags(
        (name = "search", description = "Index, search, fetch and delete videos"),
        (name = "tasks", description = "The tasks served and their models"),
        (name = "ops", description = "Probes, metrics, this document and the search page"),
    )
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

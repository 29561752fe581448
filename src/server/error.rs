//! `ApiError`: every failure the HTTP layer returns, as `{"error": {"code", "message"}}` with its
//! status (and `Retry-After` when overloaded). Owns the mapping from the core's typed errors to
//! statuses; nothing else in the server decides a status.

use crate::encode::EncodeError;
use crate::registry::RegistryError;
use crate::server::ingest::DecodeError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

/// Put on every error response so the metrics middleware can count errors by code.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn unknown_task(task: &str) -> Self {
        Self::not_found("unknown_task", format!("no task named {task:?}"))
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub fn overloaded(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }
    pub fn not_ready() -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the backbone is still loading",
            )
        }
    }
    /// A failure inside the server. The detail (which may name files of the server) goes to the
    /// log, inside the request's span and so with its request id; the client gets a generic
    /// message.
    pub fn internal(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; the details are in the server log (over HTTP, under this response's x-request-id)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

impl From<EncodeError> for ApiError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Overloaded(_) => ApiError::overloaded(e.to_string(), 1),
            EncodeError::Stopped => ApiError::overloaded("the server is shutting down", 5),
            EncodeError::BadInput(m) => ApiError::bad_request("bad_input", m),
            EncodeError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        if let DecodeError::Internal(_) = e {
            return ApiError::internal(e.to_string());
        }
        let status = match e {
            DecodeError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DecodeError::Corrupt(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DecodeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DecodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Seconds a client is told to wait when the vector store is unreachable.
const STORE_RETRY_AFTER_S: u64 = 2;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmptyId => ApiError::bad_request("bad_id", e.to_string()),
            StoreError::Unstorable(_) => ApiError::bad_request("unstorable", e.to_string()),
            // Nothing acknowledged was changed: the client retries.
            StoreError::Unavailable(_) | StoreError::MissingGeneration(_) => {
                tracing::warn!(error = %e, "vector store unavailable");
                ApiError {
                    retry_after_s: Some(STORE_RETRY_AFTER_S),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the vector store is unavailable; retry shortly",
                    )
                }
            }
            StoreError::DigestMismatch { .. } => {
                tracing::error!(error = %e, "generation and model disagree");
                ApiError {
                    retry_after_s: Some(STORE_RETRY_AFTER_S),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "adapter_mismatch",
                        "this replica's adapter does not match the vectors being served; it is catching up",
                    )
                }
            }
            StoreError::Backend(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "store_error",
                format!("the vector store refused the request: {m}"),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store { source, .. } => source.into(),
            RegistryError::Adapter { .. } => {
                tracing::error!(error = %e, "cannot answer from the served generation");
                ApiError {
                    retry_after_s: Some(STORE_RETRY_AFTER_S),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "adapter_mismatch",
                        "this replica cannot load the adapter of the generation being served",
                    )
                }
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("worker task failed: {e}"))
    }
}

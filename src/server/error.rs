//! `ApiError`: every failure the server returns, over HTTP as `{"error": {"code", "message"}}` and
//! over gRPC as a status with `mvserve-error-code` metadata. Owns the [`ErrorKind`]s, the one
//! table from a kind to an HTTP status and the one table from a kind to a gRPC code, and the
//! mapping from the core's typed errors to kinds; nothing else in the server decides a status.
//!
//! A kind is what a client may do about the failure (fix the request, authenticate, retry later);
//! the `code` string is the precise reason, stable for clients to branch on.

use crate::encode::EncodeError;
use crate::registry::RegistryError;
use crate::server::ingest::DecodeError;
use crate::store::{FilterError, StoreError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A full encoder queue drains within a batch or two.
const RETRY_ENCODER_S: u64 = 1;
/// A stopping server is replaced by its successor (a restart, a rolling update) in about this long.
const RETRY_SHUTDOWN_S: u64 = 5;
/// The backbone loads in seconds.
const RETRY_NOT_READY_S: u64 = 1;
/// A remote vector store that went away (a restart, a network blip) is usually back in seconds.
const RETRY_STORE_S: u64 = 2;

/// The class of a failure, independent of the transport that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names values out of range.
    BadRequest,
    /// No key, or one the server does not know.
    Unauthenticated,
    /// The key may not do this.
    Forbidden,
    /// This replica does not take the request (e.g. writes to a query-only replica).
    WrongRole,
    NotFound,
    /// The client sent nothing for too long.
    Timeout,
    /// An upload, a field or a message over its limit.
    TooLarge,
    /// A file in a container or codec the server does not read.
    UnsupportedMedia,
    /// A file in a known format that does not decode.
    Unprocessable,
    /// Queues or admission slots are full; retry after the given seconds.
    Overloaded {
        retry_after_s: u64,
    },
    /// The server cannot answer yet (still loading) or at all for now; retry after the given
    /// seconds.
    Unavailable {
        retry_after_s: u64,
    },
    /// The vector store (a remote backend) answered and refused the request.
    Upstream,
    /// A failure inside the server; the detail is in its log.
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden | ErrorKind::WrongRole => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMedia => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded { .. } | ErrorKind::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code gRPC clients branch on; the precise reason travels beside it as metadata.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::BadRequest | ErrorKind::UnsupportedMedia | ErrorKind::Unprocessable => {
                Code::InvalidArgument
            }
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Forbidden => Code::PermissionDenied,
            ErrorKind::WrongRole => Code::FailedPrecondition,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            // gRPC itself answers RESOURCE_EXHAUSTED for a message over its size limit, and an
            // overloaded server is a resource exhausted for now, not a server that is down.
            ErrorKind::TooLarge | ErrorKind::Overloaded { .. } => Code::ResourceExhausted,
            ErrorKind::Unavailable { .. } => Code::Unavailable,
            ErrorKind::Upstream | ErrorKind::Internal => Code::Internal,
        }
    }

    /// Seconds after which retrying may help (`Retry-After`), for the kinds that have them.
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            ErrorKind::Overloaded { retry_after_s } | ErrorKind::Unavailable { retry_after_s } => {
                Some(retry_after_s)
            }
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

/// Put on every error response so the metrics middleware can count errors by code.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn unknown_task(task: &str) -> Self {
        Self::not_found("unknown_task", format!("no task named {task:?}"))
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, "too_large", message)
    }
    pub fn overloaded(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self::new(
            ErrorKind::Overloaded { retry_after_s },
            "overloaded",
            message,
        )
    }
    pub fn not_ready() -> Self {
        Self::new(
            ErrorKind::Unavailable {
                retry_after_s: RETRY_NOT_READY_S,
            },
            "not_ready",
            "the backbone is still loading",
        )
    }
    /// A refused write on a replica that does not take writes.
    pub fn wrong_role(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::WrongRole, "wrong_role", message)
    }
    /// A failure inside the server. The detail (which may name files of the server) goes to the
    /// log, inside the request's span and so with its request id; the client gets a generic
    /// message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal",
            "internal server error; the details are in the server log (over HTTP, under this response's x-request-id)",
        )
    }
    pub fn status(&self) -> StatusCode {
        self.kind.http_status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status(), Json(body)).into_response();
        if let Some(s) = self.kind.retry_after_s() {
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
            EncodeError::Overloaded(_) => ApiError::overloaded(e.to_string(), RETRY_ENCODER_S),
            EncodeError::Stopped => {
                ApiError::overloaded("the server is shutting down", RETRY_SHUTDOWN_S)
            }
            EncodeError::BadInput(m) => ApiError::bad_request("bad_input", m),
            EncodeError::Untokenizable(source) => {
                ApiError::bad_request("bad_input", source.to_string())
            }
            e @ (EncodeError::Failed(_)
            | EncodeError::AdapterLoad(_)
            | EncodeError::Hook(_)
            | EncodeError::Panicked(_)) => ApiError::internal(error_chain(&e)),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        let kind = match e {
            DecodeError::Unsupported(_) => ErrorKind::UnsupportedMedia,
            DecodeError::Corrupt(_) => ErrorKind::Unprocessable,
            DecodeError::TooLarge(_) => ErrorKind::TooLarge,
            DecodeError::Internal(_) => return ApiError::internal(e),
        };
        ApiError::new(kind, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EmptyId => ApiError::bad_request("bad_id", e.to_string()),
            StoreError::Unstorable(_) => ApiError::bad_request("unstorable", e.to_string()),
            // Nothing acknowledged was changed: the client retries.
            StoreError::Unavailable(_) | StoreError::MissingGeneration(_) => {
                tracing::warn!(error = %e, "vector store unavailable");
                ApiError::new(
                    ErrorKind::Unavailable {
                        retry_after_s: RETRY_STORE_S,
                    },
                    "store_unavailable",
                    "the vector store is unavailable; retry shortly",
                )
            }
            StoreError::DigestMismatch { .. } => {
                tracing::error!(error = %e, "generation and model disagree");
                ApiError::new(
                    ErrorKind::Unavailable {
                        retry_after_s: RETRY_STORE_S,
                    },
                    "adapter_mismatch",
                    "this replica's adapter does not match the vectors being served; it is catching up",
                )
            }
            StoreError::Backend(m) => ApiError::new(
                ErrorKind::Upstream,
                "store_error",
                format!("the vector store refused the request: {m}"),
            ),
            _ => ApiError::internal(e),
        }
    }
}

/// An invalid search filter: the message names the problem (README "Filters").
impl From<FilterError> for ApiError {
    fn from(e: FilterError) -> Self {
        ApiError::bad_request("bad_filter", e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store { source, .. } => source.into(),
            RegistryError::Adapter { .. } => {
                tracing::error!(error = %e, "cannot answer from the served generation");
                ApiError::new(
                    ErrorKind::Unavailable {
                        retry_after_s: RETRY_STORE_S,
                    },
                    "adapter_mismatch",
                    "this replica cannot load the adapter of the generation being served",
                )
            }
            e => ApiError::internal(e),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("worker task failed: {e}"))
    }
}

/// `e` and its sources, for the log. Display texts that already end with their source's text
/// (most here do, for clients that see only the top one) are not repeated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// Every kind's two mappings, in one place: a change to either is a change to the API.
    #[test]
    fn kinds_map_to_statuses_and_codes() {
        let table = [
            (ErrorKind::BadRequest, 400, Code::InvalidArgument),
            (ErrorKind::Unauthenticated, 401, Code::Unauthenticated),
            (ErrorKind::Forbidden, 403, Code::PermissionDenied),
            (ErrorKind::WrongRole, 403, Code::FailedPrecondition),
            (ErrorKind::NotFound, 404, Code::NotFound),
            (ErrorKind::Timeout, 408, Code::DeadlineExceeded),
            (ErrorKind::TooLarge, 413, Code::ResourceExhausted),
            (ErrorKind::UnsupportedMedia, 415, Code::InvalidArgument),
            (ErrorKind::Unprocessable, 422, Code::InvalidArgument),
            (
                ErrorKind::Overloaded { retry_after_s: 2 },
                503,
                Code::ResourceExhausted,
            ),
            (
                ErrorKind::Unavailable { retry_after_s: 7 },
                503,
                Code::Unavailable,
            ),
            (ErrorKind::Internal, 500, Code::Internal),
        ];
        for (kind, status, code) in table {
            assert_eq!(kind.http_status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
        }
    }

    #[test]
    fn retry_after_rides_on_the_kind() {
        let e = ApiError::new(
            ErrorKind::Unavailable { retry_after_s: 7 },
            "unavailable",
            "try later",
        );
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        let resp = ApiError::wrong_role("this replica does not take writes").into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }
}

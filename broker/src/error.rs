//! Errors, as types: what an API call answers when it refuses ([`ApiError`]), what the store
//! can fail with ([`StoreError`]), and what stops the broker from starting ([`BrokerError`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_common::api::{ErrorBody, ErrorDetail};

/// A refused or failed API call. It always renders as `{"error":{"code","message"}}`, and the
/// message says what to fix. Refusals are decided before anything is written, so a refused
/// call never changes the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400: the request is wrong whatever the state of the broker (bad JSON, bad name, bad range).
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 401: a mutating call without the right bearer token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404: the resource named in the path does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    /// 409: the request is well formed but the current state refuses it.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 412: `If-Match` named another epoch than the current one.
    pub fn epoch_mismatch(expected: u64, current: u64) -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "epoch_mismatch",
            format!(
                "If-Match names epoch {expected} but the current epoch is {current}; \
                 re-read the state and retry with If-Match: \"{current}\""
            ),
        )
    }

    /// 413: the body is larger than the broker accepts.
    /// 503: too many changes in progress; nothing was done, the call may be retried.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 503: the metadata store (etcd) cannot be reached; the message says whether anything
    /// may have been written and what to do.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", message)
    }

    /// 500: the broker could not do its part (storage); the message says what failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, code = self.code, message = %self.message, "request refused");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable { .. } => {
                ApiError::unavailable(format!("{e}; nothing was changed, retry once it is back"))
            }
            e => ApiError::internal(format!("metadata store: {e}")),
        }
    }
}

/// The store failed, or holds something this broker cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("could not encode {key:?}: {reason}")]
    Encode { key: String, reason: String },
    /// etcd did not answer (down, no quorum, too slow): the broker answers 503.
    #[error("the metadata store ({store}) is unreachable: {reason}")]
    Unavailable { store: String, reason: String },
    /// etcd answered with an error that waiting will not cure.
    #[error("the metadata store ({store}) refused: {reason}")]
    Etcd { store: String, reason: String },
}

/// Why the broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("opening the metadata store {dir}: {source}")]
    Open { dir: String, source: StoreError },
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("flushing the metadata store: {0}")]
    Flush(StoreError),
    #[error("setting up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

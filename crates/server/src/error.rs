//! The one place where failures become HTTP responses.
//!
//! Every handler returns [`ApiError`]; its [`IntoResponse`] picks the status, a stable
//! machine-readable `code` and the JSON body `{ "error": { "code", "message" } }`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use floatzip_codec::Error as CodecError;

/// A request that failed, with enough detail to answer it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path segment (org, name, file) that is not an acceptable name.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A malformed request (bad query, bad header value, bad digest syntax).
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// No model file under this name.
    #[error("no model file {0}")]
    NotFound(String),
    /// The file has no tensor of this name.
    #[error("no tensor named {0:?} in this file")]
    UnknownTensor(String),
    /// A token is needed and none was sent.
    #[error("this request needs a bearer token ({0} access)")]
    Unauthorized(&'static str),
    /// The token sent does not grant this access.
    #[error("{0}")]
    Forbidden(String),
    /// The body (or what its header declares) exceeds the configured size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The safetensors header exceeds the configured cap.
    #[error("{0}")]
    HeaderTooLarge(String),
    /// The upload is not a valid safetensors file although it starts like one.
    #[error("{0}")]
    InvalidSafetensors(String),
    /// The upload ended before the data its header declares.
    #[error("{0}")]
    Truncated(String),
    /// The declared digest does not match the bytes received.
    #[error("declared SHA-256 {declared} does not match the upload's {actual}")]
    DigestMismatch {
        /// What the client declared.
        declared: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The client's connection failed while sending the body.
    #[error("the upload was cut off: {0}")]
    BodyAborted(String),
    /// A Range that does not overlap the representation.
    #[error("range not satisfiable: the representation has {size} bytes")]
    RangeNotSatisfiable {
        /// Representation length, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// The upload's path cannot coexist with a file already stored: one would be a folder
    /// of the other (`a` and `a/b`).
    #[error("{0}")]
    Conflict(String),
    /// An `If-Match` precondition failed.
    #[error("precondition failed: the current ETag is {0}")]
    PreconditionFailed(String),
    /// A method this route does not have.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Stored data that does not decode or does not match its manifest.
    #[error("stored data is corrupt: {0}")]
    CorruptStorage(String),
    /// The storage backend failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is shutting down and takes no new uploads.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ApiError {
    /// Status and stable error code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            UnknownTensor(_) => (StatusCode::NOT_FOUND, "unknown_tensor"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            HeaderTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "header_too_large"),
            InvalidSafetensors(_) => (StatusCode::BAD_REQUEST, "invalid_safetensors"),
            Truncated(_) => (StatusCode::BAD_REQUEST, "truncated"),
            DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "digest_mismatch"),
            BodyAborted(_) => (StatusCode::BAD_REQUEST, "upload_aborted"),
            RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            Conflict(_) => (StatusCode::CONFLICT, "path_conflict"),
            PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            CorruptStorage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_storage"),
            Storage(_) => (StatusCode::BAD_GATEWAY, "storage_error"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        }
    }

    /// A codec error met while decoding *stored* data: whatever it says, it is the
    /// server's data that is wrong, not the client's request.
    pub fn stored(e: CodecError) -> ApiError {
        match e {
            CodecError::Io(e) => ApiError::Storage(e.to_string()),
            other => ApiError::CorruptStorage(other.to_string()),
        }
    }
}

/// Codec errors met while encoding an *upload*: problems with the client's bytes are 4xx.
impl From<CodecError> for ApiError {
    fn from(e: CodecError) -> ApiError {
        match e {
            CodecError::InvalidSafetensors(m) => ApiError::InvalidSafetensors(m),
            CodecError::Truncated(m) => ApiError::Truncated(m),
            CodecError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            CodecError::UnknownTensor(n) => ApiError::UnknownTensor(n),
            CodecError::RangeOutOfBounds { size, .. } => ApiError::RangeNotSatisfiable { size },
            CodecError::Io(e) => ApiError::Internal(format!("staging the upload: {e}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<object_store::Error> for ApiError {
    fn from(e: object_store::Error) -> ApiError {
        ApiError::Storage(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        } else {
            tracing::debug!(code, error = %self, "request refused");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        match &self {
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

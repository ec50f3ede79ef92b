//! The relay's one error type and its one mapping to HTTP: a status and a
//! JSON body (`release::dto::ErrorBody`): a stable code, a message, and where
//! relevant the offending field or the validation findings.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use release::dto::ErrorBody;
use release::rules::Finding;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too many connections: {0}")]
    TooManyConnections(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { message: String, findings: Option<Vec<Finding>> },
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

impl RelayError {
    pub fn conflict(message: impl Into<String>) -> RelayError {
        RelayError::Conflict { message: message.into(), findings: None }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> RelayError {
        RelayError::Invalid { field: Some(field.to_owned()), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            RelayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RelayError::Forbidden(_) => StatusCode::FORBIDDEN,
            RelayError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            RelayError::NotFound(_) => StatusCode::NOT_FOUND,
            RelayError::Conflict { .. } => StatusCode::CONFLICT,
            RelayError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RelayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RelayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RelayError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            RelayError::Storage(_) | RelayError::Io(_) | RelayError::Config(_) | RelayError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RelayError::Unauthorized(_) => "unauthorized",
            RelayError::Forbidden(_) => "forbidden",
            RelayError::TooManyConnections(_) => "too_many_connections",
            RelayError::NotFound(_) => "not_found",
            RelayError::Conflict { .. } => "conflict",
            RelayError::Invalid { .. } => "invalid",
            RelayError::BadRequest(_) => "bad_request",
            RelayError::PayloadTooLarge(_) => "payload_too_large",
            RelayError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            RelayError::Storage(_) | RelayError::Io(_) | RelayError::Config(_) | RelayError::Internal(_) => "internal",
        }
    }

    /// The body clients see. Internal details stay in the log.
    pub fn body(&self) -> ErrorBody {
        let message = match self.status() {
            StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_owned(),
            _ => self.to_string(),
        };
        let (field, findings) = match self {
            RelayError::Invalid { field, .. } => (field.clone(), None),
            RelayError::Conflict { findings, .. } => (None, findings.clone()),
            _ => (None, None),
        };
        ErrorBody { error: self.code().to_owned(), message, field, findings }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let RelayError::RangeNotSatisfiable { size } = self
            && let Ok(v) = format!("bytes */{size}").parse()
        {
            response.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
        }
        response
    }
}

impl From<crate::release::repository::RepoError> for RelayError {
    fn from(e: crate::release::repository::RepoError) -> Self {
        use crate::release::repository::RepoError;
        match e {
            RepoError::NotFound(what) => RelayError::NotFound(format!("no release or artifact `{what}`")),
            RepoError::Conflict(message) => RelayError::conflict(message),
            other => RelayError::Internal(other.to_string()),
        }
    }
}

//! The relay's error type and its one mapping to HTTP: a status and a JSON
//! body `{"error": code, "message": text}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("too many connections: {0}")]
    TooManyConnections(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl RelayError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RelayError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            RelayError::TooManyConnections(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            RelayError::Storage(_) | RelayError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            RelayError::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "config"),
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match status {
            StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_owned(),
            _ => self.to_string(),
        };
        (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
    }
}

//! Public release routes (D-007): no admin token. `latest` and `manifest`
//! answer signed manifests; artifacts are served with Range / 206 / 416, a
//! strong ETag (the SHA-256) and If-Range, so clients resume safely.

use super::range::{self, RangeReply};
use super::service::Download;
use crate::error::RelayError;
use crate::metrics::{Metrics, StreamGuard};
use crate::server::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use release::dto::{ErrorBody, LatestQuery};
use release::manifest::SignedManifest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Read size for streaming files: large enough to keep the socket busy.
const STREAM_CHUNK: usize = 256 * 1024;

#[utoipa::path(get, path = "/v1/datasets/{dataset}/channels/{channel}/latest", tag = "public",
    params(("dataset" = String, Path), ("channel" = String, Path), LatestQuery),
    responses((status = 200, body = SignedManifest, description = "the newest release offered to this device"),
        (status = 404, body = ErrorBody, description = "no release is offered"), (status = 422, body = ErrorBody)))]
pub async fn latest(
    State(app): State<AppState>,
    Path((dataset, channel)): Path<(String, String)>,
    Query(q): Query<LatestQuery>,
) -> Result<Json<SignedManifest>, RelayError> {
    let signed = app.releases.latest(&dataset, &channel, q.app_version.as_deref(), q.install_id.as_deref())?;
    Metrics::inc(&app.hub.metrics.manifests_served);
    Ok(Json(signed))
}

#[utoipa::path(get, path = "/v1/releases/{id}/manifest", tag = "public",
    params(("id" = String, Path), LatestQuery),
    responses((status = 200, body = SignedManifest), (status = 404, body = ErrorBody)))]
pub async fn manifest(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LatestQuery>,
) -> Result<Json<SignedManifest>, RelayError> {
    let signed = app.releases.manifest(&id, q.app_version.as_deref(), q.install_id.as_deref())?;
    Metrics::inc(&app.hub.metrics.manifests_served);
    Ok(Json(signed))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[utoipa::path(get, path = "/v1/releases/{id}/artifacts/{name}", tag = "public",
    params(("id" = String, Path), ("name" = String, Path),
        ("Range" = Option<String>, Header, description = "one byte range, e.g. bytes=1048576-"),
        ("If-Range" = Option<String>, Header, description = "the ETag the partial file was fetched with")),
    responses((status = 200, description = "the whole file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range"),
        (status = 302, description = "external artifact: its URL"),
        (status = 304, description = "If-None-Match matched"),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub async fn artifact(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, RelayError> {
    let (path, artifact) = match app.releases.download(&id, &name)? {
        Download::Redirect { url } => {
            let location = HeaderValue::from_str(&url).map_err(|e| RelayError::Internal(e.to_string()))?;
            return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
        }
        Download::File { path, artifact } => (path, artifact),
    };
    let etag = format!("\"{}\"", artifact.sha256);
    if header_str(&headers, header::IF_NONE_MATCH).is_some_and(|v| v.split(',').any(|t| t.trim() == etag)) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut file =
        tokio::fs::File::open(&path).await.map_err(|e| RelayError::Internal(format!("artifact file: {e}")))?;
    let size = file.metadata().await?.len();
    let reply = range::decide(header_str(&headers, header::RANGE), header_str(&headers, header::IF_RANGE), &etag, size);
    let (status, start, len) = match reply {
        RangeReply::Full => (StatusCode::OK, 0, size),
        RangeReply::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeReply::Unsatisfiable => return Err(RelayError::RangeNotSatisfiable { size }),
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let metrics = &app.hub.metrics;
    Metrics::inc(&metrics.artifact_requests);
    Metrics::add(&metrics.artifact_bytes, len);
    if status == StatusCode::PARTIAL_CONTENT {
        Metrics::inc(&metrics.range_requests);
    }
    // The guard lives as long as the body stream: the open-streams gauge,
    // and what a shutdown reports as cut.
    let guard = StreamGuard::new(app.hub.clone());
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), STREAM_CHUNK).map(move |chunk| {
        let _ = &guard;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

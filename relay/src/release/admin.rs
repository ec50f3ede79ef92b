//! Admin routes (D-004, D-005, D-006, D-009, D-010): thin handlers over
//! [`ReleaseService`](super::service::ReleaseService). Every admin call,
//! allowed or refused, reads included, lands in the append-only audit log.

use crate::error::RelayError;
use crate::server::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use release::dto::{
    AttachExternal, AuditEntry, AuditLog, AuditQuery, CreateRelease, DatasetConfig, DeprecateRequest, ErrorBody,
    ListQuery, PublishRequest, ReleaseList, RolloutRequest, UpdateRelease, UploadCheck,
};
use release::model::Release;
use release::rules::ValidationReport;
use std::future::Future;
use std::net::SocketAddr;

/// A named admin token from the configuration.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    pub token: String,
}

/// Compares two secrets in time that depends on neither their contents nor
/// their lengths: both are hashed to 32 bytes first, then compared whole.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// What an admin handler needs to know about its caller.
pub struct Caller {
    pub headers: HeaderMap,
    /// The peer address, for aggregating refusals per source.
    pub source: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(Caller { headers: parts.headers.clone(), source })
    }
}

/// The admin's name, or 401 (no token) / 403 (unknown token).
fn authorize(app: &AppState, headers: &HeaderMap) -> Result<String, RelayError> {
    let presented = crate::auth::bearer_token(headers)
        .ok_or_else(|| RelayError::Unauthorized("an admin token is required (Authorization: Bearer ...)".into()))?;
    // Every configured token is compared, so the time taken does not say
    // which one (or whether any) matched early.
    let mut found = None;
    for t in &app.config.admin_tokens {
        if constant_time_eq(t.token.as_bytes(), presented.as_bytes()) && found.is_none() {
            found = Some(t.name.clone());
        }
    }
    found.ok_or_else(|| RelayError::Forbidden("the admin token is not valid".into()))
}

fn record(app: &AppState, actor: &str, action: &str, target: &str, outcome: Result<String, &RelayError>) {
    let (outcome, detail) = match outcome {
        Ok(detail) => ("ok", detail),
        Err(e) if e.status().is_server_error() => ("error", e.to_string()),
        Err(e) => ("refused", e.to_string()),
    };
    let entry = AuditEntry {
        id: 0,
        at: super::service::now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail,
    };
    if let Err(e) = app.releases.repo.audit(&entry) {
        tracing::error!(error = %e, action, target, "could not write the audit log");
    }
}

/// Authorizes, runs `work`, and audits the outcome either way.
///
/// The work and its audit entry run on a blocking thread (the registry is
/// SQLite with fsyncs), never on the async workers that carry sync traffic.
/// A request without a valid token costs no write at all: it is counted per
/// source and written as one entry per source and interval (see
/// [`super::refusals`]), so an unauthenticated flood cannot fill the disk.
async fn audited<T, F, Fut>(
    app: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    work: F,
) -> Result<T, RelayError>
where
    T: Send + 'static,
    F: FnOnce(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, RelayError>> + Send + 'static,
{
    audited_with(app, caller, action, target, work, |_| (None, String::new())).await
}

/// [`audited`], where the outcome names the entry's target (a created
/// release's id) and detail (the rollout set).
async fn audited_with<T, F, Fut, D>(
    app: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    work: F,
    describe: D,
) -> Result<T, RelayError>
where
    T: Send + 'static,
    F: FnOnce(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, RelayError>> + Send + 'static,
    D: FnOnce(&T) -> (Option<String>, String) + Send + 'static,
{
    let actor = match authorize(app, &caller.headers) {
        Ok(a) => a,
        Err(e) => {
            crate::metrics::Metrics::inc(&app.hub.metrics.admin_refusals);
            app.refusals.note(&caller.source, e.status().as_u16(), action);
            return Err(e);
        }
    };
    let (app, action, target) = (app.clone(), action.to_owned(), target.to_owned());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let out = runtime.block_on(work(app.clone()));
        match &out {
            Ok(value) => {
                let (target_override, detail) = describe(value);
                record(&app, &actor, &action, target_override.as_deref().unwrap_or(&target), Ok(detail));
            }
            Err(e) => record(&app, &actor, &action, &target, Err(e)),
        }
        out
    })
    .await
    .map_err(|e| RelayError::Internal(format!("admin task failed: {e}")))?
}

/// Query strings: a wrong value is 422 naming the parameter.
fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, RelayError> {
    match parsed {
        Ok(Query(v)) => Ok(v),
        Err(e) => {
            let text = e.body_text();
            // serde names the field: "...: limit: invalid digit found in string"
            let field = text.rsplit(": ").nth(1).map(|f| f.trim().to_owned()).filter(|f| !f.contains(' '));
            Err(RelayError::Invalid { field, message: text })
        }
    }
}

/// JSON bodies: a syntax error is 400, a wrong or missing field 422 naming it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, RelayError> {
    match parsed {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::JsonDataError(e)) => {
            let text = e.body_text();
            let field = text.split('`').nth(1).map(str::to_owned);
            Err(RelayError::Invalid { field, message: text })
        }
        Err(e) => Err(RelayError::BadRequest(e.body_text())),
    }
}

#[utoipa::path(post, path = "/admin/releases", tag = "admin", request_body = CreateRelease,
    security(("admin_token" = [])),
    responses((status = 201, body = Release), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "version already used on the channel"),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    req: Result<Json<CreateRelease>, JsonRejection>,
) -> Result<(StatusCode, Json<Release>), RelayError> {
    let target = match &req {
        Ok(Json(r)) => format!("{}/{}", r.dataset, r.channel),
        Err(_) => "-".into(),
    };
    let work = move |app: AppState| async move { app.releases.create(body(req)?) };
    // Logged under the new release's id, so `audit --target ID` finds it.
    let describe =
        |r: &Release| (Some(r.id.clone()), format!("{}/{} {} created as a draft", r.dataset, r.channel, r.version));
    let release = audited_with(&app, &caller, "release.create", &target, work, describe).await?;
    Ok((StatusCode::CREATED, Json(release)))
}

#[utoipa::path(get, path = "/admin/releases", tag = "admin", params(ListQuery), security(("admin_token" = [])),
    responses((status = 200, body = ReleaseList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ReleaseList>, RelayError> {
    let target = match &q {
        Ok(Query(q)) => format!("{}/{}", q.dataset.as_deref().unwrap_or("*"), q.channel.as_deref().unwrap_or("*")),
        Err(_) => "-".into(),
    };
    let work = move |app: AppState| async move {
        let q = query(q)?;
        Ok(ReleaseList { releases: app.releases.repo.list(q.dataset.as_deref(), q.channel.as_deref())? })
    };
    audited(&app, &caller, "release.list", &target, work).await.map(Json)
}

#[utoipa::path(get, path = "/admin/releases/{id}", tag = "admin", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Release>, RelayError> {
    audited(
        &app,
        &caller,
        "release.show",
        &id.clone(),
        move |app| async move { Ok(app.releases.repo.get(&id)?.release) },
    )
    .await
    .map(Json)
}

#[utoipa::path(patch, path = "/admin/releases/{id}", tag = "admin", params(("id" = String, Path)),
    request_body = UpdateRelease, security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "published releases are immutable"), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<UpdateRelease>, JsonRejection>,
) -> Result<Json<Release>, RelayError> {
    audited(
        &app,
        &caller,
        "release.update",
        &id.clone(),
        move |app| async move { app.releases.update(&id, body(req)?) },
    )
    .await
    .map(Json)
}

#[utoipa::path(put, path = "/admin/releases/{id}/artifacts/{name}", tag = "admin",
    params(("id" = String, Path), ("name" = String, Path), UploadCheck),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file, streamed"),
    security(("admin_token" = [])),
    responses((status = 201, body = Release), (status = 200, body = Release, description = "dry_run: the upload would be accepted"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upload(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    check: Result<Query<UploadCheck>, QueryRejection>,
    request: Body,
) -> Result<(StatusCode, Json<Release>), RelayError> {
    let target = format!("{id}/{name}");
    let check = match query(check) {
        Ok(c) => c,
        Err(e) => {
            let work = move |_: AppState| async move { Err::<Release, _>(e) };
            return audited(&app, &caller, "artifact.upload", &target, work).await.map(|r| (StatusCode::OK, Json(r)));
        }
    };
    if check.dry_run {
        // Every check an upload of `size` bytes would meet, without the body.
        let work = move |app: AppState| async move { app.releases.check_upload(&id, &name, check.size) };
        return audited(&app, &caller, "artifact.check", &target, work).await.map(|r| (StatusCode::OK, Json(r)));
    }
    let declared = caller
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let work = move |app: AppState| async move {
        let stream = request.into_data_stream();
        app.releases.attach_upload(&id, &name, declared, stream).await
    };
    let release = audited(&app, &caller, "artifact.upload", &target, work).await.inspect_err(|_| {
        crate::metrics::Metrics::inc(&app.hub.metrics.upload_failures);
    })?;
    Ok((StatusCode::CREATED, Json(release)))
}

#[utoipa::path(post, path = "/admin/releases/{id}/artifacts", tag = "admin", params(("id" = String, Path)),
    request_body = AttachExternal, security(("admin_token" = [])),
    responses((status = 201, body = Release), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn attach_external(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<AttachExternal>, JsonRejection>,
) -> Result<(StatusCode, Json<Release>), RelayError> {
    let release = audited(&app, &caller, "artifact.attach", &id.clone(), move |app| async move {
        app.releases.attach_external(&id, body(req)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(release)))
}

#[utoipa::path(delete, path = "/admin/releases/{id}/artifacts/{name}", tag = "admin",
    params(("id" = String, Path), ("name" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_artifact(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Release>, RelayError> {
    let target = format!("{id}/{name}");
    audited(&app, &caller, "artifact.remove", &target, move |app| async move {
        app.releases.remove_artifact(&id, &name).await
    })
    .await
    .map(Json)
}

#[utoipa::path(post, path = "/admin/releases/{id}/validate", tag = "admin", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 200, body = ValidationReport, description = "every finding at once"), (status = 404, body = ErrorBody)))]
pub async fn validate(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ValidationReport>, RelayError> {
    audited(&app, &caller, "release.validate", &id.clone(), move |app| async move { app.releases.validate(&id).await })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/admin/releases/{id}/publish", tag = "admin", params(("id" = String, Path)),
    request_body = PublishRequest, security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "validation fails (findings included) or already published"),
        (status = 422, body = ErrorBody)))]
pub async fn publish(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<Json<Release>, RelayError> {
    // No body (or no JSON content type) means the defaults; a malformed one is refused.
    let req = match req {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(PublishRequest::default()),
        other => body(other),
    };
    let target = id.clone();
    let work = move |app: AppState| async move { app.releases.publish(&id, req?).await };
    let describe = |r: &Release| {
        (None, format!("rollout {} %, mandatory {}", r.rollout_percent, if r.mandatory { "yes" } else { "no" }))
    };
    audited_with(&app, &caller, "release.publish", &target, work, describe).await.map(Json)
}

#[utoipa::path(post, path = "/admin/releases/{id}/rollout", tag = "admin", params(("id" = String, Path)),
    request_body = RolloutRequest, security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn rollout(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<RolloutRequest>, JsonRejection>,
) -> Result<Json<Release>, RelayError> {
    let target = id.clone();
    let work = move |app: AppState| async move { app.releases.set_rollout(&id, body(req)?.percent) };
    let describe = |r: &Release| (None, format!("rollout {} %", r.rollout_percent));
    audited_with(&app, &caller, "release.rollout", &target, work, describe).await.map(Json)
}

#[utoipa::path(post, path = "/admin/releases/{id}/deprecate", tag = "admin", params(("id" = String, Path)),
    request_body = DeprecateRequest, security(("admin_token" = [])),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn deprecate(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<DeprecateRequest>, JsonRejection>,
) -> Result<Json<Release>, RelayError> {
    audited(&app, &caller, "release.deprecate", &id.clone(), move |app| async move {
        app.releases.deprecate(&id, &body(req)?.reason)
    })
    .await
    .map(Json)
}

#[utoipa::path(put, path = "/admin/datasets/{dataset}", tag = "admin", params(("dataset" = String, Path)),
    request_body = DatasetConfig, security(("admin_token" = [])),
    responses((status = 200, body = DatasetConfig), (status = 422, body = ErrorBody)))]
pub async fn set_dataset(
    State(app): State<AppState>,
    caller: Caller,
    Path(dataset): Path<String>,
    req: Result<Json<DatasetConfig>, JsonRejection>,
) -> Result<Json<DatasetConfig>, RelayError> {
    let target = dataset.clone();
    let work = move |app: AppState| async move {
        let config = body(req)?;
        app.releases.set_dataset_config(&dataset, &config)?;
        Ok(config)
    };
    audited(&app, &caller, "dataset.configure", &target, work).await.map(Json)
}

#[utoipa::path(get, path = "/admin/audit", tag = "admin", params(AuditQuery), security(("admin_token" = [])),
    responses((status = 200, body = AuditLog), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit_log(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditLog>, RelayError> {
    // Read first, then record the read: the answer does not contain itself.
    let target = match &q {
        Ok(Query(q)) => q.target.clone().unwrap_or_else(|| "*".into()),
        Err(_) => "-".into(),
    };
    let work = move |app: AppState| async move {
        let q = query(q)?;
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        Ok(AuditLog { entries: app.releases.repo.audit_log(q.target.as_deref(), q.before, limit)? })
    };
    audited(&app, &caller, "audit.read", &target, work).await.map(Json)
}

//! The HTTP surface: routes, the accept path of the WebSocket, health and
//! metrics, and the background eviction task.

use crate::auth;
use crate::config::{Config, dev_manifest_key};
use crate::error::RelayError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::release::artifacts::{ArtifactStore, DirectoryStore};
use crate::release::repository::{PgReleases, ReleaseRepository, SqliteReleases};
use crate::release::service::ReleaseService;
use crate::storage::{DocStorage, PgStorage, SqliteStorage};
use crate::ws;
use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use release::ManifestSigner;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The relay's automerge-repo peer id.
pub const RELAY_PEER_ID: &str = "relay";

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    pub releases: Arc<ReleaseService>,
    /// Refused admin requests, counted until the next flush.
    pub refusals: Arc<crate::release::refusals::RefusalLog>,
}

/// Appends the counted admin refusals to the audit log (off the async workers).
async fn flush_refusals(app: &AppState) {
    let entries = app.refusals.take(crate::release::service::now_ms());
    if entries.is_empty() {
        return;
    }
    let releases = app.releases.clone();
    let written = tokio::task::spawn_blocking(move || {
        for entry in &entries {
            releases.repo.audit(entry)?;
        }
        Ok::<_, crate::release::repository::RepoError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not write refused admin requests to the audit log"),
        Err(e) => tracing::error!(error = %e, "refusal flush task failed"),
    }
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn sync_upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, RelayError> {
    let token = auth::token_from(&headers, query.token.as_deref());
    let claims = match auth::authenticate(&app.config.token_verifier, token.as_deref(), now_secs()) {
        Ok(c) => c,
        Err(e) => {
            Metrics::inc(&app.hub.metrics.auth_failures);
            return Err(RelayError::Unauthorized(e.to_string()));
        }
    };
    // A token valid for longer than the relay allows is refused, so a leaked
    // long-lived token cannot outlive the rotation policy.
    let max_lifetime = app.hub.limits.max_token_lifetime.as_secs();
    if claims.exp > now_secs().saturating_add(max_lifetime) {
        Metrics::inc(&app.hub.metrics.auth_failures);
        return Err(RelayError::Unauthorized(format!(
            "token lifetime exceeds this relay's maximum of {} hours",
            max_lifetime / 3600
        )));
    }
    let registration = app.hub.register(&claims.user_id).map_err(|e| {
        Metrics::inc(&app.hub.metrics.connections_refused_limit);
        RelayError::TooManyConnections(e)
    })?;
    let hub = app.hub.clone();
    let max = app.hub.limits.max_message_bytes;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: most connections are idle devices; a large message
        // just takes a few more reads. tungstenite zero-fills the free part
        // of the read buffer before every read, so its size is paid per
        // message: at 16 KiB that fill was 5 % of the connection tasks' time
        // under the 200-pair load, where messages are a few hundred bytes.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| ws::run(socket, hub, claims, registration))
        .into_response())
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when storage takes writes: a small real write is committed (a full
/// disk or a read-only file system fails it), and the last sync write did
/// not fail. 503 with a JSON reason otherwise, so a load balancer stops
/// sending devices here while the disk is full.
async fn ready(State(app): State<AppState>) -> Response {
    let storage = app.hub.storage.clone();
    let probe = tokio::task::spawn_blocking(move || storage.probe_write()).await;
    let problem = match probe {
        Ok(Ok(())) if !app.hub.storage_failing() => None,
        Ok(Ok(())) => Some("the last document write failed".to_owned()),
        Ok(Err(e)) => Some(format!("storage does not take writes: {e}")),
        Err(e) => Some(format!("storage probe failed: {e}")),
    };
    match problem {
        None => axum::Json(serde_json::json!({ "status": "ready", "connections": app.hub.open_connections() }))
            .into_response(),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not ready", "error": "storage", "message": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.hub.metrics.render(app.hub.open_connections(), app.hub.resident_docs(), app.hub.loads()),
    )
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(crate::openapi::spec())
}

pub fn router(state: AppState) -> Router {
    use crate::release::{admin, public};
    use axum::routing::{post, put};
    Router::new()
        .route("/sync", get(sync_upgrade))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/admin/releases", post(admin::create).get(admin::list))
        .route("/admin/releases/{id}", get(admin::show).patch(admin::update))
        .route("/admin/releases/{id}/artifacts", post(admin::attach_external))
        .route(
            "/admin/releases/{id}/artifacts/{name}",
            // Uploads stream to disk under the release size limits, not axum's 2 MB default.
            put(admin::upload).layer(axum::extract::DefaultBodyLimit::disable()).delete(admin::remove_artifact),
        )
        .route("/admin/releases/{id}/validate", post(admin::validate))
        .route("/admin/releases/{id}/publish", post(admin::publish))
        .route("/admin/releases/{id}/rollout", post(admin::rollout))
        .route("/admin/releases/{id}/deprecate", post(admin::deprecate))
        .route("/admin/datasets/{dataset}", put(admin::set_dataset))
        .route("/admin/audit", get(admin::audit_log))
        .route("/v1/datasets/{dataset}/channels/{channel}/latest", get(public::latest))
        .route("/v1/releases/{id}/manifest", get(public::manifest))
        .route("/v1/releases/{id}/artifacts/{name}", get(public::artifact))
        // Every answer is JSON, unknown paths and methods included.
        .fallback(|| async { RelayError::NotFound("no such endpoint (see /openapi.json)".into()) })
        .method_not_allowed_fallback(|| async {
            (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({"error": "method_not_allowed", "message": "this endpoint does not take that method (see /openapi.json)"})),
            )
        })
        .with_state(state)
}

/// Opens the release registry: in PostgreSQL when the relay has a
/// database, else in the data directory's SQLite file.
fn open_releases(config: &Config, pg: Option<Arc<crate::pg::Pg>>) -> Result<ReleaseService, RelayError> {
    let repo: Arc<dyn ReleaseRepository> = match pg {
        Some(pg) => Arc::new(PgReleases::on(pg)),
        None => Arc::new(
            SqliteReleases::open(&config.data_dir.join("relay.sqlite3"))
                .map_err(|e| RelayError::Config(format!("release registry: {e}")))?,
        ),
    };
    let artifact_dir = config.artifact_dir.clone().unwrap_or_else(|| config.data_dir.join("artifacts"));
    let store: Arc<dyn ArtifactStore> = Arc::new(DirectoryStore::open(&artifact_dir)?);
    let orphans = store.sweep_orphans(&repo.all_file_keys().map_err(|e| RelayError::Config(e.to_string()))?)?;
    if orphans > 0 {
        tracing::info!(orphans, "removed artifact files no release points at");
    }
    let (key_id, seed) = match &config.manifest_key {
        Some((kid, seed)) => (kid.clone(), *seed),
        None => {
            let (kid, seed, _) = dev_manifest_key(&config.data_dir)?;
            let public = ManifestSigner::new(&kid, seed).public_key();
            tracing::warn!(
                key_id = %kid,
                public_key = %base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public),
                "signing manifests with a development key kept in the data directory"
            );
            (kid, seed)
        }
    };
    Ok(ReleaseService {
        repo,
        store,
        signer: ManifestSigner::new(key_id, seed),
        rules: release::rules::default_rules(),
        limits: config.release_limits,
        manifest_ttl_ms: config.manifest_ttl.as_millis() as i64,
    })
}

/// A relay running in this process.
pub struct RunningRelay {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Serving TLS (`wss://`, `https://`).
    tls: bool,
    /// The data directory is ours while this is held.
    _lock: crate::data_dir::DataDirLock,
}

impl RunningRelay {
    pub fn ws_url(&self) -> String {
        format!("{}://{}/sync", if self.tls { "wss" } else { "ws" }, self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// [`RunningRelay::shutdown_within`] with a 10 s drain deadline.
    pub async fn shutdown(self) -> ShutdownReport {
        self.shutdown_within(std::time::Duration::from_secs(10)).await
    }

    /// Stops accepting, closes every WebSocket (1001, "shutting down"),
    /// lets HTTP requests in flight (downloads) finish until `deadline`, then
    /// cuts what is left, flushes the write-behind state and closes the
    /// database (the last connection's close checkpoints the WAL away).
    pub async fn shutdown_within(self, deadline: std::time::Duration) -> ShutdownReport {
        let started = Instant::now();
        let websockets = self.hub.open_connections();
        let downloads = self.hub.metrics.artifact_streams_open();
        self.hub.begin_shutdown();
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        let drained = tokio::time::timeout(deadline, &mut task).await.is_ok();
        if !drained {
            task.abort();
            let _ = task.await;
        }
        // WebSocket tasks end on their own once their close frame is out.
        while self.hub.open_connections() > 0 && started.elapsed() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let cut_websockets = self.hub.open_connections();
        let cut_downloads = if drained { 0 } else { self.hub.metrics.artifact_streams_open() };
        let storage = self.hub.storage.clone();
        let flushed = tokio::task::spawn_blocking(move || storage.flush()).await.map(|r| r.is_ok()).unwrap_or(false);
        let report = ShutdownReport { websockets, downloads, cut_websockets, cut_downloads, flushed };
        if cut_downloads > 0 || cut_websockets > 0 {
            tracing::warn!(?report, "drain deadline passed; cut what was left");
        } else {
            tracing::info!(?report, "shut down cleanly");
        }
        drop(self.hub);
        drop(self._lock);
        report
    }
}

/// How often every loaded document catches up with the shared database
/// even without announcements (a lost one costs at most this long).
const CATCH_UP_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Documents catching up at once (each is a database round trip or two).
const CATCH_UP_CONCURRENCY: usize = 8;

/// Announcements most handled in one round (deduplicated per document).
const FEED_BATCH: usize = 1024;

/// Brings this relay's loaded documents up to date with what other relays
/// store in the shared database: on each announcement, after the listener
/// (re)subscribed, and on a slow timer. One round at a time; in a round,
/// announcements for one document collapse into one, and documents catch
/// up side by side on blocking threads.
async fn follow_other_relays(
    hub: Arc<Hub>,
    mut feed: tokio::sync::mpsc::Receiver<crate::storage::FeedEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::storage::FeedEvent;
    let mut tick = tokio::time::interval(CATCH_UP_PERIOD);
    tick.tick().await;
    loop {
        let mut events = Vec::new();
        tokio::select! {
            n = feed.recv_many(&mut events, FEED_BATCH) => {
                if n == 0 {
                    return;
                }
                Metrics::add(&hub.metrics.feed_events, n as u64);
            }
            _ = tick.tick() => events.push(FeedEvent::Resync),
            _ = shutdown.changed() => return,
        }
        let resync = events.contains(&FeedEvent::Resync);
        let mut newest: std::collections::HashMap<(String, protocol::DocumentId), u64> = Default::default();
        for event in events {
            if let FeedEvent::Changed { user, doc, seq } = event {
                let entry = newest.entry((user, doc)).or_default();
                *entry = (*entry).max(seq);
            }
        }
        // Documents catch up side by side (each waits on the database), a
        // bounded number at once; one document appears once per round.
        use futures_util::StreamExt;
        futures_util::stream::iter(newest)
            .for_each_concurrent(CATCH_UP_CONCURRENCY, |((user, doc), seq)| {
                let hub = hub.clone();
                async move {
                    let _ = tokio::task::spawn_blocking(move || hub.on_stored_change(&user, doc, seq)).await;
                }
            })
            .await;
        if resync {
            let hub = hub.clone();
            let _ = tokio::task::spawn_blocking(move || hub.catch_up_all()).await;
        }
    }
}

/// How often unreferenced artifact files are swept (past their grace).
const ARTIFACT_SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a shutdown closed and cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// WebSocket connections open when it began (all told to close).
    pub websockets: u64,
    /// Artifact downloads in flight when it began.
    pub downloads: u64,
    /// Still open at the deadline, and cut.
    pub cut_websockets: u64,
    pub cut_downloads: u64,
    /// Write-behind state reached the disk.
    pub flushed: bool,
}

/// Opens storage under `config.data_dir`, binds `config.listen` and serves.
pub async fn start(config: Config) -> Result<RunningRelay, RelayError> {
    crate::allocator::limit_arenas();
    // First: nothing in the directory is touched unless it is ours.
    let lock = crate::data_dir::DataDirLock::acquire(&config.data_dir)?;
    // One PostgreSQL connection for documents and releases, when configured.
    let pg = match &config.database_url {
        Some(url) => {
            let url = url.clone();
            let connected = tokio::task::spawn_blocking(move || crate::pg::Pg::connect(&url))
                .await
                .map_err(|e| RelayError::Config(format!("connecting to the database: {e}")))?;
            Some(Arc::new(connected.map_err(|e| RelayError::Config(format!("database: {e}")))?))
        }
        None => None,
    };
    let storage: Arc<dyn DocStorage> = match &pg {
        Some(pg) => Arc::new(PgStorage::on(pg.clone(), config.limits.max_storage_queue_bytes)?),
        None => Arc::new(SqliteStorage::open_with(
            &config.data_dir.join("relay.sqlite3"),
            config.limits.max_storage_queue_bytes,
        )?),
    };
    // One stable, short peer id: relays sharing storage are the same peer to
    // a client, and the id rides in every message.
    let hub = Arc::new(Hub::new(storage, config.limits.clone(), RELAY_PEER_ID.to_owned()));
    let releases = Arc::new(open_releases(&config, pg)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| RelayError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr()?;
    let refusal_period = config.refusal_audit_interval;
    let tls = config.tls.clone();
    let state = AppState {
        hub: hub.clone(),
        config: Arc::new(config),
        releases,
        refusals: Arc::new(crate::release::refusals::RefusalLog::default()),
    };
    let flusher_state = state.clone();
    let (shutdown, mut rx) = watch::channel(false);

    let sweeper_hub = hub.clone();
    let mut sweeper_rx = rx.clone();
    tokio::spawn(async move {
        let period = (sweeper_hub.limits.doc_idle_eviction / 3).max(std::time::Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let evicted = sweeper_hub.evict_idle(Instant::now());
                    let ended = sweeper_hub.connection_ended.swap(false, std::sync::atomic::Ordering::Relaxed);
                    if evicted > 0 || (ended && sweeper_hub.resident_docs() == 0) {
                        let hub = sweeper_hub.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            hub.storage.release_memory();
                            crate::allocator::release_freed_memory();
                            Metrics::inc(&hub.metrics.memory_releases);
                        })
                        .await;
                    }
                }
                _ = sweeper_rx.changed() => return,
            }
        }
    });

    if let Some(feed) = hub.storage.change_feed() {
        tokio::spawn(follow_other_relays(hub.clone(), feed, rx.clone()));
    }

    // Artifact files no release points at any more (removed artifacts,
    // refused attachments) go once past their grace; hourly, besides start.
    let sweep_releases = state.releases.clone();
    let mut sweep_rx = rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ARTIFACT_SWEEP_PERIOD);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let service = sweep_releases.clone();
                    let swept = tokio::task::spawn_blocking(move || -> Result<usize, String> {
                        let keys = service.repo.all_file_keys().map_err(|e| e.to_string())?;
                        service.store.sweep_orphans(&keys).map_err(|e| e.to_string())
                    })
                    .await;
                    match swept {
                        Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "removed artifact files no release points at"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "artifact sweep failed; the next one retries"),
                        _ => {}
                    }
                }
                _ = sweep_rx.changed() => return,
            }
        }
    });

    let mut flusher_rx = rx.clone();
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(refusal_period);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => flush_refusals(&flusher_state).await,
                _ = flusher_rx.changed() => {
                    flush_refusals(&flusher_state).await;
                    return;
                }
            }
        }
    });

    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move {
        let _ = rx.changed().await;
    };
    let task = match tls.clone() {
        Some(config) => {
            // (`tap_io` gives the listener axum's `ConnectInfo<SocketAddr>` support.)
            let listener =
                axum::serve::ListenerExt::tap_io(crate::tls_listener::TlsListener::new(listener, config)?, |_| {});
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "server stopped");
                }
                let _ = flusher.await;
            })
        }
        None => {
            // Sync messages are small and latency-bound: never let Nagle hold them.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            });
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "server stopped");
                }
                let _ = flusher.await;
            })
        }
    };
    tracing::info!(%addr, tls = tls.is_some(), "relay listening");
    Ok(RunningRelay { addr, hub, shutdown, task, tls: tls.is_some(), _lock: lock })
}

//! The WebSocket adapter around [`SyncClient`]: connects, pumps frames,
//! reconnects with exponential backoff and full jitter. It owns the socket
//! and the clock; every protocol decision is the client's.

use super::session::SyncSession;
use crate::engine::Shared;
use crate::model::{ChangeEvent, SyncProblem, TimestampMs};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

/// Gives the engine a device token. Asked before every connection attempt:
/// tokens expire, and a relay that refused one is answered with a fresh one
/// on the next attempt. May block (the app may fetch one from its backend);
/// it runs on a blocking thread, never on the sync task.
pub trait TokenProvider: Send + Sync {
    /// The current token, or why there is none (the attempt is then retried
    /// with backoff, and the reason shows in `SyncStatus::last_error`).
    fn token(&self) -> Result<String, String>;
}

/// Where the device token comes from.
#[derive(Clone)]
pub enum Credentials {
    /// One token for the life of this configuration (tests, tools).
    Fixed(String),
    /// Asked at every connection attempt.
    Provider(Arc<dyn TokenProvider>),
}

impl std::fmt::Debug for Credentials {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Fixed(_) => f.write_str("Fixed(..)"),
            Credentials::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl Credentials {
    async fn token(&self) -> Result<String, String> {
        match self {
            Credentials::Fixed(t) => Ok(t.clone()),
            Credentials::Provider(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || p.token())
                    .await
                    .map_err(|e| format!("token provider failed: {e}"))?
                    .map_err(|e| format!("token provider: {e}"))
            }
        }
    }
}

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// e.g. `ws://127.0.0.1:8080/sync`
    pub url: String,
    /// The signed device token, or who gives one.
    pub credentials: Credentials,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A CA (PEM) to trust for `wss://` besides the web's roots (an
    /// operator's private CA, or one pinned by the app).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Allow `ws://` (no TLS) to a host other than loopback. Off: the device
    /// token would cross the network in clear.
    pub allow_insecure: bool,
}

impl RelayConfig {
    /// A relay reached with one fixed token.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> RelayConfig {
        RelayConfig::with_credentials(url, Credentials::Fixed(token.into()))
    }

    /// A relay reached with tokens from `credentials`.
    pub fn with_credentials(url: impl Into<String>, credentials: Credentials) -> RelayConfig {
        RelayConfig {
            url: url.into(),
            credentials,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            extra_ca_pem: None,
            allow_insecure: false,
        }
    }

    /// Refuses a configuration that cannot work or would send the token in
    /// clear (what [`crate::Engine::start_sync`] would only find out on its
    /// first connection attempt).
    pub fn check(&self) -> Result<(), String> {
        self.connector().map(|_| ())
    }

    /// Refuses configurations that would send the token in clear, and
    /// builds the TLS connector for `wss://`.
    pub(crate) fn connector(&self) -> Result<Option<tokio_tungstenite::Connector>, String> {
        let url = self.url.to_ascii_lowercase();
        if url.starts_with("wss://") {
            let tls = tls_config::client_config(self.extra_ca_pem.as_deref()).map_err(|e| e.to_string())?;
            return Ok(Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))));
        }
        let Some(rest) = url.strip_prefix("ws://") else {
            return Err(format!("relay URL `{}` must start with wss:// (or ws:// on loopback)", self.url));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority),
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback && !self.allow_insecure {
            return Err(format!(
                "refusing ws:// to {host}: the device token would cross the network in clear; use wss://"
            ));
        }
        Ok(None)
    }
}

pub(crate) fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as TimestampMs)
        .unwrap_or(0)
}

/// Runs until `shutdown` turns true.
pub(crate) async fn run(shared: Arc<Shared>, config: RelayConfig, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = config.initial_backoff;
    let mut nonce: u32 = rand::rng().random();
    loop {
        if *shutdown.borrow() {
            return;
        }
        nonce = nonce.wrapping_add(1);
        let outcome = connect_and_sync(&shared, &config, nonce, &mut shutdown).await;
        if let Err(f) = &outcome {
            // A failed connect never reached the session; record why here.
            shared.set_failed(f.problem, f.text.clone());
        }
        match outcome {
            Ok(Exit::Shutdown) => return,
            Ok(Exit::Synced) => backoff = config.initial_backoff,
            Err(f) => tracing::info!(error = %f.text, problem = ?f.problem, "sync connection ended"),
        }
        // Full jitter: sleep a random duration in [0, backoff).
        let delay = Duration::from_millis(rand::rng().random_range(0..=backoff.as_millis().max(1) as u64));
        backoff = (backoff * 2).min(config.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Bytes of frames handled in one batch (one transaction) at most.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// The frame read earlier and held, else the next one from the socket.
async fn next_frame<S, T>(held: &mut Option<Option<T>>, stream: &mut S) -> Option<T>
where
    S: futures_util::Stream<Item = T> + Unpin,
{
    match held.take() {
        Some(frame) => frame,
        None => stream.next().await,
    }
}

/// How long the relay must be quiet before deferred work runs (`SyncSession::idle`).
const SETTLE_AFTER_QUIET: Duration = Duration::from_millis(300);

/// Why a connection attempt or session ended badly.
struct Failure {
    problem: SyncProblem,
    text: String,
}

impl Failure {
    fn new(problem: SyncProblem, text: impl Into<String>) -> Failure {
        Failure { problem, text: text.into() }
    }
}

/// Failures the session reports: the relay's own `error` message (it
/// ends the session, a refused token included), else the device's (its
/// database, a message it could not use).
impl From<super::session::SyncFailure> for Failure {
    fn from(e: super::session::SyncFailure) -> Failure {
        use super::client::ProtocolError;
        use super::session::SyncFailure;
        let problem = match &e {
            SyncFailure::Protocol(ProtocolError::Remote(text)) if text.contains("token") => SyncProblem::Unauthorized,
            SyncFailure::Protocol(ProtocolError::Remote(_)) => SyncProblem::Refused,
            _ => SyncProblem::Local,
        };
        Failure::new(problem, e.to_string())
    }
}

/// A failed socket operation: the connection is gone.
impl From<tungstenite::Error> for Failure {
    fn from(e: tungstenite::Error) -> Failure {
        Failure::new(SyncProblem::Unreachable, e.to_string())
    }
}

/// What the relay's refusal of the WebSocket handshake means.
fn handshake_failure(e: tungstenite::Error) -> Failure {
    match &e {
        tungstenite::Error::Http(response) if matches!(response.status().as_u16(), 401 | 403) => {
            Failure::new(SyncProblem::Unauthorized, format!("the relay refused the device token: {e}"))
        }
        tungstenite::Error::Http(_) => Failure::new(SyncProblem::Refused, e.to_string()),
        _ => Failure::new(SyncProblem::Unreachable, e.to_string()),
    }
}

/// What a close frame from the relay means (its codes: `relay::conn::close_code`).
fn closed_by_relay(frame: Option<tungstenite::protocol::CloseFrame>) -> Failure {
    let (code, reason) = frame.map(|c| (u16::from(c.code), c.reason.to_string())).unwrap_or((1005, String::new()));
    let problem =
        if code == 1008 && reason.contains("token") { SyncProblem::Unauthorized } else { SyncProblem::Refused };
    Failure::new(problem, format!("relay closed ({code}): {reason}"))
}

enum Exit {
    Shutdown,
    /// The connection closed after at least one complete exchange.
    Synced,
}

async fn connect_and_sync(
    shared: &Arc<Shared>,
    config: &RelayConfig,
    nonce: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Exit, Failure> {
    let local = |e: String| Failure::new(SyncProblem::Local, e);
    let connector = config.connector().map_err(local)?;
    let mut request = config.url.as_str().into_client_request().map_err(|e| local(e.to_string()))?;
    let token = config.credentials.token().await.map_err(|e| Failure::new(SyncProblem::NoToken, e))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        Failure::new(SyncProblem::Unauthorized, "the device token holds characters an HTTP header cannot carry")
    })?;
    request.headers_mut().insert("authorization", bearer);
    // TCP_NODELAY: a review is one small message that should leave now.
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
        .await
        .map_err(handshake_failure)?;
    let (mut sink, mut stream) = ws.split();

    let mut session = SyncSession::new(shared.clone(), nonce);
    let result = async {
        send_all(&mut sink, vec![session.open()]).await?;
        // Replays of stale memory states and compactions wait until the
        // relay has been quiet this long (a bootstrap's months arrive back
        // to back and are replayed once, at the end).
        let mut settle_at: Option<tokio::time::Instant> = None;
        // A frame read while batching that could not join the batch.
        let mut held = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Exit::Shutdown),
                _ = tokio::time::sleep_until(settle_at.unwrap_or_else(tokio::time::Instant::now)), if settle_at.is_some() => {
                    settle_at = None;
                    session.idle()?;
                }
                _ = shared.local_changes.notified() => {
                    let frames = session.local_changes()?;
                    send_all(&mut sink, frames).await?;
                }
                frame = next_frame(&mut held, &mut stream) => {
                    let bytes = match frame {
                        None if session.has_exchanged() => return Ok(Exit::Synced),
                        None => return Err(Failure::new(SyncProblem::Unreachable, "relay closed the connection")),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(tungstenite::Message::Binary(b))) => b,
                        Some(Ok(tungstenite::Message::Close(c))) => return Err(closed_by_relay(c)),
                        Some(Ok(_)) => continue,
                    };
                    // Frames that have already arrived join this one in one
                    // batch (one commit), up to a bound in bytes.
                    let mut batch = vec![bytes];
                    let mut size = batch[0].len();
                    while size < MAX_BATCH_BYTES && held.is_none() {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(tungstenite::Message::Binary(b)))) => {
                                size += b.len();
                                batch.push(b);
                            }
                            Some(other) => held = Some(other),
                            None => break,
                        }
                    }
                    let frames: Vec<&[u8]> = batch.iter().map(|b| b.as_ref()).collect();
                    let replies = session.receive_batch(&frames, now_ms())?;
                    settle_at = Some(tokio::time::Instant::now() + SETTLE_AFTER_QUIET);
                    send_all(&mut sink, replies).await?;
                }
            }
        }
    }
    .await;
    session.close(result.as_ref().err().map(|f| f.text.clone()));
    let _ = sink.close().await;
    result
}

async fn send_all<S>(sink: &mut S, frames: Vec<Vec<u8>>) -> Result<(), Failure>
where
    S: futures_util::Sink<tungstenite::Message, Error = tungstenite::Error> + Unpin,
{
    for frame in frames {
        sink.send(tungstenite::Message::Binary(frame.into())).await?;
    }
    Ok(())
}

/// Emits an event to subscribers; no subscriber is not an error.
pub(crate) fn emit(shared: &Shared, event: ChangeEvent) {
    let _ = shared.events.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_websocket_only_to_loopback_unless_allowed() {
        let ok = |url: &str| RelayConfig::new(url, "t").connector().map(|c| c.is_some());
        assert_eq!(ok("ws://127.0.0.1:8080/sync"), Ok(false));
        assert_eq!(ok("ws://localhost:8080/sync"), Ok(false));
        assert_eq!(ok("ws://[::1]:8080/sync"), Ok(false));
        assert_eq!(ok("wss://relay.example/sync"), Ok(true));
        let refused = ok("ws://relay.example:8080/sync").unwrap_err();
        assert!(refused.contains("in clear"), "{refused}");
        assert!(ok("ws://192.0.2.1/sync").is_err());
        assert!(ok("http://127.0.0.1/sync").is_err());
        let mut lan = RelayConfig::new("ws://192.0.2.1/sync", "t");
        lan.allow_insecure = true;
        assert!(lan.connector().is_ok());
        let mut pinned = RelayConfig::new("wss://relay.example/sync", "t");
        pinned.extra_ca_pem = Some(b"junk".to_vec());
        assert!(pinned.connector().is_err(), "a pinned CA that is not a certificate is an error");
    }
}

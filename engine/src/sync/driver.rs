//! The WebSocket adapter around [`SyncClient`]: connects, pumps frames,
//! reconnects with exponential backoff and full jitter. It owns the socket
//! and the clock; every protocol decision is the client's.

use super::session::SyncSession;
use crate::engine::Shared;
use crate::model::{ChangeEvent, TimestampMs};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// e.g. `ws://127.0.0.1:8080/sync`
    pub url: String,
    /// The signed device token.
    pub token: String,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RelayConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> RelayConfig {
        RelayConfig {
            url: url.into(),
            token: token.into(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
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
        if let Err(e) = &outcome {
            // A failed connect never reached the session; record why here.
            shared.set_connected(false, Some(e.clone()));
        }
        match outcome {
            Ok(Exit::Shutdown) => return,
            Ok(Exit::Synced) => backoff = config.initial_backoff,
            Err(e) => tracing::info!(error = %e, "sync connection ended"),
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
) -> Result<Exit, String> {
    let mut request = config.url.as_str().into_client_request().map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", config.token)).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    // TCP_NODELAY: a review is one small message that should leave now.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await.map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();

    let mut session = SyncSession::new(shared.clone(), nonce);
    let result = async {
        send_all(&mut sink, vec![session.open()]).await?;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Exit::Shutdown),
                _ = shared.local_changes.notified() => {
                    let frames = session.local_changes().map_err(|e| e.to_string())?;
                    send_all(&mut sink, frames).await?;
                }
                frame = stream.next() => {
                    let bytes = match frame {
                        None if session.has_exchanged() => return Ok(Exit::Synced),
                        None => return Err("relay closed the connection".to_string()),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(tungstenite::Message::Binary(b))) => b,
                        Some(Ok(tungstenite::Message::Close(c))) => {
                            return Err(format!("relay closed: {}", c.map(|c| c.reason.to_string()).unwrap_or_default()));
                        }
                        Some(Ok(_)) => continue,
                    };
                    let frames = session.receive(&bytes, now_ms()).map_err(|e| e.to_string())?;
                    send_all(&mut sink, frames).await?;
                }
            }
        }
    }
    .await;
    session.close(result.as_ref().err().cloned());
    let _ = sink.close().await;
    result
}

async fn send_all<S>(sink: &mut S, frames: Vec<Vec<u8>>) -> Result<(), String>
where
    S: futures_util::Sink<tungstenite::Message, Error = tungstenite::Error> + Unpin,
{
    for frame in frames {
        sink.send(tungstenite::Message::Binary(frame.into())).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Emits an event to subscribers; no subscriber is not an error.
pub(crate) fn emit(shared: &Shared, event: ChangeEvent) {
    let _ = shared.events.send(event);
}

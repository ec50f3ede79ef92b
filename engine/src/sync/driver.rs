//! The WebSocket adapter around [`SyncClient`]: connects, pumps frames,
//! reconnects with exponential backoff and full jitter. It owns the socket
//! and the clock; every protocol decision is the client's.

use super::client::SyncClient;
use crate::engine::Shared;
use crate::model::{ChangeEvent, TimestampMs};
use futures_util::{SinkExt, StreamExt};
use protocol::Message;
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
        shared.set_connected(false, outcome.as_ref().err().cloned());
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

    let mut client = SyncClient::new(nonce);
    let join = client.on_connected();
    send(shared, &mut sink, &join).await?;
    let mut exchanged = false;
    let result = loop {
        tokio::select! {
            _ = shutdown.changed() => break Ok(Exit::Shutdown),
            _ = shared.local_changes.notified() => {
                let docs = shared.take_changed_docs();
                let outgoing = shared.with_replica(|replica| {
                    let mut all = Vec::new();
                    for id in &docs {
                        all.extend(client.on_local_change(replica, id)?);
                    }
                    Ok(all)
                });
                match outgoing {
                    Ok(msgs) => {
                        for m in msgs {
                            send(shared, &mut sink, &m).await?;
                        }
                    }
                    Err(e) => break Err(e.to_string()),
                }
            }
            frame = stream.next() => {
                let frame = match frame {
                    None => break if exchanged { Ok(Exit::Synced) } else { Err("relay closed the connection".into()) },
                    Some(Err(e)) => break Err(e.to_string()),
                    Some(Ok(f)) => f,
                };
                let bytes = match frame {
                    tungstenite::Message::Binary(b) => b,
                    tungstenite::Message::Close(c) => {
                        break Err(format!("relay closed: {}", c.map(|c| c.reason.to_string()).unwrap_or_default()))
                    }
                    _ => continue,
                };
                shared.count_received(bytes.len());
                let msg = match Message::decode(&bytes) {
                    Ok(m) => m,
                    Err(e) => break Err(format!("undecodable message from relay: {e}")),
                };
                let now = now_ms();
                let was_ready = client.is_ready();
                let output = match shared.with_replica(|replica| client.on_message(replica, msg, now)) {
                    Ok(o) => o,
                    Err(e) => break Err(e.to_string()),
                };
                if !was_ready && client.is_ready() {
                    shared.set_connected(true, None);
                }
                if let Some(e) = output.error {
                    break Err(e.to_string());
                }
                for m in output.send {
                    send(shared, &mut sink, &m).await?;
                }
                if let Some(at) = output.synced_at {
                    exchanged = true;
                    shared.set_synced(at);
                }
            }
        }
    };
    client.on_disconnected();
    let _ = sink.close().await;
    result
}

async fn send<S>(shared: &Shared, sink: &mut S, m: &Message) -> Result<(), String>
where
    S: futures_util::Sink<tungstenite::Message, Error = tungstenite::Error> + Unpin,
{
    let bytes = m.encode();
    shared.count_sent(bytes.len());
    sink.send(tungstenite::Message::Binary(bytes.into())).await.map_err(|e| e.to_string())
}

/// Emits an event to subscribers; no subscriber is not an error.
pub(crate) fn emit(shared: &Shared, event: ChangeEvent) {
    let _ = shared.events.send(event);
}

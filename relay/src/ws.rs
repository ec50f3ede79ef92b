//! The WebSocket adapter: one task per connection. It reads frames, hands
//! decoded messages to the sans-IO [`ConnCore`], and writes what the core
//! answers under the outbound byte budgets and the send timeout. Work that
//! may wait on storage (the core's storage is synchronous and fsyncs) runs
//! on a blocking thread; what need not (acknowledgements, pushes of a
//! loaded document, and changes to one whose append can be queued and
//! awaited: [`ConnCore::handle_inline`]) runs on this task, which saves
//! two thread hand-offs per message. Protocol decisions are the core's;
//! sockets, timers and budgets are this file's.

use crate::conn::{CloseReason, ConnCore, Inline, close_code};
use crate::hub::{Hub, Registration};
use crate::metrics::Metrics;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::{DeviceClaims, DocumentId, Message};
use std::sync::Arc;
use std::time::Instant;

/// Whether a read error is a frame over the size limit (tungstenite's
/// capacity error, which axum passes on as text only).
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long") || text.contains("Space limit exceeded") || text.contains("too big")
}

/// The connection task's state: the core, lent to a blocking thread while
/// it works (so `None` only during a call).
struct Connection {
    hub: Arc<Hub>,
    core: Option<ConnCore>,
    /// The user's outbound budget, kept here so sends never need the core.
    outbound: crate::budget::ByteBudget,
    user: Arc<str>,
    device: String,
}

/// Something to write to the peer.
enum Outgoing {
    Message(Message),
    /// A presence message from another device, shared with its other receivers;
    /// readdressed (and so copied) only once bytes for it are budgeted.
    Ephemeral(Arc<Message>),
}

impl Outgoing {
    /// Bytes the frame will take, for the outbound budgets.
    fn size_hint(&self) -> usize {
        match self {
            Outgoing::Message(m) => match m {
                Message::Sync { data, .. } | Message::Request { data, .. } => data.len() + 256,
                _ => 256,
            },
            Outgoing::Ephemeral(m) => crate::hub::ephemeral_size(m),
        }
    }
}

/// Why a frame could not be written.
enum SendFailure {
    /// The peer is gone; nothing more to say.
    Gone,
    /// The peer did not take the frame within the send timeout.
    SlowConsumer,
}

type Sink = futures_util::stream::SplitSink<WebSocket, WsMessage>;

/// What woke the connection task.
enum Event {
    Frame(Option<Result<WsMessage, axum::Error>>),
    Notified,
    Tick,
    TokenExpired,
    /// The relay is shutting down.
    Closing,
}

/// How long until a token expiring at `exp` (Unix seconds) expires.
fn until_expiry(exp: u64) -> std::time::Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::time::Duration::from_secs(exp).saturating_sub(now)
}

pub async fn run(socket: WebSocket, hub: Arc<Hub>, claims: DeviceClaims, reg: Registration) {
    let expires = tokio::time::Instant::now() + until_expiry(claims.exp);
    let signal = reg.signal.clone();
    let mut conn = Connection {
        hub: hub.clone(),
        outbound: reg.outbound.clone(),
        user: reg.user.clone(),
        device: claims.device_id.clone(),
        core: Some(ConnCore::new(hub.clone(), reg, claims.device_id)),
    };
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(hub.limits.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut closing = hub.closing();

    let close_reason: Result<Option<CloseReason>, SendFailure> = loop {
        let event = tokio::select! {
            frame = stream.next() => Event::Frame(frame),
            _ = signal.notify.notified() => Event::Notified,
            _ = ping.tick() => Event::Tick,
            _ = tokio::time::sleep_until(expires) => Event::TokenExpired,
            _ = closing.wait_for(|c| *c) => Event::Closing,
        };
        let step: Result<(), Result<Option<CloseReason>, SendFailure>> = match event {
            Event::Frame(frame) => {
                last_heard = Instant::now();
                match frame {
                    None => Err(Ok(None)),
                    // A peer that vanishes (app killed, network gone) is not a protocol error.
                    Some(Err(e)) if is_too_big(&e) => Err(Ok(Some(CloseReason::new(
                        close_code::TOO_BIG,
                        format!("message over the limit of {} bytes", hub.limits.max_message_bytes),
                    )))),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "connection dropped");
                        Err(Ok(None))
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        Metrics::inc(&hub.metrics.messages_in);
                        Metrics::add(&hub.metrics.bytes_in, bytes.len() as u64);
                        match Message::decode(&bytes) {
                            Ok(msg) => match conn.handle(msg).await {
                                Ok(out) => match conn.send_all(&mut sink, out).await {
                                    Ok(()) => conn.maintain().await.map_err(|reason| Ok(Some(reason))),
                                    Err(failure) => Err(Err(failure)),
                                },
                                Err(reason) => Err(Ok(Some(reason))),
                            },
                            Err(e) => Err(Ok(Some(format!("malformed message: {e}").into()))),
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) => Err(Ok(None)),
                    Some(Ok(WsMessage::Text(_))) => Err(Ok(Some(CloseReason::new(
                        close_code::UNSUPPORTED_DATA,
                        "text frames are not part of the protocol",
                    )))),
                    Some(Ok(_)) => Ok(()), // ping/pong
                }
            }
            Event::Notified => conn.forward(&mut sink).await,
            Event::Tick => {
                if last_heard.elapsed() > hub.limits.idle_timeout {
                    Err(Ok(Some(CloseReason::new(close_code::GOING_AWAY, "idle timeout"))))
                } else {
                    conn.write(&mut sink, WsMessage::Ping(Default::default()), 64).await.map_err(Err)
                }
            }
            Event::Closing => {
                Err(Ok(Some(CloseReason::new(close_code::GOING_AWAY, "relay shutting down; reconnect later"))))
            }
            Event::TokenExpired => {
                Metrics::inc(&hub.metrics.tokens_expired_closed);
                Err(Ok(Some(CloseReason::new(close_code::POLICY, "token expired; reconnect with a new token"))))
            }
        };
        if let Err(end) = step {
            break end;
        }
    };
    match close_reason {
        Ok(Some(reason)) => {
            if reason.code == close_code::PROTOCOL_ERROR
                || reason.code == close_code::UNSUPPORTED_DATA
                || reason.code == close_code::TOO_BIG
            {
                Metrics::inc(&hub.metrics.protocol_errors);
            }
            tracing::info!(user = %conn.user, device = %conn.device, code = reason.code, reason = %reason.text, "closing connection");
            let error = Outgoing::Message(Message::Error { message: reason.text.clone() });
            if conn.send(&mut sink, error).await.is_ok() {
                // A close frame's reason is at most 123 bytes.
                let mut text = reason.text;
                while text.len() > 123 {
                    text.pop();
                }
                let frame = axum::extract::ws::CloseFrame { code: reason.code, reason: text.into() };
                let _ = tokio::time::timeout(hub.limits.send_timeout, sink.send(WsMessage::Close(Some(frame)))).await;
            }
        }
        Ok(None) => {
            let _ = tokio::time::timeout(hub.limits.send_timeout, sink.close()).await;
        }
        Err(SendFailure::SlowConsumer) => {
            Metrics::inc(&hub.metrics.slow_consumers_closed);
            tracing::info!(user = %conn.user, device = %conn.device, "closing a connection that stopped reading");
        }
        Err(SendFailure::Gone) => {}
    }
}

impl Connection {
    /// Runs `f` on the core on a blocking thread (the core's storage calls
    /// fsync and take locks), giving it back afterwards.
    async fn with_core<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut ConnCore) -> Result<T, CloseReason> + Send + 'static,
    ) -> Result<T, CloseReason> {
        let Some(mut core) = self.core.take() else {
            return Err(CloseReason::new(close_code::INTERNAL, "connection state lost"));
        };
        match tokio::task::spawn_blocking(move || {
            let out = f(&mut core);
            (core, out)
        })
        .await
        {
            Ok((core, out)) => {
                self.core = Some(core);
                out
            }
            Err(e) => {
                tracing::error!(error = %e, "connection work failed");
                Err(CloseReason::new(close_code::INTERNAL, "relay failure; retry later"))
            }
        }
    }

    /// Hands `msg` to the core: on this task if nothing on its way can
    /// wait on storage, else on a blocking thread.
    async fn handle(&mut self, msg: Message) -> Result<Vec<Message>, CloseReason> {
        let Some(core) = self.core.as_mut() else {
            return Err(CloseReason::new(close_code::INTERNAL, "connection state lost"));
        };
        match core.handle_inline(msg, Instant::now()) {
            Inline::Done(result) => result,
            Inline::Blocking(msg) => self.with_core(move |core| core.handle(msg, Instant::now())).await,
            Inline::Storing(mut change) => match change.take_ticket() {
                Some(ticket) => {
                    // No lock or thread is held while the group is fsynced.
                    let stored = ticket.wait().await;
                    match self.core.as_mut() {
                        Some(core) => core.finish_change(change, stored, Instant::now()),
                        None => Err(CloseReason::new(close_code::INTERNAL, "connection state lost")),
                    }
                }
                None => self.with_core(move |core| core.store_and_finish(change, Instant::now())).await,
            },
        }
    }

    /// Runs the core's deferred work (compactions, sync states the queue
    /// had no room for) once the replies are out.
    async fn maintain(&mut self) -> Result<(), CloseReason> {
        if self.core.as_ref().is_some_and(|c| c.has_maintenance()) {
            self.with_core(|core| {
                core.maintain();
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Writes one frame within the send timeout, holding its bytes from the
    /// user's and the relay's outbound budgets while it is written.
    async fn send(&self, sink: &mut Sink, out: Outgoing) -> Result<(), SendFailure> {
        let size = out.size_hint();
        let frame = async {
            let _user = self.outbound.acquire(size).await;
            let _all = self.hub.outbound.acquire(size).await;
            let message = match out {
                Outgoing::Message(m) => m,
                Outgoing::Ephemeral(m) => match self.core.as_ref().and_then(|c| c.session.forward_ephemeral(&m)) {
                    Some(m) => m,
                    None => return Ok(()),
                },
            };
            let bytes = message.encode();
            drop(message);
            Metrics::inc(&self.hub.metrics.messages_out);
            Metrics::add(&self.hub.metrics.bytes_out, bytes.len() as u64);
            sink.send(WsMessage::Binary(bytes.into())).await.map_err(|_| SendFailure::Gone)
        };
        match tokio::time::timeout(self.hub.limits.send_timeout, frame).await {
            Ok(result) => result,
            Err(_) => Err(SendFailure::SlowConsumer),
        }
    }

    async fn send_all(&self, sink: &mut Sink, messages: Vec<Message>) -> Result<(), SendFailure> {
        for m in messages {
            self.send(sink, Outgoing::Message(m)).await?;
        }
        Ok(())
    }

    /// Writes a control frame within the send timeout.
    async fn write(&self, sink: &mut Sink, frame: WsMessage, size: usize) -> Result<(), SendFailure> {
        let write = async {
            let _user = self.outbound.acquire(size).await;
            sink.send(frame).await.map_err(|_| SendFailure::Gone)
        };
        tokio::time::timeout(self.hub.limits.send_timeout, write).await.unwrap_or(Err(SendFailure::SlowConsumer))
    }

    /// Another device of the user changed documents or sent presence: pass
    /// it on, one frame at a time (nothing is generated ahead of the socket).
    async fn forward(&mut self, sink: &mut Sink) -> Result<(), Result<Option<CloseReason>, SendFailure>> {
        let (ephemeral, docs): (Vec<Arc<Message>>, Vec<DocumentId>) = match &self.core {
            Some(core) => (core.take_ephemeral(), core.take_changed()),
            None => return Ok(()),
        };
        for m in ephemeral {
            self.send(sink, Outgoing::Ephemeral(m)).await.map_err(Err)?;
        }
        for doc in docs {
            let inline = self.core.as_mut().and_then(|core| core.push_inline(doc, Instant::now()));
            let pushed = match inline {
                Some(pushed) => pushed,
                None => self.with_core(move |core| core.push(doc, Instant::now())).await,
            };
            match pushed {
                Ok(Some(m)) => self.send(sink, Outgoing::Message(m)).await.map_err(Err)?,
                Ok(None) => {}
                Err(reason) => return Err(Ok(Some(reason))),
            }
        }
        self.maintain().await.map_err(|reason| Ok(Some(reason)))
    }
}

//! The WebSocket adapter: one task per connection, feeding frames to the
//! [`PeerSession`] and doing the document work it asks for.
//!
//! Ordering rule: a change is acknowledged (our reply advertises heads that
//! include it) only after `DocStorage::append` returned, i.e. after it is
//! durable. If storage fails, the in-memory document is discarded and the
//! connection closed, so nothing unstored is ever acknowledged or forwarded.

use crate::hub::{Hub, Registration};
use crate::metrics::Metrics;
use crate::session::{Action, PeerSession};
use crate::storage::{EncodedHeads, encode_heads};
use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::{DeviceClaims, DocumentId, Message};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Chunks appended since the last snapshot before the relay compacts.
const COMPACT_AFTER_CHUNKS: u64 = 64;

/// Why a connection ends: an `error` message with `text`, then a close
/// frame with `code` (RFC 6455 section 7.4.1).
#[derive(Debug)]
struct CloseReason {
    code: u16,
    text: String,
}

/// Close codes the relay uses.
mod close_code {
    /// Shutting down, or the peer went quiet.
    pub const GOING_AWAY: u16 = 1001;
    /// A malformed or unexpected message.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame: the protocol is binary.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A limit or policy (document limit, expired token).
    pub const POLICY: u16 = 1008;
    /// A frame over the message size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The relay's own failure (storage).
    pub const INTERNAL: u16 = 1011;
}

impl CloseReason {
    fn new(code: u16, text: impl Into<String>) -> CloseReason {
        CloseReason { code, text: text.into() }
    }
}

/// Protocol errors are the default reason.
impl From<String> for CloseReason {
    fn from(text: String) -> CloseReason {
        CloseReason::new(close_code::PROTOCOL_ERROR, text)
    }
}

/// Whether a read error is a frame over the size limit (tungstenite's
/// capacity error, which axum passes on as text only).
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Message too long") || text.contains("Space limit exceeded") || text.contains("too big")
}

struct Connection {
    hub: Arc<Hub>,
    reg: Registration,
    device: String,
    /// Whom sync states are kept for: this install of the device
    /// (`storage::sync_peer_key`), known after the join.
    sync_peer: String,
    session: PeerSession,
    /// Sync states of the documents this connection has touched.
    states: HashMap<DocumentId, sync::State>,
    /// Shared heads last written to storage, to skip redundant writes.
    persisted: HashMap<DocumentId, EncodedHeads>,
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
    let relay_peer = hub.peer_id.clone();
    let expires = tokio::time::Instant::now() + until_expiry(claims.exp);
    let mut conn = Connection {
        hub: hub.clone(),
        reg,
        sync_peer: claims.device_id.clone(),
        device: claims.device_id,
        session: PeerSession::new(relay_peer, hub.storage_id.clone()),
        states: HashMap::new(),
        persisted: HashMap::new(),
    };
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(hub.limits.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let signal = conn.reg.signal.clone();
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
                                Ok(out) => conn.send_all(&mut sink, out).await.map_err(Err),
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
            tracing::info!(user = %conn.reg.user, device = %conn.device, code = reason.code, reason = %reason.text, "closing connection");
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
            tracing::info!(user = %conn.reg.user, device = %conn.device, "closing a connection that stopped reading");
        }
        Err(SendFailure::Gone) => {}
    }
}

impl Connection {
    /// Writes one frame within the send timeout, holding its bytes from the
    /// user's and the relay's outbound budgets while it is written.
    async fn send(&self, sink: &mut Sink, out: Outgoing) -> Result<(), SendFailure> {
        let size = out.size_hint();
        let frame = async {
            let _user = self.reg.outbound.acquire(size).await;
            let _all = self.hub.outbound.acquire(size).await;
            let message = match out {
                Outgoing::Message(m) => m,
                Outgoing::Ephemeral(m) => match self.session.forward_ephemeral(&m) {
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
            let _user = self.reg.outbound.acquire(size).await;
            sink.send(frame).await.map_err(|_| SendFailure::Gone)
        };
        tokio::time::timeout(self.hub.limits.send_timeout, write).await.unwrap_or(Err(SendFailure::SlowConsumer))
    }

    /// Another device of the user changed documents or sent presence: pass
    /// it on, one frame at a time (nothing is generated ahead of the socket).
    async fn forward(&mut self, sink: &mut Sink) -> Result<(), Result<Option<CloseReason>, SendFailure>> {
        for m in self.hub.take_ephemeral(&self.reg.signal) {
            self.send(sink, Outgoing::Ephemeral(m)).await.map_err(Err)?;
        }
        let docs: Vec<DocumentId> = self.reg.signal.changed.lock().map(|mut c| c.drain().collect()).unwrap_or_default();
        for doc in docs {
            match self.push(doc).await {
                Ok(Some(m)) => self.send(sink, Outgoing::Message(m)).await.map_err(Err)?,
                Ok(None) => {}
                Err(reason) => return Err(Ok(Some(reason))),
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<Vec<Message>, CloseReason> {
        match self.session.on_message(msg) {
            Action::Joined { reply, storage_id } => {
                if let Some(storage_id) = storage_id.as_deref().filter(|s| crate::storage::valid_storage_id(s)) {
                    // A new install of this device starts from no sync state;
                    // the previous installs' states are dropped.
                    self.sync_peer = crate::storage::sync_peer_key(&self.device, Some(storage_id));
                    let storage = self.hub.storage.clone();
                    let (user, device, keep) = (self.reg.user.to_string(), self.device.clone(), self.sync_peer.clone());
                    blocking(move || storage.forget_other_installs(&user, &device, &keep))
                        .await
                        .map_err(|e| self.storage_failed(e))?;
                }
                let mut out = vec![reply];
                out.extend(self.offer_changed().await?);
                Ok(out)
            }
            Action::Sync { doc, data, request } => {
                let started = Instant::now();
                let out = self.apply(doc, &data, request).await;
                self.hub.metrics.sync_apply_seconds.observe(started.elapsed());
                out
            }
            Action::Ephemeral(m) => {
                self.hub.forward_ephemeral(&self.reg.user, self.reg.id, m);
                Ok(Vec::new())
            }
            Action::Ignore => Ok(Vec::new()),
            Action::Close(reason) => Err(reason.into()),
        }
    }

    /// After the handshake: sync every document whose heads moved since this
    /// device's shared heads. An up-to-date device gets nothing.
    async fn offer_changed(&mut self) -> Result<Vec<Message>, CloseReason> {
        let storage = self.hub.storage.clone();
        let user = self.reg.user.to_string();
        let device = self.sync_peer.clone();
        let (heads, shared) = blocking(move || Ok((storage.heads(&user)?, storage.shared_heads(&user, &device)?)))
            .await
            .map_err(|e| self.storage_failed(e))?;
        let mut changed: Vec<DocumentId> =
            heads.into_iter().filter(|(doc, h)| shared.get(doc) != Some(h)).map(|(doc, _)| doc).collect();
        changed.sort();
        for (doc, h) in shared {
            self.persisted.insert(doc, h);
        }
        let mut out = Vec::new();
        for doc in changed {
            if let Some(m) = self.push(doc).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn storage_failed(&self, e: String) -> CloseReason {
        Metrics::inc(&self.hub.metrics.storage_errors);
        self.hub.note_storage(false);
        tracing::error!(error = %e, "storage failure");
        CloseReason::new(close_code::INTERNAL, "relay storage failure; retry later")
    }

    async fn sync_state(&mut self, doc: DocumentId) -> Result<sync::State, CloseReason> {
        if let Some(s) = self.states.remove(&doc) {
            return Ok(s);
        }
        let storage = self.hub.storage.clone();
        let (user, device) = (self.reg.user.to_string(), self.sync_peer.clone());
        let stored = blocking(move || storage.load_sync_state(&user, &device, &doc))
            .await
            .map_err(|e| self.storage_failed(e))?;
        Ok(stored.and_then(|b| sync::State::decode(&b).ok()).unwrap_or_default())
    }

    /// Loads the document into the slot if needed. Returns whether it exists.
    async fn ensure_loaded(&self, slot: &mut crate::hub::DocSlot, doc: DocumentId) -> Result<bool, CloseReason> {
        if !slot.loaded {
            let storage = self.hub.storage.clone();
            let user = self.reg.user.to_string();
            let stored = blocking(move || storage.load(&user, &doc)).await.map_err(|e| self.storage_failed(e))?;
            slot.doc = match stored {
                None => None,
                Some(stored) => {
                    let mut d = match &stored.snapshot {
                        Some(s) => Automerge::load(s).map_err(|e| self.storage_failed(e.to_string()))?,
                        None => Automerge::new(),
                    };
                    for chunk in &stored.chunks {
                        d.load_incremental(chunk).map_err(|e| self.storage_failed(e.to_string()))?;
                    }
                    Metrics::inc(&self.hub.metrics.docs_loaded);
                    Some(d)
                }
            };
            slot.loaded = true;
        }
        slot.last_used = Instant::now();
        Ok(slot.doc.is_some())
    }

    /// Applies a peer's sync message, stores what it added, then replies.
    async fn apply(&mut self, doc_id: DocumentId, data: &[u8], request: bool) -> Result<Vec<Message>, CloseReason> {
        let message = sync::Message::decode(data)
            .map_err(|e| CloseReason::from(format!("malformed sync message for {doc_id}: {e}")))?;
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = slot.lock().await;
        if !self.ensure_loaded(&mut guard, doc_id).await? {
            if request {
                Metrics::inc(&self.hub.metrics.docs_unavailable);
                return Ok(vec![self.session.unavailable(doc_id)]);
            }
            // A new document. It counts against the limit from now on, even if
            // this message stores nothing (a peer could otherwise hold any
            // number of empty documents and sync states in memory).
            let storage = self.hub.storage.clone();
            let user = self.reg.user.to_string();
            let count = blocking(move || storage.count_docs(&user)).await.map_err(|e| self.storage_failed(e))?;
            self.hub
                .admit_provisional(&self.reg.user, doc_id, count)
                .map_err(|e| CloseReason::new(close_code::POLICY, e))?;
            guard.doc = Some(Automerge::new());
            guard.provisional = true;
        }
        let mut state = self.sync_state(doc_id).await?;
        let slot_ref = &mut *guard;
        let Some(doc) = slot_ref.doc.as_mut() else { return Ok(Vec::new()) };
        let before = doc.get_heads();
        if let Err(e) = doc.receive_sync_message(&mut state, message) {
            // The in-memory copy may hold part of it; reload from storage next time.
            slot_ref.loaded = false;
            slot_ref.doc = None;
            if std::mem::take(&mut slot_ref.provisional) {
                self.hub.settle_provisional(&self.reg.user, &doc_id);
            }
            return Err(format!("invalid sync message for {doc_id}: {e}").into());
        }
        let after = doc.get_heads();
        if after != before {
            let chunk = doc.save_after(&before);
            let heads = encode_heads(&after);
            let storage = self.hub.storage.clone();
            let user = self.reg.user.to_string();
            let stored = blocking(move || storage.append(&user, &doc_id, &chunk, &heads)).await;
            match stored {
                Ok(chunks) => {
                    Metrics::inc(&self.hub.metrics.changes_stored);
                    self.hub.note_storage(true);
                    if slot_ref.provisional {
                        slot_ref.provisional = false;
                        self.hub.settle_provisional(&self.reg.user, &doc_id);
                    }
                    if chunks >= COMPACT_AFTER_CHUNKS {
                        let snapshot = doc.save();
                        let storage = self.hub.storage.clone();
                        let user = self.reg.user.to_string();
                        if let Err(e) = blocking(move || storage.compact(&user, &doc_id, &snapshot)).await {
                            tracing::warn!(error = %e, "compaction failed; chunks kept");
                        }
                    }
                    self.hub.notify_others(&self.reg.user, self.reg.id, doc_id);
                }
                Err(e) => {
                    slot_ref.loaded = false;
                    slot_ref.doc = None;
                    if std::mem::take(&mut slot_ref.provisional) {
                        self.hub.settle_provisional(&self.reg.user, &doc_id);
                    }
                    return Err(self.storage_failed(e));
                }
            }
        }
        let reply = doc.generate_sync_message(&mut state);
        drop(guard);
        self.finish(doc_id, state).await?;
        Ok(reply.map(|m| self.session.sync(doc_id, m.encode())).into_iter().collect())
    }

    /// Offers `doc`'s news to this peer (after another device changed it).
    async fn push(&mut self, doc_id: DocumentId) -> Result<Option<Message>, CloseReason> {
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = slot.lock().await;
        if !self.ensure_loaded(&mut guard, doc_id).await? {
            return Ok(None);
        }
        let mut state = self.sync_state(doc_id).await?;
        let reply = guard.doc.as_ref().and_then(|d| d.generate_sync_message(&mut state));
        drop(guard);
        self.finish(doc_id, state).await?;
        Ok(reply.map(|m| self.session.sync(doc_id, m.encode())))
    }

    /// Keeps the state for this connection and persists its shared heads if they moved.
    async fn finish(&mut self, doc: DocumentId, state: sync::State) -> Result<(), CloseReason> {
        let shared = encode_heads(&state.shared_heads);
        if self.persisted.get(&doc) != Some(&shared) {
            let encoded = state.encode();
            let storage = self.hub.storage.clone();
            let (user, device) = (self.reg.user.to_string(), self.sync_peer.clone());
            let heads = shared.clone();
            blocking(move || storage.save_sync_state(&user, &device, &doc, &encoded, &heads))
                .await
                .map_err(|e| self.storage_failed(e))?;
            self.persisted.insert(doc, shared);
        }
        self.states.insert(doc, state);
        Ok(())
    }
}

/// Runs storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::storage::StorageError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("storage task failed: {e}")),
    }
}

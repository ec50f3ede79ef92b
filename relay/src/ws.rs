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

/// Why a connection ends with an error frame.
type CloseReason = String;

struct Connection {
    hub: Arc<Hub>,
    reg: Registration,
    device: String,
    session: PeerSession,
    /// Sync states of the documents this connection has touched.
    states: HashMap<DocumentId, sync::State>,
    /// Shared heads last written to storage, to skip redundant writes.
    persisted: HashMap<DocumentId, EncodedHeads>,
}

pub async fn run(socket: WebSocket, hub: Arc<Hub>, claims: DeviceClaims, reg: Registration) {
    let relay_peer = hub.peer_id.clone();
    let mut conn = Connection {
        hub: hub.clone(),
        reg,
        device: claims.device_id,
        session: PeerSession::new(relay_peer),
        states: HashMap::new(),
        persisted: HashMap::new(),
    };
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(hub.limits.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let signal = conn.reg.signal.clone();

    let close_reason: Option<CloseReason> = loop {
        let outgoing: Result<Vec<Message>, CloseReason> = tokio::select! {
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    None => break None,
                    // A peer that vanishes (app killed, network gone) is not a protocol error.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "connection dropped");
                        break None;
                    }
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        Metrics::inc(&hub.metrics.messages_in);
                        Metrics::add(&hub.metrics.bytes_in, bytes.len() as u64);
                        match Message::decode(&bytes) {
                            Ok(msg) => conn.handle(msg).await,
                            Err(e) => Err(format!("malformed message: {e}")),
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) => break None,
                    Some(Ok(WsMessage::Text(_))) => Err("text frames are not part of the protocol".into()),
                    Some(Ok(_)) => Ok(Vec::new()), // ping/pong
                }
            }
            _ = signal.notify.notified() => {
                let docs: Vec<DocumentId> = signal.changed.lock().map(|mut c| c.drain().collect()).unwrap_or_default();
                let ephemeral: Vec<Message> = signal.ephemeral.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
                let mut out: Vec<Message> = ephemeral.iter().filter_map(|m| conn.session.forward_ephemeral(m)).collect();
                let mut failed = None;
                for doc in docs {
                    match conn.push(doc).await {
                        Ok(Some(m)) => out.push(m),
                        Ok(None) => {}
                        Err(e) => { failed = Some(e); break; }
                    }
                }
                match failed { Some(e) => Err(e), None => Ok(out) }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > hub.limits.idle_timeout {
                    break Some("idle timeout".into());
                }
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    break None;
                }
                Ok(Vec::new())
            }
        };
        match outgoing {
            Ok(messages) => {
                let mut send_failed = false;
                for m in messages {
                    let bytes = m.encode();
                    Metrics::inc(&hub.metrics.messages_out);
                    Metrics::add(&hub.metrics.bytes_out, bytes.len() as u64);
                    if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                        send_failed = true;
                        break;
                    }
                }
                if send_failed {
                    break None;
                }
            }
            Err(reason) => break Some(reason),
        }
    };
    if let Some(reason) = close_reason {
        Metrics::inc(&hub.metrics.protocol_errors);
        tracing::info!(user = %conn.reg.user, device = %conn.device, %reason, "closing connection");
        let _ = sink.send(WsMessage::Binary(Message::Error { message: reason }.encode().into())).await;
    }
    let _ = sink.close().await;
}

impl Connection {
    async fn handle(&mut self, msg: Message) -> Result<Vec<Message>, CloseReason> {
        match self.session.on_message(msg) {
            Action::Joined(peer) => {
                let mut out = vec![peer];
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
                self.hub.forward_ephemeral(&self.reg.user, self.reg.id, &m);
                Ok(Vec::new())
            }
            Action::Ignore => Ok(Vec::new()),
            Action::Close(reason) => Err(reason),
        }
    }

    /// After the handshake: sync every document whose heads moved since this
    /// device's shared heads. An up-to-date device gets nothing.
    async fn offer_changed(&mut self) -> Result<Vec<Message>, CloseReason> {
        let storage = self.hub.storage.clone();
        let user = self.reg.user.to_string();
        let device = self.device.clone();
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
        tracing::error!(error = %e, "storage failure");
        "relay storage failure; retry later".into()
    }

    async fn sync_state(&mut self, doc: DocumentId) -> Result<sync::State, CloseReason> {
        if let Some(s) = self.states.remove(&doc) {
            return Ok(s);
        }
        let storage = self.hub.storage.clone();
        let (user, device) = (self.reg.user.to_string(), self.device.clone());
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
        let message = sync::Message::decode(data).map_err(|e| format!("malformed sync message for {doc_id}: {e}"))?;
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = slot.lock().await;
        if !self.ensure_loaded(&mut guard, doc_id).await? {
            if request {
                Metrics::inc(&self.hub.metrics.docs_unavailable);
                return Ok(vec![self.session.unavailable(doc_id)]);
            }
            let storage = self.hub.storage.clone();
            let user = self.reg.user.to_string();
            let count = blocking(move || storage.count_docs(&user)).await.map_err(|e| self.storage_failed(e))?;
            if count >= self.hub.limits.max_docs_per_user {
                return Err(format!("document limit of {} reached", self.hub.limits.max_docs_per_user));
            }
            guard.doc = Some(Automerge::new());
        }
        let mut state = self.sync_state(doc_id).await?;
        let Some(doc) = guard.doc.as_mut() else { return Ok(Vec::new()) };
        let before = doc.get_heads();
        if let Err(e) = doc.receive_sync_message(&mut state, message) {
            // The in-memory copy may hold part of it; reload from storage next time.
            guard.loaded = false;
            guard.doc = None;
            return Err(format!("invalid sync message for {doc_id}: {e}"));
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
                    guard.loaded = false;
                    guard.doc = None;
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
            let (user, device) = (self.reg.user.to_string(), self.device.clone());
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

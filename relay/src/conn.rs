//! The relay's side of one device connection, sans-IO.
//!
//! [`ConnCore`] is fed decoded messages and returns the messages to send:
//! apply a sync message, store what it added, acknowledge (the reply's
//! heads include it) and signal the user's other connections; at the join,
//! offer the documents whose heads moved since this install last synced.
//! It owns no socket, spawns nothing and reads no clock (`now` is an
//! argument). Storage is the synchronous [`DocStorage`](crate::storage::DocStorage):
//! the tokio adapter (`ws.rs`) calls the core on a blocking thread, except
//! for what need not block (`conn_inline.rs`), and the simulator calls it
//! directly, in a deterministic order, trying the inline path first too.
//!
//! Ordering rule: a change is acknowledged or forwarded only after its
//! append is durable (`DocStorage::append` returned, or a queued append's
//! ticket said so). While a queued append is on its way, nothing generated
//! from that document leaves the relay ([`Storing`](crate::hub::Storing)).
//! If storage fails, the in-memory document is discarded and the
//! connection closed, so nothing unstored is ever acknowledged or forwarded.

use crate::hub::{DocSlot, Hub, Registration};
use crate::metrics::Metrics;
use crate::session::{Action, PeerSession};
use crate::storage::{EncodedHeads, StorageError, encode_heads};
use crate::stored_chunk::Received;
use automerge::Automerge;
use automerge::sync;
use protocol::{DocumentId, Message, automerge_sync, compaction, whole_doc};
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

/// Loaded documents offered after a join that may be in flight at once. A
/// device catching up on 61 months gets them a few at a time, so the relay
/// holds a few loaded (not all 61: megabytes each), and each is loaded once.
const OFFER_WINDOW: usize = 4;
/// An offered document the peer has not brought in sync for this long
/// gives its place in the window to the next one.
const OFFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A document offered after the join and not yet in sync with the peer.
struct Offer {
    at: Instant,
    /// The message's size for a whole offer; 0 for a loaded document.
    whole_bytes: usize,
}

impl Drop for ConnCore {
    /// Whole offers still in flight give their bytes back to the relay's
    /// budget, and the idle sweeper is told memory was freed.
    fn drop(&mut self) {
        let held: usize = self.offering.values().map(|o| o.whole_bytes).sum();
        self.hub.whole_offer_bytes.give_back(held);
        self.hub.connection_ended.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Close codes the relay uses (RFC 6455 section 7.4.1).
pub mod close_code {
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

/// Why a connection ends: an `error` message with `text`, then a close
/// frame with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub text: String,
}

impl CloseReason {
    pub fn new(code: u16, text: impl Into<String>) -> CloseReason {
        CloseReason { code, text: text.into() }
    }
}

/// Protocol errors are the default reason.
impl From<String> for CloseReason {
    fn from(text: String) -> CloseReason {
        CloseReason::new(close_code::PROTOCOL_ERROR, text)
    }
}

fn lock(slot: &Arc<std::sync::Mutex<DocSlot>>) -> MutexGuard<'_, DocSlot> {
    match slot.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The slot's lock if no one holds it (a poisoned lock is taken as
/// `lock` takes it); `None` if it is held.
fn lock_if_free(slot: &Arc<std::sync::Mutex<DocSlot>>) -> Option<MutexGuard<'_, DocSlot>> {
    match slot.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

pub struct ConnCore {
    hub: Arc<Hub>,
    pub reg: Registration,
    pub device: String,
    /// Whom sync states are kept for: this install of the device
    /// (`storage::sync_peer_key`), known after the join.
    sync_peer: String,
    pub session: PeerSession,
    /// Sync states of the documents this connection has touched.
    states: HashMap<DocumentId, sync::State>,
    /// Shared heads last written to storage, to skip redundant writes.
    persisted: HashMap<DocumentId, EncodedHeads>,
    /// Documents past the smallest compaction threshold, with their chunks
    /// since the last snapshot; [`ConnCore::maintain`] compacts those past
    /// their own (see [`protocol::compaction`]).
    compact_due: std::collections::BTreeMap<DocumentId, u64>,
    /// Documents to offer after the join, waiting for a place in the window.
    offer_queue: std::collections::VecDeque<DocumentId>,
    /// Documents offered and not yet in sync with the peer.
    offering: std::collections::BTreeMap<DocumentId, Offer>,
    /// The peer takes whole documents as a first message (said at join).
    takes_whole_offers: bool,
    /// Queued documents this install has no sync state for: offered whole,
    /// from storage, when their turn comes.
    never_synced: std::collections::HashSet<DocumentId>,
    /// Documents offered whole whose answer has not come yet.
    offered_whole: std::collections::HashSet<DocumentId>,
    /// Documents whose sync state moved on an async thread while the
    /// write-behind queue was full: saved by [`ConnCore::maintain`].
    unsaved: std::collections::BTreeSet<DocumentId>,
}

impl ConnCore {
    pub fn new(hub: Arc<Hub>, reg: Registration, device: String) -> ConnCore {
        let session = PeerSession::new(hub.peer_id.clone(), hub.storage_id.clone());
        ConnCore {
            hub,
            reg,
            sync_peer: device.clone(),
            device,
            session,
            states: HashMap::new(),
            persisted: HashMap::new(),
            compact_due: Default::default(),
            offer_queue: Default::default(),
            offering: Default::default(),
            takes_whole_offers: false,
            never_synced: Default::default(),
            offered_whole: Default::default(),
            unsaved: Default::default(),
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Handles one message from the device; returns the replies.
    pub fn handle(&mut self, msg: Message, now: Instant) -> Result<Vec<Message>, CloseReason> {
        match self.session.on_message(msg) {
            Action::Joined { reply, storage_id, takes_whole_offers } => {
                self.takes_whole_offers = takes_whole_offers;
                if let Some(storage_id) = storage_id.as_deref().filter(|s| crate::storage::valid_storage_id(s)) {
                    // A new install of this device starts from no sync state;
                    // the previous installs' states are dropped.
                    self.sync_peer = crate::storage::sync_peer_key(&self.device, Some(storage_id));
                    self.hub
                        .storage
                        .forget_other_installs(&self.reg.user, &self.device, &self.sync_peer)
                        .map_err(|e| self.storage_failed(e))?;
                }
                let mut out = vec![reply];
                out.extend(self.offer_changed(now)?);
                Ok(out)
            }
            Action::Sync { doc, data, request } => {
                let started = Instant::now();
                let out = self.apply(doc, &data, request, now);
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

    /// Whether [`ConnCore::maintain`] has work.
    pub fn has_maintenance(&self) -> bool {
        !self.compact_due.is_empty() || !self.unsaved.is_empty()
    }

    /// Work done after the replies left: compacting documents past the
    /// threshold (a snapshot replaces their chunks). A failure keeps the
    /// chunks, which are complete on their own.
    pub fn maintain(&mut self) {
        for doc_id in std::mem::take(&mut self.unsaved) {
            if let Some(state) = self.states.remove(&doc_id)
                && let Err(reason) = self.finish(doc_id, state)
            {
                tracing::warn!(reason = %reason.text, "sync state not saved");
            }
        }
        for (doc_id, chunks) in std::mem::take(&mut self.compact_due) {
            let slot = self.hub.slot(&self.reg.user, doc_id);
            let mut guard = lock(&slot);
            self.settle(&mut guard, &doc_id);
            let Some(doc) = guard.doc.as_ref().filter(|_| guard.loaded) else { continue };
            let stored_bytes = guard.bytes / crate::hub::MEMORY_PER_STORED_BYTE;
            if chunks < compaction::chunks_before_compaction(stored_bytes as u64) {
                continue; // a later append brings it back
            }
            let snapshot = doc.save();
            if let Err(e) = self.hub.storage.compact(&self.reg.user, &doc_id, &snapshot, guard.seq) {
                tracing::warn!(error = %e, "compaction failed; chunks kept");
            }
        }
    }

    /// Presence messages other devices queued for this one.
    pub fn take_ephemeral(&self) -> Vec<Arc<Message>> {
        self.hub.take_ephemeral(&self.reg.signal)
    }

    /// Documents other devices changed since the last call, in id order (an
    /// order that does not depend on hashing, so runs are reproducible).
    pub fn take_changed(&self) -> Vec<DocumentId> {
        let mut docs: Vec<DocumentId> =
            self.reg.signal.changed.lock().map(|mut c| c.drain().collect()).unwrap_or_default();
        docs.sort();
        docs
    }

    /// After the handshake: sync every document whose heads moved since this
    /// device's shared heads. An up-to-date device gets nothing.
    fn offer_changed(&mut self, now: Instant) -> Result<Vec<Message>, CloseReason> {
        let storage = self.hub.storage.clone();
        let heads = storage.heads(&self.reg.user).map_err(|e| self.storage_failed(e))?;
        let shared = storage.shared_heads(&self.reg.user, &self.sync_peer).map_err(|e| self.storage_failed(e))?;
        let mut changed: Vec<DocumentId> =
            heads.into_iter().filter(|(doc, h)| shared.get(doc) != Some(h)).map(|(doc, _)| doc).collect();
        changed.sort();
        if self.takes_whole_offers {
            self.never_synced.extend(changed.iter().filter(|doc| !shared.contains_key(doc)).copied());
        }
        for (doc, h) in shared {
            self.persisted.insert(doc, h);
        }
        self.offer_queue.extend(changed);
        let mut out = Vec::new();
        self.fill_offer_window(now, &mut out)?;
        Ok(out)
    }

    /// Offers queued documents while the window has room: at most
    /// [`OFFER_WINDOW`] loaded ones, and whole ones up to the limits'
    /// `max_whole_offer_bytes_per_connection` (and `max_whole_offer_bytes`
    /// for all connections).
    fn fill_offer_window(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<(), CloseReason> {
        let stalled: Vec<DocumentId> = self
            .offering
            .iter()
            .filter(|(_, offer)| now.saturating_duration_since(offer.at) >= OFFER_TIMEOUT)
            .map(|(doc, _)| *doc)
            .collect();
        for doc in stalled {
            self.end_offer(&doc);
        }
        while let Some(&doc) = self.offer_queue.front() {
            let whole = self.never_synced.contains(&doc) && !self.states.contains_key(&doc);
            let room = if whole {
                // The window's depth decided the bootstrap's time (400k
                // reviews, old review format): 4 months in flight 8.1 s,
                // 16 months 5.0 s, 8 MiB 4.9–5.2 s, all 61 months 4.1 s.
                let limits = &self.hub.limits;
                let mine: usize = self.offering.values().map(|o| o.whole_bytes).sum();
                mine == 0
                    || (mine < limits.max_whole_offer_bytes_per_connection
                        && self.hub.whole_offer_bytes.in_use() < limits.max_whole_offer_bytes)
            } else {
                self.offering.values().filter(|o| o.whole_bytes == 0).count() < OFFER_WINDOW
            };
            if !room {
                break;
            }
            self.offer_queue.pop_front();
            self.never_synced.remove(&doc);
            let offer = if whole { self.offer_stored(doc, now)? } else { self.push(doc, now)? };
            if let Some(m) = offer {
                let whole_bytes = match &m {
                    Message::Sync { data, .. } if self.offered_whole.contains(&doc) => data.len().max(1),
                    _ => 0,
                };
                self.hub.whole_offer_bytes.take(whole_bytes);
                out.push(m);
                if let Some(replaced) = self.offering.insert(doc, Offer { at: now, whole_bytes }) {
                    self.hub.whole_offer_bytes.give_back(replaced.whole_bytes);
                }
            }
        }
        Ok(())
    }

    /// Ends an offer (in sync, or given up on); returns whether it was one.
    fn end_offer(&mut self, doc: &DocumentId) -> bool {
        match self.offering.remove(doc) {
            Some(offer) => {
                self.hub.whole_offer_bytes.give_back(offer.whole_bytes);
                true
            }
            None => false,
        }
    }

    /// Offers a document this install never synced as its stored chunks,
    /// without loading it (see [`whole_doc::offer_stored`]): a new device
    /// gets each month in one message, and the relay holds none of them
    /// in memory meanwhile. A document whose stored heads do not read
    /// (never expected) is offered the usual way.
    fn offer_stored(&mut self, doc_id: DocumentId, now: Instant) -> Result<Option<Message>, CloseReason> {
        let Some(stored) = self.hub.storage.load(&self.reg.user, &doc_id).map_err(|e| self.storage_failed(e))? else {
            return Ok(None);
        };
        let heads = crate::storage::decode_heads(&stored.heads).filter(|h| !h.is_empty());
        let Some(heads) = heads else { return self.push(doc_id, now) };
        let chunks: Vec<Vec<u8>> = stored.snapshot.into_iter().chain(stored.chunks).collect();
        let (message, state) = whole_doc::offer_stored(heads, chunks);
        self.states.insert(doc_id, state);
        self.offered_whole.insert(doc_id);
        Metrics::inc(&self.hub.metrics.whole_docs_from_storage);
        Ok(Some(self.session.sync(doc_id, message.encode())))
    }

    /// The answer to a whole offer, when it is a plain acknowledgement:
    /// taken without loading the document (see [`whole_doc::take_plain_ack`]).
    /// Returns the messages to send, or `None` when the answer needs the
    /// document (the peer had changes of its own, or asked for something).
    fn take_offer_ack(
        &mut self,
        doc_id: DocumentId,
        message: &sync::Message,
        now: Instant,
    ) -> Result<Option<Vec<Message>>, CloseReason> {
        if !self.offered_whole.remove(&doc_id) {
            return Ok(None);
        }
        let Some(mut state) = self.states.remove(&doc_id) else { return Ok(None) };
        if !whole_doc::take_plain_ack(&mut state, message) {
            self.states.insert(doc_id, state);
            return Ok(None);
        }
        Metrics::inc(&self.hub.metrics.acks_without_doc);
        self.finish(doc_id, state)?;
        let mut out = Vec::new();
        if self.end_offer(&doc_id) || !self.offer_queue.is_empty() {
            self.fill_offer_window(now, &mut out)?;
        }
        Ok(Some(out))
    }

    fn storage_failed(&self, e: impl std::fmt::Display) -> CloseReason {
        Metrics::inc(&self.hub.metrics.storage_errors);
        self.hub.note_storage(false);
        tracing::error!(error = %e, "storage failure");
        CloseReason::new(close_code::INTERNAL, "relay storage failure; retry later")
    }

    fn sync_state(&mut self, doc: DocumentId) -> Result<sync::State, CloseReason> {
        if let Some(s) = self.states.remove(&doc) {
            return Ok(s);
        }
        let stored = self
            .hub
            .storage
            .load_sync_state(&self.reg.user, &self.sync_peer, &doc)
            .map_err(|e| self.storage_failed(e))?;
        Ok(stored.and_then(|b| sync::State::decode(&b).ok()).unwrap_or_default())
    }

    /// Loads the document into the slot if needed. Returns whether it exists.
    fn ensure_loaded(&self, slot: &mut DocSlot, doc: DocumentId, now: Instant) -> Result<bool, CloseReason> {
        if !slot.loaded {
            // Bounded: a crowd of devices arriving at once waits here.
            let _turn = self.hub.begin_load();
            let stored = self.hub.storage.load(&self.reg.user, &doc).map_err(|e| self.storage_failed(e))?;
            slot.doc = match stored {
                None => None,
                Some(stored) => {
                    let mut d = match &stored.snapshot {
                        Some(s) => Automerge::load(s).map_err(|e| self.storage_failed(e))?,
                        None => Automerge::new(),
                    };
                    for chunk in &stored.chunks {
                        d.load_incremental(chunk).map_err(|e| self.storage_failed(e))?;
                    }
                    Metrics::inc(&self.hub.metrics.docs_loaded);
                    let stored_bytes = stored.snapshot.as_ref().map_or(0, Vec::len)
                        + stored.chunks.iter().map(Vec::len).sum::<usize>();
                    slot.bytes = stored_bytes.saturating_mul(crate::hub::MEMORY_PER_STORED_BYTE);
                    slot.seq = stored.seq;
                    Some(d)
                }
            };
            slot.loaded = true;
            // This slot is locked (so never dropped here); others may be.
            self.hub.note_resident_growth(slot.bytes);
        }
        slot.last_used = now;
        Ok(slot.doc.is_some())
    }

    /// [`Hub::settle_storing`] for this connection's user.
    fn settle(&self, slot: &mut DocSlot, doc_id: &DocumentId) {
        self.hub.settle_storing(&self.reg.user, doc_id, slot);
    }

    /// [`Hub::discard`] for this connection's user.
    fn discard(&self, slot: &mut DocSlot, doc_id: &DocumentId) {
        self.hub.discard(&self.reg.user, doc_id, slot);
    }

    /// Applies a peer's sync message, stores what it added, then replies.
    fn apply(
        &mut self,
        doc_id: DocumentId,
        data: &[u8],
        request: bool,
        now: Instant,
    ) -> Result<Vec<Message>, CloseReason> {
        let message = sync::Message::decode(data)
            .map_err(|e| CloseReason::from(format!("malformed sync message for {doc_id}: {e}")))?;
        if !request && let Some(out) = self.take_offer_ack(doc_id, &message, now)? {
            return Ok(out);
        }
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = lock(&slot);
        self.settle(&mut guard, &doc_id);
        if !self.ensure_loaded(&mut guard, doc_id, now)? {
            if request {
                Metrics::inc(&self.hub.metrics.docs_unavailable);
                return Ok(vec![self.session.unavailable(doc_id)]);
            }
            // A new document. It counts against the limit from now on, even if
            // this message stores nothing (a peer could otherwise hold any
            // number of empty documents and sync states in memory).
            let count = self.hub.storage.count_docs(&self.reg.user).map_err(|e| self.storage_failed(e))?;
            self.hub
                .admit_provisional(&self.reg.user, doc_id, count)
                .map_err(|e| CloseReason::new(close_code::POLICY, e))?;
            guard.doc = Some(Automerge::new());
            guard.provisional = true;
        }
        let mut state = self.sync_state(doc_id)?;
        let Some(doc) = guard.doc.as_mut() else { return Ok(Vec::new()) };
        let before = doc.get_heads();
        let received = Received::capture(doc, &message);
        if let Err(e) = automerge_sync::receive(doc, &mut state, message) {
            // The in-memory copy may hold part of it; reload from storage next time.
            self.discard(&mut guard, &doc_id);
            return Err(format!("invalid sync message for {doc_id}: {e}").into());
        }
        let after = doc.get_heads();
        if after != before {
            let chunk = Received::chunk(received, doc, &before);
            let chunk_len = chunk.len();
            match self.hub.storage.append(&self.reg.user, &doc_id, &chunk, &encode_heads(&after), guard.seq) {
                Ok(appended) => {
                    // Contiguous: a gap (another relay's chunk in between)
                    // stays for `Hub::catch_up` to fill.
                    if appended.seq == guard.seq + 1 {
                        guard.seq = appended.seq;
                    }
                    let grown = chunk_len.saturating_mul(crate::hub::MEMORY_PER_STORED_BYTE);
                    guard.bytes = guard.bytes.saturating_add(grown);
                    self.hub.note_resident_growth(grown);
                    if std::mem::take(&mut guard.provisional) {
                        self.hub.settle_provisional(&self.reg.user, &doc_id);
                    }
                    self.stored(doc_id, appended);
                }
                Err(e) => {
                    self.discard(&mut guard, &doc_id);
                    return Err(self.storage_failed(e));
                }
            }
        }
        let reply = match guard.doc.as_ref() {
            Some(doc) => self.reply(doc, doc_id, &mut state)?,
            None => None,
        };
        let in_sync = reply.is_none() || guard.doc.as_ref().map(|d| d.get_heads()) == state.their_heads;
        drop(guard);
        self.finish(doc_id, state)?;
        let mut out: Vec<Message> = reply.map(|m| self.session.sync(doc_id, m.encode())).into_iter().collect();
        if (in_sync && self.end_offer(&doc_id)) || !self.offer_queue.is_empty() {
            self.fill_offer_window(now, &mut out)?;
        }
        Ok(out)
    }

    /// A change is durable: count it, compact later if due, and tell the
    /// user's other connections.
    fn stored(&mut self, doc_id: DocumentId, appended: crate::storage::Appended) {
        Metrics::inc(&self.hub.metrics.changes_stored);
        self.hub.note_storage(true);
        if appended.since_snapshot >= compaction::MIN_CHUNKS {
            // After the reply: saving a heavy month takes milliseconds
            // the acknowledgement should not wait for.
            self.compact_due.insert(doc_id, appended.since_snapshot);
        }
        self.hub.notify_others(&self.reg.user, self.reg.id, doc_id);
    }

    /// The reply to a peer's sync message. To a peer that has none of the
    /// document, the stored bytes go out as they are when they are one saved
    /// document of exactly this version (see [`protocol::whole_doc`]); else
    /// automerge generates it.
    fn reply(
        &self,
        doc: &Automerge,
        doc_id: DocumentId,
        state: &mut sync::State,
    ) -> Result<Option<sync::Message>, CloseReason> {
        if whole_doc::wants_whole_document(doc, state) {
            let stored = self.hub.storage.load(&self.reg.user, &doc_id).map_err(|e| self.storage_failed(e))?;
            let saved = stored.and_then(|s| whole_doc::one_blob(s.snapshot, s.chunks));
            if let Some(message) = saved.and_then(|saved| whole_doc::reply_with_saved(doc, state, saved)) {
                Metrics::inc(&self.hub.metrics.whole_docs_from_storage);
                return Ok(Some(message));
            }
        }
        Ok(automerge_sync::generate(doc, state))
    }

    /// Offers `doc`'s news to this peer (after another device changed it).
    pub fn push(&mut self, doc_id: DocumentId, now: Instant) -> Result<Option<Message>, CloseReason> {
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = lock(&slot);
        self.settle(&mut guard, &doc_id);
        if !self.ensure_loaded(&mut guard, doc_id, now)? {
            return Ok(None);
        }
        let mut state = self.sync_state(doc_id)?;
        let reply = guard.doc.as_ref().and_then(|d| automerge_sync::generate(d, &mut state));
        drop(guard);
        self.finish(doc_id, state)?;
        Ok(reply.map(|m| self.session.sync(doc_id, m.encode())))
    }

    /// Keeps the state for this connection and persists its shared heads if they moved.
    fn finish(&mut self, doc: DocumentId, state: sync::State) -> Result<(), CloseReason> {
        let shared = encode_heads(&state.shared_heads);
        if self.persisted.get(&doc) != Some(&shared) {
            let encoded = state.encode();
            self.hub
                .storage
                .save_sync_state(&self.reg.user, &self.sync_peer, &doc, &encoded, &shared)
                .map_err(|e: StorageError| self.storage_failed(e))?;
            self.persisted.insert(doc, shared);
        }
        self.states.insert(doc, state);
        Ok(())
    }
}

#[path = "conn_inline.rs"]
mod inline;
pub use inline::{Inline, StoringChange};

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

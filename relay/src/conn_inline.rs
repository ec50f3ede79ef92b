//! The part of [`ConnCore`]'s work that need not hold a thread while it
//! waits on storage, done where it arrives.
//!
//! Most messages under load are a change to store, acknowledgements (a
//! sync message with no changes for a document the relay holds) and
//! pushes of a change to the user's other devices. Each cost a hop to a
//! blocking thread and back: under the 200-pair load that hop was about a
//! fifth of the relay's CPU (wake-ups of the blocking pool and of the
//! connection task; 40 futex calls per edit). Here they are done on the
//! caller's thread when nothing on the way can block: the document is
//! loaded, small, and its lock free, this connection holds its sync state,
//! nothing needs reading from storage, and the sync state is queued only
//! if the writer's queue has room now. Anything else is handed back for
//! [`ConnCore::handle`] / [`ConnCore::push`] on a blocking thread,
//! untouched.
//!
//! A change is applied in memory and its append queued
//! ([`DocStorage::try_append_queued`](crate::storage::DocStorage::try_append_queued));
//! the caller awaits the append's ticket with no lock held and only then
//! finishes ([`ConnCore::finish_change`]): the acknowledgement and the
//! forward still leave only once the change is durable. Meanwhile the
//! document's [`Storing`](crate::hub::Storing) mark keeps everyone else
//! from sending anything generated from it.

use super::{CloseReason, ConnCore, lock_if_free};
use crate::hub::{DocSlot, Storing};
use crate::metrics::Metrics;
use crate::session::Action;
use crate::storage::{AppendTicket, Appended, EncodedHeads, StorageError, encode_heads};
use crate::stored_chunk::Received;
use automerge::sync;
use protocol::{DocumentId, Message, automerge_sync};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Largest document (estimated memory, as [`DocSlot::bytes`](crate::hub::DocSlot))
/// worked on inline. Generating a message for a big document can take
/// milliseconds (a push after another device uploaded a month re-encodes
/// every change of it), which would stall the other connections sharing
/// this runtime thread; those go to a blocking thread as before. 1 MiB is
/// about 85 KiB stored, a month of some 3,500 reviews.
const INLINE_MAX_DOC_BYTES: usize = 1 << 20;

/// Largest set of changes applied inline. Applying a message's changes
/// takes time in proportion to them (a device's first upload of a month
/// is hundreds of kilobytes); an edit or a few are a few hundred bytes.
const INLINE_MAX_CHANGE_BYTES: usize = 64 << 10;

/// What [`ConnCore::handle_inline`] did with a message.
pub enum Inline {
    /// Handled: the replies, or why the connection ends.
    Done(Result<Vec<Message>, CloseReason>),
    /// It may wait on storage: give it to [`ConnCore::handle`] on a thread
    /// that may block. Nothing was changed.
    Blocking(Message),
    /// A change applied in memory whose append is on its way: await its
    /// ticket ([`StoringChange::take_ticket`]), then [`ConnCore::finish_change`];
    /// without a ticket (the queue had no room), [`ConnCore::store_and_finish`]
    /// on a thread that may block.
    Storing(Box<StoringChange>),
}

/// A change [`ConnCore::handle_inline`] applied to the document in memory,
/// with what answers it once its append is durable.
pub struct StoringChange {
    doc_id: DocumentId,
    /// Held so the document stays loaded (eviction skips shared slots).
    _slot: Arc<Mutex<DocSlot>>,
    storing: Arc<Storing>,
    chunk: Vec<u8>,
    heads: EncodedHeads,
    ticket: Option<AppendTicket>,
    state: Option<sync::State>,
    reply: Option<sync::Message>,
    in_sync: bool,
    started: Instant,
    ended: bool,
}

impl StoringChange {
    /// The append's ticket; `None` when the queue had no room for it.
    pub fn take_ticket(&mut self) -> Option<AppendTicket> {
        self.ticket.take()
    }

    fn end(&mut self, stored: bool) {
        if !std::mem::replace(&mut self.ended, true) {
            self.storing.end(stored);
        }
    }
}

impl Drop for StoringChange {
    /// Dropped unfinished (the connection's task ended while it waited):
    /// the outcome is unknown, so the document is reloaded by its next user.
    fn drop(&mut self) {
        self.end(false);
    }
}

impl ConnCore {
    /// Handles `msg` now if that cannot wait on storage (see the module
    /// doc); otherwise hands it back unchanged. Either way the outcome is
    /// the one [`ConnCore::handle`] gives.
    pub fn handle_inline(&mut self, msg: Message, now: Instant) -> Inline {
        let Message::Sync { document_id: doc_id, data, .. } = &msg else { return Inline::Blocking(msg) };
        let doc_id = *doc_id;
        let quick = self.session.is_ready()
            && self.offer_queue.is_empty()
            && !self.offered_whole.contains(&doc_id)
            && self.states.contains_key(&doc_id);
        if !quick {
            return Inline::Blocking(msg);
        }
        // Heads to reply to (a peer with none may be sent the stored
        // document: a read), and changes only where their append can be
        // queued.
        let message = match sync::Message::decode(data) {
            Ok(m)
                if !m.heads.is_empty()
                    && (m.changes.is_empty()
                        || (self.hub.storage.queues_appends()
                            && m.changes.iter().map(<[u8]>::len).sum::<usize>() <= INLINE_MAX_CHANGE_BYTES)) =>
            {
                m
            }
            _ => return Inline::Blocking(msg),
        };
        let has_changes = !message.changes.is_empty();
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let Some(mut guard) = lock_if_free(&slot) else { return Inline::Blocking(msg) };
        if !guard.loaded
            || guard.doc.is_none()
            || guard.bytes > INLINE_MAX_DOC_BYTES
            || (has_changes && guard.provisional)
            || !guard.storing.settled()
        {
            return Inline::Blocking(msg);
        }
        // Committed to handling it here.
        if !matches!(self.session.on_message(msg), Action::Sync { request: false, .. }) {
            // Unreachable: a ready session turns every sync message into this.
            return Inline::Done(Err(CloseReason::from(format!("unexpected sync message for {doc_id}"))));
        }
        let started = Instant::now();
        guard.last_used = now;
        let Some(mut state) = self.states.remove(&doc_id) else { return Inline::Done(Ok(Vec::new())) };
        let Some(doc) = guard.doc.as_mut() else { return Inline::Done(Ok(Vec::new())) };
        let before = doc.get_heads();
        let received = Received::capture(doc, &message);
        if let Err(e) = automerge_sync::receive(doc, &mut state, message) {
            self.discard(&mut guard, &doc_id);
            return Inline::Done(Err(format!("invalid sync message for {doc_id}: {e}").into()));
        }
        let after = doc.get_heads();
        let chunk = (after != before).then(|| Received::chunk(received, doc, &before));
        let reply = automerge_sync::generate(doc, &mut state);
        let in_sync = reply.is_none() || Some(after.clone()) == state.their_heads;
        if let Some(chunk) = chunk {
            let grown = chunk.len().saturating_mul(crate::hub::MEMORY_PER_STORED_BYTE);
            guard.bytes = guard.bytes.saturating_add(grown);
            guard.storing.begin();
            let storing = guard.storing.clone();
            drop(guard);
            // Evicts other documents if over budget; this one is shared, so kept.
            self.hub.note_resident_growth(grown);
            let heads = encode_heads(&after);
            let mut change = StoringChange {
                doc_id,
                _slot: slot.clone(),
                storing,
                chunk,
                heads,
                ticket: None,
                state: Some(state),
                reply,
                in_sync,
                started,
                ended: false,
            };
            match self.hub.storage.try_append_queued(&self.reg.user, &doc_id, &change.chunk, &change.heads) {
                Ok(ticket) => change.ticket = ticket,
                Err(e) => {
                    change.end(false);
                    return Inline::Done(Err(self.storage_failed(e)));
                }
            }
            return Inline::Storing(Box::new(change));
        }
        drop(guard);
        Inline::Done(self.answer(doc_id, state, reply, in_sync, started, now))
    }

    /// Finishes a change once its append's outcome is known: the
    /// acknowledgement and the forward to the user's other devices go only
    /// if it is durable; otherwise the connection ends, as in
    /// [`ConnCore::handle`], and the document is reloaded by its next user.
    pub fn finish_change(
        &mut self,
        mut change: Box<StoringChange>,
        stored: Result<Appended, StorageError>,
        now: Instant,
    ) -> Result<Vec<Message>, CloseReason> {
        change.end(stored.is_ok());
        let appended = stored.map_err(|e| self.storage_failed(e))?;
        self.stored(change.doc_id, appended);
        let Some(state) = change.state.take() else { return Ok(Vec::new()) };
        self.answer(change.doc_id, state, change.reply.take(), change.in_sync, change.started, now)
    }

    /// [`ConnCore::finish_change`] for a driver that does not await: the
    /// append is made here, waiting for room and for its commit, when the
    /// queue had no room for it (a blocking call); a ticket must be
    /// answered already (storage that writes at once, as the simulator's).
    pub fn store_and_finish(
        &mut self,
        mut change: Box<StoringChange>,
        now: Instant,
    ) -> Result<Vec<Message>, CloseReason> {
        let stored = match change.take_ticket() {
            Some(mut ticket) => ticket
                .try_take()
                .unwrap_or_else(|| Err(StorageError::Writer("append still queued where it cannot be awaited".into()))),
            None => self.hub.storage.append(&self.reg.user, &change.doc_id, &change.chunk, &change.heads, 0),
        };
        self.finish_change(change, stored, now)
    }

    /// Keeps the sync state and builds the answer to a message handled here.
    fn answer(
        &mut self,
        doc_id: DocumentId,
        state: sync::State,
        reply: Option<sync::Message>,
        in_sync: bool,
        started: Instant,
        now: Instant,
    ) -> Result<Vec<Message>, CloseReason> {
        self.finish_without_waiting(doc_id, state)?;
        let mut out: Vec<Message> = reply.map(|m| self.session.sync(doc_id, m.encode())).into_iter().collect();
        // The offer queue is empty (a condition for handling it here), so
        // this reads nothing.
        if in_sync && self.end_offer(&doc_id) {
            self.fill_offer_window(now, &mut out)?;
        }
        self.hub.metrics.sync_apply_seconds.observe(started.elapsed());
        Metrics::inc(&self.hub.metrics.handled_inline);
        Ok(out)
    }

    /// [`ConnCore::push`] if it cannot wait on storage; `None` (nothing
    /// done) when it may, for `push` on a blocking thread.
    pub fn push_inline(&mut self, doc_id: DocumentId, now: Instant) -> Option<Result<Option<Message>, CloseReason>> {
        if !self.states.contains_key(&doc_id) {
            return None;
        }
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = lock_if_free(&slot)?;
        if !guard.loaded || guard.bytes > INLINE_MAX_DOC_BYTES || !guard.storing.settled() {
            return None;
        }
        guard.last_used = now;
        if guard.doc.is_none() {
            return Some(Ok(None));
        }
        let mut state = self.states.remove(&doc_id)?;
        let reply = guard.doc.as_ref().and_then(|d| automerge_sync::generate(d, &mut state));
        drop(guard);
        if let Err(reason) = self.finish_without_waiting(doc_id, state) {
            return Some(Err(reason));
        }
        Metrics::inc(&self.hub.metrics.handled_inline);
        Some(Ok(reply.map(|m| self.session.sync(doc_id, m.encode()))))
    }

    /// [`ConnCore::finish`] that queues the sync state only if the queue
    /// has room now; else [`ConnCore::maintain`] saves it on a blocking
    /// thread. A storage failure ends the connection, as in `finish`.
    fn finish_without_waiting(&mut self, doc: DocumentId, state: sync::State) -> Result<(), CloseReason> {
        let shared = encode_heads(&state.shared_heads);
        if self.persisted.get(&doc) != Some(&shared) {
            let encoded = state.encode();
            let queued = self
                .hub
                .storage
                .try_save_sync_state(&self.reg.user, &self.sync_peer, &doc, &encoded, &shared)
                .map_err(|e| self.storage_failed(e))?;
            if queued {
                self.persisted.insert(doc, shared);
                self.unsaved.remove(&doc);
            } else {
                self.unsaved.insert(doc);
            }
        }
        self.states.insert(doc, state);
        Ok(())
    }
}

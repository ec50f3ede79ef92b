//! The part of [`ConnCore`]'s work that cannot wait on storage, done where
//! it arrives.
//!
//! Most messages under load are acknowledgements (a sync message with no
//! changes for a document the relay holds) and pushes of a change to the
//! user's other devices. Neither stores anything but a write-behind sync
//! state, yet each cost a hop to a blocking thread and back: under the
//! 200-pair load that hop was about a fifth of the relay's CPU (wake-ups of
//! the blocking pool and of the connection task; 40 futex calls per edit).
//! Here they are done on the caller's thread when nothing on the way can
//! wait: the document is loaded, small, and its lock free, this connection
//! holds its sync state, nothing needs reading from storage, and the sync
//! state is queued only if the writer's queue has room now. Anything else is handed
//! back for [`ConnCore::handle`] / [`ConnCore::push`] on a blocking thread,
//! untouched.

use super::{CloseReason, ConnCore, lock_if_free};
use crate::metrics::Metrics;
use crate::session::Action;
use crate::storage::encode_heads;
use automerge::sync::{self, SyncDoc};
use protocol::{DocumentId, Message};
use std::time::Instant;

/// Largest document (estimated memory, as [`DocSlot::bytes`](crate::hub::DocSlot))
/// worked on inline. Generating a message for a big document can take
/// milliseconds (a push after another device uploaded a month re-encodes
/// every change of it), which would stall the other connections sharing
/// this runtime thread; those go to a blocking thread as before. 1 MiB is
/// about 85 KiB stored, a month of some 3,500 reviews.
const INLINE_MAX_DOC_BYTES: usize = 1 << 20;

/// What [`ConnCore::handle_inline`] did with a message.
pub enum Inline {
    /// Handled: the replies, or why the connection ends.
    Done(Result<Vec<Message>, CloseReason>),
    /// It may wait on storage: give it to [`ConnCore::handle`] on a thread
    /// that may block. Nothing was changed.
    Blocking(Message),
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
        // No changes to store, and heads to reply to: a peer with no heads
        // may be sent the stored document (a read).
        let message = match sync::Message::decode(data) {
            Ok(m) if m.changes.is_empty() && !m.heads.is_empty() => m,
            _ => return Inline::Blocking(msg),
        };
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let Some(mut guard) = lock_if_free(&slot) else { return Inline::Blocking(msg) };
        if !guard.loaded || guard.doc.is_none() || guard.bytes > INLINE_MAX_DOC_BYTES {
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
        if let Err(e) = doc.receive_sync_message(&mut state, message) {
            self.discard(&mut guard, &doc_id);
            return Inline::Done(Err(format!("invalid sync message for {doc_id}: {e}").into()));
        }
        let reply = doc.generate_sync_message(&mut state);
        let in_sync = reply.is_none() || Some(doc.get_heads()) == state.their_heads;
        drop(guard);
        if let Err(reason) = self.finish_without_waiting(doc_id, state) {
            return Inline::Done(Err(reason));
        }
        let mut out: Vec<Message> = reply.map(|m| self.session.sync(doc_id, m.encode())).into_iter().collect();
        // The offer queue is empty, so this reads nothing.
        if in_sync
            && self.end_offer(&doc_id)
            && let Err(reason) = self.fill_offer_window(now, &mut out)
        {
            return Inline::Done(Err(reason));
        }
        self.hub.metrics.sync_apply_seconds.observe(started.elapsed());
        Metrics::inc(&self.hub.metrics.handled_inline);
        Inline::Done(Ok(out))
    }

    /// [`ConnCore::push`] if it cannot wait on storage; `None` (nothing
    /// done) when it may, for `push` on a blocking thread.
    pub fn push_inline(&mut self, doc_id: DocumentId, now: Instant) -> Option<Result<Option<Message>, CloseReason>> {
        if !self.states.contains_key(&doc_id) {
            return None;
        }
        let slot = self.hub.slot(&self.reg.user, doc_id);
        let mut guard = lock_if_free(&slot)?;
        if !guard.loaded || guard.bytes > INLINE_MAX_DOC_BYTES {
            return None;
        }
        guard.last_used = now;
        if guard.doc.is_none() {
            return Some(Ok(None));
        }
        let mut state = self.states.remove(&doc_id)?;
        let reply = guard.doc.as_ref().and_then(|d| d.generate_sync_message(&mut state));
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

//! Several relays on one database: bringing loaded documents up to date
//! with chunks other relays stored (see `follow_other_relays` in
//! `server.rs`, which calls these on announcements and on a timer).

use super::{DocKey, DocSlot, Hub, MEMORY_PER_STORED_BYTE};
use crate::metrics::Metrics;
use protocol::DocumentId;
use std::sync::{Arc, Mutex};

impl Hub {
    /// Another relay stored a chunk of `doc` with this seq (shared storage):
    /// a loaded copy catches up, and this relay's connections of the user
    /// are told, so they sync it to their devices. A document this relay
    /// has not loaded is loaded fresh by the connections that need it.
    pub fn on_stored_change(&self, user: &str, doc: DocumentId, seq: u64) {
        let user: Arc<str> = Arc::from(user);
        let slot = self.docs_map().get(&(user.clone(), doc)).cloned();
        let changed = match slot {
            Some(slot) => self.catch_up(&user, doc, &slot, Some(seq)),
            None => true,
        };
        if changed {
            self.notify_others(&user, u64::MAX, doc);
        }
    }

    /// Catches every loaded document up (after announcements may have been
    /// missed, and on a slow timer). Returns how many changed.
    pub fn catch_up_all(&self) -> usize {
        let slots: Vec<(DocKey, Arc<Mutex<DocSlot>>)> =
            self.docs_map().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut changed = 0;
        for ((user, doc), slot) in slots {
            if self.catch_up(&user, doc, &slot, None) {
                self.notify_others(&user, u64::MAX, doc);
                changed += 1;
            }
        }
        changed
    }

    /// Applies what other relays stored after the slot's seq. Returns
    /// whether the document changed (or must be reloaded).
    fn catch_up(&self, user: &Arc<str>, doc: DocumentId, slot: &Arc<Mutex<DocSlot>>, known: Option<u64>) -> bool {
        let mut guard = match slot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.settle_storing(user, &doc, &mut guard);
        if !guard.loaded {
            // Not in memory (a lookup's empty slot, or one discarded): the
            // connections that need it load it fresh, once told.
            return known.is_some();
        }
        if known.is_some_and(|seq| seq <= guard.seq) {
            return false;
        }
        let catch_up = match self.storage.changes_after(user, &doc, guard.seq) {
            Ok(Some(c)) if c.seq > guard.seq => c,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch up with another relay's changes; the next attempt will");
                return false;
            }
        };
        let slot = &mut *guard;
        let Some(d) = slot.doc.as_mut() else {
            // The document did not exist when this slot was loaded: load it afresh.
            slot.loaded = false;
            return true;
        };
        let before = d.get_heads();
        let mut grown = 0usize;
        for bytes in catch_up.snapshot.iter().chain(catch_up.chunks.iter()) {
            if let Err(e) = d.load_incremental(bytes) {
                tracing::warn!(error = %e, "a stored chunk did not apply; the document is reloaded on next use");
                if !slot.provisional {
                    slot.loaded = false;
                    slot.doc = None;
                }
                return true;
            }
            grown += bytes.len();
        }
        slot.seq = catch_up.seq;
        let grown = grown.saturating_mul(MEMORY_PER_STORED_BYTE);
        slot.bytes = slot.bytes.saturating_add(grown);
        self.note_resident_growth(grown);
        let after = d.get_heads();
        if catch_up.heads_unknown
            && let Err(e) = self.storage.record_heads(user, &doc, catch_up.seq, &crate::storage::encode_heads(&after))
        {
            tracing::debug!(error = %e, "could not record heads after catching up");
        }
        Metrics::inc(&self.metrics.catch_ups);
        after != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::storage::MemStorage;

    #[test]
    fn an_announcement_for_a_document_not_in_memory_tells_the_users_connections() {
        let hub = Arc::new(Hub::new(Arc::new(MemStorage::new("s")), Limits::default(), "relay".into()));
        let alice = hub.register("alice").expect("register");
        let bob = hub.register("bob").expect("register");
        let doc = DocumentId::derive(&["month"]);
        // A slot exists (a lookup made it) but holds no document.
        let _ = hub.slot(&alice.user, doc);
        hub.on_stored_change("alice", doc, 5);
        assert!(alice.signal.changed.lock().expect("lock").contains(&doc), "alice's connection loads it fresh");
        assert!(bob.signal.changed.lock().expect("lock").is_empty(), "nobody else hears of it");
        // A document this relay never saw: the same.
        let other = DocumentId::derive(&["other"]);
        hub.on_stored_change("alice", other, 1);
        assert!(alice.signal.changed.lock().expect("lock").contains(&other));
    }
}

//! Sync states waiting for a storage's writer, the latest per (user,
//! install, document), readable until committed. Shared by the SQLite
//! writer thread and the PostgreSQL sync-state task.

use super::EncodedHeads;
use crate::budget::BlockingBudget;
use protocol::DocumentId;
use std::collections::HashMap;
use std::sync::Mutex;

/// A sync state waiting for the writer.
#[derive(Clone)]
pub(super) struct PendingState {
    pub(super) state: Vec<u8>,
    pub(super) shared_heads: EncodedHeads,
}

impl PendingState {
    pub(super) fn size(&self) -> usize {
        PendingStates::size_of(&self.state, &self.shared_heads)
    }
}

/// A pending sync state as the writer saves it.
pub(super) struct StateRow {
    pub(super) user: String,
    pub(super) device: String,
    pub(super) doc: DocumentId,
    pub(super) state: PendingState,
}

/// Pending states by user, then device (install), then document. A save
/// looks its key up by reference (no key is allocated once its user and
/// device have one), and a join reads one install's states without
/// scanning anyone else's.
#[derive(Default)]
struct ByPeer(HashMap<String, HashMap<String, HashMap<DocumentId, PendingState>>>);

impl ByPeer {
    fn insert(&mut self, user: &str, device: &str, doc: DocumentId, state: PendingState) -> Option<PendingState> {
        if !self.0.contains_key(user) {
            self.0.insert(user.to_owned(), HashMap::new());
        }
        let devices = self.0.get_mut(user)?;
        if !devices.contains_key(device) {
            devices.insert(device.to_owned(), HashMap::new());
        }
        devices.get_mut(device)?.insert(doc, state)
    }

    fn docs(&self, user: &str, device: &str) -> Option<&HashMap<DocumentId, PendingState>> {
        self.0.get(user)?.get(device)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn rows(&self) -> Vec<StateRow> {
        let mut rows = Vec::new();
        for (user, devices) in &self.0 {
            for (device, docs) in devices {
                for (doc, state) in docs {
                    let (user, device) = (user.clone(), device.clone());
                    rows.push(StateRow { user, device, doc: *doc, state: state.clone() });
                }
            }
        }
        rows
    }
}

/// Sync states waiting for the writer, the latest per (user, device,
/// document). SQLite writes them behind, `STATES_DELAY` after the first of
/// them (sooner before a flush or a forget, or when a saver waits for room).
/// Under load a device's state moved on every message and each save was a
/// queued request, a wake-up of the writer and a row written in the next
/// commit; now a later save replaces the earlier one in memory, and saving
/// wakes the writer only when it sleeps with no deadline. Reads of sync
/// states look here first, so a reconnect sees the latest.
#[derive(Default)]
pub(super) struct PendingStates {
    inner: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    states: ByPeer,
    /// States taken by the writer and not yet committed: still read from
    /// here (after `states`), or a reconnect in that window would find its
    /// install's states neither here nor in the database and be taken for
    /// a new install.
    writing: ByPeer,
    /// The writer sleeps with no deadline: the next save must wake it.
    writer_asleep: bool,
}

/// What a save must do after putting its state in.
pub(super) enum AfterSave {
    Nothing,
    /// Send [`WriteRequest::Wake`].
    Wake,
}

impl PendingStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Puts a state in, replacing an older one of the same key, whose bytes
    /// go back to `budget` (the caller reserved this one's, see
    /// [`PendingStates::size_of`]). Returns whether the writer needs waking.
    pub(super) fn put(
        &self,
        budget: &BlockingBudget,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> AfterSave {
        let s = PendingState { state: state.to_vec(), shared_heads: shared_heads.clone() };
        let mut pending = self.lock();
        let replaced = pending.states.insert(user, device, *doc, s);
        let wake = if std::mem::take(&mut pending.writer_asleep) { AfterSave::Wake } else { AfterSave::Nothing };
        drop(pending);
        budget.release(replaced.map_or(0, |r| r.size()));
        wake
    }

    /// Bytes a state of this size holds while pending.
    pub(super) fn size_of(state: &[u8], shared_heads: &EncodedHeads) -> usize {
        128 + state.len() + shared_heads.len()
    }

    /// The pending state of one key, if any (the latest: a state being
    /// written is older than one saved since).
    pub(super) fn get(&self, user: &str, device: &str, doc: &DocumentId) -> Option<Vec<u8>> {
        let pending = self.lock();
        let find = |by: &ByPeer| by.docs(user, device).and_then(|docs| docs.get(doc)).map(|s| s.state.clone());
        find(&pending.states).or_else(|| find(&pending.writing))
    }

    /// Pending shared heads of (user, device), the latest per document.
    pub(super) fn shared_heads(&self, user: &str, device: &str) -> HashMap<DocumentId, EncodedHeads> {
        let pending = self.lock();
        let mut heads = HashMap::new();
        // Oldest first, so the latest is kept.
        for by in [&pending.writing, &pending.states] {
            for (doc, s) in by.docs(user, device).into_iter().flatten() {
                heads.insert(*doc, s.shared_heads.clone());
            }
        }
        heads
    }

    /// Everything pending, to write, and its bytes. The states stay
    /// readable until [`PendingStates::written`].
    pub(super) fn take(&self) -> (Vec<StateRow>, usize) {
        let mut pending = self.lock();
        let taken = std::mem::take(&mut pending.states);
        let rows = taken.rows();
        pending.writing = taken;
        drop(pending);
        let bytes = rows.iter().map(|r| r.state.size()).sum();
        (rows, bytes)
    }

    /// The states last taken are committed (or failed, which loses them
    /// as a crash would): no longer read from memory.
    pub(super) fn written(&self) {
        let old = std::mem::take(&mut self.lock().writing);
        drop(old); // freed outside the lock
    }

    /// Called by the writer before it sleeps: true if states are pending
    /// (sleep until they are due); else marks it asleep, so the next save
    /// wakes it.
    pub(super) fn sleep_until_woken(&self) -> bool {
        let mut pending = self.lock();
        let any = !pending.states.is_empty();
        pending.writer_asleep = !any;
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> DocumentId {
        DocumentId::derive(&["u", "d"])
    }

    fn read(p: &PendingStates) -> (Option<Vec<u8>>, HashMap<DocumentId, EncodedHeads>) {
        (p.get("u", "phone", &doc()), p.shared_heads("u", "phone"))
    }

    /// Between the writer taking the pending states and its commit, they
    /// are in neither place unless kept readable: a device reconnecting
    /// then was taken for a new install (found by `tests/tests/sync.rs`
    /// under load).
    #[test]
    fn states_being_written_stay_readable_until_committed_and_newer_ones_win() {
        let p = PendingStates::default();
        let budget = BlockingBudget::new(1 << 20);
        let put = |user: &str, device: &str, state: &[u8], heads: u8| {
            budget.reserve(PendingStates::size_of(state, &vec![heads; 32]));
            p.put(&budget, user, device, &doc(), state, &vec![heads; 32]);
        };
        put("u", "phone", b"old", 1);
        let (taken, bytes) = p.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(bytes, PendingStates::size_of(b"old", &vec![1; 32]));
        assert_eq!(read(&p), (Some(b"old".to_vec()), HashMap::from([(doc(), vec![1; 32])])));

        put("u", "phone", b"new", 2);
        assert_eq!(budget.in_use(), 2 * bytes, "the state being written still holds its bytes");
        assert_eq!(read(&p), (Some(b"new".to_vec()), HashMap::from([(doc(), vec![2; 32])])));
        p.written();
        assert_eq!(read(&p).0, Some(b"new".to_vec()), "the newer one is still pending");

        // Another install of the same device, and another user: not read.
        put("u", "tablet", b"tablet's", 3);
        put("v", "phone", b"v's", 4);
        put("v", "phone", b"v's, newer", 4);
        assert_eq!(
            budget.in_use(),
            2 * bytes
                + PendingStates::size_of(b"tablet's", &vec![3; 32])
                + PendingStates::size_of(b"v's, newer", &vec![4; 32]),
            "a replaced state gives its bytes back"
        );
        assert_eq!(read(&p), (Some(b"new".to_vec()), HashMap::from([(doc(), vec![2; 32])])));

        let (taken, _) = p.take();
        assert_eq!(taken.len(), 3);
        p.written();
        assert_eq!(read(&p), (None, HashMap::new()), "once committed, read from the database");
    }
}

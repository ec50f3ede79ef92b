//! automerge's `receive_sync_message`, step for step through its public
//! API, except that the record of changes sent to the peer is trimmed by a
//! walk that stops once the record is empty (automerge walks the whole
//! history for every message).

use automerge::sync::{self, Capability, MessageFlags, SyncDoc};
use automerge::{Automerge, AutomergeError, ChangeHash};
use std::collections::{BTreeSet, HashSet};

/// Applies a peer's sync message to `doc` and `state` as automerge's
/// `receive_sync_message` does: the same changes applied, the same error,
/// the same state after it (also after an error: automerge has updated the
/// flags' part of the state by then, and so has this).
pub fn receive(doc: &mut Automerge, state: &mut sync::State, message: sync::Message) -> Result<(), AutomergeError> {
    state.in_flight = false;
    let before_heads = doc.get_heads();
    let sync::Message { heads, changes, need, have, flags, .. } = message;

    if let Some(flags) = flags {
        // A peer that sends flags speaks V2 messages.
        let mut capabilities = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }

    let changes_is_empty = changes.is_empty();
    if !changes_is_empty && !state.read_only {
        // One chunk (the usual case) is loaded where it lies.
        if changes.len() == 1 {
            for chunk in changes.iter() {
                doc.load_incremental(chunk)?;
            }
        } else {
            doc.load_incremental(&changes.iter().flatten().copied().collect::<Vec<u8>>())?;
        }
        state.shared_heads = advance_heads(&before_heads, &doc.get_heads(), &state.shared_heads);
    }

    forget_acknowledged(doc, &heads, &mut state.sent_hashes);

    if changes_is_empty && heads == before_heads {
        state.last_sent_heads.clone_from(&heads);
    }

    let known: Vec<ChangeHash> = heads.iter().filter(|head| has_change(doc, head)).copied().collect();
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        // A peer that lost all its data is synced from scratch.
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = BTreeSet::new();
        }
    } else {
        let mut shared: Vec<ChangeHash> = state.shared_heads.iter().copied().chain(known).collect();
        shared.sort();
        shared.dedup();
        state.shared_heads = shared;
    }

    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(())
}

/// Whether `doc` has applied the change `hash` (a change waiting for its
/// dependencies does not count, as in automerge's `has_change`).
fn has_change(doc: &Automerge, hash: &ChangeHash) -> bool {
    doc.get_change_meta_by_hash(hash).is_some()
}

/// Changes the walk in [`forget_acknowledged`] visits before it hands the
/// rest to automerge's own walk.
const WALK_BUDGET: usize = 64;

/// Removes from `sent` every change the peer has, by its heads: the heads'
/// ancestors. automerge walks all of them; this stops when `sent` is
/// empty, which is where it usually starts (nothing was sent since the
/// peer's last acknowledgement) or soon after (what was sent is recent:
/// usually a head itself). A sent change the peer does not have would keep
/// the walk going through the whole history, and this walk's steps cost
/// more than automerge's (a public lookup per change), so past
/// [`WALK_BUDGET`] changes automerge's own walk finishes the job: the
/// worst case costs automerge's plus the budget. The changes left are the
/// same either way.
fn forget_acknowledged(doc: &mut Automerge, heads: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    let mut to_visit: Vec<ChangeHash> = heads.to_vec();
    let mut visited = HashSet::new();
    while !sent.is_empty() {
        let Some(hash) = to_visit.pop() else { return };
        if visited.len() >= WALK_BUDGET {
            return automerge_walk(doc, heads, sent);
        }
        if !visited.insert(hash) {
            continue;
        }
        // Unknown heads are skipped, as automerge maps heads to the
        // changes it has.
        let Some(meta) = doc.get_change_meta_by_hash(&hash) else { continue };
        sent.remove(&hash);
        to_visit.extend(meta.deps);
    }
}

/// automerge's own trimming of `sent` by `heads`, reached through its
/// receive: a message with these heads and nothing else, received into a
/// scratch state holding `sent`, trims that state's record and applies
/// nothing.
fn automerge_walk(doc: &mut Automerge, heads: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    let mut scratch = sync::State::new();
    scratch.sent_hashes = std::mem::take(sent);
    let heads_only = sync::Message {
        heads: heads.to_vec(),
        need: Vec::new(),
        have: Vec::new(),
        changes: sync::ChunkList::empty(),
        flags: None,
        version: sync::MessageVersion::V1,
    };
    // With no changes nothing is loaded into `doc`, and trimming cannot
    // fail.
    let _ = doc.receive_sync_message(&mut scratch, heads_only);
    *sent = scratch.sent_hashes;
}

/// The shared heads after applying changes from the peer: our new heads
/// that are new, and the old shared heads that are still heads; sorted.
/// automerge's own `advance_heads`.
fn advance_heads(old_heads: &[ChangeHash], new_heads: &[ChangeHash], old_shared: &[ChangeHash]) -> Vec<ChangeHash> {
    let new_set: HashSet<&ChangeHash> = new_heads.iter().collect();
    let mut advanced: Vec<ChangeHash> = new_heads
        .iter()
        .filter(|head| !old_heads.contains(head))
        .chain(old_shared.iter().filter(|head| new_set.contains(head)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};

    fn edit(doc: &mut Automerge, value: i64) -> ChangeHash {
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", value).expect("put");
        tx.commit().0.expect("a change")
    }

    /// A sent change far below the heads, beside one the peer does not
    /// have: the walk runs out of budget and automerge's own walk ends it,
    /// with automerge's answer.
    #[test]
    fn a_long_walk_is_finished_by_automerges_own() {
        let mut doc = Automerge::new().with_actor(ActorId::from(vec![1u8; 16]));
        let early: Vec<ChangeHash> = (0..5).map(|v| edit(&mut doc, v)).collect();
        let mut other = doc.fork().with_actor(ActorId::from(vec![2u8; 16]));
        let beside = edit(&mut other, -1);
        for v in 0..(WALK_BUDGET as i64 * 2) {
            edit(&mut doc, v);
        }
        let heads = doc.get_heads();
        doc.merge(&mut other).expect("merge");

        let sent: BTreeSet<ChangeHash> = [early[1], beside].into_iter().collect();
        let mut ours = sent.clone();
        forget_acknowledged(&mut doc, &heads, &mut ours);
        assert_eq!(ours, [beside].into_iter().collect(), "the early change is the peer's, the one beside is not");

        let mut automerges = sent;
        automerge_walk(&mut doc, &heads, &mut automerges);
        assert_eq!(ours, automerges);
    }

    /// What was sent last is usually a head of the acknowledgement: found
    /// at once, and the walk ends there.
    #[test]
    fn an_acknowledged_head_ends_the_walk_at_once() {
        let mut doc = Automerge::new().with_actor(ActorId::from(vec![1u8; 16]));
        for v in 0..10 {
            edit(&mut doc, v);
        }
        let last = edit(&mut doc, 10);
        let mut sent: BTreeSet<ChangeHash> = [last].into_iter().collect();
        forget_acknowledged(&mut doc, &[last], &mut sent);
        assert!(sent.is_empty());
    }
}

//! automerge's `receive_sync_message`, step for step through its public
//! API, except that the record of changes sent to the peer is trimmed by a
//! walk that stops once the record is empty (automerge walks the whole
//! history for every message).

use automerge::sync::{self, Capability, MessageFlags};
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

/// Removes from `sent` every change the peer has, by its heads: the heads'
/// ancestors. automerge walks all of them; this stops when `sent` is
/// empty, which is where it usually starts (a peer's acknowledgement
/// trims the record to nothing) or soon after (what was sent is recent).
/// The changes left are the same.
fn forget_acknowledged(doc: &Automerge, heads: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    let mut to_visit: Vec<ChangeHash> = heads.to_vec();
    let mut visited = HashSet::new();
    while !sent.is_empty() {
        let Some(hash) = to_visit.pop() else { break };
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

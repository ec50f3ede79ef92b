//! What the relay stores for a sync message that moved a document's heads.
//!
//! A device's change arrives as automerge change chunks. Storing those bytes
//! as they came is correct exactly when they are what the document gained:
//! reloading the stored chunks then gives the same document. Otherwise the
//! document's own changes since the previous heads are saved
//! (`save_after`), which re-encodes them from its operations: under the
//! 200-pair load that re-encoding was about 4 % of the relay's CPU, for
//! bytes it already held.
//!
//! The bytes are what the document gained when either
//! - the document was empty (the message's changes load to exactly it), or
//! - automerge held no changes waiting for missing dependencies before, and
//!   the document gained as many changes as the message carried: none was
//!   a duplicate, none is left waiting, and no earlier waiting change was
//!   released into the document by them (it would be missing from storage).

use automerge::sync;
use automerge::{Automerge, ChangeHash, ReadDoc};

/// A message's changes as received, with what is needed to tell, after
/// they are applied, whether they are exactly what the document gained.
pub struct Received {
    bytes: Vec<u8>,
    chunks: u64,
    changes_before: u64,
    nothing_waiting: bool,
}

impl Received {
    /// Taken before `message` is applied to `doc`; `None` if it carries no changes.
    pub fn capture(doc: &Automerge, message: &sync::Message) -> Option<Received> {
        if message.changes.is_empty() {
            return None;
        }
        Some(Received {
            bytes: message.changes.iter().flatten().copied().collect(),
            chunks: message.changes.len() as u64,
            changes_before: doc.stats().num_changes,
            nothing_waiting: doc.get_missing_deps(&[]).is_empty(),
        })
    }

    /// The chunk to store once the message is applied and `doc`'s heads
    /// moved from `before`.
    pub fn chunk(received: Option<Received>, doc: &Automerge, before: &[ChangeHash]) -> Vec<u8> {
        match received {
            Some(r) if before.is_empty() => r.bytes,
            Some(r) if r.nothing_waiting && doc.stats().num_changes == r.changes_before + r.chunks => r.bytes,
            _ => doc.save_after(before),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;

    fn edit(doc: &mut Automerge, key: &str) -> ChangeHash {
        let _ = doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(automerge::ROOT, key, key));
        doc.get_heads()[0]
    }

    /// A message carrying these raw changes.
    fn message(changes: Vec<Vec<u8>>) -> sync::Message {
        sync::Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            changes: sync::ChunkList::from(changes),
            flags: None,
            version: sync::MessageVersion::V1,
        }
    }

    /// Applies `changes` to a copy of `doc` as the relay does and tells
    /// whether the received bytes were stored, and that reloading what was
    /// stored gives the document.
    fn store(doc: &Automerge, changes: Vec<Vec<u8>>) -> bool {
        let mut relay = doc.clone();
        let stored_before = relay.save();
        let before = relay.get_heads();
        let msg = message(changes);
        let received = Received::capture(&relay, &msg);
        let raw = received.as_ref().map(|r| r.bytes.clone());
        relay.receive_sync_message(&mut sync::State::new(), msg).expect("applies");
        assert_ne!(relay.get_heads(), before, "the heads moved");
        let chunk = Received::chunk(received, &relay, &before);
        let mut reloaded = Automerge::load(&stored_before).expect("loads");
        reloaded.load_incremental(&chunk).expect("loads");
        assert_eq!(reloaded.get_heads(), relay.get_heads(), "storage holds what memory holds");
        raw == Some(chunk)
    }

    #[test]
    fn received_changes_are_stored_as_they_came_only_when_they_are_exactly_what_was_gained() {
        let mut phone = Automerge::new();
        edit(&mut phone, "a");
        let relay = phone.clone();
        let raw = |doc: &Automerge, h: ChangeHash| doc.get_change_by_hash(&h).expect("change").raw_bytes().to_vec();

        // One new change, then two.
        let b = edit(&mut phone, "b");
        assert!(store(&relay, vec![raw(&phone, b)]));
        let c = edit(&mut phone, "c");
        assert!(store(&relay, vec![raw(&phone, b), raw(&phone, c)]));
        // A duplicate beside a new one: what was gained is saved instead.
        let mut has_b = relay.clone();
        has_b.apply_changes([phone.get_change_by_hash(&b).expect("b")]).expect("applies");
        assert!(!store(&has_b, vec![raw(&phone, b), raw(&phone, c)]));
        // A change waiting for its dependency, released by this one: it
        // must be stored too.
        let mut waiting = relay.clone();
        waiting.apply_changes([phone.get_change_by_hash(&c).expect("c")]).expect("queued");
        assert!(!waiting.get_missing_deps(&[]).is_empty());
        assert!(!store(&waiting, vec![raw(&phone, b)]));
    }
}

//! Answering a peer that has none of a document with the bytes already
//! stored, instead of saving the document again. Used by the relay (a new
//! device bootstrapping) and by the engine (a first upload).
//!
//! Automerge answers a peer that announces empty heads (and speaks V2 sync
//! messages) with the whole document, `save`d for the occasion: ~30 ms for
//! a heavy month, once per month for every new device. When the sender
//! holds the document as one stored blob (it arrived whole, or it was
//! compacted) whose heads are the loaded document's, that blob is exactly
//! what the peer needs. [`reply_with_saved`] builds the message
//! automerge would have sent, with that blob in place of the fresh save, and
//! leaves the sync state as automerge would have left it.

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};

/// Whether automerge would answer with the whole document now: the peer
/// has nothing, speaks V2, and nothing asks for a reset or a read-only
/// exchange.
pub fn wants_whole_document(doc: &Automerge, state: &sync::State) -> bool {
    let v2 = state.their_capabilities.as_ref().is_some_and(|c| c.contains(&sync::Capability::MessageV2));
    let their_last_sync_known = state
        .their_have
        .as_ref()
        .and_then(|h| h.first())
        .is_none_or(|h| h.last_sync.iter().all(|hash| doc.get_change_meta_by_hash(hash).is_some()));
    state.their_heads.as_deref() == Some(&[])
        && state.their_have.is_some()
        && state.their_need.is_some()
        && v2
        && their_last_sync_known
        && !state.read_only
        && !state.is_peer_read_only()
        && !state.needs_reset
}

/// Every automerge chunk starts with these bytes.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of a whole saved document (after magic and checksum).
const DOCUMENT: u8 = 0;

/// Whether `bytes` starts with a whole saved document's chunk header.
fn starts_with_document(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..]) && bytes.get(8) == Some(&DOCUMENT)
}

/// The saved document a sync message carries, when it carries exactly one
/// whole document (automerge sends one to a peer that has none of it: a
/// bootstrap's months); `None` for anything else.
pub fn whole_document_in(message: &sync::Message) -> Option<&[u8]> {
    let mut chunks = message.changes.iter();
    let chunk = chunks.next()?;
    (chunks.next().is_none() && starts_with_document(chunk)).then_some(chunk)
}

/// A document's stored form as one blob, when it is one: a snapshot with
/// no chunks after it, or a single chunk (a document that arrived whole).
pub fn one_blob(snapshot: Option<Vec<u8>>, chunks: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    match (snapshot, chunks.len()) {
        (Some(snapshot), 0) => Some(snapshot),
        (None, 1) => chunks.into_iter().next(),
        _ => None,
    }
}

/// The heads a saved document (one document chunk) records, read from its
/// header; `None` if `saved` is not exactly that.
pub fn saved_heads(saved: &[u8]) -> Option<Vec<ChangeHash>> {
    fn uleb(b: &mut &[u8]) -> Option<u64> {
        let (mut value, mut shift) = (0u64, 0u32);
        loop {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            value |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
        }
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    if !starts_with_document(saved) {
        return None;
    }
    let mut b = saved.get(9..)?; // magic, checksum, chunk type
    let len = usize::try_from(uleb(&mut b)?).ok()?;
    if len != b.len() {
        return None; // more than one chunk, or a truncated one
    }
    for _ in 0..uleb(&mut b)? {
        let actor_len = usize::try_from(uleb(&mut b)?).ok()?;
        take(&mut b, actor_len)?;
    }
    let count = usize::try_from(uleb(&mut b)?).ok()?;
    let mut heads = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        heads.push(ChangeHash(take(&mut b, 32)?.try_into().ok()?));
    }
    Some(heads)
}

/// The message automerge would send `state`'s peer (the whole document),
/// with `saved` as the document. `saved` must hold exactly `doc`'s changes
/// (its heads are checked; `None` if they differ, and the caller lets
/// automerge save instead). Call only when [`wants_whole_document`] holds.
pub fn reply_with_saved(doc: &Automerge, state: &mut sync::State, saved: Vec<u8>) -> Option<sync::Message> {
    let mut heads = saved_heads(&saved)?;
    heads.sort_unstable();
    if heads != doc.get_heads() {
        return None;
    }
    // Without the peer's have and need, automerge builds the same message
    // (heads, have, need, flags, V2) with no changes, and updates the state
    // the same way, except for the hashes it records as sent.
    let mut probe = state.clone();
    probe.their_have = None;
    probe.their_need = None;
    let mut message = doc.generate_sync_message(&mut probe)?;
    if !message.changes.is_empty() {
        return None;
    }
    probe.their_have = state.their_have.take();
    probe.their_need = state.their_need.take();
    probe.sent_hashes.extend(doc.get_changes_meta(&[]).into_iter().map(|c| c.hash));
    message.changes = sync::ChunkList::from(saved);
    *state = probe;
    Some(message)
}

/// The first message to a peer that announced
/// [`takes_whole_offers`](crate::PeerMetadata::takes_whole_offers) and has
/// no sync state for this document (a new install bootstrapping): the
/// stored chunks themselves, with their heads, so the sender needs neither
/// the document loaded nor the peer's answer to a summary first. Returns
/// the message and the sender's sync state after it.
///
/// `heads` must be exactly the heads of `chunks` (read together with them).
/// The message says "I have everything up to `heads`" (`have` with those as
/// `last_sync` and an empty bloom filter), which is true, and which lets the
/// peer answer with only what it has beyond them: nothing for a new device,
/// its own offline changes otherwise. Automerge's first message would
/// instead carry a bloom filter of every change, computed from the loaded
/// document. The state is the one automerge keeps after sending heads: in
/// flight, nothing shared yet, nothing recorded as sent (the peer's answer
/// tells what it has, see [`take_plain_ack`]).
pub fn offer_stored(mut heads: Vec<ChangeHash>, chunks: Vec<Vec<u8>>) -> (sync::Message, sync::State) {
    heads.sort_unstable();
    let mut flags = sync::MessageFlags::new();
    flags.set(sync::MessageFlags::SUPPORTS_SYNC_RESET);
    let message = sync::Message {
        heads: heads.clone(),
        need: Vec::new(),
        have: vec![sync::Have { last_sync: heads.clone(), bloom: sync::BloomFilter::default() }],
        changes: sync::ChunkList::from(chunks),
        flags: Some(flags),
        version: sync::MessageVersion::V2,
    };
    let state = sync::State { last_sent_heads: heads, have_responded: true, in_flight: true, ..sync::State::new() };
    (message, state)
}

/// Receives the peer's answer to [`offer_stored`] without the document,
/// when it is a plain acknowledgement: exactly the offered heads, no
/// changes, nothing needed, and a summary built on those heads. Then
/// `state` ends as `receive_sync_message` would leave it, and automerge
/// would have nothing to reply while the document is still at those heads
/// (if it moved on since, the relay's change signal pushes the news as for
/// any document). Returns `false` and leaves `state` alone otherwise: the
/// caller loads the document and receives the message the usual way.
pub fn take_plain_ack(state: &mut sync::State, message: &sync::Message) -> bool {
    let mut heads = message.heads.clone();
    heads.sort_unstable();
    let offered = &state.last_sent_heads;
    let plain = !heads.is_empty()
        && &heads == offered
        && message.changes.is_empty()
        && message.need.is_empty()
        && message.have.iter().all(|h| h.last_sync.iter().all(|hash| offered.contains(hash)))
        && state.in_flight
        && state.shared_heads.is_empty()
        && state.their_heads.is_none()
        && state.sent_hashes.is_empty()
        && !state.read_only;
    if !plain {
        return false;
    }
    state.in_flight = false;
    if let Some(flags) = message.flags {
        let mut capabilities = vec![sync::Capability::MessageV2];
        if flags.contains(sync::MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(sync::Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        state.peer_read_only = flags.contains(sync::MessageFlags::READ_ONLY);
    }
    state.shared_heads.clone_from(&message.heads);
    state.their_have = Some(message.have.clone());
    state.their_heads = Some(message.heads.clone());
    state.their_need = Some(Vec::new());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    fn month(changes: i64) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..changes {
            let _ = doc.transact(|tx| tx.put(ROOT, format!("k{i}"), i));
        }
        doc
    }

    #[test]
    fn a_saved_document_tells_its_heads_and_anything_else_does_not() {
        let mut doc = month(20);
        // Two concurrent heads.
        let mut other = doc.fork();
        let _ = other.transact(|tx| tx.put(ROOT, "x", 1));
        let _ = doc.transact(|tx| tx.put(ROOT, "y", 2));
        doc.merge(&mut other).unwrap();
        let mut heads = saved_heads(&doc.save()).unwrap();
        heads.sort_unstable();
        assert_eq!(heads, doc.get_heads());
        assert_eq!(heads.len(), 2);
        assert!(saved_heads(&doc.save_after(&[])).is_none(), "change chunks are not a saved document");
        let mut two = doc.save();
        two.extend(other.save());
        assert!(saved_heads(&two).is_none(), "two chunks are not one saved document");
        assert!(saved_heads(b"junk").is_none());
        assert!(saved_heads(&doc.save()[..40]).is_none());
    }

    /// A new device's first exchange: the reply built from the stored bytes
    /// is automerge's own, and the state after it is the same.
    #[test]
    fn the_reply_from_stored_bytes_is_the_one_automerge_sends() {
        let relay_doc = month(60);
        let stored = relay_doc.save();
        let mut relay_state = sync::State::new();
        let offer = relay_doc.generate_sync_message(&mut relay_state).expect("an offer");
        let mut device = Automerge::new();
        let mut device_state = sync::State::new();
        device.receive_sync_message(&mut device_state, offer).unwrap();
        let nothing = device.generate_sync_message(&mut device_state).expect("the device says it has nothing");
        relay_doc.clone().receive_sync_message(&mut relay_state, nothing).unwrap();
        assert!(wants_whole_document(&relay_doc, &relay_state));

        let mut automerge_state = relay_state.clone();
        let automerge_reply = relay_doc.generate_sync_message(&mut automerge_state).expect("the whole document");
        let ours = reply_with_saved(&relay_doc, &mut relay_state, stored.clone()).expect("built from the stored bytes");

        assert_eq!(relay_state, automerge_state);
        assert_eq!(ours.heads, automerge_reply.heads);
        assert_eq!(ours.need, automerge_reply.need);
        assert_eq!(ours.have, automerge_reply.have);
        assert_eq!(ours.flags, automerge_reply.flags);
        assert_eq!(ours.version, automerge_reply.version);
        assert_eq!(ours.changes.iter().collect::<Vec<_>>(), vec![stored.as_slice()]);
        // And the device takes it as it takes automerge's.
        let (mut a, mut sa) = (device.clone(), device_state.clone());
        a.receive_sync_message(&mut sa, automerge_reply).unwrap();
        let (mut b, mut sb) = (device, device_state);
        b.receive_sync_message(&mut sb, sync::Message::decode(&ours.encode()).unwrap()).unwrap();
        assert_eq!(a.get_heads(), b.get_heads());
        assert_eq!(sa, sb);
    }

    #[test]
    fn stored_bytes_of_another_version_are_not_used() {
        let relay_doc = month(10);
        let older = month(5).save();
        let mut state = sync::State::new();
        assert!(reply_with_saved(&relay_doc, &mut state, older).is_none());
        assert_eq!(state, sync::State::new(), "nothing changed");
    }

    /// Runs the usual exchange until neither side has anything to say.
    fn sync_until_quiet(a: &mut Automerge, sa: &mut sync::State, b: &mut Automerge, sb: &mut sync::State) {
        for _ in 0..20 {
            let ab = a.generate_sync_message(sa);
            if let Some(m) = ab.clone() {
                b.receive_sync_message(sb, sync::Message::decode(&m.encode()).unwrap()).unwrap();
            }
            let ba = b.generate_sync_message(sb);
            if let Some(m) = ba.clone() {
                a.receive_sync_message(sa, sync::Message::decode(&m.encode()).unwrap()).unwrap();
            }
            if ab.is_none() && ba.is_none() {
                return;
            }
        }
        panic!("the exchange did not go quiet");
    }

    /// A new device bootstrapping: the stored chunks (a snapshot and a
    /// change chunk after it) go out first, the device's answer is a plain
    /// acknowledgement, and taking it without the document leaves the state
    /// automerge's own `receive_sync_message` leaves; after it neither side
    /// has anything more to say.
    #[test]
    fn a_stored_offer_brings_a_new_peer_level_and_its_ack_is_taken_as_automerge_would() {
        let mut relay_doc = month(40);
        let snapshot = relay_doc.save();
        let before = relay_doc.get_heads();
        let _ = relay_doc.transact(|tx| tx.put(ROOT, "late", 1));
        let chunk = relay_doc.save_after(&before);
        let (offer, relay_state) = offer_stored(relay_doc.get_heads(), vec![snapshot, chunk]);

        let mut device = Automerge::new();
        let mut device_state = sync::State::new();
        device.receive_sync_message(&mut device_state, sync::Message::decode(&offer.encode()).unwrap()).unwrap();
        assert_eq!(device.get_heads(), relay_doc.get_heads(), "one message brings everything");
        let ack = device.generate_sync_message(&mut device_state).expect("the device says what it has");
        assert!(ack.changes.is_empty(), "the device sends nothing back");
        let ack = sync::Message::decode(&ack.encode()).unwrap();

        let mut automerge_state = relay_state.clone();
        relay_doc.clone().receive_sync_message(&mut automerge_state, ack.clone()).unwrap();
        let mut ours = relay_state;
        assert!(take_plain_ack(&mut ours, &ack));
        assert_eq!(ours, automerge_state);
        assert!(relay_doc.generate_sync_message(&mut ours).is_none(), "the relay has nothing more to send");
        assert!(device.generate_sync_message(&mut device_state).is_none(), "nor has the device");
    }

    /// The other direction, a device's first upload: the relay (automerge,
    /// an empty document) takes the whole offer and answers with a plain
    /// acknowledgement, which the device takes without its document.
    #[test]
    fn an_empty_peer_takes_a_stored_offer_and_answers_with_a_plain_ack() {
        let device_doc = month(25);
        let (offer, device_state) = offer_stored(device_doc.get_heads(), vec![device_doc.save()]);
        let mut relay = Automerge::new();
        let mut relay_state = sync::State::new();
        relay.receive_sync_message(&mut relay_state, sync::Message::decode(&offer.encode()).unwrap()).unwrap();
        assert_eq!(relay.get_heads(), device_doc.get_heads());
        let ack = relay.generate_sync_message(&mut relay_state).expect("the relay answers");
        let ack = sync::Message::decode(&ack.encode()).unwrap();
        let mut automerge_state = device_state.clone();
        device_doc.clone().receive_sync_message(&mut automerge_state, ack.clone()).unwrap();
        let mut ours = device_state;
        assert!(take_plain_ack(&mut ours, &ack), "a plain acknowledgement: {ack:?}");
        assert_eq!(ours, automerge_state);
        assert!(device_doc.generate_sync_message(&mut ours).is_none());
        assert!(relay.generate_sync_message(&mut relay_state).is_none());
    }

    /// A device with offline changes of its own in that document answers
    /// with them: not a plain acknowledgement, so the state is left alone,
    /// and the usual exchange from there brings both sides level.
    #[test]
    fn a_peer_with_changes_of_its_own_is_answered_the_usual_way() {
        let mut relay_doc = month(30);
        let (offer, relay_state) = offer_stored(relay_doc.get_heads(), vec![relay_doc.save()]);
        let mut device = Automerge::new();
        let _ = device.transact(|tx| tx.put(ROOT, "offline", 7));
        let mut device_state = sync::State::new();
        device.receive_sync_message(&mut device_state, offer).unwrap();
        let answer = device.generate_sync_message(&mut device_state).expect("the device answers");
        assert!(!answer.changes.is_empty(), "with its offline change");

        let mut state = relay_state.clone();
        assert!(!take_plain_ack(&mut state, &answer));
        assert_eq!(state, relay_state, "left alone");
        relay_doc.receive_sync_message(&mut state, answer).unwrap();
        sync_until_quiet(&mut relay_doc, &mut state, &mut device, &mut device_state);
        assert_eq!(relay_doc.get_heads(), device.get_heads());
        assert_eq!(relay_doc.get_heads().len(), 2, "both histories kept");
    }

    /// An answer that is not about the offered heads (another version, an
    /// empty one, a need) is not taken as an acknowledgement.
    #[test]
    fn only_the_offered_heads_acknowledge_an_offer() {
        let relay_doc = month(5);
        let (_, state) = offer_stored(relay_doc.get_heads(), vec![relay_doc.save()]);
        let other = month(6);
        let ack_of = |heads: Vec<ChangeHash>, need: Vec<ChangeHash>| sync::Message {
            heads: heads.clone(),
            need,
            have: vec![sync::Have { last_sync: heads, bloom: sync::BloomFilter::default() }],
            changes: sync::ChunkList::empty(),
            flags: None,
            version: sync::MessageVersion::V1,
        };
        for message in [
            ack_of(other.get_heads(), vec![]),
            ack_of(vec![], vec![]),
            ack_of(relay_doc.get_heads(), relay_doc.get_heads()),
        ] {
            let mut s = state.clone();
            assert!(!take_plain_ack(&mut s, &message));
            assert_eq!(s, state);
        }
        let mut taken = state.clone();
        assert!(take_plain_ack(&mut taken, &ack_of(relay_doc.get_heads(), vec![])));
        assert!(!take_plain_ack(&mut taken, &ack_of(relay_doc.get_heads(), vec![])), "only once");
    }
}

//! The engine's side of the sync protocol, as a state machine.
//!
//! Sans-IO in the quinn-proto sense: it is fed connection events and decoded
//! messages, and returns the messages to send. It never reads a socket or a
//! clock (`now` is an argument), so the WebSocket driver, the tests and the
//! simulator all run exactly this code.
//!
//! Cost on reconnect. The automerge sync state of each document is persisted
//! (`sync::State::encode` keeps the shared heads, drops what was in flight).
//! After the handshake the client sends only for documents with
//! unacknowledged local changes (`dirty`); the relay, symmetrically, sends
//! only for documents whose heads moved since this device's shared heads.
//! An up-to-date device therefore reconnects with two handshake messages,
//! whatever its history.

use crate::decode::WholeDoc;
use crate::error::Result;
use crate::model::TimestampMs;
use crate::replica::Replica;
use crate::store;
use automerge::sync;
use protocol::{DocumentId, Message, PROTOCOL_VERSION, PeerMetadata, automerge_sync, whole_doc};
use std::collections::HashMap;

/// Documents with local changes offered at once after the handshake. A
/// device uploading 61 months offers them a few at a time, so each stays in
/// the replica's cache from its first message to its acknowledgement (and
/// is loaded once), and the relay holds a few, not 61.
const PUSH_WINDOW: usize = 4;
/// Bytes of whole offers (stored chunks of documents the relay never synced
/// with this install, see [`protocol::whole_doc::offer_stored`]) in flight
/// at once, plus the one that crosses the line: they need no document
/// loaded here, so the window bounds only what is on the wire.
const WHOLE_PUSH_BYTES: usize = 8 << 20;
/// An offered document the relay has not acknowledged for this long (ms)
/// gives its place in the window to the next one.
const PUSH_TIMEOUT_MS: TimestampMs = 30_000;

/// Under this name the relay's sync states are stored (one relay per engine).
const RELAY_PEER: &str = "relay";
/// `meta` key of the relay storage identity this device last synced with.
const RELAY_STORAGE_KEY: &str = "relay_storage_id";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Disconnected,
    AwaitingPeer,
    Ready { relay_peer_id: String },
}

/// Why the client gave up on a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("relay sent `{0}` before the handshake completed")]
    NotReady(String),
    #[error("relay selected unsupported protocol version `{0}`")]
    UnsupportedVersion(String),
    #[error("relay reported an error: {0}")]
    Remote(String),
}

/// What happened as a result of one input, for the driver to act on.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<Message>,
    /// The relay has acknowledged everything this device had.
    pub synced_at: Option<TimestampMs>,
    pub error: Option<ProtocolError>,
}

pub struct SyncClient {
    peer_id: String,
    /// This device's storage identity, announced at join.
    storage_id: String,
    phase: Phase,
    /// Sync states of documents touched on this connection (others are on disk).
    states: HashMap<DocumentId, sync::State>,
    /// Shared heads last written to disk per document, so a message that
    /// moves nothing costs no write (and no fsync).
    persisted: HashMap<DocumentId, Vec<automerge::ChangeHash>>,
    /// Documents with local changes waiting for a place in the push window.
    push_queue: std::collections::VecDeque<DocumentId>,
    /// Documents offered and not yet acknowledged.
    pushing: std::collections::BTreeMap<DocumentId, Push>,
    /// The relay takes whole offers (said in its `peer` message).
    relay_takes_whole_offers: bool,
    /// Documents offered whole whose answer has not come yet.
    offered_whole: std::collections::HashSet<DocumentId>,
}

/// A document offered and not yet acknowledged.
struct Push {
    at: TimestampMs,
    /// The message's size for a whole offer; 0 for one from the loaded document.
    whole_bytes: usize,
}

impl SyncClient {
    pub fn new(connection_nonce: u32, storage_id: String) -> SyncClient {
        SyncClient {
            storage_id,
            // automerge-repo peer ids name a connection, not a device (the relay
            // knows the device from the token). Every message carries the id
            // twice, so it is kept short: it is a measurable part of a review's
            // ~1 KiB on the wire.
            peer_id: format!("{connection_nonce:08x}"),
            phase: Phase::Disconnected,
            states: HashMap::new(),
            persisted: HashMap::new(),
            push_queue: Default::default(),
            pushing: Default::default(),
            relay_takes_whole_offers: false,
            offered_whole: Default::default(),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// The transport is open: say `join`.
    pub fn on_connected(&mut self) -> Message {
        self.phase = Phase::AwaitingPeer;
        Message::Join {
            sender_id: self.peer_id.clone(),
            supported_protocol_versions: vec![PROTOCOL_VERSION.to_owned()],
            // Whole offers: a month this install never synced arrives in
            // one message, and the relay need not load it to send it.
            metadata: Some(PeerMetadata {
                storage_id: Some(self.storage_id.clone()),
                is_ephemeral: false,
                takes_whole_offers: true,
            }),
        }
    }

    /// The relay announced its storage identity. A different one than last
    /// time means its storage is not the one our sync states describe (it was
    /// restored from a backup, or replaced): forget them and offer everything.
    fn check_relay_identity(replica: &mut Replica, relay_storage: Option<&str>) -> Result<()> {
        let Some(current) = relay_storage else { return Ok(()) };
        if replica.planted == Some(crate::ids::PlantedBug::IgnoreRelayIdentity) {
            return Ok(());
        }
        replica.store.transaction(|conn| {
            let known = store::meta_get(conn, RELAY_STORAGE_KEY)?;
            if known.as_deref() == Some(current) {
                return Ok(());
            }
            if known.is_some() {
                tracing::warn!(
                    previous = known.as_deref().unwrap_or(""),
                    current,
                    "the relay's storage changed (restored from a backup?); offering every document again"
                );
                store::reset_peer(conn, RELAY_PEER)?;
            }
            store::meta_set(conn, RELAY_STORAGE_KEY, current)
        })
    }

    /// The transport closed. In-flight state is dropped; shared heads are on disk.
    pub fn on_disconnected(&mut self) {
        self.phase = Phase::Disconnected;
        self.states.clear();
        self.persisted.clear();
        self.push_queue.clear();
        self.pushing.clear();
        self.offered_whole.clear();
    }

    /// Handles one message from the relay.
    /// `whole` is the document the message carries, decoded ahead (see
    /// [`protocol::whole_doc::whole_document_in`]), if it carries one.
    pub fn on_message(
        &mut self,
        replica: &mut Replica,
        msg: Message,
        whole: Option<WholeDoc>,
        now: TimestampMs,
    ) -> Result<Output> {
        let mut out = Output::default();
        match (&self.phase, msg) {
            (Phase::AwaitingPeer, Message::Peer { sender_id, selected_protocol_version, metadata, .. }) => {
                if selected_protocol_version != PROTOCOL_VERSION {
                    out.error = Some(ProtocolError::UnsupportedVersion(selected_protocol_version));
                    return Ok(out);
                }
                let relay_storage = metadata.as_ref().and_then(|m| m.storage_id.as_deref());
                Self::check_relay_identity(replica, relay_storage)?;
                self.relay_takes_whole_offers = metadata.as_ref().is_some_and(|m| m.takes_whole_offers);
                self.phase = Phase::Ready { relay_peer_id: sender_id };
                self.push_queue = replica.dirty_docs()?.into();
                self.fill_push_window(replica, now, &mut out)?;
                if out.send.is_empty() {
                    out.synced_at = Some(now);
                }
            }
            (Phase::Ready { .. }, Message::Sync { document_id, data, .. })
            | (Phase::Ready { .. }, Message::Request { document_id, data, .. }) => {
                let Ok(message) = sync::Message::decode(&data) else {
                    tracing::warn!(doc = %document_id, "relay sent an undecodable sync message; ignored");
                    return Ok(out);
                };
                if let Some(acknowledged) = self.take_offer_ack(replica, &document_id, &message)? {
                    if acknowledged {
                        self.end_push(&document_id);
                    }
                    self.fill_push_window(replica, now, &mut out)?;
                    if replica.dirty_docs()?.is_empty() {
                        out.synced_at = Some(now);
                    }
                    return Ok(out);
                }
                let mut state = self.state(replica, &document_id)?;
                let received: Option<Vec<u8>> =
                    (!message.changes.is_empty()).then(|| message.changes.iter().flatten().copied().collect());
                let result = match (whole, received) {
                    (Some(whole), Some(bytes)) => {
                        replica.receive_whole(&document_id, false, bytes, whole, |doc, preloaded| {
                            if preloaded {
                                receive_preloaded(doc, &mut state, message)
                            } else {
                                automerge_sync::receive(doc, &mut state, message)
                            }
                        })
                    }
                    (_, received) => replica.remote_change(&document_id, false, received, |doc| {
                        automerge_sync::receive(doc, &mut state, message)
                    }),
                };
                match result {
                    Ok(_) => {}
                    // The device cannot store what it receives (a full disk):
                    // end the session. Carrying on would have the relay send
                    // the same changes again and again; the driver retries
                    // with backoff, and nothing was acknowledged meanwhile.
                    Err(e @ crate::error::EngineError::Storage(_)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(doc = %document_id, error = %e, "could not apply sync message");
                        return Ok(out);
                    }
                }
                self.states.insert(document_id, state);
                self.push_doc(replica, &document_id, &mut out)?;
                let acknowledged = self.note_acknowledged(replica, &document_id)?;
                if (acknowledged && self.end_push(&document_id)) || !self.push_queue.is_empty() {
                    self.fill_push_window(replica, now, &mut out)?;
                }
                if replica.dirty_docs()?.is_empty() {
                    out.synced_at = Some(now);
                }
            }
            (Phase::Ready { .. }, Message::DocUnavailable { document_id, .. }) => {
                tracing::debug!(doc = %document_id, "relay does not have the document");
            }
            (_, Message::Error { message }) => out.error = Some(ProtocolError::Remote(message)),
            (Phase::Ready { .. }, Message::Ephemeral { .. } | Message::Unknown { .. } | Message::Leave { .. }) => {}
            (_, other) => out.error = Some(ProtocolError::NotReady(other.type_name().to_owned())),
        }
        Ok(out)
    }

    /// A local change was made to `id`: offer it to the relay if connected.
    pub fn on_local_change(&mut self, replica: &mut Replica, id: &DocumentId) -> Result<Vec<Message>> {
        let mut out = Output::default();
        if self.is_ready() {
            self.push_doc(replica, id, &mut out)?;
        }
        Ok(out.send)
    }

    fn state(&mut self, replica: &Replica, id: &DocumentId) -> Result<sync::State> {
        if let Some(state) = self.states.remove(id) {
            return Ok(state);
        }
        let stored = store::load_sync_state(replica.store.conn(), id, RELAY_PEER)?;
        Ok(stored.and_then(|bytes| sync::State::decode(&bytes).ok()).unwrap_or_default())
    }

    /// Generates the next sync message for `id`, if automerge has one.
    fn push_doc(&mut self, replica: &mut Replica, id: &DocumentId, out: &mut Output) -> Result<()> {
        let Phase::Ready { relay_peer_id } = &self.phase else { return Ok(()) };
        let target_id = relay_peer_id.clone();
        let mut state = self.state(replica, id)?;
        // A relay that has none of the document gets it as stored, when it
        // is stored as one saved document (an import): no second `save`.
        let saved = if whole_doc::wants_whole_document(replica.doc(id)?, &state) {
            store::stored_whole(replica.store.conn(), id)?
        } else {
            None
        };
        let doc = replica.doc(id)?;
        let message = match saved.and_then(|saved| whole_doc::reply_with_saved(doc, &mut state, saved)) {
            Some(message) => Some(message),
            None => automerge_sync::generate(doc, &mut state),
        };
        self.states.insert(*id, state);
        if let Some(message) = message {
            out.send.push(self.sync_to(target_id, id, message));
        }
        Ok(())
    }

    /// A `sync` message carrying `message` about `id` to the relay.
    fn sync_to(&self, target_id: String, id: &DocumentId, message: sync::Message) -> Message {
        Message::Sync { sender_id: self.peer_id.clone(), target_id, document_id: *id, data: message.encode() }
    }

    /// Offers queued documents while the push window has room: at most
    /// [`PUSH_WINDOW`] from loaded documents, and whole offers up to
    /// [`WHOLE_PUSH_BYTES`].
    fn fill_push_window(&mut self, replica: &mut Replica, now: TimestampMs, out: &mut Output) -> Result<()> {
        self.pushing.retain(|_, p| now.saturating_sub(p.at) < PUSH_TIMEOUT_MS);
        while let Some(&id) = self.push_queue.front() {
            let whole = self.relay_takes_whole_offers
                && !self.states.contains_key(&id)
                && store::load_sync_state(replica.store.conn(), &id, RELAY_PEER)?.is_none();
            let room = if whole {
                let mine: usize = self.pushing.values().map(|p| p.whole_bytes).sum();
                mine < WHOLE_PUSH_BYTES
            } else {
                self.pushing.values().filter(|p| p.whole_bytes == 0).count() < PUSH_WINDOW
            };
            if !room {
                break;
            }
            self.push_queue.pop_front();
            let before = out.send.len();
            if whole {
                self.offer_stored(replica, &id, out)?;
            } else {
                self.push_doc(replica, &id, out)?;
            }
            if let Some(Message::Sync { data, .. }) = out.send.get(before) {
                let whole_bytes = if self.offered_whole.contains(&id) { data.len().max(1) } else { 0 };
                self.pushing.insert(id, Push { at: now, whole_bytes });
            }
        }
        Ok(())
    }

    /// Ends a push (acknowledged); returns whether it was one.
    fn end_push(&mut self, id: &DocumentId) -> bool {
        self.pushing.remove(id).is_some()
    }

    /// Offers a document the relay never synced with this install as its
    /// stored chunks, without loading it: a first upload sends each month in
    /// one message. A document with no stored record is offered the usual way.
    fn offer_stored(&mut self, replica: &mut Replica, id: &DocumentId, out: &mut Output) -> Result<()> {
        let Phase::Ready { relay_peer_id } = &self.phase else { return Ok(()) };
        let target_id = relay_peer_id.clone();
        let stored = store::stored_with_heads(replica.store.conn(), id)?.filter(|(_, heads)| !heads.is_empty());
        let Some((chunks, heads)) = stored else { return self.push_doc(replica, id, out) };
        let (message, state) = whole_doc::offer_stored(heads, chunks);
        self.states.insert(*id, state);
        self.offered_whole.insert(*id);
        out.send.push(self.sync_to(target_id, id, message));
        Ok(())
    }

    /// The relay's answer to a whole offer, when it is a plain
    /// acknowledgement: taken without loading the document. Returns whether
    /// the relay now has everything this device has of it, or `None` when
    /// the answer needs the document (the relay had changes of its own).
    fn take_offer_ack(
        &mut self,
        replica: &mut Replica,
        id: &DocumentId,
        message: &sync::Message,
    ) -> Result<Option<bool>> {
        if !self.offered_whole.remove(id) {
            return Ok(None);
        }
        let Some(mut state) = self.states.remove(id) else { return Ok(None) };
        if !whole_doc::take_plain_ack(&mut state, message) {
            self.states.insert(*id, state);
            return Ok(None);
        }
        self.states.insert(*id, state);
        self.note_acknowledged(replica, id).map(Some)
    }

    /// Persists the shared heads and clears `dirty` once the relay has all
    /// we have. Returns whether it has.
    fn note_acknowledged(&mut self, replica: &mut Replica, id: &DocumentId) -> Result<bool> {
        let Some(state) = self.states.get(id) else { return Ok(false) };
        let mut shared = state.shared_heads.clone();
        shared.sort();
        let ours = replica.heads(id)?;
        let acknowledged = ours.iter().all(|h| shared.contains(h));
        if self.persisted.get(id) == Some(&shared) {
            return Ok(acknowledged);
        }
        let encoded = state.encode();
        replica.store.transaction(|conn| {
            store::save_sync_state(conn, id, RELAY_PEER, &encoded)?;
            if acknowledged {
                store::set_clean(conn, id)?;
            }
            Ok(())
        })?;
        self.persisted.insert(*id, shared);
        Ok(acknowledged)
    }
}

/// Receives a sync message whose whole document `doc` already holds
/// (decoded ahead into what was an empty document): the sync state ends as
/// `receive_sync_message` leaves it when it loads the document itself. The
/// message is received without its changes; automerge then takes the heads
/// it already has as shared, as it would after loading them, but also
/// records them as sent, which loading would not: that record is put back,
/// or the reply telling the relay this device now has the document would
/// not be sent.
fn receive_preloaded(
    doc: &mut automerge::Automerge,
    state: &mut sync::State,
    mut message: sync::Message,
) -> Result<(), automerge::AutomergeError> {
    message.changes = sync::ChunkList::empty();
    let last_sent_heads = state.last_sent_heads.clone();
    automerge_sync::receive(doc, state, message)?;
    state.last_sent_heads = last_sent_heads;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    /// A document received whole and decoded ahead ends exactly as one
    /// automerge loaded itself: same heads, same sync state, same reply.
    #[test]
    fn a_whole_document_decoded_ahead_leaves_the_sync_state_automerge_would() {
        let mut relay = Automerge::new();
        for i in 0..50_i64 {
            let _ = relay.transact(|tx| tx.put(ROOT, format!("k{i}"), i));
        }
        let mut relay_state = sync::State::new();
        let device = Automerge::new();
        let mut device_state = sync::State::new();
        let hello = device.generate_sync_message(&mut device_state).expect("a device announces its empty heads");
        relay.receive_sync_message(&mut relay_state, hello).unwrap();
        let month = relay.generate_sync_message(&mut relay_state).expect("the relay sends the document");
        let whole = protocol::whole_doc::whole_document_in(&month).expect("sent whole to a device that has none of it");

        let (mut loaded, mut loaded_state) = (device.clone(), device_state.clone());
        loaded.receive_sync_message(&mut loaded_state, month.clone()).unwrap();

        let mut preloaded = WholeDoc::decode(whole).unwrap().doc;
        let mut preloaded_state = device_state;
        receive_preloaded(&mut preloaded, &mut preloaded_state, month).unwrap();

        assert_eq!(preloaded.get_heads(), loaded.get_heads());
        assert_eq!(preloaded.get_heads(), relay.get_heads());
        let fields = |s: &sync::State| {
            (
                s.shared_heads.clone(),
                s.last_sent_heads.clone(),
                s.their_heads.clone(),
                s.their_need.clone(),
                s.sent_hashes.clone(),
                s.in_flight,
                s.have_responded,
            )
        };
        assert_eq!(fields(&preloaded_state), fields(&loaded_state));
        let reply = |doc: &Automerge, state: &mut sync::State| doc.generate_sync_message(state).map(|m| m.encode());
        let expected = reply(&loaded, &mut loaded_state);
        assert!(expected.is_some(), "the device tells the relay it has the document");
        assert_eq!(reply(&preloaded, &mut preloaded_state), expected);
    }
}

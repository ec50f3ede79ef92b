//! The per-connection protocol state machine, sans-IO.
//!
//! It decides what each incoming message means (handshake, a document to
//! sync, something to ignore, a reason to close) and builds the replies;
//! the WebSocket driver in `ws.rs` does the document work and the I/O.

use protocol::{DocumentId, Message, PROTOCOL_VERSION, PeerMetadata};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitingJoin,
    Ready { remote_peer_id: String },
}

/// What the driver must do with an incoming message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Handshake done: send this `peer` reply, then offer changed documents.
    /// `storage_id` is the storage identity the peer announced, if any.
    /// `takes_whole_offers`: the peer may be offered whole stored documents
    /// first ([`protocol::whole_doc::offer_stored`]).
    Joined { reply: Message, storage_id: Option<String>, takes_whole_offers: bool },
    /// Apply a sync message to a document; `request` means the peer lacks it.
    Sync { doc: DocumentId, data: Vec<u8>, request: bool },
    /// Forward an ephemeral message (presence, cursors) to the user's other devices.
    Ephemeral(Message),
    /// Nothing to do (advisory or unsupported-but-harmless message).
    Ignore,
    /// Send this error and close the connection.
    Close(String),
}

pub struct PeerSession {
    relay_peer_id: String,
    /// The relay storage's identity, announced in the `peer` reply.
    relay_storage_id: Option<String>,
    phase: Phase,
}

impl PeerSession {
    pub fn new(relay_peer_id: String, relay_storage_id: Option<String>) -> PeerSession {
        PeerSession { relay_peer_id, relay_storage_id, phase: Phase::AwaitingJoin }
    }

    pub fn on_message(&mut self, msg: Message) -> Action {
        match (&self.phase, msg) {
            (Phase::AwaitingJoin, Message::Join { sender_id, supported_protocol_versions, metadata }) => {
                if !supported_protocol_versions.iter().any(|v| v == PROTOCOL_VERSION) {
                    return Action::Close(format!(
                        "unsupported protocol versions {supported_protocol_versions:?}; this relay speaks {PROTOCOL_VERSION}"
                    ));
                }
                self.phase = Phase::Ready { remote_peer_id: sender_id.clone() };
                let takes_whole_offers = metadata.as_ref().is_some_and(|m| m.takes_whole_offers);
                // An ephemeral peer keeps nothing, so there is no install to key state by.
                let storage_id = metadata.filter(|m| !m.is_ephemeral).and_then(|m| m.storage_id);
                Action::Joined {
                    reply: Message::Peer {
                        sender_id: self.relay_peer_id.clone(),
                        target_id: sender_id,
                        selected_protocol_version: PROTOCOL_VERSION.to_owned(),
                        // The relay takes whole offers: a device's first
                        // upload of a month is one message.
                        metadata: Some(PeerMetadata {
                            storage_id: self.relay_storage_id.clone(),
                            is_ephemeral: false,
                            takes_whole_offers: true,
                        }),
                    },
                    storage_id,
                    takes_whole_offers,
                }
            }
            (Phase::AwaitingJoin, other) => Action::Close(format!("expected join, got {}", other.type_name())),
            (Phase::Ready { .. }, Message::Join { .. }) => Action::Close("join sent twice".into()),
            (Phase::Ready { .. }, Message::Sync { document_id, data, .. }) => {
                Action::Sync { doc: document_id, data, request: false }
            }
            (Phase::Ready { .. }, Message::Request { document_id, data, .. }) => {
                Action::Sync { doc: document_id, data, request: true }
            }
            (Phase::Ready { .. }, m @ Message::Ephemeral { .. }) => Action::Ephemeral(m),
            // doc-unavailable from a client and unknown advisory types need no answer.
            (Phase::Ready { .. }, Message::DocUnavailable { .. })
            | (Phase::Ready { .. }, Message::Leave { .. })
            | (Phase::Ready { .. }, Message::Unknown { .. }) => Action::Ignore,
            (Phase::Ready { .. }, Message::Peer { .. }) => Action::Close("unexpected peer message".into()),
            (Phase::Ready { .. }, Message::Error { message }) => Action::Close(format!("peer error: {message}")),
        }
    }

    fn remote(&self) -> String {
        match &self.phase {
            Phase::Ready { remote_peer_id } => remote_peer_id.clone(),
            Phase::AwaitingJoin => String::new(),
        }
    }

    /// Whether the handshake is done.
    pub fn is_ready(&self) -> bool {
        self.phase != Phase::AwaitingJoin
    }

    pub fn sync(&self, doc: DocumentId, data: Vec<u8>) -> Message {
        Message::Sync { sender_id: self.relay_peer_id.clone(), target_id: self.remote(), document_id: doc, data }
    }

    /// An ephemeral message from another device, addressed to this peer. The
    /// original sender id is kept: clients deduplicate on (sender, session, count).
    pub fn forward_ephemeral(&self, m: &Message) -> Option<Message> {
        if self.phase == Phase::AwaitingJoin {
            return None;
        }
        match m {
            Message::Ephemeral { sender_id, count, session_id, document_id, data, .. } => Some(Message::Ephemeral {
                sender_id: sender_id.clone(),
                target_id: self.remote(),
                count: *count,
                session_id: session_id.clone(),
                document_id: *document_id,
                data: data.clone(),
            }),
            _ => None,
        }
    }

    pub fn unavailable(&self, doc: DocumentId) -> Message {
        Message::DocUnavailable { sender_id: self.relay_peer_id.clone(), target_id: self.remote(), document_id: doc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(versions: &[&str]) -> Message {
        Message::Join {
            sender_id: "dev".into(),
            supported_protocol_versions: versions.iter().map(|v| v.to_string()).collect(),
            metadata: None,
        }
    }

    #[test]
    fn handshake_then_sync() {
        let mut s = PeerSession::new("relay".into(), None);
        let doc = DocumentId::derive(&["d"]);
        let early =
            Message::Sync { sender_id: "dev".into(), target_id: "relay".into(), document_id: doc, data: vec![] };
        assert!(matches!(PeerSession::new("relay".into(), None).on_message(early.clone()), Action::Close(_)));
        match s.on_message(join(&["1"])) {
            Action::Joined { reply: Message::Peer { target_id, selected_protocol_version, .. }, .. } => {
                assert_eq!((target_id.as_str(), selected_protocol_version.as_str()), ("dev", "1"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.on_message(early), Action::Sync { doc, data: vec![], request: false });
        assert!(matches!(s.on_message(join(&["1"])), Action::Close(_)));
    }

    #[test]
    fn unsupported_version_closes() {
        let mut s = PeerSession::new("relay".into(), None);
        assert!(matches!(s.on_message(join(&["2"])), Action::Close(_)));
    }
}

//! [`SyncSession`]: the sans-IO sync client bound to an engine, in frames.
//!
//! This is the whole sync protocol as the outside sees it: bytes in, bytes
//! out, time passed in. The WebSocket driver feeds it frames from a socket;
//! the simulator feeds it frames from a simulated network. Neither holds any
//! protocol logic of its own.

use super::client::{ProtocolError, SyncClient};
use crate::decode::WholeDoc;
use crate::engine::Shared;
use crate::error::EngineError;
use crate::model::TimestampMs;
use protocol::{DecodeError, Message};
use std::sync::Arc;

/// Why a session must end (the caller closes the connection and reconnects later).
#[derive(Debug, thiserror::Error)]
pub enum SyncFailure {
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("undecodable message from the relay: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Frames arriving together decode on worker threads from this size on
/// (a bootstrap's months; a review or two decode faster than a thread starts).
const PARALLEL_DECODE_BYTES: usize = 64 * 1024;

/// Why the frames of a batch stopped being applied.
enum Stop {
    /// The relay sent something wrong: the session ends, the frames before it are kept.
    Failed,
    Engine(EngineError),
}

/// Decodes a frame, and the whole document its sync message carries, if
/// it carries one (see [`protocol::whole_doc::whole_document_in`]).
fn decode_frame(frame: &&[u8]) -> Result<(Message, Option<WholeDoc>), DecodeError> {
    let msg = Message::decode(frame)?;
    let whole = match &msg {
        Message::Sync { data, .. } | Message::Request { data, .. } => automerge::sync::Message::decode(data)
            .ok()
            .and_then(|m| protocol::whole_doc::whole_document_in(&m).and_then(|bytes| WholeDoc::decode(bytes).ok())),
        _ => None,
    };
    Ok((msg, whole))
}

pub struct SyncSession {
    shared: Arc<Shared>,
    client: SyncClient,
    exchanged: bool,
}

impl SyncSession {
    pub(crate) fn new(shared: Arc<Shared>, connection_nonce: u32) -> SyncSession {
        let storage_id = shared.with_replica(|r| Ok(r.storage_id().to_owned())).unwrap_or_default();
        SyncSession { shared, client: SyncClient::new(connection_nonce, storage_id), exchanged: false }
    }

    fn encode(&self, messages: Vec<Message>) -> Vec<Vec<u8>> {
        messages
            .into_iter()
            .map(|m| {
                let bytes = m.encode();
                self.shared.count_sent(bytes.len());
                bytes
            })
            .collect()
    }

    /// The transport is open: the first frame to send.
    pub fn open(&mut self) -> Vec<u8> {
        let join = self.client.on_connected();
        self.encode(vec![join]).pop().unwrap_or_default()
    }

    /// Handles one frame from the relay; returns the frames to send.
    pub fn receive(&mut self, frame: &[u8], now: TimestampMs) -> Result<Vec<Vec<u8>>, SyncFailure> {
        self.receive_batch(&[frame], now)
    }

    /// Handles frames that arrived together, with their writes in one
    /// transaction (one commit for a bootstrap's months, not one each);
    /// returns the frames to send, all after that commit. A frame the
    /// relay got wrong ends the session after the frames before it are kept.
    pub fn receive_batch(&mut self, frames: &[&[u8]], now: TimestampMs) -> Result<Vec<Vec<u8>>, SyncFailure> {
        let was_ready = self.client.is_ready();
        let (client, shared) = (&mut self.client, &self.shared);
        let mut send = Vec::new();
        let mut failure: Option<SyncFailure> = None;
        let mut synced_at = None;
        // Frames carrying whole documents (a bootstrap's months) are decoded
        // on worker threads, ahead of being applied here in order.
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let parallel = frames.len() > 1 && bytes >= PARALLEL_DECODE_BYTES;
        shared.with_replica(|replica| {
            replica.batch(|replica| {
                let applied = crate::decode::each_in_order(frames, parallel, decode_frame, |i, decoded| {
                    shared.count_received(frames[i].len());
                    // `None`: decoding panicked on a worker; decode here without the head start.
                    let (msg, whole) = match decoded.unwrap_or_else(|| Message::decode(frames[i]).map(|m| (m, None))) {
                        Ok(decoded) => decoded,
                        Err(e) => {
                            failure = Some(e.into());
                            return Err(Stop::Failed);
                        }
                    };
                    let output = client.on_message(replica, msg, whole, now).map_err(Stop::Engine)?;
                    send.extend(output.send);
                    if let Some(e) = output.error {
                        failure = Some(e.into());
                        return Err(Stop::Failed);
                    }
                    synced_at = output.synced_at.or(synced_at);
                    Ok(())
                });
                match applied {
                    Ok(()) | Err(Stop::Failed) => Ok(()),
                    Err(Stop::Engine(e)) => Err(e),
                }
            })?;
            // Status changes are made while the replica is still locked, so a
            // reader of `Engine::sync_status` (which reads pending documents
            // under the same lock) never sees "nothing pending" without the
            // matching `connected` and `last_sync_at`.
            if !was_ready && client.is_ready() {
                shared.set_connected(true, None);
            }
            if let Some(at) = synced_at {
                shared.set_synced(at);
            }
            Ok(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.exchanged |= synced_at.is_some();
        Ok(self.encode(send))
    }

    /// Frames offering the app's writes since the last call (none before the handshake).
    pub fn local_changes(&mut self) -> Result<Vec<Vec<u8>>, SyncFailure> {
        let docs = self.shared.take_changed_docs();
        let client = &mut self.client;
        let messages = self.shared.with_replica(|replica| {
            let mut all = Vec::new();
            for id in &docs {
                all.extend(client.on_local_change(replica, id)?);
            }
            Ok(all)
        })?;
        Ok(self.encode(messages))
    }

    /// The relay went quiet for a moment: replay the memory states that
    /// arrivals marked stale, so the app's next query finds them ready
    /// (queries settle by themselves too; this only moves the work off
    /// them), and compact documents past the threshold (off the path of a
    /// review's delivery).
    pub fn idle(&mut self) -> Result<(), SyncFailure> {
        Ok(self.shared.with_replica(|replica| replica.maintain())?)
    }

    /// Whether at least one full exchange completed on this connection.
    pub fn has_exchanged(&self) -> bool {
        self.exchanged
    }

    /// The transport closed; `error` says why, if it was not a clean close.
    pub fn close(&mut self, error: Option<String>) {
        self.client.on_disconnected();
        self.shared.set_connected(false, error);
    }
}

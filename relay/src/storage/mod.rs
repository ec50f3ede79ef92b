//! Durable document storage behind a narrow interface.
//!
//! Everything the relay keeps about documents goes through [`DocStorage`], so
//! a later backend (PostgreSQL for operators running several relays) is one
//! more implementation of this trait, not a rewrite. Implementations are
//! synchronous; the relay calls them from `spawn_blocking`.
//!
//! Documents are namespaced by user: `(user_id, doc_id)` is the key. A user
//! can neither read nor write nor detect another user's document, because
//! every lookup is already scoped to the authenticated user.

pub mod memory;
pub mod migrations;
mod pending_states;
mod pg_sync_states;
pub mod postgres;
mod sqlite;
mod sqlite_writer;

pub use memory::MemStorage;
pub use postgres::PgStorage;
pub use sqlite::SqliteStorage;
pub(crate) use sqlite::open_connection;

use protocol::DocumentId;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage schema version {found} is newer than this relay supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("storage migration failed: {0}")]
    Migration(String),
    #[error("storage lock poisoned")]
    Poisoned,
    #[error("storage writer: {0}")]
    Writer(String),
    #[error("postgres: {0}")]
    Postgres(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A document as stored: the last snapshot, the chunks appended since, and
/// the heads they add up to, all read at one moment (a compaction or an
/// append committing between the reads cannot mix two versions).
#[derive(Debug, Default)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
    /// Empty when unknown: another relay appended to a copy that was
    /// behind (see [`DocStorage::append`]); readers then load the document.
    pub heads: EncodedHeads,
    /// The newest chunk's sequence number in this document, for storage
    /// shared by several relays ([`DocStorage::changes_after`]); 0 where
    /// one relay owns the storage (SQLite, memory).
    pub seq: u64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Chunks stored since the last snapshot (compaction is due past a bound).
    pub since_snapshot: u64,
    /// The chunk's sequence number (0 where the storage has none).
    pub seq: u64,
}

/// The outcome of an append queued with [`DocStorage::try_append_queued`]:
/// it arrives once the append's group is committed (or has failed), so a
/// caller on an async task can await durability without holding a thread.
pub struct AppendTicket(tokio::sync::oneshot::Receiver<Result<Appended>>);

/// Where a queued append's outcome is sent.
pub type AppendReply = tokio::sync::oneshot::Sender<Result<Appended>>;

impl AppendTicket {
    /// A ticket and the sender its outcome goes to.
    pub fn channel() -> (AppendReply, AppendTicket) {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        (reply, AppendTicket(outcome))
    }

    /// A ticket whose outcome is known already (storage that writes at once).
    pub fn ready(result: Result<Appended>) -> AppendTicket {
        let (reply, ticket) = AppendTicket::channel();
        let _ = reply.send(result);
        ticket
    }

    /// Waits for the outcome.
    pub async fn wait(self) -> Result<Appended> {
        self.0.await.unwrap_or_else(|_| Err(StorageError::Writer("storage writer stopped".into())))
    }

    /// The outcome if it has arrived, for a driver that does not await
    /// (the simulator, whose storage writes at once).
    pub fn try_take(&mut self) -> Option<Result<Appended>> {
        use tokio::sync::oneshot::error::TryRecvError;
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(Err(StorageError::Writer("storage writer stopped".into()))),
        }
    }
}

/// An announcement from storage shared by several relays. It is only a
/// doorbell: a relay catches up by seq, so a lost one costs latency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A chunk of `doc` was committed with this seq.
    Changed { user: String, doc: DocumentId, seq: u64 },
    /// Announcements may have been missed (the listener reconnected, or the
    /// relay fell behind reading them): every loaded document catches up.
    Resync,
}

/// What other relays stored after a seq (see [`DocStorage::changes_after`]).
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Set when a compaction removed chunks past the caller's seq: the
    /// snapshot holds them.
    pub snapshot: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
    /// The seq everything returned reaches.
    pub seq: u64,
    /// The stored heads are unknown (an append from a copy that was behind).
    pub heads_unknown: bool,
}

/// Heads are stored as the concatenation of sorted 32-byte hashes.
pub type EncodedHeads = Vec<u8>;

pub trait DocStorage: Send + Sync + 'static {
    /// The document, or `None` if this user has no document with that id.
    fn load(&self, user: &str, doc: &DocumentId) -> Result<Option<StoredDoc>>;
    /// Appends a chunk (creating the document if new) and records `heads`,
    /// the caller's heads after it. Durable when it returns. `base_seq` is
    /// the seq up to which the caller's copy holds every chunk: where other
    /// relays appended since, `heads` miss their changes, and a shared
    /// storage records the heads as unknown instead.
    fn append(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
        base_seq: u64,
    ) -> Result<Appended>;
    /// Replaces the chunks up to `covers_seq` with a snapshot holding them
    /// (a storage without seqs: all of them). Chunks another relay appended
    /// after `covers_seq` stay.
    fn compact(&self, user: &str, doc: &DocumentId, snapshot: &[u8], covers_seq: u64) -> Result<()>;
    /// What was appended after `seq`, for a relay whose copy holds every
    /// chunk up to `seq` (storage shared by several relays); `None` where
    /// one relay owns the storage.
    fn changes_after(&self, _user: &str, _doc: &DocumentId, _seq: u64) -> Result<Option<CatchUp>> {
        Ok(None)
    }
    /// Announcements of what other relays store, for storage shared by
    /// several relays (`None` otherwise). Taken once, at start.
    fn change_feed(&self) -> Option<tokio::sync::mpsc::Receiver<FeedEvent>> {
        None
    }
    /// Records the heads of the document at `seq` where they were unknown
    /// and nothing was appended since (a relay that caught up knows them).
    fn record_heads(&self, _user: &str, _doc: &DocumentId, _seq: u64, _heads: &EncodedHeads) -> Result<()> {
        Ok(())
    }
    /// Heads of every document of the user.
    fn heads(&self, user: &str) -> Result<HashMap<DocumentId, EncodedHeads>>;
    fn count_docs(&self, user: &str) -> Result<u64>;
    // Sync states are an optimization (they make reconnects cheap); an
    // implementation may write them behind, as long as a later save of the
    // same key is never overtaken by an earlier one.
    /// The persisted sync state of (user, device, doc).
    fn load_sync_state(&self, user: &str, device: &str, doc: &DocumentId) -> Result<Option<Vec<u8>>>;
    /// Shared heads per document for (user, device), to find what changed since.
    fn shared_heads(&self, user: &str, device: &str) -> Result<HashMap<DocumentId, EncodedHeads>>;
    fn save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<()>;
    /// [`DocStorage::save_sync_state`] without waiting: `Ok(false)` when the
    /// write-behind queue is full, so a caller on an async thread can leave
    /// the save to a blocking one. Storage that never waits saves at once.
    /// Whether [`DocStorage::try_append_queued`] can queue appends. Only a
    /// storage that keeps no seqs (one relay owns it) and commits its
    /// writes in order may say yes: a caller applies a change in memory,
    /// queues its append and answers only once the ticket says durable.
    fn queues_appends(&self) -> bool {
        false
    }
    /// [`DocStorage::append`] without waiting for the commit: the outcome
    /// (with `seq` 0) arrives on the ticket. `Ok(None)` when the queue has
    /// no room now; the caller then uses `append` on a thread that may wait.
    fn try_append_queued(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
    ) -> Result<Option<AppendTicket>> {
        let _ = (user, doc, chunk, heads);
        Ok(None)
    }
    fn try_save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<bool> {
        self.save_sync_state(user, device, doc, state, shared_heads).map(|()| true)
    }
    /// Forgets the sync states of `device`'s other installs (sync peers
    /// named `device` or `device#<storage id>`), keeping `keep`'s. May be
    /// written behind, ordered with the saves.
    fn forget_other_installs(&self, user: &str, device: &str, keep: &str) -> Result<()>;
    /// This storage's identity; changes when it is restored from a backup.
    fn storage_id(&self) -> Result<String>;
    /// Waits until every queued write (write-behind ones included) is durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// Gives back memory held for speed only (page caches), once the relay
    /// has dropped idle documents: after a large history synced, that memory
    /// would otherwise stay resident until the relay restarts.
    fn release_memory(&self) {}
    /// Writes and commits a little (readiness: can this storage take writes
    /// now?). A full disk or a read-only file system fails it.
    fn probe_write(&self) -> Result<()>;
}

/// The key sync states are kept under for one install of a device: the
/// device id from the token, plus the storage id the app announced at join
/// (a wiped and reinstalled app announces a new one and starts fresh).
pub fn sync_peer_key(device: &str, storage_id: Option<&str>) -> String {
    match storage_id {
        Some(s) if valid_storage_id(s) => format!("{device}#{s}"),
        _ => device.to_owned(),
    }
}

/// Storage ids are short tokens (automerge-repo uses UUIDs).
pub fn valid_storage_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub use protocol::heads::{decode_heads, encode_heads};

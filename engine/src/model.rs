//! The types an app sees. No Automerge type appears here: the documents are
//! an implementation detail of how progress is stored and merged.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. The app passes time in; the
/// engine never reads the clock for anything that is stored.
pub type TimestampMs = i64;

/// How well the learner recalled an item (FSRS / Anki grades).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rating {
    Again = 1,
    Hard = 2,
    Good = 3,
    Easy = 4,
}

impl Rating {
    pub fn from_u8(value: u8) -> Option<Rating> {
        match value {
            1 => Some(Rating::Again),
            2 => Some(Rating::Hard),
            3 => Some(Rating::Good),
            4 => Some(Rating::Easy),
            _ => None,
        }
    }
}

/// One answered item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Unique per review (UUID v4 text); with `reviewed_at` it gives the total replay order.
    pub id: String,
    pub item_id: String,
    pub rating: Rating,
    pub reviewed_at: TimestampMs,
    pub duration_ms: u32,
    pub device_id: String,
    /// The session it was part of, if any.
    pub session_id: Option<String>,
}

/// What the app passes to record a review.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReview {
    pub item_id: String,
    pub rating: Rating,
    pub reviewed_at: TimestampMs,
    pub duration_ms: u32,
    pub session_id: Option<String>,
}

/// A study session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub started_at: TimestampMs,
    pub ended_at: Option<TimestampMs>,
    pub device_id: String,
    /// Free text chosen by the app, e.g. `learn`, `review`, `cram`.
    pub mode: String,
    pub counts: SessionCounts,
    pub notes: String,
}

/// Tallies an app records when a session ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounts {
    pub reviewed: u32,
    pub correct: u32,
    pub new_items: u32,
}

/// An item's FSRS memory state after replaying all its known reviews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryState {
    pub item_id: String,
    pub stability: f32,
    pub difficulty: f32,
    pub due_at: TimestampMs,
    pub last_reviewed_at: TimestampMs,
    pub review_count: u32,
}

/// Where background sync stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub connected: bool,
    /// Documents with local changes the relay has not acknowledged yet.
    pub pending_documents: u32,
    /// When the engine last finished an exchange with the relay.
    pub last_sync_at: Option<TimestampMs>,
    /// The last connection error, if the engine is not connected.
    pub last_error: Option<String>,
    /// What kind of failure `last_error` is, for the app to act on.
    #[serde(default)]
    pub problem: Option<SyncProblem>,
    /// Protocol traffic since the engine opened (payload bytes, without
    /// WebSocket framing), for observability and the bench.
    pub traffic: Traffic,
}

/// Why sync is not connected, as far as the app can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncProblem {
    /// The relay refused the device token (unknown, badly signed or
    /// expired): get a new one from the account backend.
    Unauthorized,
    /// The app's token provider gave no token.
    NoToken,
    /// The relay could not be reached (no network, DNS, TLS, refused
    /// connection, dropped connection): the engine retries with backoff.
    Unreachable,
    /// The relay ended the session (a policy such as a document limit, its
    /// own failure, or a message it refused).
    Refused,
    /// This device failed: its configuration, its database, or a message
    /// from the relay it could not use.
    Local,
}

/// Cumulative protocol traffic with the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Times the direction of traffic changed (a send after a receive, or a
    /// receive after a send). A round trip is two turns, so an exchange of
    /// `t` turns took `(t + 1) / 2` round trips: this counts waits on the
    /// network, where message counts do not (a batch of sends is one trip).
    pub turns: u64,
    /// Direction of the last message: true when it was sent.
    #[doc(hidden)]
    pub last_was_send: Option<bool>,
}

/// What the engine tells the app about, through [`crate::Engine::subscribe`].
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// Reviews arrived from another device; memory states of these items changed.
    ItemsChanged { item_ids: Vec<String> },
    /// Sessions were created or changed on another device.
    SessionsChanged { session_ids: Vec<String> },
    /// Sync status changed.
    Sync(SyncStatus),
}

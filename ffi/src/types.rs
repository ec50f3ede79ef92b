//! The records and enums that cross to Kotlin and Swift, and their
//! conversions from the engine's model. Times are milliseconds since the
//! Unix epoch (UTC) in an `i64` (Kotlin `Long`, Swift `Int64`): the app
//! passes time in, the engine reads no clock for what it stores.

use crate::ProgressError;

/// How well the learner recalled an item (FSRS / Anki grades).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Rating {
    Again,
    Hard,
    Good,
    Easy,
}

impl From<Rating> for engine::Rating {
    fn from(r: Rating) -> engine::Rating {
        match r {
            Rating::Again => engine::Rating::Again,
            Rating::Hard => engine::Rating::Hard,
            Rating::Good => engine::Rating::Good,
            Rating::Easy => engine::Rating::Easy,
        }
    }
}

impl From<engine::Rating> for Rating {
    fn from(r: engine::Rating) -> Rating {
        match r {
            engine::Rating::Again => Rating::Again,
            engine::Rating::Hard => Rating::Hard,
            engine::Rating::Good => Rating::Good,
            engine::Rating::Easy => Rating::Easy,
        }
    }
}

/// Who this device is and where it keeps its data.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EngineOptions {
    /// A directory the app owns (Android: `context.filesDir`; iOS: Application Support).
    pub data_dir: String,
    pub user_id: String,
    pub device_id: String,
}

/// What the app passes to record a review.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewReview {
    pub item_id: String,
    pub rating: Rating,
    pub reviewed_at_ms: i64,
    /// How long the learner took; 0 ..= 2^32-1 ms.
    pub duration_ms: i64,
    pub session_id: Option<String>,
}

impl TryFrom<NewReview> for engine::NewReview {
    type Error = ProgressError;
    fn try_from(r: NewReview) -> Result<engine::NewReview, ProgressError> {
        let duration_ms = u32::try_from(r.duration_ms).map_err(|_| ProgressError::InvalidInput {
            reason: format!("duration_ms must be between 0 and {} (got {})", u32::MAX, r.duration_ms),
        })?;
        Ok(engine::NewReview {
            item_id: r.item_id,
            rating: r.rating.into(),
            reviewed_at: r.reviewed_at_ms,
            duration_ms,
            session_id: r.session_id,
        })
    }
}

/// One answered item, as merged from every device.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Review {
    pub id: String,
    pub item_id: String,
    pub rating: Rating,
    pub reviewed_at_ms: i64,
    pub duration_ms: i64,
    pub device_id: String,
    pub session_id: Option<String>,
}

impl From<engine::Review> for Review {
    fn from(r: engine::Review) -> Review {
        Review {
            id: r.id,
            item_id: r.item_id,
            rating: r.rating.into(),
            reviewed_at_ms: r.reviewed_at,
            duration_ms: i64::from(r.duration_ms),
            device_id: r.device_id,
            session_id: r.session_id,
        }
    }
}

/// Tallies an app records when a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Record)]
pub struct SessionCounts {
    pub reviewed: u32,
    pub correct: u32,
    pub new_items: u32,
}

impl From<SessionCounts> for engine::SessionCounts {
    fn from(c: SessionCounts) -> engine::SessionCounts {
        engine::SessionCounts { reviewed: c.reviewed, correct: c.correct, new_items: c.new_items }
    }
}

/// A study session.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Session {
    pub id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub device_id: String,
    /// Free text chosen by the app, e.g. `learn`, `review`, `cram`.
    pub mode: String,
    pub counts: SessionCounts,
    pub notes: String,
}

impl From<engine::Session> for Session {
    fn from(s: engine::Session) -> Session {
        Session {
            id: s.id,
            started_at_ms: s.started_at,
            ended_at_ms: s.ended_at,
            device_id: s.device_id,
            mode: s.mode,
            counts: SessionCounts {
                reviewed: s.counts.reviewed,
                correct: s.counts.correct,
                new_items: s.counts.new_items,
            },
            notes: s.notes,
        }
    }
}

/// An item's FSRS memory state after replaying all its known reviews.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct MemoryState {
    pub item_id: String,
    pub stability: f32,
    pub difficulty: f32,
    pub due_at_ms: i64,
    pub last_reviewed_at_ms: i64,
    pub review_count: u32,
}

impl From<engine::MemoryState> for MemoryState {
    fn from(m: engine::MemoryState) -> MemoryState {
        MemoryState {
            item_id: m.item_id,
            stability: m.stability,
            difficulty: m.difficulty,
            due_at_ms: m.due_at,
            last_reviewed_at_ms: m.last_reviewed_at,
            review_count: m.review_count,
        }
    }
}

/// Where background sync stands.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    pub connected: bool,
    /// Documents with local changes the relay has not acknowledged yet.
    pub pending_documents: u32,
    pub last_sync_at_ms: Option<i64>,
    /// Why the engine is not connected, if it tried (for logs).
    pub last_error: Option<String>,
    /// What kind of failure that is (to act on).
    pub problem: Option<SyncProblem>,
}

/// Why sync is not connected, as far as the app can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncProblem {
    /// The relay refused the device token: get a new one (sign in again).
    Unauthorized,
    /// The token provider gave no token.
    NoToken,
    /// The relay could not be reached; the engine retries with backoff.
    Unreachable,
    /// The relay ended the session (a policy, its own failure).
    Refused,
    /// This device failed (configuration, database).
    Local,
}

impl From<engine::SyncProblem> for SyncProblem {
    fn from(p: engine::SyncProblem) -> SyncProblem {
        match p {
            engine::SyncProblem::Unauthorized => SyncProblem::Unauthorized,
            engine::SyncProblem::NoToken => SyncProblem::NoToken,
            engine::SyncProblem::Unreachable => SyncProblem::Unreachable,
            engine::SyncProblem::Refused => SyncProblem::Refused,
            engine::SyncProblem::Local => SyncProblem::Local,
        }
    }
}

impl From<engine::SyncStatus> for SyncStatus {
    fn from(s: engine::SyncStatus) -> SyncStatus {
        SyncStatus {
            connected: s.connected,
            pending_documents: s.pending_documents,
            last_sync_at_ms: s.last_sync_at,
            last_error: s.last_error,
            problem: s.problem.map(Into::into),
        }
    }
}

/// Where the relay is. The device token comes from a [`TokenProvider`].
#[derive(Debug, Clone, uniffi::Record)]
pub struct SyncOptions {
    /// `wss://host/sync`; `ws://` only to a loopback address (the token
    /// would otherwise cross the network in clear).
    pub url: String,
    /// A CA certificate (PEM) to trust besides the system's web roots.
    pub extra_ca_pem: Option<String>,
    /// First reconnect delay; doubles up to `max_backoff_ms` (with jitter).
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// Gives the engine device tokens. Asked before every connection attempt
/// (tokens expire; a refused one is replaced on the next attempt), on a
/// background thread: it may block, e.g. on the app's own backend.
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// The current device token. Throw `ProgressException.NoToken` when
    /// there is none (signed out): the engine retries with backoff.
    fn token(&self) -> Result<String, ProgressError>;
}

//! The one error type apps see. Kotlin gets `ProgressException.InvalidInput`
//! and so on; Swift a `ProgressError` enum.

use engine::EngineError;

/// Everything an export can fail with. Each case says what the app can do
/// about it; the `reason` is for logs, not for branching.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ProgressError {
    /// The app passed something the engine refuses (an empty or over-long
    /// id, a negative duration, a malformed URL): fix the call.
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    /// No session with this id on this device.
    #[error("no session with id `{id}`")]
    UnknownSession { id: String },
    /// The engine was closed; open a new one.
    #[error("the engine is closed")]
    Closed,
    /// Another engine (in this process or another, e.g. an app extension)
    /// has this data directory open: shut that one first.
    #[error("the data directory {dir} is in use by another engine")]
    InUse { dir: String },
    /// The device database failed (disk full, I/O error): retry later.
    #[error("storage: {reason}")]
    Storage { reason: String },
    /// The database was written by a newer app version (a downgrade).
    #[error("database schema version {found} is newer than this app supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The app's token provider could not give a token.
    #[error("no token: {reason}")]
    NoToken { reason: String },
    /// A release check was cancelled (by its handle, or by cancelling the
    /// coroutine or task). What was downloaded is kept for the next check.
    #[error("cancelled")]
    Cancelled,
    /// The relay could not be reached or failed; the active release is
    /// untouched. Retry later.
    #[error("network: {reason}")]
    Network { reason: String },
    /// No release is offered to this app on this channel (yet: staged rollouts).
    #[error("no release is offered on this channel")]
    NothingOffered,
    /// A manifest failed verification (signature, age, sequence, dataset).
    /// The active release is untouched.
    #[error("manifest refused: {reason}")]
    ManifestRefused { reason: String },
    /// The device's disk is full; the partial download was removed.
    #[error("the disk is full")]
    DiskFull,
    /// A bug inside the engine (a panic, a poisoned lock). Report it.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

impl From<EngineError> for ProgressError {
    fn from(e: EngineError) -> ProgressError {
        match e {
            EngineError::InvalidInput(reason) => ProgressError::InvalidInput { reason },
            EngineError::UnknownSession(id) => ProgressError::UnknownSession { id },
            EngineError::Closed => ProgressError::Closed,
            EngineError::InUse(dir) => ProgressError::InUse { dir },
            EngineError::SchemaTooNew { found, supported } => ProgressError::SchemaTooNew { found, supported },
            e @ (EngineError::Storage(_) | EngineError::Document { .. } | EngineError::Migration(_)) => {
                ProgressError::Storage { reason: e.to_string() }
            }
            e @ (EngineError::Scheduler(_) | EngineError::Poisoned) => {
                ProgressError::Internal { reason: e.to_string() }
            }
        }
    }
}

/// A callback the app implements threw something other than a
/// `ProgressException`.
impl From<uniffi::UnexpectedUniFFICallbackError> for ProgressError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> ProgressError {
        ProgressError::Internal { reason: format!("an app callback failed: {}", e.reason) }
    }
}

//! The engine's one error type.

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("document {doc}: {source}")]
    Document { doc: String, source: Box<automerge::AutomergeError> },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("no session with id `{0}`")]
    UnknownSession(String),
    #[error("database schema version {found} is newer than this engine supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("scheduler: {0}")]
    Scheduler(String),
    #[error("engine state lock poisoned")]
    Poisoned,
    #[error("the engine is closed")]
    Closed,
    #[error("the data directory {0} is in use by another engine (this process or another); close it first")]
    InUse(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

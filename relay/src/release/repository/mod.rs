//! `ReleaseRepository` (D-003): the only code that touches the release
//! tables. Every state change is one transaction; concurrent edits
//! are caught by the `revision` column (validate-then-publish only succeeds
//! if nothing changed in between).

use release::dto::{AuditEntry, DatasetConfig};
use release::model::{Artifact, Release, TimestampMs};
use release::version::Version;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no release `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("migration: {0}")]
    Migration(String),
    #[error("lock poisoned")]
    Poisoned,
    #[error("postgres: {0}")]
    Postgres(String),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// A release plus the revision its content had when read.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub release: Release,
    pub revision: i64,
}

/// An uploaded artifact's file, relative to the artifact root.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub artifact: Artifact,
    pub file_key: String,
}

pub struct NewRelease<'a> {
    pub id: &'a str,
    pub dataset: &'a str,
    pub channel: &'a str,
    pub version: Version,
    pub notes: &'a str,
    pub min_app_version: &'a str,
    pub now: TimestampMs,
}

pub(super) const RELEASE_COLUMNS: &str = "id, dataset, channel, version, notes, min_app_version, state, revision, \
     rollout_percent, mandatory, deprecated_reason, created_at, published_at";

/// The release registry's storage (D-003): SQLite in the data directory
/// ([`SqliteReleases`]) or PostgreSQL shared by several relays
/// ([`PgReleases`]). Every state change is one transaction; concurrent
/// edits are caught by the `revision` column.
pub trait ReleaseRepository: Send + Sync {
    fn create(&self, new: NewRelease<'_>) -> Result<Release>;

    fn get(&self, id: &str) -> Result<Versioned>;

    /// Releases, newest version first, optionally of one dataset / channel.
    fn list(&self, dataset: Option<&str>, channel: Option<&str>) -> Result<Vec<Release>>;

    /// Edits a draft's fields; the release goes back to draft.
    fn update(
        &self,
        id: &str,
        version: Option<Version>,
        notes: Option<&str>,
        min_app_version: Option<&str>,
    ) -> Result<Release>;

    /// Records an artifact of an editable release; the release goes back to draft.
    fn add_artifact(&self, release_id: &str, artifact: &Artifact, file_key: Option<&str>) -> Result<Release>;

    /// Removes an artifact of an editable release; returns its file key (to delete the file).
    fn remove_artifact(&self, release_id: &str, name: &str) -> Result<Option<String>>;

    /// The file of an uploaded artifact.
    fn stored_file(&self, release_id: &str, name: &str) -> Result<Option<StoredFile>>;

    /// Every uploaded artifact's file key of a release.
    fn stored_files(&self, release_id: &str) -> Result<Vec<StoredFile>>;

    /// Every file key any artifact row points at (to sweep orphaned files).
    fn all_file_keys(&self) -> Result<Vec<String>>;

    /// Marks a release validated if its content is still at `revision`.
    fn mark_validated(&self, id: &str, revision: i64) -> Result<bool>;

    /// Publishes a release whose content is still at `revision`; bumps the channel sequence.
    fn publish(&self, id: &str, revision: i64, rollout: u8, mandatory: bool, now: TimestampMs) -> Result<Release>;

    /// Changes a published release's rollout; bumps the channel sequence.
    fn set_rollout(&self, id: &str, percent: u8) -> Result<Release>;

    /// Deprecates a published release; bumps the channel sequence.
    fn deprecate(&self, id: &str, reason: &str) -> Result<Release>;

    /// Versions of every release of the channel that was ever published, except `except`.
    fn published_versions(&self, dataset: &str, channel: &str, except: &str) -> Result<Vec<Version>>;

    /// Published, not deprecated releases of a channel, newest version first.
    fn live_releases(&self, dataset: &str, channel: &str) -> Result<Vec<Release>>;

    fn channel_sequence(&self, dataset: &str, channel: &str) -> Result<u64>;

    fn dataset_config(&self, dataset: &str) -> Result<DatasetConfig>;

    fn set_dataset_config(&self, dataset: &str, config: &DatasetConfig) -> Result<()>;

    /// Appends one audit entry. The table refuses updates and deletes.
    fn audit(&self, entry: &AuditEntry) -> Result<i64>;

    /// Audit entries, newest first; `target` also matches targets below it
    /// (`<release>/<artifact>` for a release).
    fn audit_log(&self, target: Option<&str>, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>>;
}

pub(super) fn require_editable(release: &Release) -> Result<()> {
    if release.state.is_editable() {
        Ok(())
    } else {
        Err(RepoError::Conflict(format!("the release is {} and can no longer change", release.state.as_str())))
    }
}

mod postgres;
mod sqlite;
pub use postgres::PgReleases;
pub use sqlite::SqliteReleases;

#[cfg(test)]
mod tests;

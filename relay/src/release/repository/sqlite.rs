//! [`ReleaseRepository`] on the relay's SQLite database.

use super::{
    NewRelease, RELEASE_COLUMNS, ReleaseRepository, RepoError, Result, StoredFile, Versioned, require_editable,
};
use crate::storage::migrations;
use release::dto::{AuditEntry, DatasetConfig};
use release::model::{Artifact, ArtifactSource, Release, ReleaseState, TimestampMs};
use release::version::Version;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

/// [`ReleaseRepository`] on the relay's SQLite database.
pub struct SqliteReleases {
    conn: Mutex<Connection>,
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

fn trigger_refusal(e: &rusqlite::Error) -> Option<String> {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER => {
            Some(msg.clone())
        }
        _ => None,
    }
}

fn map_write(e: rusqlite::Error, conflict: impl FnOnce() -> String) -> RepoError {
    if is_unique_violation(&e) {
        return RepoError::Conflict(conflict());
    }
    match trigger_refusal(&e) {
        Some(msg) => RepoError::Conflict(msg),
        None => RepoError::Sqlite(e),
    }
}

impl SqliteReleases {
    /// Opens the relay database at `path` (migrating it if needed).
    pub fn open(path: &Path) -> Result<SqliteReleases> {
        let mut conn = crate::storage::open_connection(path)?;
        migrations::migrate(&mut conn).map_err(|e| RepoError::Migration(e.to_string()))?;
        Ok(SqliteReleases { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| RepoError::Poisoned)?;
        f(&mut conn)
    }

    fn published_change(&self, id: &str, change: impl FnOnce(&Connection) -> Result<()>) -> Result<Release> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let current = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            if current.release.state != ReleaseState::Published {
                return Err(RepoError::Conflict(format!(
                    "only a published release can change this way; this one is {}",
                    current.release.state.as_str()
                )));
            }
            change(&tx)?;
            bump_sequence(&tx, &current.release.dataset, &current.release.channel)?;
            let out = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            tx.commit()?;
            Ok(out.release)
        })
    }
}

impl ReleaseRepository for SqliteReleases {
    fn create(&self, new: NewRelease<'_>) -> Result<Release> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO dataset_releases(id, dataset, channel, version, version_major, version_minor,
                   version_patch, notes, min_app_version, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'draft', ?10)",
                params![
                    new.id,
                    new.dataset,
                    new.channel,
                    new.version.to_string(),
                    new.version.major,
                    new.version.minor,
                    new.version.patch,
                    new.notes,
                    new.min_app_version,
                    new.now
                ],
            )
            .map_err(|e| {
                map_write(e, || {
                    format!("{}/{} already has a release with version {}", new.dataset, new.channel, new.version)
                })
            })?;
            load(conn, new.id)?.map(|v| v.release).ok_or_else(|| RepoError::NotFound(new.id.to_owned()))
        })
    }

    fn get(&self, id: &str) -> Result<Versioned> {
        self.with(|conn| load(conn, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned())))
    }

    /// Releases, newest version first, optionally of one dataset / channel.
    fn list(&self, dataset: Option<&str>, channel: Option<&str>) -> Result<Vec<Release>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {RELEASE_COLUMNS} FROM dataset_releases
                 WHERE (?1 IS NULL OR dataset = ?1) AND (?2 IS NULL OR channel = ?2)
                 ORDER BY dataset, channel, version_major DESC, version_minor DESC, version_patch DESC"
            ))?;
            let rows = stmt.query_map(params![dataset, channel], row_to_release)?.collect::<Result<Vec<_>, _>>()?;
            with_artifacts(conn, rows)
        })
    }

    /// Edits a draft's fields; the release goes back to draft.
    fn update(
        &self,
        id: &str,
        version: Option<Version>,
        notes: Option<&str>,
        min_app_version: Option<&str>,
    ) -> Result<Release> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let current = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            require_editable(&current.release)?;
            let version = version.unwrap_or(current.release.version);
            tx.execute(
                "UPDATE dataset_releases SET version = ?2, version_major = ?3, version_minor = ?4, version_patch = ?5,
                   notes = ?6, min_app_version = ?7, state = 'draft', revision = revision + 1 WHERE id = ?1",
                params![
                    id,
                    version.to_string(),
                    version.major,
                    version.minor,
                    version.patch,
                    notes.unwrap_or(&current.release.notes),
                    min_app_version.unwrap_or(&current.release.min_app_version)
                ],
            )
            .map_err(|e| map_write(e, || format!("version {version} is already used on this channel")))?;
            let out = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            tx.commit()?;
            Ok(out.release)
        })
    }

    /// Records an artifact of an editable release; the release goes back to draft.
    fn add_artifact(&self, release_id: &str, artifact: &Artifact, file_key: Option<&str>) -> Result<Release> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let current = load(&tx, release_id)?.ok_or_else(|| RepoError::NotFound(release_id.to_owned()))?;
            require_editable(&current.release)?;
            let (source, url) = match &artifact.source {
                ArtifactSource::Uploaded => ("uploaded", None),
                ArtifactSource::External { url } => ("external", Some(url.as_str())),
            };
            tx.execute(
                "INSERT INTO dataset_release_artifacts(release_id, name, size, sha256, source, url, file_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    release_id,
                    artifact.name,
                    artifact.size as i64,
                    artifact.sha256,
                    source,
                    url,
                    file_key,
                    artifact.created_at
                ],
            )
            .map_err(|e| map_write(e, || format!("the release already has an artifact named `{}`", artifact.name)))?;
            bump_revision(&tx, release_id)?;
            let out = load(&tx, release_id)?.ok_or_else(|| RepoError::NotFound(release_id.to_owned()))?;
            tx.commit()?;
            Ok(out.release)
        })
    }

    /// Removes an artifact of an editable release; returns its file key (to delete the file).
    fn remove_artifact(&self, release_id: &str, name: &str) -> Result<Option<String>> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let current = load(&tx, release_id)?.ok_or_else(|| RepoError::NotFound(release_id.to_owned()))?;
            require_editable(&current.release)?;
            let key: Option<Option<String>> = tx
                .query_row(
                    "SELECT file_key FROM dataset_release_artifacts WHERE release_id = ?1 AND name = ?2",
                    params![release_id, name],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(key) = key else {
                return Err(RepoError::NotFound(format!("{release_id}/{name}")));
            };
            tx.execute(
                "DELETE FROM dataset_release_artifacts WHERE release_id = ?1 AND name = ?2",
                params![release_id, name],
            )
            .map_err(|e| map_write(e, String::new))?;
            bump_revision(&tx, release_id)?;
            tx.commit()?;
            Ok(key)
        })
    }

    /// The file of an uploaded artifact.
    fn stored_file(&self, release_id: &str, name: &str) -> Result<Option<StoredFile>> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT name, size, sha256, source, url, created_at, file_key FROM dataset_release_artifacts
                     WHERE release_id = ?1 AND name = ?2",
                    params![release_id, name],
                    |r| Ok((row_to_artifact(r)?, r.get::<_, Option<String>>(6)?)),
                )
                .optional()?;
            Ok(row.and_then(|(artifact, key)| Some(StoredFile { artifact: artifact.ok()?, file_key: key? })))
        })
    }

    /// Every uploaded artifact's file key of a release.
    fn stored_files(&self, release_id: &str) -> Result<Vec<StoredFile>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, size, sha256, source, url, created_at, file_key FROM dataset_release_artifacts
                 WHERE release_id = ?1 AND file_key IS NOT NULL ORDER BY name",
            )?;
            let rows = stmt
                .query_map([release_id], |r| Ok((row_to_artifact(r)?, r.get::<_, String>(6)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(|(a, file_key)| Ok(StoredFile { artifact: a?, file_key })).collect()
        })
    }

    /// Every file key any artifact row points at (to sweep orphaned files).
    fn all_file_keys(&self) -> Result<Vec<String>> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT file_key FROM dataset_release_artifacts WHERE file_key IS NOT NULL")?;
            let keys = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(keys)
        })
    }

    /// Marks a release validated if its content is still at `revision`.
    fn mark_validated(&self, id: &str, revision: i64) -> Result<bool> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE dataset_releases SET state = 'validated'
                 WHERE id = ?1 AND revision = ?2 AND state IN ('draft', 'validated')",
                params![id, revision],
            )?;
            Ok(n == 1)
        })
    }

    /// Publishes a release whose content is still at `revision`; bumps the channel sequence.
    fn publish(&self, id: &str, revision: i64, rollout: u8, mandatory: bool, now: TimestampMs) -> Result<Release> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let current = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            if !current.release.state.is_editable() {
                return Err(RepoError::Conflict(format!("the release is already {}", current.release.state.as_str())));
            }
            if current.revision != revision {
                return Err(RepoError::Conflict("the release changed while it was being validated; retry".into()));
            }
            tx.execute(
                "UPDATE dataset_releases SET state = 'published', rollout_percent = ?2, mandatory = ?3, published_at = ?4
                 WHERE id = ?1",
                params![id, rollout, mandatory, now],
            )?;
            bump_sequence(&tx, &current.release.dataset, &current.release.channel)?;
            let out = load(&tx, id)?.ok_or_else(|| RepoError::NotFound(id.to_owned()))?;
            tx.commit()?;
            Ok(out.release)
        })
    }

    /// Changes a published release's rollout; bumps the channel sequence.
    fn set_rollout(&self, id: &str, percent: u8) -> Result<Release> {
        self.published_change(id, |tx| {
            tx.execute("UPDATE dataset_releases SET rollout_percent = ?2 WHERE id = ?1", params![id, percent])?;
            Ok(())
        })
    }

    /// Deprecates a published release; bumps the channel sequence.
    fn deprecate(&self, id: &str, reason: &str) -> Result<Release> {
        self.published_change(id, |tx| {
            tx.execute(
                "UPDATE dataset_releases SET state = 'deprecated', deprecated_reason = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            Ok(())
        })
    }

    /// Versions of every release of the channel that was ever published, except `except`.
    fn published_versions(&self, dataset: &str, channel: &str, except: &str) -> Result<Vec<Version>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT version FROM dataset_releases
                 WHERE dataset = ?1 AND channel = ?2 AND id != ?3 AND state IN ('published', 'deprecated')",
            )?;
            let rows = stmt.query_map(params![dataset, channel, except], |r| r.get::<_, String>(0))?;
            rows.map(|v| v?.parse().map_err(|e: release::version::VersionError| RepoError::Corrupt(e.to_string())))
                .collect()
        })
    }

    /// Published, not deprecated releases of a channel, newest version first.
    fn live_releases(&self, dataset: &str, channel: &str) -> Result<Vec<Release>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {RELEASE_COLUMNS} FROM dataset_releases
                 WHERE dataset = ?1 AND channel = ?2 AND state = 'published'
                 ORDER BY version_major DESC, version_minor DESC, version_patch DESC"
            ))?;
            let rows = stmt.query_map(params![dataset, channel], row_to_release)?.collect::<Result<Vec<_>, _>>()?;
            with_artifacts(conn, rows)
        })
    }

    fn channel_sequence(&self, dataset: &str, channel: &str) -> Result<u64> {
        self.with(|conn| {
            let seq: Option<i64> = conn
                .query_row(
                    "SELECT sequence FROM dataset_channels WHERE dataset = ?1 AND channel = ?2",
                    params![dataset, channel],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(seq.unwrap_or(0) as u64)
        })
    }

    fn dataset_config(&self, dataset: &str) -> Result<DatasetConfig> {
        self.with(|conn| {
            let json: Option<String> = conn
                .query_row("SELECT required_artifacts FROM datasets WHERE dataset = ?1", [dataset], |r| r.get(0))
                .optional()?;
            match json {
                None => Ok(DatasetConfig::default()),
                Some(j) => Ok(DatasetConfig {
                    required_artifacts: serde_json::from_str(&j).map_err(|e| RepoError::Corrupt(e.to_string()))?,
                }),
            }
        })
    }

    fn set_dataset_config(&self, dataset: &str, config: &DatasetConfig) -> Result<()> {
        let json = serde_json::to_string(&config.required_artifacts).map_err(|e| RepoError::Corrupt(e.to_string()))?;
        self.with(|conn| {
            conn.execute(
                "INSERT INTO datasets(dataset, required_artifacts) VALUES (?1, ?2)
                 ON CONFLICT(dataset) DO UPDATE SET required_artifacts = excluded.required_artifacts",
                params![dataset, json],
            )?;
            Ok(())
        })
    }

    /// Appends one audit entry. The table refuses updates and deletes.
    fn audit(&self, entry: &AuditEntry) -> Result<i64> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO admin_audit_log(at, actor, action, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![entry.at, entry.actor, entry.action, entry.target, entry.outcome, entry.detail],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Audit entries, newest first; `target` also matches targets below it
    /// (`<release>/<artifact>` for a release).
    fn audit_log(&self, target: Option<&str>, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, at, actor, action, target, outcome, detail FROM admin_audit_log
                 WHERE (?1 IS NULL OR target = ?1 OR substr(target, 1, length(?1) + 1) = ?1 || '/')
                   AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![target, before, limit], |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        outcome: r.get(5)?,
                        detail: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

fn bump_revision(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("UPDATE dataset_releases SET revision = revision + 1, state = 'draft' WHERE id = ?1", [id])?;
    Ok(())
}

fn bump_sequence(conn: &Connection, dataset: &str, channel: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO dataset_channels(dataset, channel, sequence) VALUES (?1, ?2, 1)
         ON CONFLICT(dataset, channel) DO UPDATE SET sequence = sequence + 1",
        params![dataset, channel],
    )?;
    Ok(())
}

type RowResult = std::result::Result<Versioned, RepoError>;

fn row_to_release(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowResult> {
    let version: String = r.get(3)?;
    let state: String = r.get(6)?;
    let build = || -> RowResult {
        Ok(Versioned {
            release: Release {
                id: r.get(0)?,
                dataset: r.get(1)?,
                channel: r.get(2)?,
                version: version
                    .parse()
                    .map_err(|e: release::version::VersionError| RepoError::Corrupt(e.to_string()))?,
                notes: r.get(4)?,
                min_app_version: r.get(5)?,
                state: ReleaseState::parse(&state).ok_or_else(|| RepoError::Corrupt(format!("state `{state}`")))?,
                rollout_percent: r.get::<_, i64>(8)?.clamp(0, 100) as u8,
                mandatory: r.get(9)?,
                deprecated_reason: r.get(10)?,
                created_at: r.get(11)?,
                published_at: r.get(12)?,
                artifacts: Vec::new(),
            },
            revision: r.get(7)?,
        })
    };
    Ok(build())
}

fn row_to_artifact(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Artifact>> {
    let (name, size, sha256): (String, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let (source, url, created_at): (String, Option<String>, TimestampMs) = (r.get(3)?, r.get(4)?, r.get(5)?);
    let source = match (source.as_str(), url) {
        ("uploaded", _) => Ok(ArtifactSource::Uploaded),
        ("external", Some(url)) => Ok(ArtifactSource::External { url }),
        (other, _) => Err(RepoError::Corrupt(format!("artifact source `{other}`"))),
    };
    Ok(source.map(|source| Artifact { name, size: size.max(0) as u64, sha256, source, created_at }))
}

fn artifacts(conn: &Connection, release_id: &str) -> Result<Vec<Artifact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, size, sha256, source, url, created_at FROM dataset_release_artifacts
         WHERE release_id = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([release_id], row_to_artifact)?.collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().collect()
}

/// Completes rows read from `dataset_releases` with their artifacts.
fn with_artifacts(conn: &Connection, rows: Vec<RowResult>) -> Result<Vec<Release>> {
    rows.into_iter()
        .map(|r| {
            let mut release = r?.release;
            release.artifacts = artifacts(conn, &release.id)?;
            Ok(release)
        })
        .collect()
}

fn load(conn: &Connection, id: &str) -> Result<Option<Versioned>> {
    let row = conn
        .query_row(&format!("SELECT {RELEASE_COLUMNS} FROM dataset_releases WHERE id = ?1"), [id], row_to_release)
        .optional()?;
    match row {
        None => Ok(None),
        Some(r) => {
            let mut v = r?;
            v.release.artifacts = artifacts(conn, id)?;
            Ok(Some(v))
        }
    }
}

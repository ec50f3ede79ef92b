//! [`ReleaseRepository`] on PostgreSQL, shared by several relays (the
//! schema is step 2 of [`crate::pg::schema`], triggers included).
//!
//! A write reads the release `FOR UPDATE` first: two relays editing one
//! release serialize on its row, so a publish can never go out on content
//! another relay changed after the revision was read.

use super::{
    NewRelease, RELEASE_COLUMNS, ReleaseRepository, RepoError, Result, StoredFile, Versioned, require_editable,
};
use crate::pg::{Pg, PgError, StorageErrorKind};
use deadpool_postgres::{GenericClient, Pool};
use release::dto::{AuditEntry, DatasetConfig};
use release::model::{Artifact, ArtifactSource, Release, ReleaseState, TimestampMs};
use release::version::Version;
use std::sync::Arc;

/// [`ReleaseRepository`] on the relay's PostgreSQL connection.
pub struct PgReleases {
    pg: Arc<Pg>,
}

/// A write refused by the database: a unique key (`conflict` says which)
/// or a trigger (its own message).
fn refused(e: PgError, conflict: impl FnOnce() -> String) -> RepoError {
    match e.kind {
        StorageErrorKind::Unique => RepoError::Conflict(conflict()),
        StorageErrorKind::Refused => RepoError::Conflict(e.text),
        _ => RepoError::Postgres(e.text),
    }
}

impl From<PgError> for RepoError {
    fn from(e: PgError) -> RepoError {
        refused(e, || "already exists".into())
    }
}

impl From<tokio_postgres::Error> for RepoError {
    fn from(e: tokio_postgres::Error) -> RepoError {
        PgError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for RepoError {
    fn from(e: deadpool_postgres::PoolError) -> RepoError {
        RepoError::Postgres(e.to_string())
    }
}

impl PgReleases {
    /// The registry on an open connection (shared with the document storage).
    pub fn on(pg: Arc<Pg>) -> PgReleases {
        PgReleases { pg }
    }

    fn run<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        // `Pg::run` carries `PgError`; the body's own `RepoError` rides inside.
        let body = f;
        self.pg.run(move |pool| {
            let fut = body(pool);
            async move { Ok(fut.await) }
        })?
    }

    /// A change to a published release, with the channel's sequence bumped.
    fn published_change(&self, id: &str, sql: &'static str, value: Change) -> Result<Release> {
        let id = id.to_owned();
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let current = load(&tx, &id, true).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            if current.release.state != ReleaseState::Published {
                return Err(RepoError::Conflict(format!(
                    "only a published release can change this way; this one is {}",
                    current.release.state.as_str()
                )));
            }
            match &value {
                Change::Rollout(p) => tx.execute(sql, &[&id, &i32::from(*p)]).await?,
                Change::Reason(r) => tx.execute(sql, &[&id, r]).await?,
            };
            bump_sequence(&tx, &current.release.dataset, &current.release.channel).await?;
            let out = load(&tx, &id, false).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            tx.commit().await?;
            Ok(out.release)
        })
    }
}

enum Change {
    Rollout(u8),
    Reason(String),
}

impl ReleaseRepository for PgReleases {
    fn create(&self, new: NewRelease<'_>) -> Result<Release> {
        let (id, dataset, channel) = (new.id.to_owned(), new.dataset.to_owned(), new.channel.to_owned());
        let (version, notes, min_app, now) =
            (new.version, new.notes.to_owned(), new.min_app_version.to_owned(), new.now);
        self.run(|pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO dataset_releases(id, dataset, channel, version, version_major, version_minor,
                       version_patch, notes, min_app_version, state, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'draft', $10)",
                    &[
                        &id,
                        &dataset,
                        &channel,
                        &version.to_string(),
                        &i64::from(version.major),
                        &i64::from(version.minor),
                        &i64::from(version.patch),
                        &notes,
                        &min_app,
                        &now,
                    ],
                )
                .await
                .map_err(|e| {
                    refused(e.into(), || format!("{dataset}/{channel} already has a release with version {version}"))
                })?;
            load(&client, &id, false).await?.map(|v| v.release).ok_or_else(|| RepoError::NotFound(id.clone()))
        })
    }

    fn get(&self, id: &str) -> Result<Versioned> {
        let id = id.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            load(&client, &id, false).await?.ok_or_else(|| RepoError::NotFound(id.clone()))
        })
    }

    fn list(&self, dataset: Option<&str>, channel: Option<&str>) -> Result<Vec<Release>> {
        let (dataset, channel) = (dataset.map(str::to_owned), channel.map(str::to_owned));
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {RELEASE_COLUMNS} FROM dataset_releases
                         WHERE ($1::text IS NULL OR dataset = $1) AND ($2::text IS NULL OR channel = $2)
                         ORDER BY dataset, channel, version_major DESC, version_minor DESC, version_patch DESC"
                    ),
                    &[&dataset, &channel],
                )
                .await?;
            with_artifacts(&client, rows).await
        })
    }

    fn update(
        &self,
        id: &str,
        version: Option<Version>,
        notes: Option<&str>,
        min_app_version: Option<&str>,
    ) -> Result<Release> {
        let (id, notes, min_app) = (id.to_owned(), notes.map(str::to_owned), min_app_version.map(str::to_owned));
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let current = load(&tx, &id, true).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            require_editable(&current.release)?;
            let version = version.unwrap_or(current.release.version);
            tx.execute(
                "UPDATE dataset_releases SET version = $2, version_major = $3, version_minor = $4, version_patch = $5,
                   notes = $6, min_app_version = $7, state = 'draft', revision = revision + 1 WHERE id = $1",
                &[
                    &id,
                    &version.to_string(),
                    &i64::from(version.major),
                    &i64::from(version.minor),
                    &i64::from(version.patch),
                    &notes.unwrap_or(current.release.notes),
                    &min_app.unwrap_or(current.release.min_app_version),
                ],
            )
            .await
            .map_err(|e| refused(e.into(), || format!("version {version} is already used on this channel")))?;
            let out = load(&tx, &id, false).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            tx.commit().await?;
            Ok(out.release)
        })
    }

    fn add_artifact(&self, release_id: &str, artifact: &Artifact, file_key: Option<&str>) -> Result<Release> {
        let (id, artifact, key) = (release_id.to_owned(), artifact.clone(), file_key.map(str::to_owned));
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let current = load(&tx, &id, true).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            require_editable(&current.release)?;
            let (source, url) = match &artifact.source {
                ArtifactSource::Uploaded => ("uploaded", None),
                ArtifactSource::External { url } => ("external", Some(url.clone())),
            };
            tx.execute(
                "INSERT INTO dataset_release_artifacts(release_id, name, size, sha256, source, url, file_key, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&id, &artifact.name, &(artifact.size as i64), &artifact.sha256, &source, &url, &key, &artifact.created_at],
            )
            .await
            .map_err(|e| {
                refused(e.into(), || format!("the release already has an artifact named `{}`", artifact.name))
            })?;
            bump_revision(&tx, &id).await?;
            let out = load(&tx, &id, false).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            tx.commit().await?;
            Ok(out.release)
        })
    }

    fn remove_artifact(&self, release_id: &str, name: &str) -> Result<Option<String>> {
        let (id, name) = (release_id.to_owned(), name.to_owned());
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let current = load(&tx, &id, true).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            require_editable(&current.release)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT file_key FROM dataset_release_artifacts WHERE release_id = $1 AND name = $2",
                    &[&id, &name],
                )
                .await?
            else {
                return Err(RepoError::NotFound(format!("{id}/{name}")));
            };
            tx.execute("DELETE FROM dataset_release_artifacts WHERE release_id = $1 AND name = $2", &[&id, &name])
                .await
                .map_err(|e| refused(e.into(), String::new))?;
            bump_revision(&tx, &id).await?;
            tx.commit().await?;
            Ok(row.get(0))
        })
    }

    fn stored_file(&self, release_id: &str, name: &str) -> Result<Option<StoredFile>> {
        let (id, name) = (release_id.to_owned(), name.to_owned());
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT name, size, sha256, source, url, created_at, file_key FROM dataset_release_artifacts
                     WHERE release_id = $1 AND name = $2",
                    &[&id, &name],
                )
                .await?;
            Ok(row.and_then(|r| {
                let file_key: Option<String> = r.get(6);
                Some(StoredFile { artifact: row_to_artifact(&r).ok()?, file_key: file_key? })
            }))
        })
    }

    fn stored_files(&self, release_id: &str) -> Result<Vec<StoredFile>> {
        let id = release_id.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT name, size, sha256, source, url, created_at, file_key FROM dataset_release_artifacts
                     WHERE release_id = $1 AND file_key IS NOT NULL ORDER BY name",
                    &[&id],
                )
                .await?;
            rows.iter().map(|r| Ok(StoredFile { artifact: row_to_artifact(r)?, file_key: r.get(6) })).collect()
        })
    }

    fn all_file_keys(&self) -> Result<Vec<String>> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows =
                client.query("SELECT file_key FROM dataset_release_artifacts WHERE file_key IS NOT NULL", &[]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn mark_validated(&self, id: &str, revision: i64) -> Result<bool> {
        let id = id.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let n = client
                .execute(
                    "UPDATE dataset_releases SET state = 'validated'
                     WHERE id = $1 AND revision = $2 AND state IN ('draft', 'validated')",
                    &[&id, &revision],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn publish(&self, id: &str, revision: i64, rollout: u8, mandatory: bool, now: TimestampMs) -> Result<Release> {
        let id = id.to_owned();
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let current = load(&tx, &id, true).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            if !current.release.state.is_editable() {
                return Err(RepoError::Conflict(format!("the release is already {}", current.release.state.as_str())));
            }
            if current.revision != revision {
                return Err(RepoError::Conflict("the release changed while it was being validated; retry".into()));
            }
            tx.execute(
                "UPDATE dataset_releases SET state = 'published', rollout_percent = $2, mandatory = $3, published_at = $4
                 WHERE id = $1",
                &[&id, &i32::from(rollout), &mandatory, &now],
            )
            .await?;
            bump_sequence(&tx, &current.release.dataset, &current.release.channel).await?;
            let out = load(&tx, &id, false).await?.ok_or_else(|| RepoError::NotFound(id.clone()))?;
            tx.commit().await?;
            Ok(out.release)
        })
    }

    fn set_rollout(&self, id: &str, percent: u8) -> Result<Release> {
        self.published_change(
            id,
            "UPDATE dataset_releases SET rollout_percent = $2 WHERE id = $1",
            Change::Rollout(percent),
        )
    }

    fn deprecate(&self, id: &str, reason: &str) -> Result<Release> {
        self.published_change(
            id,
            "UPDATE dataset_releases SET state = 'deprecated', deprecated_reason = $2 WHERE id = $1",
            Change::Reason(reason.to_owned()),
        )
    }

    fn published_versions(&self, dataset: &str, channel: &str, except: &str) -> Result<Vec<Version>> {
        let (dataset, channel, except) = (dataset.to_owned(), channel.to_owned(), except.to_owned());
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT version FROM dataset_releases
                     WHERE dataset = $1 AND channel = $2 AND id <> $3 AND state IN ('published', 'deprecated')",
                    &[&dataset, &channel, &except],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    r.get::<_, String>(0)
                        .parse()
                        .map_err(|e: release::version::VersionError| RepoError::Corrupt(e.to_string()))
                })
                .collect()
        })
    }

    fn live_releases(&self, dataset: &str, channel: &str) -> Result<Vec<Release>> {
        let (dataset, channel) = (dataset.to_owned(), channel.to_owned());
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {RELEASE_COLUMNS} FROM dataset_releases
                         WHERE dataset = $1 AND channel = $2 AND state = 'published'
                         ORDER BY version_major DESC, version_minor DESC, version_patch DESC"
                    ),
                    &[&dataset, &channel],
                )
                .await?;
            with_artifacts(&client, rows).await
        })
    }

    fn channel_sequence(&self, dataset: &str, channel: &str) -> Result<u64> {
        let (dataset, channel) = (dataset.to_owned(), channel.to_owned());
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT sequence FROM dataset_channels WHERE dataset = $1 AND channel = $2",
                    &[&dataset, &channel],
                )
                .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
        })
    }

    fn dataset_config(&self, dataset: &str) -> Result<DatasetConfig> {
        let dataset = dataset.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row =
                client.query_opt("SELECT required_artifacts FROM datasets WHERE dataset = $1", &[&dataset]).await?;
            match row {
                None => Ok(DatasetConfig::default()),
                Some(r) => Ok(DatasetConfig {
                    required_artifacts: serde_json::from_str(&r.get::<_, String>(0))
                        .map_err(|e| RepoError::Corrupt(e.to_string()))?,
                }),
            }
        })
    }

    fn set_dataset_config(&self, dataset: &str, config: &DatasetConfig) -> Result<()> {
        let json = serde_json::to_string(&config.required_artifacts).map_err(|e| RepoError::Corrupt(e.to_string()))?;
        let dataset = dataset.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO datasets(dataset, required_artifacts) VALUES ($1, $2)
                     ON CONFLICT (dataset) DO UPDATE SET required_artifacts = excluded.required_artifacts",
                    &[&dataset, &json],
                )
                .await?;
            Ok(())
        })
    }

    fn audit(&self, entry: &AuditEntry) -> Result<i64> {
        let entry = entry.clone();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_one(
                    "INSERT INTO admin_audit_log(at, actor, action, target, outcome, detail)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    &[&entry.at, &entry.actor, &entry.action, &entry.target, &entry.outcome, &entry.detail],
                )
                .await?;
            Ok(row.get(0))
        })
    }

    fn audit_log(&self, target: Option<&str>, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let target = target.map(str::to_owned);
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, at, actor, action, target, outcome, detail FROM admin_audit_log
                     WHERE ($1::text IS NULL OR target = $1 OR left(target, length($1) + 1) = $1 || '/')
                       AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    &[&target, &before, &i64::from(limit)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AuditEntry {
                    id: r.get(0),
                    at: r.get(1),
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    outcome: r.get(5),
                    detail: r.get(6),
                })
                .collect())
        })
    }
}

async fn bump_revision(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute("UPDATE dataset_releases SET revision = revision + 1, state = 'draft' WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

async fn bump_sequence(client: &impl GenericClient, dataset: &str, channel: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO dataset_channels(dataset, channel, sequence) VALUES ($1, $2, 1)
             ON CONFLICT (dataset, channel) DO UPDATE SET sequence = dataset_channels.sequence + 1",
            &[&dataset, &channel],
        )
        .await?;
    Ok(())
}

fn row_to_release(r: &tokio_postgres::Row) -> Result<Versioned> {
    let version: String = r.get(3);
    let state: String = r.get(6);
    Ok(Versioned {
        release: Release {
            id: r.get(0),
            dataset: r.get(1),
            channel: r.get(2),
            version: version.parse().map_err(|e: release::version::VersionError| RepoError::Corrupt(e.to_string()))?,
            notes: r.get(4),
            min_app_version: r.get(5),
            state: ReleaseState::parse(&state).ok_or_else(|| RepoError::Corrupt(format!("state `{state}`")))?,
            rollout_percent: r.get::<_, i32>(8).clamp(0, 100) as u8,
            mandatory: r.get(9),
            deprecated_reason: r.get(10),
            created_at: r.get(11),
            published_at: r.get(12),
            artifacts: Vec::new(),
        },
        revision: r.get(7),
    })
}

fn row_to_artifact(r: &tokio_postgres::Row) -> Result<Artifact> {
    let (source, url): (String, Option<String>) = (r.get(3), r.get(4));
    let source = match (source.as_str(), url) {
        ("uploaded", _) => ArtifactSource::Uploaded,
        ("external", Some(url)) => ArtifactSource::External { url },
        (other, _) => return Err(RepoError::Corrupt(format!("artifact source `{other}`"))),
    };
    Ok(Artifact {
        name: r.get(0),
        size: r.get::<_, i64>(1).max(0) as u64,
        sha256: r.get(2),
        source,
        created_at: r.get(5),
    })
}

async fn artifacts(client: &impl GenericClient, release_id: &str) -> Result<Vec<Artifact>> {
    let rows = client
        .query(
            "SELECT name, size, sha256, source, url, created_at FROM dataset_release_artifacts
             WHERE release_id = $1 ORDER BY name",
            &[&release_id],
        )
        .await?;
    rows.iter().map(row_to_artifact).collect()
}

/// Completes rows read from `dataset_releases` with their artifacts.
async fn with_artifacts(client: &impl GenericClient, rows: Vec<tokio_postgres::Row>) -> Result<Vec<Release>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut release = row_to_release(row)?.release;
        release.artifacts = artifacts(client, &release.id).await?;
        out.push(release);
    }
    Ok(out)
}

/// The release and its artifacts; `for_update` locks its row until the
/// transaction ends (every write reads this way first).
async fn load(client: &impl GenericClient, id: &str, for_update: bool) -> Result<Option<Versioned>> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = client
        .query_opt(&format!("SELECT {RELEASE_COLUMNS} FROM dataset_releases WHERE id = $1{lock}"), &[&id])
        .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let mut v = row_to_release(&r)?;
            v.release.artifacts = artifacts(client, id).await?;
            Ok(Some(v))
        }
    }
}

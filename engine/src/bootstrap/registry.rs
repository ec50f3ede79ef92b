//! The local release registry (D-013): what the device knows about each
//! release, its artifacts' states, and per channel the accepted manifest
//! sequence, the active and the previous known-good release. SQLite (WAL,
//! FULL sync) with versioned migrations, like every database here.

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use std::path::Path;

const STEPS: &[M<'static>] = &[M::up(
    r#"
    CREATE TABLE releases (
        release_id       TEXT PRIMARY KEY,
        dataset          TEXT NOT NULL,
        channel          TEXT NOT NULL,
        version          TEXT NOT NULL,
        manifest         TEXT NOT NULL,   -- the accepted manifest JSON
        state            TEXT NOT NULL CHECK (state IN
                           ('pending', 'downloading', 'verified', 'active', 'failed', 'superseded', 'bad')),
        failed_launches  INTEGER NOT NULL DEFAULT 0,
        launch_confirmed INTEGER NOT NULL DEFAULT 0,
        updated_at       INTEGER NOT NULL
    );
    CREATE TABLE release_artifacts (
        release_id  TEXT NOT NULL REFERENCES releases(release_id),
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'downloading', 'verified', 'failed')),
        PRIMARY KEY (release_id, name)
    );
    CREATE TABLE channels (
        dataset            TEXT NOT NULL,
        channel            TEXT NOT NULL,
        accepted_sequence  INTEGER,
        active             TEXT,
        previous_good      TEXT,
        PRIMARY KEY (dataset, channel)
    );
    "#,
)];

pub const MIGRATIONS: Migrations<'static> = Migrations::from_slice(STEPS);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelState {
    pub accepted_sequence: Option<u64>,
    pub active: Option<String>,
    pub previous_good: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRelease {
    pub release_id: String,
    pub version: String,
    pub manifest: String,
    pub state: String,
    pub failed_launches: u32,
    pub launch_confirmed: bool,
}

pub struct Registry {
    conn: Connection,
}

impl Registry {
    pub fn open(path: &Path) -> Result<Registry> {
        let mut conn = crate::store::open_connection(path)?;
        MIGRATIONS.to_latest(&mut conn)?;
        Ok(Registry { conn })
    }

    pub fn channel(&self, dataset: &str, channel: &str) -> Result<ChannelState> {
        Ok(self
            .conn
            .query_row(
                "SELECT accepted_sequence, active, previous_good FROM channels WHERE dataset = ?1 AND channel = ?2",
                params![dataset, channel],
                |r| {
                    Ok(ChannelState {
                        accepted_sequence: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                        active: r.get(1)?,
                        previous_good: r.get(2)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    pub fn set_channel(&self, dataset: &str, channel: &str, state: &ChannelState) -> Result<()> {
        self.conn.execute(
            "INSERT INTO channels(dataset, channel, accepted_sequence, active, previous_good) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(dataset, channel) DO UPDATE SET accepted_sequence = excluded.accepted_sequence,
               active = excluded.active, previous_good = excluded.previous_good",
            params![dataset, channel, state.accepted_sequence.map(|v| v as i64), state.active, state.previous_good],
        )?;
        Ok(())
    }

    /// Records a release from an accepted manifest (once); returns what is known of it.
    pub fn remember(&self, manifest: &release::Manifest, manifest_json: &str, now: i64) -> Result<KnownRelease> {
        self.conn.execute(
            "INSERT OR IGNORE INTO releases(release_id, dataset, channel, version, manifest, state, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
            params![
                manifest.release_id,
                manifest.dataset,
                manifest.channel,
                manifest.version.to_string(),
                manifest_json,
                now
            ],
        )?;
        for a in &manifest.artifacts {
            self.conn.execute(
                "INSERT OR IGNORE INTO release_artifacts(release_id, name, size, sha256, state) VALUES (?1, ?2, ?3, ?4, 'pending')",
                params![manifest.release_id, a.name, a.size as i64, a.sha256],
            )?;
        }
        self.release(&manifest.release_id)?.ok_or(RegistryError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn release(&self, id: &str) -> Result<Option<KnownRelease>> {
        Ok(self
            .conn
            .query_row(
                "SELECT release_id, version, manifest, state, failed_launches, launch_confirmed FROM releases WHERE release_id = ?1",
                [id],
                |r| {
                    Ok(KnownRelease {
                        release_id: r.get(0)?,
                        version: r.get(1)?,
                        manifest: r.get(2)?,
                        state: r.get(3)?,
                        failed_launches: r.get(4)?,
                        launch_confirmed: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn set_release_state(&self, id: &str, state: &str, now: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET state = ?2, updated_at = ?3 WHERE release_id = ?1",
            params![id, state, now],
        )?;
        Ok(())
    }

    pub fn set_artifact_state(&self, id: &str, name: &str, state: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE release_artifacts SET state = ?3 WHERE release_id = ?1 AND name = ?2",
            params![id, name, state],
        )?;
        Ok(())
    }

    /// Records a launch of `id`; returns the failed-launch count after it.
    pub fn record_launch(&self, id: &str, ok: bool) -> Result<u32> {
        if ok {
            self.conn
                .execute("UPDATE releases SET failed_launches = 0, launch_confirmed = 1 WHERE release_id = ?1", [id])?;
        } else {
            self.conn
                .execute("UPDATE releases SET failed_launches = failed_launches + 1 WHERE release_id = ?1", [id])?;
        }
        Ok(self.release(id)?.map_or(0, |r| r.failed_launches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid_and_state_survives_reopen() {
        MIGRATIONS.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("releases.sqlite3");
        {
            let r = Registry::open(&path).unwrap();
            let state =
                ChannelState { accepted_sequence: Some(4), active: Some("a".into()), previous_good: Some("b".into()) };
            r.set_channel("d", "c", &state).unwrap();
        }
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.channel("d", "c").unwrap().accepted_sequence, Some(4));
        assert_eq!(r.channel("x", "y").unwrap(), ChannelState::default());
    }
}

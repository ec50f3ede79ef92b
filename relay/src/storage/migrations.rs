//! Versioned schema of the relay database (`PRAGMA user_version`). Each
//! entry moves the schema one version up inside one transaction. Append,
//! never edit. Later issues append the release registry tables here.

use super::{Result, StorageError};
use rusqlite::Connection;
use rusqlite_migration::{M, MigrationDefinitionError, Migrations};

const STEPS: &[M<'static>] = &[
    // 1: sync documents and per-device sync states.
    M::up(
        r#"
    CREATE TABLE docs (
        user_id     TEXT NOT NULL,
        doc_id      TEXT NOT NULL,
        heads       BLOB NOT NULL,
        snapshot    BLOB,
        created_at  INTEGER NOT NULL DEFAULT (unixepoch()),
        updated_at  INTEGER NOT NULL DEFAULT (unixepoch()),
        PRIMARY KEY (user_id, doc_id)
    ) WITHOUT ROWID;
    CREATE TABLE doc_chunks (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id  TEXT NOT NULL,
        doc_id   TEXT NOT NULL,
        data     BLOB NOT NULL
    );
    CREATE INDEX doc_chunks_by_doc ON doc_chunks(user_id, doc_id, seq);
    CREATE TABLE sync_states (
        user_id       TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        doc_id        TEXT NOT NULL,
        state         BLOB NOT NULL,
        shared_heads  BLOB NOT NULL,
        PRIMARY KEY (user_id, device_id, doc_id)
    ) WITHOUT ROWID;
    "#,
    ),
];

/// Applied with `rusqlite_migration`: each step runs in a transaction with
/// the `user_version` bump.
pub const MIGRATIONS: Migrations<'static> = Migrations::from_slice(STEPS);

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    STEPS.len() as i64
}

/// Brings `conn` to [`latest_version`], refusing a database from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    MIGRATIONS.to_latest(conn).map_err(|e| match e {
        rusqlite_migration::Error::MigrationDefinition(MigrationDefinitionError::DatabaseTooFarAhead) => {
            StorageError::SchemaTooNew { found, supported: latest_version() }
        }
        rusqlite_migration::Error::RusqliteError { err, .. } => StorageError::from(err),
        other => StorageError::Migration(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    #[test]
    fn migrates_from_every_version_and_refuses_newer() {
        for start in 0..=latest_version() {
            let mut conn = Connection::open_in_memory().unwrap();
            MIGRATIONS.to_version(&mut conn, start as usize).unwrap();
            migrate(&mut conn).unwrap();
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, latest_version());
        }
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StorageError::SchemaTooNew { .. })));
    }
}

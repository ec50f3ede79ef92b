//! Versioned schema of the relay database (`PRAGMA user_version`). Each
//! entry moves the schema one version up inside one transaction. Append,
//! never edit.

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
    // 2: the release registry (D-001) and the append-only admin audit log (D-010).
    M::up(
        r#"
    CREATE TABLE datasets (
        dataset             TEXT PRIMARY KEY,
        required_artifacts  TEXT NOT NULL DEFAULT '[]'   -- JSON array of names
    );
    CREATE TABLE dataset_channels (
        dataset   TEXT NOT NULL,
        channel   TEXT NOT NULL,
        sequence  INTEGER NOT NULL DEFAULT 0,   -- grows on every change devices can see
        PRIMARY KEY (dataset, channel)
    );
    CREATE TABLE dataset_releases (
        id                 TEXT PRIMARY KEY,
        dataset            TEXT NOT NULL,
        channel            TEXT NOT NULL,
        version            TEXT NOT NULL,
        version_major      INTEGER NOT NULL,
        version_minor      INTEGER NOT NULL,
        version_patch      INTEGER NOT NULL,
        notes              TEXT NOT NULL DEFAULT '',
        min_app_version    TEXT NOT NULL,
        state              TEXT NOT NULL CHECK (state IN ('draft', 'validated', 'published', 'deprecated')),
        revision           INTEGER NOT NULL DEFAULT 0,   -- bumped by every content change
        rollout_percent    INTEGER NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
        mandatory          INTEGER NOT NULL DEFAULT 0,
        deprecated_reason  TEXT,
        created_at         INTEGER NOT NULL,
        published_at       INTEGER,
        UNIQUE (dataset, channel, version)
    );
    CREATE INDEX releases_by_channel ON dataset_releases(dataset, channel, state);
    CREATE TABLE dataset_release_artifacts (
        release_id  TEXT NOT NULL REFERENCES dataset_releases(id),
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('uploaded', 'external')),
        url         TEXT,            -- external artifacts
        file_key    TEXT,            -- uploaded artifacts: path under the artifact root
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (release_id, name)
    );
    -- A published release is immutable, whatever code path tries.
    CREATE TRIGGER published_content_is_immutable
    BEFORE UPDATE OF version, notes, min_app_version, dataset, channel ON dataset_releases
    WHEN OLD.state IN ('published', 'deprecated')
    BEGIN SELECT RAISE(ABORT, 'a published release is immutable'); END;
    CREATE TRIGGER published_artifacts_are_immutable_insert
    BEFORE INSERT ON dataset_release_artifacts
    WHEN (SELECT state FROM dataset_releases WHERE id = NEW.release_id) IN ('published', 'deprecated')
    BEGIN SELECT RAISE(ABORT, 'a published release is immutable'); END;
    CREATE TRIGGER published_artifacts_are_immutable_delete
    BEFORE DELETE ON dataset_release_artifacts
    WHEN (SELECT state FROM dataset_releases WHERE id = OLD.release_id) IN ('published', 'deprecated')
    BEGIN SELECT RAISE(ABORT, 'a published release is immutable'); END;
    CREATE TABLE admin_audit_log (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        at       INTEGER NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'error')),
        detail   TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_target ON admin_audit_log(target, id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON admin_audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON admin_audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    "#,
    ),
    // 3: the storage's identity, announced to devices at join. A restore
    // from backup gives the restored storage a new one (`relay restore`), so
    // devices know their sync states describe another storage.
    M::up(
        r#"
    CREATE TABLE relay_meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    INSERT INTO relay_meta(key, value) VALUES ('storage_id', lower(hex(randomblob(16))));
    "#,
    ),
    // 4: a document's snapshot in its own table. In the `docs` row, every
    // append (which updates the heads) made SQLite read the whole snapshot
    // out of its overflow pages, build the row again around it and compare
    // it page by page: for a month of 6,500 reviews (~200 KB) most of the
    // writer's time per synced review. Snapshots are rows of their own in a
    // rowid table, as SQLite advises for large rows.
    M::up(
        r#"
    CREATE TABLE doc_snapshots (
        user_id   TEXT NOT NULL,
        doc_id    TEXT NOT NULL,
        snapshot  BLOB NOT NULL,
        PRIMARY KEY (user_id, doc_id)
    );
    INSERT INTO doc_snapshots(user_id, doc_id, snapshot)
        SELECT user_id, doc_id, snapshot FROM docs WHERE snapshot IS NOT NULL;
    ALTER TABLE docs DROP COLUMN snapshot;
    "#,
    ),
    // 5: how many chunks a document has had appended since its last
    // snapshot, kept by the append that adds one (compaction is due past a
    // bound). Counting them on every append walked the document's index
    // entries, as many as the chunks not yet compacted.
    M::up(
        r#"
    ALTER TABLE docs ADD COLUMN chunks_since_snapshot INTEGER NOT NULL DEFAULT 0;
    UPDATE docs SET chunks_since_snapshot =
        (SELECT count(*) FROM doc_chunks c WHERE c.user_id = docs.user_id AND c.doc_id = docs.doc_id);
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

    /// A snapshot written at version 3, in the `docs` row, is in
    /// `doc_snapshots` after the move, and the row keeps its heads.
    #[test]
    fn snapshots_survive_the_move_to_their_own_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 3).unwrap();
        conn.execute_batch(
            "INSERT INTO docs(user_id, doc_id, heads, snapshot) VALUES ('u', 'd1', x'01', x'cafe');
             INSERT INTO docs(user_id, doc_id, heads) VALUES ('u', 'd2', x'02');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let snapshots: Vec<(String, Vec<u8>)> = conn
            .prepare("SELECT doc_id, snapshot FROM doc_snapshots ORDER BY doc_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(snapshots, vec![("d1".to_owned(), vec![0xca, 0xfe])]);
        let heads: Vec<Vec<u8>> = conn
            .prepare("SELECT heads FROM docs ORDER BY doc_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(heads, vec![vec![1], vec![2]]);
    }

    /// Chunks stored at version 4 are counted into their document's row.
    #[test]
    fn chunk_counts_are_taken_from_the_stored_chunks() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 4).unwrap();
        conn.execute_batch(
            "INSERT INTO docs(user_id, doc_id, heads) VALUES ('u', 'd1', x'01'), ('u', 'd2', x'02'), ('v', 'd1', x'03');
             INSERT INTO doc_chunks(user_id, doc_id, data) VALUES ('u', 'd1', x'aa'), ('u', 'd1', x'bb'), ('v', 'd1', x'cc');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let counts: Vec<(String, String, i64)> = conn
            .prepare("SELECT user_id, doc_id, chunks_since_snapshot FROM docs ORDER BY user_id, doc_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let expected = [("u", "d1", 2), ("u", "d2", 0), ("v", "d1", 1)];
        assert_eq!(counts, expected.map(|(u, d, n)| (u.to_owned(), d.to_owned(), n)));
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

//! Versioned schema migrations for the device database.
//!
//! The schema version lives in SQLite's `user_version`. Each entry of
//! [`MIGRATIONS`] moves the schema from version `i` to `i + 1` and runs in
//! one transaction with the version bump, so a crash mid-migration leaves
//! the previous version intact. Never edit a shipped migration: append one.

use crate::error::{EngineError, Result};
use rusqlite::Connection;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: documents, their stored chunks, sync states, materialized progress.
    r#"
    CREATE TABLE documents (
        doc_id      TEXT PRIMARY KEY,      -- automerge-repo id (bs58check)
        partition   TEXT NOT NULL,         -- e.g. '2026-11'
        snapshot    BLOB,                  -- compacted document, NULL until first compaction
        heads       BLOB NOT NULL,         -- current heads, 32 bytes each, sorted
        dirty       INTEGER NOT NULL DEFAULT 0  -- 1: local changes not yet acknowledged by the relay
    );
    CREATE TABLE doc_changes (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        doc_id  TEXT NOT NULL REFERENCES documents(doc_id),
        data    BLOB NOT NULL              -- incremental save (one or more changes)
    );
    CREATE INDEX doc_changes_by_doc ON doc_changes(doc_id, seq);
    CREATE TABLE sync_states (
        doc_id  TEXT NOT NULL,
        peer    TEXT NOT NULL,
        state   BLOB NOT NULL,             -- automerge sync::State::encode (shared heads only)
        PRIMARY KEY (doc_id, peer)
    );
    CREATE TABLE reviews (
        id           TEXT PRIMARY KEY,
        item_id      TEXT NOT NULL,
        rating       INTEGER NOT NULL,
        reviewed_at  INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        device_id    TEXT NOT NULL,
        session_id   TEXT
    );
    CREATE INDEX reviews_by_item ON reviews(item_id, reviewed_at, id);
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        started_at  INTEGER NOT NULL,
        ended_at    INTEGER,
        device_id   TEXT NOT NULL,
        mode        TEXT NOT NULL,
        reviewed    INTEGER NOT NULL DEFAULT 0,
        correct     INTEGER NOT NULL DEFAULT 0,
        new_items   INTEGER NOT NULL DEFAULT 0,
        notes       TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_by_start ON sessions(started_at);
    CREATE TABLE memory_states (
        item_id           TEXT PRIMARY KEY,
        stability         REAL NOT NULL,
        difficulty        REAL NOT NULL,
        due_at            INTEGER NOT NULL,
        last_reviewed_at  INTEGER NOT NULL,
        last_review_id    TEXT NOT NULL,
        review_count      INTEGER NOT NULL
    );
    CREATE INDEX memory_by_due ON memory_states(due_at, item_id);
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings `conn` to [`latest_version`], refusing a database from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > latest_version() {
        return Err(EngineError::SchemaTooNew { found, supported: latest_version() });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_from_empty_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, latest_version());
        conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", []).unwrap();
    }

    #[test]
    fn migrates_from_every_earlier_version() {
        for start in 0..latest_version() {
            let mut conn = Connection::open_in_memory().unwrap();
            for (i, sql) in MIGRATIONS.iter().enumerate().take(start as usize) {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i as i64 + 1).unwrap();
            }
            migrate(&mut conn).unwrap();
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, latest_version(), "from {start}");
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(EngineError::SchemaTooNew { .. })));
    }
}

//! Versioned schema migrations for the device database.
//!
//! The schema version lives in SQLite's `user_version`. Each entry of
//! [`MIGRATIONS`] moves the schema from version `i` to `i + 1` and runs in
//! one transaction with the version bump, so a crash mid-migration leaves
//! the previous version intact. Never edit a shipped migration: append one.

use crate::error::{EngineError, Result};
use rusqlite::Connection;
use rusqlite_migration::{M, MigrationDefinitionError, Migrations};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const STEPS: &[M<'static>] = &[
    // 1: documents, their stored chunks, sync states, materialized progress.
    M::up(
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
    ),
    // 2: items whose memory state must be replayed before it is read. A
    // review that arrives late (it sorts before the item's last applied
    // review) marks the item here instead of replaying it at once, so a
    // bootstrap that receives months in any order replays each item once.
    M::up(
        r#"
    CREATE TABLE stale_items (
        item_id  TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    "#,
    ),
    // 3: the per-item index carries the rating, so replaying an item's
    // memory state reads the index alone (20,000 items replayed after a
    // bootstrap: one index scan each, no lookup per review).
    M::up(
        r#"
    DROP INDEX reviews_by_item;
    CREATE INDEX reviews_by_item ON reviews(item_id, reviewed_at, id, rating);
    "#,
    ),
    // 4: reviews are stored in replay order, keyed by (item, time, id): one
    // B-tree instead of a table, a random-id unique index and the per-item
    // index. Reviews arriving together are inserted in key order, so a
    // bootstrap appends to pages instead of touching a random page of three
    // trees per review; an item's replay reads one range of the table. A
    // review id is a UUID written once, with its item and time, by the
    // device that recorded it, so the key names the same review the id did.
    M::up(
        r#"
    CREATE TABLE reviews_by_item_key (
        item_id      TEXT NOT NULL,
        reviewed_at  INTEGER NOT NULL,
        id           TEXT NOT NULL,
        rating       INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        device_id    TEXT NOT NULL,
        session_id   TEXT,
        PRIMARY KEY (item_id, reviewed_at, id)
    ) WITHOUT ROWID;
    INSERT INTO reviews_by_item_key(item_id, reviewed_at, id, rating, duration_ms, device_id, session_id)
        SELECT item_id, reviewed_at, id, rating, duration_ms, device_id, session_id FROM reviews;
    DROP TABLE reviews;
    ALTER TABLE reviews_by_item_key RENAME TO reviews;
    "#,
    ),
    // 5: how many reviews there are, kept as rows are inserted: counting a
    // 400k-review table scans all of it (tens of milliseconds), and an app
    // showing the total would pay that on every refresh.
    M::up(
        r#"
    CREATE TABLE counters (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters(name, value) VALUES ('reviews', (SELECT count(*) FROM reviews));
    "#,
    ),
    // 6: a document's snapshot in its own table. In the `documents` row,
    // every write to the document (which updates its heads) made SQLite
    // read the whole snapshot out of its overflow pages, build the row again
    // around it and compare it page by page: for a month of 6,500 reviews
    // (~200 KB), most of what recording or receiving one review cost.
    M::up(
        r#"
    CREATE TABLE doc_snapshots (
        doc_id    TEXT PRIMARY KEY REFERENCES documents(doc_id),
        snapshot  BLOB NOT NULL
    );
    INSERT INTO doc_snapshots(doc_id, snapshot)
        SELECT doc_id, snapshot FROM documents WHERE snapshot IS NOT NULL;
    ALTER TABLE documents DROP COLUMN snapshot;
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
            EngineError::SchemaTooNew { found, supported: latest_version() }
        }
        rusqlite_migration::Error::RusqliteError { err, .. } => EngineError::from(err),
        other => EngineError::Migration(other.to_string()),
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
            MIGRATIONS.to_version(&mut conn, start as usize).unwrap();
            migrate(&mut conn).unwrap();
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, latest_version(), "from {start}");
        }
    }

    /// A snapshot written at version 5, in the `documents` row, reads back
    /// after the move to its own table, with the chunks after it.
    #[test]
    fn snapshots_survive_the_move_to_their_own_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 5).unwrap();
        let id = protocol::DocumentId::from_bytes([7; 16]);
        conn.execute(
            "INSERT INTO documents(doc_id, partition, snapshot, heads) VALUES (?1, '2026-11', x'cafe', x'')",
            [id.to_string()],
        )
        .unwrap();
        conn.execute("INSERT INTO doc_changes(doc_id, data) VALUES (?1, x'beef')", [id.to_string()]).unwrap();
        migrate(&mut conn).unwrap();
        let stored = crate::store::load_doc(&conn, &id).unwrap().expect("the document is there");
        assert_eq!(stored.snapshot, Some(vec![0xca, 0xfe]));
        assert_eq!(stored.chunks, vec![vec![0xbe, 0xef]]);
    }

    #[test]
    fn reviews_survive_the_move_to_replay_order() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 3).unwrap();
        conn.execute_batch(
            "INSERT INTO reviews VALUES ('r2', 'apple', 3, 200, 1000, 'phone', 's1');
             INSERT INTO reviews VALUES ('r1', 'apple', 1, 100, 900, 'tablet', NULL);
             INSERT INTO reviews VALUES ('r3', 'pear', 4, 50, 800, 'phone', NULL);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let apple = crate::store::reviews_for_item(&conn, "apple").unwrap();
        let ids: Vec<(&str, i64, u32, &str, Option<&str>)> = apple
            .iter()
            .map(|r| (r.id.as_str(), r.reviewed_at, r.duration_ms, r.device_id.as_str(), r.session_id.as_deref()))
            .collect();
        assert_eq!(ids, vec![("r1", 100, 900, "tablet", None), ("r2", 200, 1000, "phone", Some("s1"))]);
        assert_eq!(crate::store::replay_inputs(&conn, "pear").unwrap()[0].rating, crate::model::Rating::Easy);
        assert_eq!(crate::store::review_count(&conn).unwrap(), 3);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(EngineError::SchemaTooNew { .. })));
    }
}

//! Versioned schema of the relay database (`PRAGMA user_version`). Each
//! entry moves the schema one version up inside one transaction. Append,
//! never edit. Later issues append the release registry tables here.

use super::{Result, StorageError};
use rusqlite::Connection;

pub const MIGRATIONS: &[&str] = &[
    // 1: sync documents and per-device sync states.
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
];

pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > latest_version() {
        return Err(StorageError::SchemaTooNew { found, supported: latest_version() });
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
    fn migrates_from_every_version_and_refuses_newer() {
        for start in 0..=latest_version() {
            let mut conn = Connection::open_in_memory().unwrap();
            for (i, sql) in MIGRATIONS.iter().enumerate().take(start as usize) {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", i as i64 + 1).unwrap();
            }
            migrate(&mut conn).unwrap();
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(v, latest_version());
        }
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StorageError::SchemaTooNew { .. })));
    }
}

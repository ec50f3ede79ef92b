//! [`DocStorage`] on one SQLite file in WAL mode with `synchronous=FULL`:
//! when `append` returns, the chunk survives a crash or power loss, which
//! is what lets the relay acknowledge it.

use super::{DocStorage, EncodedHeads, Result, StorageError, StoredDoc, migrations};
use protocol::DocumentId;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub struct SqliteStorage {
    conn: Mutex<Connection>,
}

impl SqliteStorage {
    pub fn open(path: &Path) -> Result<SqliteStorage> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(SqliteStorage { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| StorageError::Poisoned)?;
        f(&mut conn)
    }
}

fn parse_id_map(rows: Vec<(String, Vec<u8>)>) -> HashMap<DocumentId, EncodedHeads> {
    rows.into_iter().filter_map(|(id, heads)| Some((id.parse().ok()?, heads))).collect()
}

impl DocStorage for SqliteStorage {
    fn load(&self, user: &str, doc: &DocumentId) -> Result<Option<StoredDoc>> {
        self.with(|conn| {
            let id = doc.to_string();
            let snapshot: Option<Option<Vec<u8>>> = conn
                .query_row("SELECT snapshot FROM docs WHERE user_id = ?1 AND doc_id = ?2", params![user, id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(snapshot) = snapshot else { return Ok(None) };
            let mut stmt =
                conn.prepare_cached("SELECT data FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2 ORDER BY seq")?;
            let chunks = stmt.query_map(params![user, id], |r| r.get(0))?.collect::<Result<Vec<Vec<u8>>, _>>()?;
            Ok(Some(StoredDoc { snapshot, chunks }))
        })
    }

    fn append(&self, user: &str, doc: &DocumentId, chunk: &[u8], heads: &EncodedHeads) -> Result<u64> {
        self.with(|conn| {
            let id = doc.to_string();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO docs(user_id, doc_id, heads) VALUES (?1, ?2, ?3)
                 ON CONFLICT(user_id, doc_id) DO UPDATE SET heads = excluded.heads, updated_at = unixepoch()",
                params![user, id, heads],
            )?;
            tx.execute("INSERT INTO doc_chunks(user_id, doc_id, data) VALUES (?1, ?2, ?3)", params![user, id, chunk])?;
            let n: i64 = tx.query_row(
                "SELECT count(*) FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2",
                params![user, id],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
    }

    fn compact(&self, user: &str, doc: &DocumentId, snapshot: &[u8]) -> Result<()> {
        self.with(|conn| {
            let id = doc.to_string();
            let tx = conn.transaction()?;
            tx.execute("UPDATE docs SET snapshot = ?3 WHERE user_id = ?1 AND doc_id = ?2", params![user, id, snapshot])?;
            tx.execute("DELETE FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2", params![user, id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn heads(&self, user: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT doc_id, heads FROM docs WHERE user_id = ?1")?;
            let rows = stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok(parse_id_map(rows))
        })
    }

    fn count_docs(&self, user: &str) -> Result<u64> {
        self.with(|conn| {
            Ok(conn.query_row("SELECT count(*) FROM docs WHERE user_id = ?1", [user], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn load_sync_state(&self, user: &str, device: &str, doc: &DocumentId) -> Result<Option<Vec<u8>>> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state FROM sync_states WHERE user_id = ?1 AND device_id = ?2 AND doc_id = ?3",
                    params![user, device, doc.to_string()],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn shared_heads(&self, user: &str, device: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc_id, shared_heads FROM sync_states WHERE user_id = ?1 AND device_id = ?2")?;
            let rows =
                stmt.query_map([user, device], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok(parse_id_map(rows))
        })
    }

    fn save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO sync_states(user_id, device_id, doc_id, state, shared_heads) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(user_id, device_id, doc_id) DO UPDATE SET state = excluded.state,
                   shared_heads = excluded.shared_heads",
                params![user, device, doc.to_string(), state, shared_heads],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_scoped_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(&dir.path().join("relay.sqlite3")).unwrap();
        let doc = DocumentId::derive(&["x"]);
        s.append("alice", &doc, b"chunk", &vec![1; 32]).unwrap();
        assert!(s.load("alice", &doc).unwrap().is_some());
        assert!(s.load("bob", &doc).unwrap().is_none());
        assert_eq!(s.count_docs("bob").unwrap(), 0);
        assert!(s.heads("bob").unwrap().is_empty());
        s.compact("alice", &doc, b"snap").unwrap();
        let stored = s.load("alice", &doc).unwrap().unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(&b"snap"[..]));
        assert!(stored.chunks.is_empty());
    }
}

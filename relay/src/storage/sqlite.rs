//! [`DocStorage`] on one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Writes go through one writer thread that commits in groups
//! (`sqlite_writer.rs`). `append` returns only after its group committed,
//! which is what lets the relay acknowledge a change. Sync-state saves are
//! write-behind (kept in memory, the latest per key, and committed within
//! `STATES_DELAY`, 1 s): losing the last second of them on a crash only
//! makes the next reconnect exchange a little more, never loses data.
//!
//! Reads use their own connection; WAL lets them run beside the writer.

use super::pending_states::{AfterSave, PendingStates};
use super::sqlite_writer::{AppendReply, WriteRequest, writer_loop};
use super::{AppendTicket, Appended, DocStorage, EncodedHeads, Result, StorageError, StoredDoc, migrations};
use crate::budget::BlockingBudget;
use protocol::DocumentId;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

pub struct SqliteStorage {
    reader: Mutex<Connection>,
    /// Bytes queued for the writer thread (requests and pending sync
    /// states): a submitter waits while it is full, so write-behind sync
    /// states cannot pile up without bound.
    queued: Arc<BlockingBudget>,
    /// Sync states waiting for the writer.
    states: Arc<PendingStates>,
    /// `None` once dropped. No lock around it: every append passed through
    /// one, and its contention was a futex call per change under load.
    writer: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

/// Every connection to the relay database: WAL, `synchronous=FULL` (what is
/// committed survives power loss), foreign keys on, 5 s busy timeout.
pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens with the default writer queue budget (64 MiB).
    pub fn open(path: &Path) -> Result<SqliteStorage> {
        SqliteStorage::open_with(path, 64 * 1024 * 1024)
    }

    /// Opens with at most `max_queue_bytes` waiting for the writer thread.
    pub fn open_with(path: &Path, max_queue_bytes: usize) -> Result<SqliteStorage> {
        let mut writer_conn = open_connection(path)?;
        migrations::migrate(&mut writer_conn)?;
        let reader = open_connection(path)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(BlockingBudget::new(max_queue_bytes));
        let states = Arc::new(PendingStates::default());
        let (writer_budget, writer_states) = (queued.clone(), states.clone());
        let thread = std::thread::Builder::new()
            .name("relay-storage-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &writer_budget, &writer_states))
            .map_err(|e| StorageError::Writer(e.to_string()))?;
        Ok(SqliteStorage { reader: Mutex::new(reader), queued, states, writer: Some(tx), writer_thread: Some(thread) })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().map_err(|_| StorageError::Poisoned)?;
        f(&conn)
    }

    fn submit(&self, request: WriteRequest) -> Result<()> {
        self.make_room(request.size())?;
        self.send(request)
    }

    /// Reserves `size` bytes of the queue, waiting for room if needed. Pending
    /// sync states hold bytes until they are due: the writer is woken to
    /// write them at once rather than keep a waiter for their delay.
    fn make_room(&self, size: usize) -> Result<()> {
        if !self.queued.try_reserve(size) {
            self.send(WriteRequest::Wake { now: true })?;
            self.queued.reserve(size);
        }
        Ok(())
    }

    /// Puts a sync state among the pending ones. With `wait`, waits for
    /// room (waking the writer to make it); else returns false when there
    /// is none.
    fn put_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
        wait: bool,
    ) -> Result<bool> {
        let size = PendingStates::size_of(state, shared_heads);
        if wait {
            self.make_room(size)?;
        } else if !self.queued.try_reserve(size) {
            return Ok(false);
        }
        if let AfterSave::Wake = self.states.put(&self.queued, user, device, doc, state, shared_heads) {
            self.send(WriteRequest::Wake { now: false })?;
        }
        Ok(true)
    }

    /// Sends a request whose bytes are reserved.
    fn send(&self, request: WriteRequest) -> Result<()> {
        let size = request.size();
        let sent = match &self.writer {
            Some(sender) => sender.send(request).map_err(|_| StorageError::Writer("storage writer stopped".into())),
            None => Err(StorageError::Writer("storage is closed".into())),
        };
        if sent.is_err() {
            self.queued.release(size);
        }
        sent
    }

    /// Bytes waiting for the writer thread now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.in_use()
    }

    fn call<T>(&self, make: impl FnOnce(mpsc::SyncSender<Result<T>>) -> WriteRequest) -> Result<T> {
        let (reply, wait) = mpsc::sync_channel(1);
        self.submit(make(reply))?;
        wait.recv().map_err(|_| StorageError::Writer("storage writer stopped".into()))?
    }

    /// Waits until every queued write (including write-behind ones) is committed.
    pub fn flush(&self) -> Result<()> {
        self.call(|reply| WriteRequest::Flush { reply })
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        self.writer.take(); // closing the channel ends the writer loop after it drains
        if let Some(handle) = self.writer_thread.take() {
            let _ = handle.join();
        }
    }
}

fn parse_id_map(rows: Vec<(String, Vec<u8>)>) -> HashMap<DocumentId, EncodedHeads> {
    rows.into_iter().filter_map(|(id, heads)| Some((id.parse().ok()?, heads))).collect()
}

impl DocStorage for SqliteStorage {
    fn forget_other_installs(&self, user: &str, device: &str, keep: &str) -> Result<()> {
        self.submit(WriteRequest::ForgetOtherInstalls {
            user: user.to_owned(),
            device: device.to_owned(),
            keep: keep.to_owned(),
        })
    }

    fn release_memory(&self) {
        if let Ok(reader) = self.reader.lock() {
            let _ = reader.release_memory();
        }
        // Waits for the writer: the caller trims the allocator next.
        let _ = self.call(|reply| WriteRequest::ReleaseMemory { reply });
    }

    fn flush(&self) -> Result<()> {
        SqliteStorage::flush(self)
    }

    fn probe_write(&self) -> Result<()> {
        self.call(|reply| WriteRequest::Probe { reply })
    }

    fn storage_id(&self) -> Result<String> {
        self.read(|conn| Ok(conn.query_row("SELECT value FROM relay_meta WHERE key = 'storage_id'", [], |r| r.get(0))?))
    }

    fn load(&self, user: &str, doc: &DocumentId) -> Result<Option<StoredDoc>> {
        self.read(|conn| {
            // One read transaction: the document row and its chunks from
            // the same commit, never a snapshot from before a compaction
            // with the chunks from after it.
            let tx = conn.unchecked_transaction()?;
            let id = doc.to_string();
            let heads: Option<Vec<u8>> = tx
                .prepare_cached("SELECT heads FROM docs WHERE user_id = ?1 AND doc_id = ?2")?
                .query_row(params![user, id], |r| r.get(0))
                .optional()?;
            let Some(heads) = heads else { return Ok(None) };
            let snapshot: Option<Vec<u8>> = tx
                .prepare_cached("SELECT snapshot FROM doc_snapshots WHERE user_id = ?1 AND doc_id = ?2")?
                .query_row(params![user, id], |r| r.get(0))
                .optional()?;
            let mut stmt =
                tx.prepare_cached("SELECT data FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2 ORDER BY seq")?;
            let chunks = stmt.query_map(params![user, id], |r| r.get(0))?.collect::<Result<Vec<Vec<u8>>, _>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(Some(StoredDoc { snapshot, chunks, heads, seq: 0 }))
        })
    }

    fn append(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
        _base_seq: u64,
    ) -> Result<Appended> {
        let (user, doc, chunk, heads) = (user.to_owned(), doc.to_string(), chunk.to_vec(), heads.clone());
        let since_snapshot =
            self.call(|reply| WriteRequest::Append { user, doc, chunk, heads, reply: AppendReply::Blocking(reply) })?;
        Ok(Appended { since_snapshot, seq: 0 })
    }

    /// The writer commits in queue order, and this storage keeps no seqs.
    fn queues_appends(&self) -> bool {
        true
    }

    fn try_append_queued(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
    ) -> Result<Option<AppendTicket>> {
        let (reply, ticket) = AppendTicket::channel();
        let (user, doc, chunk, heads) = (user.to_owned(), doc.to_string(), chunk.to_vec(), heads.clone());
        let request = WriteRequest::Append { user, doc, chunk, heads, reply: AppendReply::Queued(reply) };
        if !self.queued.try_reserve(request.size()) {
            return Ok(None);
        }
        self.send(request)?;
        Ok(Some(ticket))
    }

    fn compact(&self, user: &str, doc: &DocumentId, snapshot: &[u8], _covers_seq: u64) -> Result<()> {
        let (user, doc, snapshot) = (user.to_owned(), doc.to_string(), snapshot.to_vec());
        self.call(|reply| WriteRequest::Compact { user, doc, snapshot, reply })
    }

    fn heads(&self, user: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT doc_id, heads FROM docs WHERE user_id = ?1")?;
            let rows = stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok(parse_id_map(rows))
        })
    }

    fn count_docs(&self, user: &str) -> Result<u64> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT count(*) FROM docs WHERE user_id = ?1", [user], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn load_sync_state(&self, user: &str, device: &str, doc: &DocumentId) -> Result<Option<Vec<u8>>> {
        if let Some(pending) = self.states.get(user, device, doc) {
            return Ok(Some(pending));
        }
        self.read(|conn| {
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
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc_id, shared_heads FROM sync_states WHERE user_id = ?1 AND device_id = ?2")?;
            let rows =
                stmt.query_map([user, device], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            let mut heads = parse_id_map(rows);
            // Pending states are newer than any stored: they win.
            heads.extend(self.states.shared_heads(user, device));
            Ok(heads)
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
        self.put_state(user, device, doc, state, shared_heads, true).map(|_| ())
    }

    fn try_save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<bool> {
        self.put_state(user, device, doc, state, shared_heads, false)
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
        s.append("alice", &doc, b"chunk", &vec![1; 32], 0).unwrap();
        assert!(s.load("alice", &doc).unwrap().is_some());
        assert!(s.load("bob", &doc).unwrap().is_none());
        assert_eq!(s.count_docs("bob").unwrap(), 0);
        assert!(s.heads("bob").unwrap().is_empty());
        s.compact("alice", &doc, b"snap", 0).unwrap();
        let stored = s.load("alice", &doc).unwrap().unwrap();
        assert_eq!(stored.snapshot.as_deref(), Some(&b"snap"[..]));
        assert!(stored.chunks.is_empty());
    }

    /// The count that makes compaction due: one per append, back to zero
    /// at a compaction, per document, kept across a restart.
    #[test]
    fn appends_are_counted_from_the_last_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sqlite3");
        let s = SqliteStorage::open(&path).unwrap();
        let (a, b) = (DocumentId::derive(&["a"]), DocumentId::derive(&["b"]));
        let counts = |s: &SqliteStorage, doc: &DocumentId, n: u8| -> Vec<u64> {
            (0..n).map(|i| s.append("u", doc, &[i], &vec![i; 32], 0).unwrap().since_snapshot).collect()
        };
        assert_eq!(counts(&s, &a, 3), [1, 2, 3]);
        assert_eq!(counts(&s, &b, 1), [1]);
        s.compact("u", &a, b"snap", 0).unwrap();
        assert_eq!(counts(&s, &a, 2), [1, 2]);
        drop(s);
        let s = SqliteStorage::open(&path).unwrap();
        assert_eq!(counts(&s, &a, 1), [3]);
        assert_eq!(counts(&s, &b, 1), [2]);
    }

    #[test]
    fn concurrent_appends_are_all_committed_and_sync_states_are_written_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sqlite3");
        let s = std::sync::Arc::new(SqliteStorage::open(&path).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        let doc = DocumentId::derive(&[&format!("d{t}")]);
                        s.append("u", &doc, &[i], &vec![i; 32], 0).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let doc = DocumentId::derive(&["d0"]);
        s.save_sync_state("u", "phone", &doc, b"state", &vec![7; 32]).unwrap();
        s.flush().unwrap();
        drop(s);
        // Reopen: everything acknowledged (appends, flushed states) is there.
        let s = SqliteStorage::open(&path).unwrap();
        assert_eq!(s.count_docs("u").unwrap(), 16);
        assert_eq!(s.load("u", &doc).unwrap().unwrap().chunks.len(), 20);
        assert_eq!(s.shared_heads("u", "phone").unwrap().get(&doc), Some(&vec![7; 32]));
    }

    /// The stored sync state of (user, device, doc), read through a
    /// connection of its own (what another process would see).
    fn committed_state(path: &Path, device: &str, doc: &DocumentId) -> Option<Vec<u8>> {
        let conn = open_connection(path).unwrap();
        conn.query_row(
            "SELECT state FROM sync_states WHERE user_id = 'u' AND device_id = ?1 AND doc_id = ?2",
            params![device, doc.to_string()],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    #[test]
    fn pending_sync_states_read_back_at_once_keep_the_latest_and_commit_without_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sqlite3");
        let s = SqliteStorage::open(&path).unwrap();
        let doc = DocumentId::derive(&["d"]);
        for i in 0..50u8 {
            s.save_sync_state("u", "phone", &doc, &[i; 40], &vec![i; 32]).unwrap();
        }
        // Read back before the writer committed anything: the latest.
        assert_eq!(s.load_sync_state("u", "phone", &doc).unwrap(), Some(vec![49; 40]));
        assert_eq!(s.shared_heads("u", "phone").unwrap().get(&doc), Some(&vec![49; 32]));
        // No append comes: the states are committed within their delay.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while committed_state(&path, "phone", &doc).is_none() {
            assert!(std::time::Instant::now() < deadline, "a pending sync state was never committed");
            std::thread::yield_now();
        }
        assert_eq!(committed_state(&path, "phone", &doc), Some(vec![49; 40]), "only the latest is written");
        assert_eq!(s.queued_bytes(), 0, "their bytes are given back");
    }

    #[test]
    fn sync_states_beyond_the_queue_budget_wait_for_room_and_all_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sqlite3");
        // Room for about one state: every save past the first needs the
        // writer to commit.
        let s = SqliteStorage::open_with(&path, 1500).unwrap();
        let docs: Vec<DocumentId> = (0..40).map(|i| DocumentId::derive(&[&i.to_string()])).collect();
        for (i, doc) in docs.iter().enumerate() {
            s.save_sync_state("u", "phone", doc, &[i as u8; 1000], &vec![1; 32]).unwrap();
            assert!(s.queued_bytes() <= 1500 + 1200, "pending states stay within the budget");
        }
        s.flush().unwrap();
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(committed_state(&path, "phone", doc), Some(vec![i as u8; 1000]));
        }
        // A save that cannot wait is refused while the queue is full.
        s.save_sync_state("u", "phone", &docs[0], &[7; 1400], &vec![1; 32]).unwrap();
        let refused = !s.try_save_sync_state("u", "phone", &docs[1], &[7; 1000], &vec![1; 32]).unwrap();
        assert!(refused || s.queued_bytes() < 1500, "refused unless the writer had already made room");
    }
}

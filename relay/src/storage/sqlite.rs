//! [`DocStorage`] on one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Writes go through one writer thread that commits in groups: every request
//! queued while the previous commit was being fsynced is committed together,
//! so N devices writing at once cost one fsync, not N. `append` returns only
//! after its group committed, which is what lets the relay acknowledge a
//! change. Sync-state saves are write-behind (queued, not awaited): losing
//! the last few on a crash only makes the next reconnect exchange a little
//! more, never loses data.
//!
//! Reads use their own connection; WAL lets them run beside the writer.

use super::{Appended, DocStorage, EncodedHeads, Result, StorageError, StoredDoc, migrations};
use crate::budget::BlockingBudget;
use protocol::DocumentId;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;

enum WriteRequest {
    Append {
        user: String,
        doc: String,
        chunk: Vec<u8>,
        heads: EncodedHeads,
        reply: mpsc::SyncSender<Result<u64>>,
    },
    Compact {
        user: String,
        doc: String,
        snapshot: Vec<u8>,
        reply: mpsc::SyncSender<Result<()>>,
    },
    SaveSyncState {
        user: String,
        device: String,
        doc: String,
        state: Vec<u8>,
        shared_heads: EncodedHeads,
    },
    /// A readiness probe: a small real write, committed.
    Probe {
        reply: mpsc::SyncSender<Result<()>>,
    },
    ForgetOtherInstalls {
        user: String,
        device: String,
        keep: String,
    },
    /// Replies once everything queued before it is committed.
    Flush {
        reply: mpsc::SyncSender<Result<()>>,
    },
    /// Frees the writer connection's unused page cache (after its group),
    /// then replies, so a `malloc_trim` after it finds that memory free.
    ReleaseMemory {
        reply: mpsc::SyncSender<Result<()>>,
    },
}

impl WriteRequest {
    /// Bytes the request holds while queued, for the queue's byte budget.
    fn size(&self) -> usize {
        128 + match self {
            WriteRequest::Append { chunk, heads, .. } => chunk.len() + heads.len(),
            WriteRequest::Compact { snapshot, .. } => snapshot.len(),
            WriteRequest::SaveSyncState { state, shared_heads, .. } => state.len() + shared_heads.len(),
            WriteRequest::ForgetOtherInstalls { device, keep, .. } => device.len() + keep.len(),
            WriteRequest::Flush { .. } | WriteRequest::Probe { .. } | WriteRequest::ReleaseMemory { .. } => 0,
        }
    }
}

pub struct SqliteStorage {
    reader: Mutex<Connection>,
    /// Bytes queued for the writer thread: a submitter waits while it is full,
    /// so write-behind sync states cannot pile up without bound.
    queued: Arc<BlockingBudget>,
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
        let writer_budget = queued.clone();
        let thread = std::thread::Builder::new()
            .name("relay-storage-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &writer_budget))
            .map_err(|e| StorageError::Writer(e.to_string()))?;
        Ok(SqliteStorage { reader: Mutex::new(reader), queued, writer: Some(tx), writer_thread: Some(thread) })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().map_err(|_| StorageError::Poisoned)?;
        f(&conn)
    }

    fn submit(&self, request: WriteRequest) -> Result<()> {
        self.queued.reserve(request.size());
        self.send(request)
    }

    /// [`SqliteStorage::submit`] when the queue has room now: false (and
    /// nothing queued) when it would wait.
    fn try_submit(&self, request: WriteRequest) -> Result<bool> {
        if !self.queued.try_reserve(request.size()) {
            return Ok(false);
        }
        self.send(request).map(|()| true)
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

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteRequest>, queued: &BlockingBudget) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let bytes: usize = group.iter().map(WriteRequest::size).sum();
        let (releases, group): (Vec<WriteRequest>, Vec<WriteRequest>) =
            group.into_iter().partition(|r| matches!(r, WriteRequest::ReleaseMemory { .. }));
        if !group.is_empty() {
            commit_group(&mut conn, group);
        }
        queued.release(bytes);
        if !releases.is_empty() {
            let released = conn.release_memory().map_err(|e| e.to_string());
            for request in releases {
                if let WriteRequest::ReleaseMemory { reply } = request {
                    let _ = reply.send(released.clone().map_err(StorageError::Writer));
                }
            }
        }
    }
}

/// Replies a request gets once its group is committed.
enum Outcome {
    Appended(mpsc::SyncSender<Result<u64>>, Result<u64>),
    Compacted(mpsc::SyncSender<Result<()>>, Result<()>),
    Flushed(mpsc::SyncSender<Result<()>>),
    None,
}

fn commit_group(conn: &mut Connection, group: Vec<WriteRequest>) {
    let mut outcomes = Vec::with_capacity(group.len());
    let committed = (|| -> Result<()> {
        let mut tx = conn.transaction()?;
        for request in group {
            // A savepoint per request: one failing statement fails that request only.
            let sp = tx.savepoint()?;
            let outcome = match request {
                WriteRequest::Append { user, doc, chunk, heads, reply } => {
                    Outcome::Appended(reply, append(&sp, &user, &doc, &chunk, &heads))
                }
                WriteRequest::Compact { user, doc, snapshot, reply } => {
                    Outcome::Compacted(reply, compact(&sp, &user, &doc, &snapshot))
                }
                WriteRequest::SaveSyncState { user, device, doc, state, shared_heads } => {
                    if let Err(e) = save_sync_state(&sp, &user, &device, &doc, &state, &shared_heads) {
                        tracing::warn!(error = %e, "sync state not saved");
                    }
                    Outcome::None
                }
                WriteRequest::ForgetOtherInstalls { user, device, keep } => {
                    if let Err(e) = forget_other_installs(&sp, &user, &device, &keep) {
                        tracing::warn!(error = %e, "old installs' sync states not removed");
                    }
                    Outcome::None
                }
                WriteRequest::Flush { reply } => Outcome::Flushed(reply),
                // Taken out of the group by the writer loop; nothing to write.
                WriteRequest::ReleaseMemory { .. } => Outcome::None,
                WriteRequest::Probe { reply } => Outcome::Compacted(
                    reply,
                    sp.execute(
                        "INSERT INTO relay_meta(key, value) VALUES ('ready_probe', unixepoch())
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value || ''",
                        [],
                    )
                    .map(|_| ())
                    .map_err(StorageError::from),
                ),
            };
            let failed = matches!(&outcome, Outcome::Appended(_, Err(_)) | Outcome::Compacted(_, Err(_)));
            if failed {
                drop(sp); // rolls back this request's statements
            } else {
                sp.commit()?;
            }
            outcomes.push(outcome);
        }
        tx.commit()?;
        Ok(())
    })();
    for outcome in outcomes {
        let commit_error = || committed.as_ref().err().map(|e| StorageError::Writer(format!("commit failed: {e}")));
        match outcome {
            Outcome::Appended(reply, r) => {
                let _ = reply.send(match commit_error() {
                    Some(e) => Err(e),
                    None => r,
                });
            }
            Outcome::Compacted(reply, r) => {
                let _ = reply.send(match commit_error() {
                    Some(e) => Err(e),
                    None => r,
                });
            }
            Outcome::Flushed(reply) => {
                let _ = reply.send(match commit_error() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
            Outcome::None => {}
        }
    }
}

fn append(conn: &Connection, user: &str, doc: &str, chunk: &[u8], heads: &EncodedHeads) -> Result<u64> {
    // Cached statements: the writer runs these for every acknowledged
    // change, and preparing them each time was 6 % of the relay's CPU under
    // the 1,000-device load.
    conn.prepare_cached(
        "INSERT INTO docs(user_id, doc_id, heads) VALUES (?1, ?2, ?3)
         ON CONFLICT(user_id, doc_id) DO UPDATE SET heads = excluded.heads, updated_at = unixepoch()",
    )?
    .execute(params![user, doc, heads])?;
    conn.prepare_cached("INSERT INTO doc_chunks(user_id, doc_id, data) VALUES (?1, ?2, ?3)")?
        .execute(params![user, doc, chunk])?;
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2")?
        .query_row(params![user, doc], |r| r.get(0))?;
    Ok(n as u64)
}

fn compact(conn: &Connection, user: &str, doc: &str, snapshot: &[u8]) -> Result<()> {
    conn.prepare_cached("UPDATE docs SET snapshot = ?3 WHERE user_id = ?1 AND doc_id = ?2")?
        .execute(params![user, doc, snapshot])?;
    conn.prepare_cached("DELETE FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2")?.execute(params![user, doc])?;
    Ok(())
}

fn save_sync_state(
    conn: &Connection,
    user: &str,
    device: &str,
    doc: &str,
    state: &[u8],
    shared_heads: &EncodedHeads,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sync_states(user_id, device_id, doc_id, state, shared_heads) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(user_id, device_id, doc_id) DO UPDATE SET state = excluded.state,
           shared_heads = excluded.shared_heads",
    )?
    .execute(params![user, device, doc, state, shared_heads])?;
    Ok(())
}

fn forget_other_installs(conn: &Connection, user: &str, device: &str, keep: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM sync_states WHERE user_id = ?1 AND device_id != ?3
           AND (device_id = ?2 OR substr(device_id, 1, length(?2) + 1) = ?2 || '#')",
        params![user, device, keep],
    )?;
    Ok(())
}

fn parse_id_map(rows: Vec<(String, Vec<u8>)>) -> HashMap<DocumentId, EncodedHeads> {
    rows.into_iter().filter_map(|(id, heads)| Some((id.parse().ok()?, heads))).collect()
}

fn sync_state_request(
    user: &str,
    device: &str,
    doc: &DocumentId,
    state: &[u8],
    shared_heads: &EncodedHeads,
) -> WriteRequest {
    WriteRequest::SaveSyncState {
        user: user.to_owned(),
        device: device.to_owned(),
        doc: doc.to_string(),
        state: state.to_vec(),
        shared_heads: shared_heads.clone(),
    }
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
            let row: Option<(Option<Vec<u8>>, Vec<u8>)> = tx
                .prepare_cached("SELECT snapshot, heads FROM docs WHERE user_id = ?1 AND doc_id = ?2")?
                .query_row(params![user, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((snapshot, heads)) = row else { return Ok(None) };
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
        let since_snapshot = self.call(|reply| WriteRequest::Append { user, doc, chunk, heads, reply })?;
        Ok(Appended { since_snapshot, seq: 0 })
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
        self.submit(sync_state_request(user, device, doc, state, shared_heads))
    }

    fn try_save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<bool> {
        self.try_submit(sync_state_request(user, device, doc, state, shared_heads))
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
}

//! The relay database's writer thread: group commits of appends,
//! compactions and probes, with the sync states written behind.
//!
//! Every request queued while the previous commit was being fsynced is
//! committed together, so N devices writing at once cost one fsync, not N.
//! Each request gets its own savepoint: one failing statement fails that
//! request only.

use super::pending_states::{PendingStates, StateRow};
use super::{EncodedHeads, Result, StorageError};
use crate::budget::BlockingBudget;
use rusqlite::{Connection, params};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;

/// How long sync states gather before they are written (the first one
/// pending waits this long; later saves of the same key replace it). Under
/// the 200-pair load each device's state moved about 20 times a second;
/// written with every group, they were an eighth of the writer's time.
pub(super) const STATES_DELAY: Duration = Duration::from_secs(1);

pub(super) enum WriteRequest {
    Append {
        user: String,
        doc: String,
        chunk: Vec<u8>,
        heads: EncodedHeads,
        reply: AppendReply,
    },
    Compact {
        user: String,
        doc: String,
        snapshot: Vec<u8>,
        reply: mpsc::SyncSender<Result<()>>,
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
    /// Sync states are pending while the writer sleeps with no deadline:
    /// write them within [`STATES_DELAY`] (or at once when `now`, because
    /// a saver waits for their bytes).
    Wake {
        now: bool,
    },
}

/// Who waits for an append: a thread blocked on it, or an async task
/// holding its [`AppendTicket`](super::AppendTicket).
pub(super) enum AppendReply {
    Blocking(mpsc::SyncSender<Result<u64>>),
    Queued(super::AppendReply),
}

impl AppendReply {
    fn send(self, result: Result<u64>) {
        match self {
            AppendReply::Blocking(reply) => {
                let _ = reply.send(result);
            }
            AppendReply::Queued(reply) => {
                let _ = reply.send(result.map(|since_snapshot| super::Appended { since_snapshot, seq: 0 }));
            }
        }
    }
}

impl WriteRequest {
    /// Bytes the request holds while queued, for the queue's byte budget.
    pub(super) fn size(&self) -> usize {
        if let WriteRequest::Wake { .. } = self {
            return 0; // sent without a reservation: it holds no peer bytes
        }
        128 + match self {
            WriteRequest::Append { chunk, heads, .. } => chunk.len() + heads.len(),
            WriteRequest::Compact { snapshot, .. } => snapshot.len(),
            WriteRequest::ForgetOtherInstalls { device, keep, .. } => device.len() + keep.len(),
            WriteRequest::Flush { .. }
            | WriteRequest::Probe { .. }
            | WriteRequest::ReleaseMemory { .. }
            | WriteRequest::Wake { .. } => 0,
        }
    }
}

/// The writer thread: takes what is queued, commits it as one group (with
/// the pending sync states when they are due), replies, and sleeps until
/// the next request, or until pending sync states are due.
pub(super) fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<WriteRequest>,
    queued: &BlockingBudget,
    states: &PendingStates,
) {
    let mut states_due = states.sleep_until_woken().then(|| Instant::now() + STATES_DELAY);
    loop {
        let first = match states_due {
            Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            },
        };
        let mut group: Vec<WriteRequest> = first.into_iter().collect();
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let due_now = states_due.is_some_and(|due| due <= Instant::now());
        // A wake-up alone starts the states' delay; nothing to commit yet.
        let urgent = group.iter().any(|r| matches!(r, WriteRequest::Wake { now: true }));
        group.retain(|r| !matches!(r, WriteRequest::Wake { .. }));
        if group.is_empty() && !due_now && !urgent {
            states_due = states_due.or_else(|| Some(Instant::now() + STATES_DELAY));
            continue;
        }
        // States are written when due, when a saver waits for their bytes,
        // before a flush (which promises them), and before a forget (which
        // must delete what was saved before it).
        let drain = due_now
            || urgent
            || group.iter().any(|r| matches!(r, WriteRequest::Flush { .. } | WriteRequest::ForgetOtherInstalls { .. }));
        let bytes: usize = group.iter().map(WriteRequest::size).sum();
        let (releases, group): (Vec<WriteRequest>, Vec<WriteRequest>) =
            group.into_iter().partition(|r| matches!(r, WriteRequest::ReleaseMemory { .. }));
        let (saves, state_bytes) = if drain { states.take() } else { (Vec::new(), 0) };
        if !group.is_empty() || !saves.is_empty() {
            commit_group(&mut conn, saves, group);
        }
        states.written();
        queued.release(bytes + state_bytes);
        if drain || states_due.is_none() {
            states_due = states.sleep_until_woken().then(|| Instant::now() + STATES_DELAY);
        }
        if !releases.is_empty() {
            let released = conn.release_memory().map_err(|e| e.to_string());
            for request in releases {
                if let WriteRequest::ReleaseMemory { reply } = request {
                    let _ = reply.send(released.clone().map_err(StorageError::Writer));
                }
            }
        }
    }
    // The storage is closing: what is pending still gets written.
    let (saves, state_bytes) = states.take();
    if !saves.is_empty() {
        commit_group(&mut conn, saves, Vec::new());
    }
    states.written();
    queued.release(state_bytes);
}

/// Replies a request gets once its group is committed.
enum Outcome {
    Appended(AppendReply, Result<u64>),
    Compacted(mpsc::SyncSender<Result<()>>, Result<()>),
    Flushed(mpsc::SyncSender<Result<()>>),
    None,
}

fn commit_group(conn: &mut Connection, saves: Vec<StateRow>, group: Vec<WriteRequest>) {
    let mut outcomes = Vec::with_capacity(group.len());
    let committed = (|| -> Result<()> {
        let tx = conn.transaction()?;
        // Pending sync states first: a forget queued after them must win.
        for s in saves {
            let doc = s.doc.to_string();
            if let Err(e) = in_savepoint(&tx, |c| {
                save_sync_state(c, &s.user, &s.device, &doc, &s.state.state, &s.state.shared_heads)
            })? {
                tracing::warn!(error = %e, "sync state not saved");
            }
        }
        for request in group {
            // A savepoint per request: one failing statement fails that request only.
            let outcome = match request {
                WriteRequest::Append { user, doc, chunk, heads, reply } => {
                    Outcome::Appended(reply, in_savepoint(&tx, |c| append(c, &user, &doc, &chunk, &heads))?)
                }
                WriteRequest::Compact { user, doc, snapshot, reply } => {
                    Outcome::Compacted(reply, in_savepoint(&tx, |c| compact(c, &user, &doc, &snapshot))?)
                }
                WriteRequest::ForgetOtherInstalls { user, device, keep } => {
                    if let Err(e) = in_savepoint(&tx, |c| forget_other_installs(c, &user, &device, &keep))? {
                        tracing::warn!(error = %e, "old installs' sync states not removed");
                    }
                    Outcome::None
                }
                WriteRequest::Flush { reply } => Outcome::Flushed(reply),
                // Taken out of the group by the writer loop; nothing to write.
                WriteRequest::ReleaseMemory { .. } | WriteRequest::Wake { .. } => Outcome::None,
                WriteRequest::Probe { reply } => Outcome::Compacted(
                    reply,
                    in_savepoint(&tx, |c| {
                        c.prepare_cached(
                            "INSERT INTO relay_meta(key, value) VALUES ('ready_probe', unixepoch())
                             ON CONFLICT(key) DO UPDATE SET value = excluded.value || ''",
                        )?
                        .execute([])?;
                        Ok(())
                    })?,
                ),
            };
            outcomes.push(outcome);
        }
        tx.commit()?;
        Ok(())
    })();
    for outcome in outcomes {
        let commit_error = || committed.as_ref().err().map(|e| StorageError::Writer(format!("commit failed: {e}")));
        match outcome {
            Outcome::Appended(reply, r) => reply.send(match commit_error() {
                Some(e) => Err(e),
                None => r,
            }),
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

/// Runs `f` in a savepoint, so that if it fails its statements are rolled
/// back and the transaction goes on without them. The outer error means
/// the transaction itself is gone (SQLite rolls a whole transaction back on
/// some errors, a full disk among them): the group fails.
///
/// Through cached statements: rusqlite's `Savepoint` parses its SQL each
/// time, two statements per request and per saved sync state, which was
/// 3.6 % of the relay's instructions under the pair load (counted with the
/// sync bench's `instructions` section).
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<Result<T>> {
    conn.prepare_cached("SAVEPOINT request")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE request")?.execute([])?;
            Ok(Ok(v))
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO request")?.execute([])?;
            conn.prepare_cached("RELEASE request")?.execute([])?;
            Ok(Err(e))
        }
    }
}

fn append(conn: &Connection, user: &str, doc: &str, chunk: &[u8], heads: &EncodedHeads) -> Result<u64> {
    // Cached statements: the writer runs these for every acknowledged
    // change, and preparing them each time was 6 % of the relay's CPU under
    // the 1,000-device load.
    // The row counts its chunks (schema 5), one step whatever their number,
    // where a `count(*)` here walked one index entry per chunk.
    let n: i64 = conn
        .prepare_cached(
            "INSERT INTO docs(user_id, doc_id, heads, chunks_since_snapshot) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT(user_id, doc_id) DO UPDATE SET heads = excluded.heads, updated_at = unixepoch(),
               chunks_since_snapshot = chunks_since_snapshot + 1
             RETURNING chunks_since_snapshot",
        )?
        .query_row(params![user, doc, heads], |r| r.get(0))?;
    conn.prepare_cached("INSERT INTO doc_chunks(user_id, doc_id, data) VALUES (?1, ?2, ?3)")?
        .execute(params![user, doc, chunk])?;
    Ok(n.max(0) as u64)
}

fn compact(conn: &Connection, user: &str, doc: &str, snapshot: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO doc_snapshots(user_id, doc_id, snapshot) VALUES (?1, ?2, ?3)
         ON CONFLICT(user_id, doc_id) DO UPDATE SET snapshot = excluded.snapshot",
    )?
    .execute(params![user, doc, snapshot])?;
    conn.prepare_cached("DELETE FROM doc_chunks WHERE user_id = ?1 AND doc_id = ?2")?.execute(params![user, doc])?;
    conn.prepare_cached("UPDATE docs SET chunks_since_snapshot = 0 WHERE user_id = ?1 AND doc_id = ?2")?
        .execute(params![user, doc])?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::{SqliteStorage, open_connection};

    fn append(doc: &str, reply: mpsc::SyncSender<Result<u64>>) -> WriteRequest {
        WriteRequest::Append {
            user: "u".into(),
            doc: doc.into(),
            chunk: vec![1, 2, 3],
            heads: vec![9; 32],
            reply: AppendReply::Blocking(reply),
        }
    }

    /// A request whose second statement fails leaves nothing of its first,
    /// and the requests around it in the group are committed.
    #[test]
    fn a_failing_request_is_rolled_back_alone_and_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sqlite3");
        drop(SqliteStorage::open(&path).unwrap());
        let mut conn = open_connection(&path).unwrap();
        // The chunk insert of document "bad" fails, after its `docs` row was written.
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON doc_chunks WHEN NEW.doc_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let (tx, rx) = mpsc::sync_channel(3);
        commit_group(&mut conn, Vec::new(), vec![append("a", tx.clone()), append("bad", tx.clone()), append("b", tx)]);
        let replies: Vec<bool> = rx.try_iter().map(|r| r.is_ok()).collect();
        assert_eq!(replies, [true, false, true]);
        let docs: Vec<String> = conn
            .prepare("SELECT doc_id FROM docs ORDER BY doc_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(docs, ["a", "b"], "the refused request's `docs` row was rolled back");
        let chunks: i64 = conn.query_row("SELECT count(*) FROM doc_chunks", [], |r| r.get(0)).unwrap();
        assert_eq!(chunks, 2);
        assert!(conn.is_autocommit(), "the group's transaction ended");
    }
}

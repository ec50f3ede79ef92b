//! The device database: one SQLite file in WAL mode.
//!
//! It holds two kinds of data that must agree:
//! * the Automerge documents (snapshot + incremental chunks) and the sync
//!   state per (document, peer) — the source of truth that merges;
//! * the materialized tables (`reviews`, `sessions`, `memory_states`) that
//!   answer the app's queries in well under a millisecond at any history size.
//!
//! Every write that changes a document updates both in one transaction, with
//! `synchronous=FULL`, so when an API call returns its change is on disk and
//! the two views cannot drift apart after a crash.

pub mod migrations;

use crate::error::{EngineError, Result};
use crate::model::{MemoryState, Rating, Review, Session, SessionCounts, TimestampMs};
use automerge::ChangeHash;
use protocol::DocumentId;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// A document's stored form: the last snapshot and the chunks written since.
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
}

/// The FSRS-relevant fields of the last review applied to an item.
pub struct StoredMemory {
    pub state: MemoryState,
    pub last_review_id: String,
}

pub struct Store {
    conn: Connection,
    /// Inside a batch ([`Store::begin_batch`]): transactions are part of it.
    in_batch: bool,
    /// A transaction inside the batch failed: the batch must not commit.
    batch_failed: bool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = open_connection(path)?;
        migrations::migrate(&mut conn)?;
        Ok(Store { conn, in_batch: false, batch_failed: false })
    }

    /// Runs `f` in one transaction; commits only if it returns `Ok`. Inside
    /// a batch it is a savepoint: undone alone on error, durable with the batch.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.in_batch {
            // No savepoint (its journal costs more than the writes): a failed
            // write fails the whole batch instead, at `end_batch`.
            let out = f(&self.conn);
            self.batch_failed |= out.is_err();
            return out;
        }
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Starts a batch: every [`Store::transaction`] until [`Store::end_batch`]
    /// is part of one transaction, committed (and fsynced) once at the end.
    /// Many small writes arriving together (the months of a bootstrap) then
    /// cost one commit: a month's reviews touch pages all over the reviews
    /// table (thousands of items), so each commit rewrites most of its
    /// pages. The page cache grows for the batch, so its dirty pages are
    /// not spilled and read back.
    pub fn begin_batch(&mut self) -> Result<()> {
        if !self.in_batch {
            // Cached statements here and below: a device runs these for
            // every batch of frames received, and parsing them each time was
            // 5.6 % of the devices' CPU per warm review (`perf`).
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.in_batch = true;
            self.batch_failed = false;
            // Only once the batch has begun (`end_batch` gives it back); a
            // cache size is a speed-up, so failing to set it fails nothing.
            let _ = self.set_cache_kib(BATCH_CACHE_KIB);
        }
        Ok(())
    }

    /// Ends the batch: commits it if `commit` and no write in it failed;
    /// otherwise (or if the commit fails) rolls all of it back.
    pub fn end_batch(&mut self, commit: bool) -> Result<()> {
        if !self.in_batch {
            return Ok(());
        }
        self.in_batch = false;
        let committed = match (commit, self.batch_failed) {
            (true, false) => {
                self.conn.prepare_cached("COMMIT").and_then(|mut c| c.execute([])).map(|_| ()).map_err(Into::into)
            }
            (true, true) => Err(EngineError::Storage(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("a write in the batch failed; the batch was rolled back".into()),
            ))),
            (false, _) => Ok(()),
        };
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let _ = self.set_cache_kib(CACHE_KIB);
        committed
    }

    /// Sets SQLite's page cache of this connection to `kib`.
    fn set_cache_kib(&self, kib: i64) -> Result<()> {
        self.conn.prepare_cached(&format!("PRAGMA cache_size = -{kib}"))?.execute([])?;
        Ok(())
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Whether a batch is open: what is written now commits at its end.
    pub fn in_batch(&self) -> bool {
        self.in_batch
    }
}

/// Page cache of a connection (SQLite's default is 2 MiB): a month of
/// reviews arriving at once inserts all over the reviews table, and
/// with the default most of those inserts read a page back from the file.
const CACHE_KIB: i64 = 8 * 1024;
/// Page cache during a batch of writes, given back when it ends.
const BATCH_CACHE_KIB: i64 = 48 * 1024;

/// Every device database connection: WAL, `synchronous=FULL` (a committed
/// transaction survives power loss, which is the promise `record_review`
/// makes to the app), foreign keys on, 5 s busy timeout.
pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(
        None,
        "cache_size",
        std::env::var("ENGINE_CACHE_KB").ok().and_then(|v| v.parse::<i64>().ok()).map(|k| -k).unwrap_or(-8192),
    )?;
    // Room for every statement the engine caches (about 45): past the
    // capacity the least recently used is dropped and parsed again.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub use protocol::heads::encode_heads;

// ---- documents ----

pub fn load_doc(conn: &Connection, doc: &DocumentId) -> Result<Option<StoredDoc>> {
    let id = doc.to_string();
    let known: Option<i64> =
        conn.prepare_cached("SELECT 1 FROM documents WHERE doc_id = ?1")?.query_row([&id], |r| r.get(0)).optional()?;
    if known.is_none() {
        return Ok(None);
    }
    let snapshot: Option<Vec<u8>> = conn
        .prepare_cached("SELECT snapshot FROM doc_snapshots WHERE doc_id = ?1")?
        .query_row([&id], |r| r.get(0))
        .optional()?;
    let mut stmt = conn.prepare_cached("SELECT data FROM doc_changes WHERE doc_id = ?1 ORDER BY seq")?;
    let chunks = stmt.query_map([&id], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(Some(StoredDoc { snapshot, chunks }))
}

/// The document's stored bytes when they are one blob (a snapshot alone, or
/// a single chunk: a document that arrived whole); `None` otherwise.
pub fn stored_whole(conn: &Connection, doc: &DocumentId) -> Result<Option<Vec<u8>>> {
    Ok(load_doc(conn, doc)?.and_then(|stored| protocol::whole_doc::one_blob(stored.snapshot, stored.chunks)))
}

/// A document's stored chunks (snapshot first) and the heads they add up to.
pub type ChunksAndHeads = (Vec<Vec<u8>>, Vec<ChangeHash>);

/// The document's stored chunks and heads; `None` if there is no such document.
pub fn stored_with_heads(conn: &Connection, doc: &DocumentId) -> Result<Option<ChunksAndHeads>> {
    let Some(heads) = doc_heads(conn, doc)? else { return Ok(None) };
    let Some(stored) = load_doc(conn, doc)? else { return Ok(None) };
    Ok(Some((stored.snapshot.into_iter().chain(stored.chunks).collect(), heads)))
}

/// The document's current heads as recorded with its last write; `None` if
/// there is no such document (or the record does not read).
pub fn doc_heads(conn: &Connection, doc: &DocumentId) -> Result<Option<Vec<ChangeHash>>> {
    let encoded: Option<Vec<u8>> = conn
        .prepare_cached("SELECT heads FROM documents WHERE doc_id = ?1")?
        .query_row([doc.to_string()], |r| r.get(0))
        .optional()?;
    Ok(encoded.and_then(|e| protocol::heads::decode_heads(&e)))
}

/// Appends an incremental chunk and records the new heads. `dirty` marks a
/// local change the relay has not acknowledged yet. Returns how many chunks
/// the document now has since its snapshot.
pub fn append_chunk(
    conn: &Connection,
    doc: &DocumentId,
    partition: &str,
    chunk: &[u8],
    heads: &[ChangeHash],
    dirty: bool,
) -> Result<Appended> {
    let id = doc.to_string();
    conn.prepare_cached(
        "INSERT INTO documents(doc_id, partition, heads, dirty) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(doc_id) DO UPDATE SET heads = excluded.heads, dirty = max(dirty, excluded.dirty)",
    )?
    .execute(params![id, partition, encode_heads(heads), dirty as i64])?;
    if !chunk.is_empty() {
        conn.prepare_cached("INSERT INTO doc_changes(doc_id, data) VALUES (?1, ?2)")?.execute(params![id, chunk])?;
    }
    // The snapshot's size only: `length` of a blob is read from its
    // record's header, one lookup by key. Summing the chunks' sizes too
    // read every chunk's row on every append (a quarter more time per
    // recorded review once hundreds of chunks were waiting).
    let (count, bytes): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT count(*) FROM doc_changes WHERE doc_id = ?1),
                    coalesce((SELECT length(snapshot) FROM doc_snapshots WHERE doc_id = ?1), 0)",
        )?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Appended { chunks: count.max(0) as u64, snapshot_bytes: bytes.max(0) as u64 })
}

/// What a document holds after an append: the chunks since its snapshot,
/// and the snapshot's size (0 without one), which decide when it is
/// compacted ([`protocol::compaction`]). A document that arrived whole is
/// one chunk until its first compaction makes it a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub chunks: u64,
    pub snapshot_bytes: u64,
}

/// Replaces the chunks of a document with one snapshot.
pub fn compact(conn: &Connection, doc: &DocumentId, snapshot: &[u8]) -> Result<()> {
    let id = doc.to_string();
    conn.prepare_cached(
        "INSERT INTO doc_snapshots(doc_id, snapshot) VALUES (?1, ?2)
         ON CONFLICT(doc_id) DO UPDATE SET snapshot = excluded.snapshot",
    )?
    .execute(params![id, snapshot])?;
    conn.prepare_cached("DELETE FROM doc_changes WHERE doc_id = ?1")?.execute([&id])?;
    Ok(())
}

pub fn set_clean(conn: &Connection, doc: &DocumentId) -> Result<()> {
    conn.prepare_cached("UPDATE documents SET dirty = 0 WHERE doc_id = ?1")?.execute([doc.to_string()])?;
    Ok(())
}

pub fn dirty_docs(conn: &Connection) -> Result<Vec<DocumentId>> {
    let mut stmt = conn.prepare_cached("SELECT doc_id FROM documents WHERE dirty = 1 ORDER BY partition")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
}

pub fn doc_ids(conn: &Connection) -> Result<Vec<(DocumentId, String)>> {
    let mut stmt = conn.prepare_cached("SELECT doc_id, partition FROM documents ORDER BY partition")?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().filter_map(|(id, p)| Some((id.parse().ok()?, p))).collect())
}

pub fn doc_partition(conn: &Connection, doc: &DocumentId) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT partition FROM documents WHERE doc_id = ?1")?
        .query_row([doc.to_string()], |r| r.get(0))
        .optional()?)
}

// ---- sync states ----

pub fn load_sync_state(conn: &Connection, doc: &DocumentId, peer: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT state FROM sync_states WHERE doc_id = ?1 AND peer = ?2")?
        .query_row(params![doc.to_string(), peer], |r| r.get(0))
        .optional()?)
}

pub fn save_sync_state(conn: &Connection, doc: &DocumentId, peer: &str, state: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sync_states(doc_id, peer, state) VALUES (?1, ?2, ?3)
         ON CONFLICT(doc_id, peer) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![doc.to_string(), peer, state])?;
    Ok(())
}

/// Forgets every sync state with `peer` and marks every document dirty, so
/// the next connection offers everything again (the relay was restored
/// from a backup and may lack what it once acknowledged).
pub fn reset_peer(conn: &Connection, peer: &str) -> Result<()> {
    conn.execute("DELETE FROM sync_states WHERE peer = ?1", [peer])?;
    conn.execute("UPDATE documents SET dirty = 1", [])?;
    Ok(())
}

// ---- meta ----

pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()?)
}

pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

// ---- materialized progress ----

/// Inserts a review; returns false if it was already known. Reviews are
/// keyed by (item, time, id): inserted in that order, they append.
pub fn insert_review(conn: &Connection, r: &Review) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO reviews(id, item_id, rating, reviewed_at, duration_ms, device_id, session_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![r.id, r.item_id, r.rating as i64, r.reviewed_at, r.duration_ms, r.device_id, r.session_id])?;
    Ok(n == 1)
}

fn review_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Review> {
    let rating: i64 = r.get(2)?;
    Ok(Review {
        id: r.get(0)?,
        item_id: r.get(1)?,
        rating: Rating::from_u8(rating as u8).unwrap_or(Rating::Again),
        reviewed_at: r.get(3)?,
        duration_ms: r.get(4)?,
        device_id: r.get(5)?,
        session_id: r.get(6)?,
    })
}

/// Every review id, sorted.
pub fn review_ids(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM reviews ORDER BY id")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// An item's reviews in replay order: time, then review id.
pub fn reviews_for_item(conn: &Connection, item_id: &str) -> Result<Vec<Review>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, item_id, rating, reviewed_at, duration_ms, device_id, session_id
         FROM reviews WHERE item_id = ?1 ORDER BY reviewed_at, id",
    )?;
    let rows = stmt.query_map([item_id], review_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// What replaying an item needs of its reviews, in replay order: one range
/// of the `reviews` table, which is kept in that order. Only `id`,
/// `item_id`, `rating` and `reviewed_at` are filled in; the rest is empty.
pub fn replay_inputs(conn: &Connection, item_id: &str) -> Result<Vec<Review>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, rating, reviewed_at FROM reviews WHERE item_id = ?1 ORDER BY reviewed_at, id")?;
    let rows = stmt
        .query_map([item_id], |r| {
            let rating: i64 = r.get(1)?;
            Ok(Review {
                id: r.get(0)?,
                item_id: item_id.to_owned(),
                rating: Rating::from_u8(rating as u8).unwrap_or(Rating::Again),
                reviewed_at: r.get(2)?,
                duration_ms: 0,
                device_id: String::new(),
                session_id: None,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// How many reviews are stored, from the counter kept with the inserts
/// (no scan of the table).
pub fn review_count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'reviews'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(n.max(0) as u64)
}

/// Adds `n` newly inserted reviews to the counter, in the inserts' transaction.
pub fn count_new_reviews(conn: &Connection, n: usize) -> Result<()> {
    if n > 0 {
        conn.prepare_cached("UPDATE counters SET value = value + ?1 WHERE name = 'reviews'")?.execute([n as i64])?;
    }
    Ok(())
}

pub fn upsert_session(conn: &Connection, s: &Session) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions(id, started_at, ended_at, device_id, mode, reviewed, correct, new_items, notes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at,
           device_id = excluded.device_id, mode = excluded.mode, reviewed = excluded.reviewed,
           correct = excluded.correct, new_items = excluded.new_items, notes = excluded.notes",
    )?
    .execute(params![
        s.id,
        s.started_at,
        s.ended_at,
        s.device_id,
        s.mode,
        s.counts.reviewed,
        s.counts.correct,
        s.counts.new_items,
        s.notes
    ])?;
    Ok(())
}

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        started_at: r.get(1)?,
        ended_at: r.get(2)?,
        device_id: r.get(3)?,
        mode: r.get(4)?,
        counts: SessionCounts { reviewed: r.get(5)?, correct: r.get(6)?, new_items: r.get(7)? },
        notes: r.get(8)?,
    })
}

const SESSION_COLUMNS: &str = "id, started_at, ended_at, device_id, mode, reviewed, correct, new_items, notes";

pub fn session(conn: &Connection, id: &str) -> Result<Option<Session>> {
    Ok(conn
        .query_row(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"), [id], session_from_row)
        .optional()?)
}

/// Sessions that started in `[from, to)`, oldest first.
pub fn sessions_between(conn: &Connection, from: TimestampMs, to: TimestampMs) -> Result<Vec<Session>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE started_at >= ?1 AND started_at < ?2 ORDER BY started_at, id"
    ))?;
    let rows = stmt.query_map(params![from, to], session_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn memory_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMemory> {
    Ok(StoredMemory {
        state: MemoryState {
            item_id: r.get(0)?,
            stability: r.get::<_, f64>(1)? as f32,
            difficulty: r.get::<_, f64>(2)? as f32,
            due_at: r.get(3)?,
            last_reviewed_at: r.get(4)?,
            review_count: r.get(6)?,
        },
        last_review_id: r.get(5)?,
    })
}

const MEMORY_COLUMNS: &str = "item_id, stability, difficulty, due_at, last_reviewed_at, last_review_id, review_count";

pub fn memory_state(conn: &Connection, item_id: &str) -> Result<Option<StoredMemory>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {MEMORY_COLUMNS} FROM memory_states WHERE item_id = ?1"))?;
    Ok(stmt.query_row([item_id], memory_from_row).optional()?)
}

pub fn put_memory_state(conn: &Connection, m: &StoredMemory) -> Result<()> {
    let s = &m.state;
    conn.prepare_cached(
        "INSERT INTO memory_states(item_id, stability, difficulty, due_at, last_reviewed_at, last_review_id, review_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(item_id) DO UPDATE SET stability = excluded.stability, difficulty = excluded.difficulty,
           due_at = excluded.due_at, last_reviewed_at = excluded.last_reviewed_at,
           last_review_id = excluded.last_review_id, review_count = excluded.review_count",
    )?
    .execute(params![
            s.item_id,
            s.stability as f64,
            s.difficulty as f64,
            s.due_at,
            s.last_reviewed_at,
            m.last_review_id,
            s.review_count
        ])?;
    Ok(())
}

/// Marks an item's memory state for a replay before it is next read.
pub fn mark_stale(conn: &Connection, item_id: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO stale_items(item_id) VALUES (?1)")?.execute([item_id])?;
    Ok(())
}

pub fn is_stale(conn: &Connection, item_id: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM stale_items WHERE item_id = ?1")?.exists([item_id])?)
}

/// Every item marked for a replay, sorted.
pub fn stale_items(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT item_id FROM stale_items ORDER BY item_id")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

pub fn clear_stale(conn: &Connection) -> Result<()> {
    conn.prepare_cached("DELETE FROM stale_items")?.execute([])?;
    Ok(())
}

/// Items due at or before `now`, most overdue first.
pub fn due_items(conn: &Connection, now: TimestampMs, limit: u32) -> Result<Vec<MemoryState>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MEMORY_COLUMNS} FROM memory_states WHERE due_at <= ?1 ORDER BY due_at, item_id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit], memory_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().map(|m| m.state).collect())
}

pub fn all_memory_states(conn: &Connection) -> Result<Vec<MemoryState>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {MEMORY_COLUMNS} FROM memory_states ORDER BY item_id"))?;
    let rows = stmt.query_map([], memory_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().map(|m| m.state).collect())
}

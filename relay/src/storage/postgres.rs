//! [`DocStorage`] on PostgreSQL, for operators who outgrow one relay.
//!
//! The schema mirrors SQLite's (documents as a snapshot plus chunks, heads,
//! per-install sync states) with one addition several relays need: every
//! chunk carries a per-document sequence number, given out under the
//! document row's lock, so seq order is commit order and "chunks after seq
//! N" is a complete catch-up for a relay that holds the document up to N.
//! An append announces `(user, doc, seq)` with `pg_notify` in its own
//! transaction, so a listener hears of a chunk only once it is committed.
//!
//! Calls run on the relay's one PostgreSQL connection ([`crate::pg`]),
//! shared with the release registry; the schema is in [`crate::pg::schema`].
//!
//! Several relays share one database: each listens on [`CHANGES_CHANNEL`]
//! ([`DocStorage::change_feed`]) and catches its loaded documents up by seq
//! ([`DocStorage::changes_after`]).

use super::pg_sync_states::StateWriter;
use super::{Appended, CatchUp, DocStorage, EncodedHeads, FeedEvent, Result, StorageError, StoredDoc};
use deadpool_postgres::Pool;
use protocol::DocumentId;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_postgres::NoTls;

/// The channel appends are announced on (payload `user doc seq`).
pub const CHANGES_CHANNEL: &str = "relay_doc_changes";

impl From<crate::pg::PgError> for StorageError {
    fn from(e: crate::pg::PgError) -> StorageError {
        use crate::pg::StorageErrorKind;
        match e.kind {
            StorageErrorKind::SchemaTooNew { found, supported } => StorageError::SchemaTooNew { found, supported },
            StorageErrorKind::Migration => StorageError::Migration(e.text),
            _ => StorageError::Postgres(e.text),
        }
    }
}

fn parse_id_map(rows: Vec<tokio_postgres::Row>) -> HashMap<DocumentId, EncodedHeads> {
    rows.into_iter()
        .filter_map(|r| {
            let id: String = r.get(0);
            Some((id.parse().ok()?, r.get::<_, Vec<u8>>(1)))
        })
        .collect()
}

pub struct PgStorage {
    pg: std::sync::Arc<crate::pg::Pg>,
    /// Sync states and forgets, written behind in order.
    states: StateWriter,
}

impl PgStorage {
    /// Connects (see [`crate::pg::Pg::connect`]) and migrates the schema.
    pub fn connect(url: &str) -> Result<PgStorage> {
        PgStorage::on(std::sync::Arc::new(crate::pg::Pg::connect(url)?), 64 << 20)
    }

    /// Documents on an open connection (shared with the release registry);
    /// at most `max_queue_bytes` of sync states wait to be written.
    pub fn on(pg: std::sync::Arc<crate::pg::Pg>, max_queue_bytes: usize) -> Result<PgStorage> {
        let states = StateWriter::start(&pg, max_queue_bytes)
            .ok_or_else(|| StorageError::Postgres("database connection closed".into()))?;
        Ok(PgStorage { pg, states })
    }

    fn run<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, crate::pg::PgError>> + Send + 'static,
    {
        Ok(self.pg.run(f)?)
    }
}

/// Announcements waiting for the relay at most (past that, one `Resync`).
const FEED_QUEUE: usize = 4096;

/// Listens on [`CHANGES_CHANNEL`] for as long as the relay takes events,
/// reconnecting with a backoff; after every (re)subscription a `Resync`
/// catches up whatever was committed while nobody listened.
async fn listen(config: tokio_postgres::Config, feed: tokio::sync::mpsc::Sender<FeedEvent>) {
    use futures_util::StreamExt;
    let mut backoff = std::time::Duration::from_millis(100);
    while !feed.is_closed() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                // Announcements go straight to the relay's bounded queue;
                // one that does not fit turns into a `Resync` (sent as soon
                // as there is room), so nothing here grows with the rate.
                let missed = Arc::new(AtomicBool::new(false));
                let (to_relay, missed_here) = (feed.clone(), missed.clone());
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        let tokio_postgres::AsyncMessage::Notification(n) = message else { continue };
                        let Some(event) = parse_note(n.payload()) else { continue };
                        if missed_here.load(Ordering::Relaxed) && to_relay.try_send(FeedEvent::Resync).is_ok() {
                            missed_here.store(false, Ordering::Relaxed);
                        }
                        if !missed_here.load(Ordering::Relaxed) && to_relay.try_send(event).is_err() {
                            missed_here.store(true, Ordering::Relaxed);
                        }
                        if to_relay.is_closed() {
                            return;
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await {
                    tracing::warn!(error = %e, "cannot listen for other relays' changes");
                    driver.abort();
                } else {
                    backoff = std::time::Duration::from_millis(100);
                    // Listening: what was committed while nobody listened is caught up now.
                    if feed.try_send(FeedEvent::Resync).is_err() {
                        missed.store(true, Ordering::Relaxed);
                    }
                    // Ends when the connection does.
                    let _ = driver.await;
                    if feed.is_closed() {
                        return;
                    }
                    tracing::warn!("lost the connection listening for other relays' changes; reconnecting");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to listen for other relays' changes"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// `user doc seq`, split from the right (a user id with spaces stays whole).
fn parse_note(payload: &str) -> Option<FeedEvent> {
    let mut parts = payload.rsplitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    let doc = parts.next()?.parse().ok()?;
    let user = parts.next()?.to_owned();
    Some(FeedEvent::Changed { user, doc, seq })
}

impl DocStorage for PgStorage {
    fn change_feed(&self) -> Option<tokio::sync::mpsc::Receiver<FeedEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_QUEUE);
        // Named, so an operator sees each relay's listener in pg_stat_activity.
        let mut config = self.pg.config.clone();
        config.application_name(format!("relay-listener-{}", std::process::id()));
        if !self.pg.spawn(listen(config, tx)) {
            return None;
        }
        Some(rx)
    }

    fn load(&self, user: &str, doc: &DocumentId) -> Result<Option<StoredDoc>> {
        let (user, doc) = (user.to_owned(), doc.to_string());
        self.run(|pool| async move {
            let client = pool.get().await?;
            // One statement, one snapshot of the database: the document row
            // and its chunks from the same commit, never a snapshot from
            // before a compaction with the chunks from after it.
            let row = client
                .query_opt(
                    "SELECT d.snapshot, d.heads, d.last_seq,
                       ARRAY(SELECT c.data FROM doc_chunks c
                             WHERE c.user_id = d.user_id AND c.doc_id = d.doc_id AND c.seq > d.snapshot_seq
                             ORDER BY c.seq)
                     FROM docs d WHERE d.user_id = $1 AND d.doc_id = $2",
                    &[&user, &doc],
                )
                .await?;
            Ok(row.map(|row| StoredDoc {
                snapshot: row.get(0),
                heads: row.get(1),
                seq: row.get::<_, i64>(2).max(0) as u64,
                chunks: row.get(3),
            }))
        })
    }

    fn append(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
        base_seq: u64,
    ) -> Result<Appended> {
        let (user, doc, chunk, heads) = (user.to_owned(), doc.to_string(), chunk.to_vec(), heads.clone());
        let base = base_seq as i64;
        self.run(|pool| async move {
            let client = pool.get().await?;
            // One statement (its own transaction, one round trip). The row's
            // lock orders appends to one document: seq order is commit order.
            // Heads from a copy that missed another relay's chunks would be
            // wrong: they are recorded as unknown (empty). The announcement
            // is delivered to listeners only once this commits.
            let row = client
                .query_one(
                    "WITH d AS (
                       INSERT INTO docs(user_id, doc_id, heads, last_seq) VALUES ($1, $2, $3, 1)
                       ON CONFLICT (user_id, doc_id) DO UPDATE
                         SET heads = CASE WHEN docs.last_seq = $4 THEN excluded.heads ELSE ''::bytea END,
                             last_seq = docs.last_seq + 1, updated_at = now()
                       RETURNING last_seq, snapshot_seq
                     ), c AS (
                       INSERT INTO doc_chunks(user_id, doc_id, seq, data) SELECT $1, $2, last_seq, $5 FROM d
                     )
                     SELECT last_seq, snapshot_seq, pg_notify($6, $1 || ' ' || $2 || ' ' || last_seq)::text FROM d",
                    &[&user, &doc, &heads, &base, &chunk, &CHANGES_CHANNEL],
                )
                .await?;
            let (seq, snapshot_seq): (i64, i64) = (row.get(0), row.get(1));
            Ok(Appended { since_snapshot: (seq - snapshot_seq).max(0) as u64, seq: seq as u64 })
        })
    }

    fn compact(&self, user: &str, doc: &DocumentId, snapshot: &[u8], covers_seq: u64) -> Result<()> {
        let (user, doc, snapshot) = (user.to_owned(), doc.to_string(), snapshot.to_vec());
        let covers = covers_seq as i64;
        self.run(|pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Only a snapshot newer than the stored one replaces it, and only
            // the chunks it holds go: another relay's later chunks stay.
            let replaced = tx
                .execute(
                    "UPDATE docs SET snapshot = $3, snapshot_seq = $4
                     WHERE user_id = $1 AND doc_id = $2 AND snapshot_seq < $4 AND last_seq >= $4",
                    &[&user, &doc, &snapshot, &covers],
                )
                .await?;
            if replaced > 0 {
                tx.execute(
                    "DELETE FROM doc_chunks WHERE user_id = $1 AND doc_id = $2 AND seq <= $3",
                    &[&user, &doc, &covers],
                )
                .await?;
            }
            Ok(tx.commit().await?)
        })
    }

    fn changes_after(&self, user: &str, doc: &DocumentId, seq: u64) -> Result<Option<CatchUp>> {
        let (user, doc) = (user.to_owned(), doc.to_string());
        let after = seq as i64;
        self.run(|pool| async move {
            let client = pool.get().await?;
            // One statement, one snapshot. A compaction past `seq` took
            // chunks this copy lacks into the snapshot: it comes along.
            let row = client
                .query_opt(
                    "SELECT d.last_seq, d.heads = ''::bytea,
                       CASE WHEN d.snapshot_seq > $3 THEN d.snapshot END,
                       ARRAY(SELECT c.data FROM doc_chunks c
                             WHERE c.user_id = d.user_id AND c.doc_id = d.doc_id
                               AND c.seq > greatest($3, d.snapshot_seq) AND c.seq <= d.last_seq
                             ORDER BY c.seq)
                     FROM docs d WHERE d.user_id = $1 AND d.doc_id = $2",
                    &[&user, &doc, &after],
                )
                .await?;
            let Some(row) = row else { return Ok(Some(CatchUp { seq, ..CatchUp::default() })) };
            let last_seq: i64 = row.get(0);
            Ok(Some(CatchUp {
                seq: last_seq.max(0) as u64,
                heads_unknown: row.get(1),
                snapshot: row.get(2),
                chunks: row.get(3),
            }))
        })
    }

    fn record_heads(&self, user: &str, doc: &DocumentId, seq: u64, heads: &EncodedHeads) -> Result<()> {
        let (user, doc, heads) = (user.to_owned(), doc.to_string(), heads.clone());
        let seq = seq as i64;
        self.run(|pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "UPDATE docs SET heads = $4
                     WHERE user_id = $1 AND doc_id = $2 AND last_seq = $3 AND heads = ''::bytea",
                    &[&user, &doc, &seq, &heads],
                )
                .await?;
            Ok(())
        })
    }

    fn heads(&self, user: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        let user = user.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client.query("SELECT doc_id, heads FROM docs WHERE user_id = $1", &[&user]).await?;
            Ok(parse_id_map(rows))
        })
    }

    fn count_docs(&self, user: &str) -> Result<u64> {
        let user = user.to_owned();
        self.run(|pool| async move {
            let client = pool.get().await?;
            let n: i64 = client.query_one("SELECT count(*) FROM docs WHERE user_id = $1", &[&user]).await?.get(0);
            Ok(n as u64)
        })
    }

    fn load_sync_state(&self, user: &str, device: &str, doc: &DocumentId) -> Result<Option<Vec<u8>>> {
        if let Some(pending) = self.states.pending(user, device, doc) {
            return Ok(Some(pending));
        }
        let (user, device, doc) = (user.to_owned(), device.to_owned(), doc.to_string());
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "SELECT state FROM sync_states WHERE user_id = $1 AND device_id = $2 AND doc_id = $3",
                    &[&user, &device, &doc],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn shared_heads(&self, user: &str, device: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        let (user_owned, device_owned) = (user.to_owned(), device.to_owned());
        let mut heads = self.run(|pool| async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT doc_id, shared_heads FROM sync_states WHERE user_id = $1 AND device_id = $2",
                    &[&user_owned, &device_owned],
                )
                .await?;
            Ok(parse_id_map(rows))
        })?;
        // Pending states are newer than any stored: they win.
        heads.extend(self.states.pending_heads(user, device));
        Ok(heads)
    }

    fn save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<()> {
        self.states.save(user, device, doc, state, shared_heads, true).map(|_| ())
    }

    fn try_save_sync_state(
        &self,
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> Result<bool> {
        self.states.save(user, device, doc, state, shared_heads, false)
    }

    fn forget_other_installs(&self, user: &str, device: &str, keep: &str) -> Result<()> {
        self.states.forget(user, device, keep)
    }

    fn flush(&self) -> Result<()> {
        self.states.flush()
    }

    fn storage_id(&self) -> Result<String> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            let row = client.query_one("SELECT value FROM relay_meta WHERE key = 'storage_id'", &[]).await?;
            Ok(row.get(0))
        })
    }

    fn probe_write(&self) -> Result<()> {
        self.run(|pool| async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO relay_meta(key, value) VALUES ('probe', now()::text)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[],
                )
                .await?;
            Ok(())
        })
    }
}

//! Sync states on PostgreSQL, written behind: they are an optimization (a
//! lost one costs a device a longer sync, never data), and writing each
//! through cost a round trip and a commit per message. Saves wait in
//! [`PendingStates`] (the latest per key, read from there until committed,
//! so a device reconnecting to this relay meanwhile finds them); one task
//! commits whatever is pending, with the forgets queued meanwhile, in one
//! transaction. Pending bytes are bounded (`Limits::max_storage_queue_bytes`):
//! past it, savers wait, or are refused when they cannot.

use super::pending_states::{AfterSave, PendingStates, StateRow};
use super::{EncodedHeads, Result, StorageError};
use crate::budget::BlockingBudget;
use deadpool_postgres::Pool;
use protocol::DocumentId;
use std::collections::HashMap;
use std::sync::Arc;

/// Requests taken in one round at most.
const MAX_GROUP: usize = 512;

/// What the writing task is asked.
enum StateWrite {
    /// Sync states are pending and the task sleeps: write them.
    Wake,
    Forget {
        user: String,
        device: String,
        keep: String,
    },
    /// Replies once everything saved or queued before it is committed.
    Flush(std::sync::mpsc::SyncSender<Result<(), String>>),
}

impl StateWrite {
    fn size(&self) -> usize {
        match self {
            StateWrite::Forget { user, device, keep } => user.len() + device.len() + keep.len(),
            StateWrite::Wake | StateWrite::Flush(_) => 0,
        }
    }
}

pub(super) struct StateWriter {
    queue: tokio::sync::mpsc::UnboundedSender<StateWrite>,
    queued: Arc<BlockingBudget>,
    pending: Arc<PendingStates>,
}

impl StateWriter {
    /// Starts the writer on the connection's runtime.
    pub(super) fn start(pg: &crate::pg::Pg, max_queue_bytes: usize) -> Option<StateWriter> {
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(BlockingBudget::new(max_queue_bytes));
        let pending = Arc::new(PendingStates::default());
        pg.spawn(write_loop(pg.pool(), rx, queued.clone(), pending.clone())).then_some(StateWriter {
            queue,
            queued,
            pending,
        })
    }

    fn send(&self, write: StateWrite) -> Result<()> {
        let size = write.size();
        self.queue.send(write).map_err(|_| {
            self.queued.release(size);
            StorageError::Writer("the sync-state writer stopped".into())
        })
    }

    /// Saves a sync state (pending until the task commits it). With
    /// `wait`, waits while the pending bytes are over the budget; else
    /// returns false, saving nothing, when they are.
    pub(super) fn save(
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
            self.queued.reserve(size);
        } else if !self.queued.try_reserve(size) {
            return Ok(false);
        }
        if let AfterSave::Wake = self.pending.put(&self.queued, user, device, doc, state, shared_heads) {
            self.send(StateWrite::Wake)?;
        }
        Ok(true)
    }

    /// Forgets the sync states of `device`'s other installs, after every
    /// save pending now.
    pub(super) fn forget(&self, user: &str, device: &str, keep: &str) -> Result<()> {
        let write = StateWrite::Forget { user: user.to_owned(), device: device.to_owned(), keep: keep.to_owned() };
        self.queued.reserve(write.size());
        self.send(write)
    }

    /// The pending state of one key, if any.
    pub(super) fn pending(&self, user: &str, device: &str, doc: &DocumentId) -> Option<Vec<u8>> {
        self.pending.get(user, device, doc)
    }

    /// Pending shared heads of (user, device): newer than the stored ones.
    pub(super) fn pending_heads(&self, user: &str, device: &str) -> HashMap<DocumentId, EncodedHeads> {
        self.pending.shared_heads(user, device)
    }

    /// Waits until every state saved and every write queued before is committed.
    pub(super) fn flush(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(StateWrite::Flush(tx))?;
        rx.recv()
            .map_err(|_| StorageError::Writer("the sync-state writer stopped".into()))?
            .map_err(StorageError::Postgres)
    }
}

async fn write_loop(
    pool: Pool,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<StateWrite>,
    queued: Arc<BlockingBudget>,
    pending: Arc<PendingStates>,
) {
    let mut more = pending.sleep_until_woken();
    loop {
        let mut group = Vec::new();
        if !more {
            match rx.recv().await {
                Some(w) => group.push(w),
                None => break,
            }
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let bytes: usize = group.iter().map(StateWrite::size).sum();
        let (rows, state_bytes) = pending.take();
        let committed = if rows.is_empty() && group.iter().all(|w| !matches!(w, StateWrite::Forget { .. })) {
            Ok(())
        } else {
            commit(&pool, &rows, &group).await
        };
        if let Err(e) = &committed {
            tracing::warn!(error = %e, states = rows.len(), "sync states not saved; devices resync a little more");
        }
        pending.written();
        queued.release(bytes + state_bytes);
        for w in group {
            if let StateWrite::Flush(reply) = w {
                let _ = reply.send(committed.clone());
            }
        }
        more = pending.sleep_until_woken();
    }
}

async fn commit(pool: &Pool, rows: &[StateRow], group: &[StateWrite]) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    // Pending states first: a forget queued after them must win.
    if !rows.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sync_states(user_id, device_id, doc_id, state, shared_heads)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, device_id, doc_id) DO UPDATE
                   SET state = excluded.state, shared_heads = excluded.shared_heads",
            )
            .await
            .map_err(|e| e.to_string())?;
        for r in rows {
            let doc = r.doc.to_string();
            tx.execute(&stmt, &[&r.user, &r.device, &doc, &r.state.state, &r.state.shared_heads])
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    for w in group {
        if let StateWrite::Forget { user, device, keep } = w {
            tx.execute(
                "DELETE FROM sync_states WHERE user_id = $1 AND device_id <> $3
                   AND (device_id = $2 OR left(device_id, length($2) + 1) = $2 || '#')",
                &[user, device, keep],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())
}

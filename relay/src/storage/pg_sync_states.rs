//! Sync states on PostgreSQL, written behind: they are an optimization (a
//! lost one costs a device a longer sync, never data), and writing each
//! through cost a round trip and a commit per message. One task takes them
//! in order and commits whatever queued meanwhile in one transaction, so a
//! later save of a key is never overtaken by an earlier one. The queue is
//! bounded in bytes (`Limits::max_storage_queue_bytes`): past it, callers
//! wait.

use super::{EncodedHeads, Result, StorageError};
use crate::budget::BlockingBudget;
use deadpool_postgres::Pool;
use protocol::DocumentId;
use std::sync::Arc;

/// Writes committed in one transaction at most.
const MAX_GROUP: usize = 512;

pub(super) enum StateWrite {
    Save {
        user: String,
        device: String,
        doc: String,
        state: Vec<u8>,
        shared_heads: EncodedHeads,
    },
    Forget {
        user: String,
        device: String,
        keep: String,
    },
    /// Replies once everything queued before it is committed.
    Flush(std::sync::mpsc::SyncSender<Result<(), String>>),
}

impl StateWrite {
    /// A save of one sync state.
    pub(super) fn save(
        user: &str,
        device: &str,
        doc: &DocumentId,
        state: &[u8],
        shared_heads: &EncodedHeads,
    ) -> StateWrite {
        StateWrite::Save {
            user: user.to_owned(),
            device: device.to_owned(),
            doc: doc.to_string(),
            state: state.to_vec(),
            shared_heads: shared_heads.clone(),
        }
    }

    fn size(&self) -> usize {
        match self {
            StateWrite::Save { user, device, doc, state, shared_heads } => {
                user.len() + device.len() + doc.len() + state.len() + shared_heads.len()
            }
            StateWrite::Forget { user, device, keep } => user.len() + device.len() + keep.len(),
            StateWrite::Flush(_) => 0,
        }
    }
}

pub(super) struct StateWriter {
    queue: tokio::sync::mpsc::UnboundedSender<StateWrite>,
    queued: Arc<BlockingBudget>,
}

impl StateWriter {
    /// Starts the writer on the connection's runtime.
    pub(super) fn start(pg: &crate::pg::Pg, max_queue_bytes: usize) -> Option<StateWriter> {
        let (queue, rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(BlockingBudget::new(max_queue_bytes));
        pg.spawn(write_loop(pg.pool(), rx, queued.clone())).then_some(StateWriter { queue, queued })
    }

    /// Queues a write, waiting while the queue is full (in bytes).
    pub(super) fn submit(&self, write: StateWrite) -> Result<()> {
        self.queued.reserve(write.size());
        let size = write.size();
        self.queue.send(write).map_err(|_| {
            self.queued.release(size);
            StorageError::Writer("the sync-state writer stopped".into())
        })
    }

    /// [`StateWriter::submit`] when the queue has room now: false (and
    /// nothing queued) when it would wait.
    pub(super) fn try_submit(&self, write: StateWrite) -> Result<bool> {
        let size = write.size();
        if !self.queued.try_reserve(size) {
            return Ok(false);
        }
        self.queue.send(write).map(|()| true).map_err(|_| {
            self.queued.release(size);
            StorageError::Writer("the sync-state writer stopped".into())
        })
    }

    /// Waits until every write queued before is committed.
    pub(super) fn flush(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(StateWrite::Flush(tx))?;
        rx.recv()
            .map_err(|_| StorageError::Writer("the sync-state writer stopped".into()))?
            .map_err(StorageError::Postgres)
    }
}

async fn write_loop(pool: Pool, mut rx: tokio::sync::mpsc::UnboundedReceiver<StateWrite>, queued: Arc<BlockingBudget>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let bytes: usize = group.iter().map(StateWrite::size).sum();
        let committed = commit(&pool, &group).await;
        if let Err(e) = &committed {
            tracing::warn!(error = %e, writes = group.len(), "sync states not saved; devices resync a little more");
        }
        queued.release(bytes);
        for w in group {
            if let StateWrite::Flush(reply) = w {
                let _ = reply.send(committed.clone());
            }
        }
    }
}

async fn commit(pool: &Pool, group: &[StateWrite]) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    for w in group {
        let done = match w {
            StateWrite::Save { user, device, doc, state, shared_heads } => {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO sync_states(user_id, device_id, doc_id, state, shared_heads)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (user_id, device_id, doc_id) DO UPDATE
                           SET state = excluded.state, shared_heads = excluded.shared_heads",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                tx.execute(&stmt, &[user, device, doc, state, shared_heads]).await
            }
            StateWrite::Forget { user, device, keep } => {
                tx.execute(
                    "DELETE FROM sync_states WHERE user_id = $1 AND device_id <> $3
                       AND (device_id = $2 OR left(device_id, length($2) + 1) = $2 || '#')",
                    &[user, device, keep],
                )
                .await
            }
            StateWrite::Flush(_) => continue,
        };
        done.map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

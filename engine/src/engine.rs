//! The API an app calls. Every call is local and synchronous: it answers
//! from the device database and never waits on the network. Sync runs in
//! the background once [`Engine::start_sync`] is called on a tokio runtime.

use crate::error::{EngineError, Result};
use crate::model::*;
use crate::progress_doc::{self, Touched};
use crate::replica::Replica;
use crate::store;
use crate::sync::driver::{self, RelayConfig};
use crate::sync::session::SyncSession;
use protocol::DocumentId;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, broadcast, watch};

/// Longest item id, notes, mode the engine accepts.
const MAX_TEXT: usize = 4096;
const MAX_ID: usize = 256;
const DATABASE_FILE: &str = "progress.sqlite3";
const LOCK_FILE: &str = "engine.lock";

/// Who this device is and where it keeps its data.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub user_id: String,
    pub device_id: String,
}

/// State shared between the API and the sync driver.
pub(crate) struct Shared {
    /// `None` once the engine is closed: the database is shut and every
    /// call answers [`EngineError::Closed`].
    replica: Mutex<Option<Replica>>,
    /// This engine's hold on its data directory (see [`lock_data_dir`]),
    /// released with the database.
    dir_lock: Mutex<Option<std::fs::File>>,
    pub(crate) device_id: String,
    pub(crate) events: broadcast::Sender<ChangeEvent>,
    /// Wakes the sync driver when the app wrote something.
    pub(crate) local_changes: Notify,
    changed_docs: Mutex<Vec<DocumentId>>,
    status: Mutex<SyncStatus>,
}

impl Shared {
    /// Runs `f` on the replica, then publishes the events it produced.
    pub(crate) fn with_replica<T>(&self, f: impl FnOnce(&mut Replica) -> Result<T>) -> Result<T> {
        let (out, events) = {
            let mut guard = self.replica.lock().map_err(|_| EngineError::Poisoned)?;
            let replica = guard.as_mut().ok_or(EngineError::Closed)?;
            let out = f(replica);
            (out, replica.take_events())
        };
        for e in events {
            driver::emit(self, e);
        }
        out
    }

    pub(crate) fn take_changed_docs(&self) -> Vec<DocumentId> {
        let mut docs = self.changed_docs.lock().map(|mut d| std::mem::take(&mut *d)).unwrap_or_default();
        docs.sort();
        docs.dedup();
        docs
    }

    fn local_change(&self, doc: DocumentId) {
        if let Ok(mut d) = self.changed_docs.lock() {
            d.push(doc);
        }
        self.local_changes.notify_one();
    }

    fn update_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        let snapshot = match self.status.lock() {
            Ok(mut s) => {
                f(&mut s);
                s.clone()
            }
            Err(_) => return,
        };
        driver::emit(self, ChangeEvent::Sync(snapshot));
    }

    pub(crate) fn set_connected(&self, connected: bool, error: Option<String>) {
        self.update_status(|s| {
            s.connected = connected;
            if error.is_some() || connected {
                s.last_error = error;
            }
            if connected {
                s.problem = None;
            }
        });
    }

    /// Records why the last connection attempt or session failed.
    pub(crate) fn set_failed(&self, problem: SyncProblem, error: String) {
        self.update_status(|s| {
            s.connected = false;
            s.last_error = Some(error);
            s.problem = Some(problem);
        });
    }

    pub(crate) fn count_sent(&self, bytes: usize) {
        if let Ok(mut s) = self.status.lock() {
            s.traffic.messages_sent += 1;
            s.traffic.bytes_sent += bytes as u64;
            if s.traffic.last_was_send == Some(false) {
                s.traffic.turns += 1;
            }
            s.traffic.last_was_send = Some(true);
        }
    }

    pub(crate) fn count_received(&self, bytes: usize) {
        if let Ok(mut s) = self.status.lock() {
            s.traffic.messages_received += 1;
            s.traffic.bytes_received += bytes as u64;
            if s.traffic.last_was_send == Some(true) {
                s.traffic.turns += 1;
            }
            s.traffic.last_was_send = Some(false);
        }
    }

    pub(crate) fn set_synced(&self, at: TimestampMs) {
        self.update_status(|s| s.last_sync_at = Some(at));
    }
}

/// A user's progress on this device.
pub struct Engine {
    shared: Arc<Shared>,
    sync: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

impl Engine {
    /// Opens (or creates) the device database under `config.data_dir`. Cost
    /// does not grow with history: nothing is replayed or loaded eagerly.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        Engine::open_with_ids(config, Box::new(crate::ids::RandomIds))
    }

    /// [`Engine::open`] with the ids drawn from `ids` (the simulator seeds it).
    pub fn open_with_ids(config: EngineConfig, ids: Box<dyn crate::ids::IdSource>) -> Result<Engine> {
        check_id("user_id", &config.user_id)?;
        check_id("device_id", &config.device_id)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| EngineError::InvalidInput(format!("data_dir {}: {e}", config.data_dir.display())))?;
        let dir_lock = lock_data_dir(&config.data_dir)?;
        let replica = Replica::open(&config.data_dir.join(DATABASE_FILE), &config.user_id, ids)?;
        let (events, _) = broadcast::channel(256);
        Ok(Engine {
            shared: Arc::new(Shared {
                replica: Mutex::new(Some(replica)),
                dir_lock: Mutex::new(Some(dir_lock)),
                device_id: config.device_id,
                events,
                local_changes: Notify::new(),
                changed_docs: Mutex::new(Vec::new()),
                status: Mutex::new(SyncStatus::default()),
            }),
            sync: Mutex::new(None),
        })
    }

    fn replica<T>(&self, f: impl FnOnce(&mut Replica) -> Result<T>) -> Result<T> {
        self.shared.with_replica(f)
    }

    /// Starts a study session at `started_at`.
    pub fn start_session(&self, mode: &str, started_at: TimestampMs) -> Result<Session> {
        check_text("mode", mode)?;
        let session = Session {
            id: self.replica(|r| Ok(r.new_id()))?,
            started_at,
            ended_at: None,
            device_id: self.shared.device_id.clone(),
            mode: mode.to_owned(),
            counts: SessionCounts::default(),
            notes: String::new(),
        };
        let doc = self.replica(|r| {
            r.local_change(&progress_doc::partition_of(started_at), Touched::session(&session.id), |tx| {
                progress_doc::put_session(tx, &session)
            })
        })?;
        self.shared.local_change(doc);
        Ok(session)
    }

    /// Ends a session with the app's tallies and notes.
    pub fn end_session(&self, id: &str, ended_at: TimestampMs, counts: SessionCounts, notes: &str) -> Result<Session> {
        check_text("notes", notes)?;
        let (session, doc) = self.replica(|r| {
            let mut session =
                store::session(r.store.conn(), id)?.ok_or_else(|| EngineError::UnknownSession(id.to_owned()))?;
            if ended_at < session.started_at {
                return Err(EngineError::InvalidInput("ended_at is before started_at".into()));
            }
            session.ended_at = Some(ended_at);
            session.counts = counts;
            session.notes = notes.to_owned();
            let doc = r.local_change(&progress_doc::partition_of(session.started_at), Touched::session(id), |tx| {
                progress_doc::put_session(tx, &session)
            })?;
            Ok((session, doc))
        })?;
        self.shared.local_change(doc);
        Ok(session)
    }

    /// Records a review. When this returns, the review is on disk and the
    /// item's memory state is updated.
    pub fn record_review(&self, new: NewReview) -> Result<Review> {
        check_id("item_id", &new.item_id)?;
        if let Some(s) = &new.session_id {
            check_id("session_id", s)?;
        }
        let review = Review {
            id: self.replica(|r| Ok(r.new_review_id(new.reviewed_at)))?,
            item_id: new.item_id,
            rating: new.rating,
            reviewed_at: new.reviewed_at,
            duration_ms: new.duration_ms,
            device_id: self.shared.device_id.clone(),
            session_id: new.session_id,
        };
        let doc = self.replica(|r| {
            r.local_change(&progress_doc::partition_of(review.reviewed_at), Touched::review(&review.id), |tx| {
                progress_doc::put_review(tx, &review)
            })
        })?;
        self.shared.local_change(doc);
        Ok(review)
    }

    /// The item's FSRS state, or `None` if it was never reviewed.
    pub fn memory_state(&self, item_id: &str) -> Result<Option<MemoryState>> {
        self.replica(|r| {
            r.settle()?;
            Ok(store::memory_state(r.store.conn(), item_id)?.map(|m| m.state))
        })
    }

    /// Items due at `now`, most overdue first.
    pub fn due_items(&self, now: TimestampMs, limit: u32) -> Result<Vec<MemoryState>> {
        self.replica(|r| {
            r.settle()?;
            store::due_items(r.store.conn(), now, limit)
        })
    }

    /// Every item's memory state, ordered by item id.
    pub fn memory_states(&self) -> Result<Vec<MemoryState>> {
        self.replica(|r| {
            r.settle()?;
            store::all_memory_states(r.store.conn())
        })
    }

    /// Sessions started in `[from, to)`.
    pub fn sessions(&self, from: TimestampMs, to: TimestampMs) -> Result<Vec<Session>> {
        self.replica(|r| store::sessions_between(r.store.conn(), from, to))
    }

    /// Plants a known bug (simulator only; feature `simulation`).
    #[cfg(feature = "simulation")]
    pub fn plant(&self, bug: crate::ids::PlantedBug) -> Result<()> {
        self.replica(|r| {
            r.planted = Some(bug);
            Ok(())
        })
    }

    /// Makes every write fail (`true`) or work again, as a full disk does
    /// (simulator only; feature `simulation`). Writes fail with a storage
    /// error and change nothing; reads keep working.
    #[cfg(feature = "simulation")]
    pub fn refuse_writes(&self, refuse: bool) -> Result<()> {
        self.replica(|r| {
            r.store.conn().pragma_update(None, "query_only", refuse)?;
            Ok(())
        })
    }

    /// Reviews of `item_id` this device knows, oldest first.
    pub fn reviews_of(&self, item_id: &str) -> Result<Vec<Review>> {
        self.replica(|r| store::reviews_for_item(r.store.conn(), item_id))
    }

    /// The ids of every review this device knows, sorted (for checks that
    /// compare devices review by review, as the simulator does).
    pub fn review_ids(&self) -> Result<Vec<String>> {
        self.replica(|r| store::review_ids(r.store.conn()))
    }

    pub fn review_count(&self) -> Result<u64> {
        self.replica(|r| store::review_count(r.store.conn()))
    }

    /// Where sync stands, including how many documents await the relay.
    pub fn sync_status(&self) -> Result<SyncStatus> {
        let pending = self.replica(|r| Ok(r.dirty_docs()?.len() as u32))?;
        let mut status = self.shared.status.lock().map_err(|_| EngineError::Poisoned)?.clone();
        status.pending_documents = pending;
        Ok(status)
    }

    /// Change events: merged reviews and sessions, sync status.
    pub fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.shared.events.subscribe()
    }

    /// The saved bytes of every document, by id (for convergence checks and export).
    pub fn export_documents(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.replica(|r| {
            let mut out = Vec::new();
            for id in r.doc_ids()? {
                out.push((id.to_string(), r.doc(&id)?.save()));
            }
            Ok(out)
        })
    }

    /// Merges documents exported by another replica of the same user (backup
    /// restore, or peer-to-peer transfer). Merged changes are offered to the
    /// relay on the next sync.
    pub fn import_documents(&self, docs: &[(String, Vec<u8>)]) -> Result<()> {
        let ids = docs
            .iter()
            .map(|(id, _)| id.parse().map_err(|e| EngineError::InvalidInput(format!("document id `{id}`: {e}"))))
            .collect::<Result<Vec<DocumentId>>>()?;
        let bytes: Vec<&[u8]> = docs.iter().map(|(_, b)| b.as_slice()).collect();
        let mut changed = Vec::new();
        self.replica(|r| {
            r.batch(|r| {
                // Months are decoded on worker threads while the ones
                // already decoded are written here.
                crate::decode::each_decoded(&bytes, |i, decoded| {
                    let id = &ids[i];
                    let decoded = decoded.map_err(|e| match e {
                        crate::decode::DecodeError::Document(source) => {
                            EngineError::Document { doc: id.to_string(), source: Box::new(source) }
                        }
                        crate::decode::DecodeError::Panicked => EngineError::InvalidInput(format!(
                            "document `{id}` could not be decoded (the decoder failed on it)"
                        )),
                    })?;
                    let apply = |doc: &mut automerge::Automerge, preloaded: bool| {
                        if !preloaded {
                            doc.load_incremental(bytes[i])?;
                        }
                        Ok(())
                    };
                    if r.receive_whole(id, true, bytes[i].to_vec(), decoded, apply)?.1 {
                        changed.push(*id);
                    }
                    Ok::<(), EngineError>(())
                })?;
                r.settle()
            })
        })?;
        for id in changed {
            self.shared.local_change(id);
        }
        Ok(())
    }

    /// Each document's id and heads (hex, sorted): equal on two devices iff
    /// they hold the same changes.
    pub fn document_heads(&self) -> Result<Vec<(String, Vec<String>)>> {
        self.replica(|r| {
            let mut out = Vec::new();
            for id in r.doc_ids()? {
                let mut heads: Vec<String> = r.doc(&id)?.get_heads().iter().map(|h| h.to_string()).collect();
                heads.sort();
                out.push((id.to_string(), heads));
            }
            Ok(out)
        })
    }

    /// A sans-IO sync session on this engine: frames in, frames out, time
    /// passed in. [`Engine::start_sync`] runs one over WebSocket; a simulator
    /// or another transport can drive one directly. Run one at a time.
    pub fn sync_session(&self, connection_nonce: u32) -> SyncSession {
        SyncSession::new(self.shared.clone(), connection_nonce)
    }

    /// Starts background sync on the current tokio runtime. Calling it again
    /// replaces the previous sync task.
    pub fn start_sync(&self, config: RelayConfig) -> Result<()> {
        if self.is_closed() {
            return Err(EngineError::Closed);
        }
        self.stop_sync();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(driver::run(self.shared.clone(), config, rx));
        *self.sync.lock().map_err(|_| EngineError::Poisoned)? = Some((tx, task));
        Ok(())
    }

    /// Stops sync, waits for the database work in flight, and shuts the
    /// database (its file handles and locks are released: iOS kills a
    /// suspended app that holds a file lock). Every later call, this one
    /// included, answers [`EngineError::Closed`].
    pub fn close(&self) -> Result<()> {
        self.stop_sync();
        let closed = {
            // Waits for a call or a sync batch that holds the database.
            let mut guard = self.shared.replica.lock().map_err(|_| EngineError::Poisoned)?;
            guard.take()
        };
        match closed {
            Some(replica) => {
                drop(replica);
                // The database is shut: another engine may open the directory.
                if let Ok(mut lock) = self.shared.dir_lock.lock() {
                    lock.take();
                }
                Ok(())
            }
            None => Err(EngineError::Closed),
        }
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.replica.lock().map(|g| g.is_none()).unwrap_or(true)
    }

    /// Stops background sync (the app goes offline). Local calls keep working.
    pub fn stop_sync(&self) {
        if let Ok(mut guard) = self.sync.lock()
            && let Some((tx, task)) = guard.take()
        {
            let _ = tx.send(true);
            task.abort();
        }
        self.shared.set_connected(false, None);
    }
}

/// Dropping the engine closes it at once: the sync task (aborted) may hold
/// the shared state a little longer, but not the database or the
/// directory's lock, so the directory can be opened again right away.
impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Takes an exclusive lock on `engine.lock` in the data directory, held
/// until the engine closes or is dropped. Two engines on one directory
/// (an app and its extension, a second process, or a second `open` in this
/// one) would each keep documents in memory and overwrite the other's
/// saves; the second is refused instead. The kernel drops the lock when the
/// holder exits, however it exits.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| EngineError::InvalidInput(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(EngineError::InUse(dir.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(EngineError::InvalidInput(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

fn check_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_ID || value.chars().any(char::is_control) {
        return Err(EngineError::InvalidInput(format!(
            "{field} must be 1..={MAX_ID} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TEXT {
        return Err(EngineError::InvalidInput(format!("{field} is longer than {MAX_TEXT} bytes")));
    }
    Ok(())
}

//! The device's replica of a user's progress: documents, their storage and
//! the materialized views, kept consistent.
//!
//! Everything that changes a document goes through [`Replica::local_change`]
//! (the app wrote something) or [`Replica::remote_change`] (a peer's changes
//! merged). Both persist the new chunk and update the materialized tables in
//! one SQLite transaction. The replica holds no socket and no clock: the
//! engine API and the sync client call it, and so can the simulator.

use crate::change_events;
use crate::decode::WholeDoc;
use crate::error::{EngineError, Result};
use crate::ids::IdSource;
use crate::memory::Scheduler;
use crate::model::{ChangeEvent, Review, Session};
use crate::progress_doc;
use crate::store::{self, Store};
use crate::views::{PENDING_VIEWS_BYTES, PendingViews, materialize};
use automerge::{ActorId, Automerge, ChangeHash};
use protocol::DocumentId;
use std::collections::HashMap;
use std::path::Path;

/// How many documents stay loaded. A month of a heavy user is about 3 MB in
/// memory (automerge 0.12, 6,500 reviews); six cover the month being
/// written plus the sync client's push window of four (`client::PUSH_WINDOW`)
/// and one more, so an upload loads each month once.
const DOC_CACHE_CAPACITY: usize = 6;
/// Partition recorded for a document that arrived from a peer before any of
/// its entries could be read.
const UNKNOWN_PARTITION: &str = "unknown";
/// `meta` key of this data directory's storage identity.
const STORAGE_ID_KEY: &str = "storage_id";

/// What a write touched, when known without diffing the document, and
/// whether it is the app's own write (no change event for those).
struct Written {
    touched: Option<progress_doc::Touched>,
    local: bool,
    /// Every entry of a document that arrived whole, already read out of it.
    whole: Option<(Vec<Review>, Vec<Session>)>,
}

struct CachedDoc {
    doc: Automerge,
    last_used: u64,
}

pub struct Replica {
    pub(crate) store: Store,
    pub(crate) scheduler: Scheduler,
    pub(crate) user_id: String,
    /// Fresh per open: an actor id must never be reused with an older state.
    actor: ActorId,
    cache: HashMap<DocumentId, CachedDoc>,
    clock: u64,
    /// Events for the app, drained by the engine after each call.
    pending_events: Vec<ChangeEvent>,
    /// This data directory's identity, sent to the relay at join: a wiped and
    /// reinstalled app gets a new one, so the relay does not trust sync state
    /// it kept for the previous install.
    storage_id: String,
    /// Fresh ids (review and session ids, actor ids).
    ids: Box<dyn IdSource>,
    /// A bug the simulator planted (never set in an app: see `Engine::plant`).
    pub(crate) planted: Option<crate::ids::PlantedBug>,
    /// Some item may be marked stale (`stale_items`): memory states must be
    /// settled before they are read. Only a hint (a rolled-back transaction
    /// may leave it set with nothing marked), never wrongly clear.
    maybe_stale: bool,
    /// Documents past the compaction threshold, compacted when sync is quiet.
    compact_due: std::collections::BTreeSet<DocumentId>,
    /// Reviews and sessions received during a batch, materialized together
    /// before it commits ([`Replica::flush_views`]).
    pending: PendingViews,
}

impl Replica {
    pub fn open(path: &Path, user_id: &str, mut ids: Box<dyn IdSource>) -> Result<Replica> {
        let mut store = Store::open(path)?;
        let fresh = ids.next_id();
        let storage_id = store.transaction(|conn| {
            if let Some(id) = store::meta_get(conn, STORAGE_ID_KEY)? {
                return Ok(id);
            }
            let id = hex::encode(fresh);
            store::meta_set(conn, STORAGE_ID_KEY, &id)?;
            Ok(id)
        })?;
        let actor = ActorId::from(ids.next_id().as_slice());
        let maybe_stale = !store::stale_items(store.conn())?.is_empty();
        Ok(Replica {
            compact_due: Default::default(),
            maybe_stale,
            planted: None,
            storage_id,
            ids,
            store,
            scheduler: Scheduler::new()?,
            user_id: user_id.to_owned(),
            actor,
            cache: HashMap::new(),
            clock: 0,
            pending_events: Vec::new(),
            pending: PendingViews::default(),
        })
    }

    /// A fresh id for a session.
    pub fn new_id(&mut self) -> String {
        crate::ids::uuid_text(self.ids.next_id())
    }

    /// A fresh id for a review made at `reviewed_at`: newest first in its
    /// month ([`crate::ids::review_id`] says why).
    pub fn new_review_id(&mut self, reviewed_at: crate::TimestampMs) -> String {
        crate::ids::review_id(reviewed_at, self.ids.next_id())
    }

    /// This data directory's storage identity (stable across restarts).
    pub fn storage_id(&self) -> &str {
        &self.storage_id
    }

    pub fn take_events(&mut self) -> Vec<ChangeEvent> {
        std::mem::take(&mut self.pending_events)
    }

    /// Loads (or creates empty) the document and returns it, cached.
    pub fn doc(&mut self, id: &DocumentId) -> Result<&mut Automerge> {
        self.clock += 1;
        let now = self.clock;
        if !self.cache.contains_key(id) {
            let doc = self.load(id)?;
            if self.cache.len() >= DOC_CACHE_CAPACITY
                && let Some(oldest) = self.cache.iter().min_by_key(|(_, c)| c.last_used).map(|(k, _)| *k)
            {
                self.cache.remove(&oldest);
            }
            self.cache.insert(*id, CachedDoc { doc, last_used: now });
        }
        let entry = self.cache.get_mut(id).ok_or(EngineError::Poisoned)?;
        entry.last_used = now;
        Ok(&mut entry.doc)
    }

    /// The document's heads, sorted, without loading it: from memory if it
    /// is loaded, else as recorded with its last write (empty if none).
    pub fn heads(&self, id: &DocumentId) -> Result<Vec<automerge::ChangeHash>> {
        let mut heads = match self.cache.get(id) {
            Some(cached) => cached.doc.get_heads(),
            None => store::doc_heads(self.store.conn(), id)?.unwrap_or_default(),
        };
        heads.sort();
        Ok(heads)
    }

    /// Drops a document from memory (it stays on disk).
    pub fn evict(&mut self, id: &DocumentId) {
        self.cache.remove(id);
    }

    fn load(&self, id: &DocumentId) -> Result<Automerge> {
        let doc_err = |source| EngineError::Document { doc: id.to_string(), source: Box::new(source) };
        let mut doc = match store::load_doc(self.store.conn(), id)? {
            None => Automerge::new(),
            Some(stored) => {
                let mut doc = match &stored.snapshot {
                    Some(bytes) => Automerge::load(bytes).map_err(doc_err)?,
                    None => Automerge::new(),
                };
                for chunk in &stored.chunks {
                    doc.load_incremental(chunk).map_err(doc_err)?;
                }
                doc
            }
        };
        doc.set_actor(self.actor.clone());
        Ok(doc)
    }

    /// Applies a local write to the partition's document, then persists it
    /// and materializes it before returning. Returns the document id.
    pub fn local_change(
        &mut self,
        partition: &str,
        written: progress_doc::Touched,
        write: impl FnOnce(&mut automerge::transaction::Transaction<'_>) -> Result<(), automerge::AutomergeError>,
    ) -> Result<DocumentId> {
        let id = progress_doc::doc_id(&self.user_id, partition);
        let doc = self.doc(&id)?;
        let before = doc.get_heads();
        let result = doc.transact(|tx| write(tx)).map_err(|f| f.error);
        if let Err(source) = result {
            return Err(EngineError::Document { doc: id.to_string(), source: Box::new(source) });
        }
        if let Err(e) = self.persist(
            &id,
            partition,
            &before,
            Written { touched: Some(written), local: true, whole: None },
            true,
            None,
        ) {
            // The app is told this write failed, so it must not survive in
            // memory: it would sync to other devices, and later chunks would
            // depend on a change that is not on disk. Reload from disk.
            if self.planted != Some(crate::ids::PlantedBug::KeepFailedWrite) {
                self.evict(&id);
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Runs `apply` (typically receiving a sync message) on the document,
    /// then persists and materializes whatever it added. `dirty` says the
    /// relay may not have what was added (an import), so it must be offered.
    /// `received` is the bytes `apply` loads, when it loads bytes: into an
    /// empty document they are stored as they are, which spares saving the
    /// whole document again (the bulk of a bootstrap's cost otherwise).
    /// Returns `apply`'s result and whether the document changed.
    pub fn remote_change<T>(
        &mut self,
        id: &DocumentId,
        dirty: bool,
        received: Option<Vec<u8>>,
        apply: impl FnOnce(&mut Automerge) -> Result<T, automerge::AutomergeError>,
    ) -> Result<(T, bool)> {
        let partition = store::doc_partition(self.store.conn(), id)?;
        let doc = self.doc(id)?;
        let before = doc.get_heads();
        // Changes to a document we have: what they touch is read from the
        // changes themselves when they apply exactly as they are.
        let incoming = match &received {
            Some(bytes) if !before.is_empty() => {
                progress_doc::parse_changes(bytes).filter(|changes| progress_doc::applies_exactly(doc, changes))
            }
            _ => None,
        };
        let out = match apply(doc) {
            Ok(out) => out,
            Err(source) => {
                // The document may hold part of what failed; reload from disk.
                self.evict(id);
                return Err(EngineError::Document { doc: id.to_string(), source: Box::new(source) });
            }
        };
        let changed = doc.get_heads() != before;
        if changed {
            let partition = partition.unwrap_or_else(|| UNKNOWN_PARTITION.to_owned());
            // Loaded into an empty document, the received bytes reload to
            // exactly this document (a partial load is ignored alike).
            let chunk = received.filter(|_| before.is_empty());
            let touched = incoming.map(|changes| progress_doc::touched_by(doc, &changes));
            let written = Written { touched, local: false, whole: None };
            if let Err(e) = self.persist(id, &partition, &before, written, dirty, chunk) {
                // Nothing of it is on disk: forget it in memory too, so the
                // sync state and the document agree (the peer sends it again).
                self.evict(id);
                return Err(e);
            }
        }
        Ok((out, changed))
    }

    /// Takes in a document that arrived whole (an import, or a month a
    /// bootstrap receives), decoded off the lock ([`crate::decode`]). When
    /// this replica has none of it, the decoded document and its entries are
    /// used as they are, and `apply(doc, true)` runs on it for what else the
    /// arrival carries (a sync message's heads); otherwise `apply(doc, false)`
    /// merges it as [`Replica::remote_change`] would. `bytes` is the saved
    /// document, stored as it is. Returns `apply`'s result and whether the
    /// document changed.
    pub fn receive_whole<T>(
        &mut self,
        id: &DocumentId,
        dirty: bool,
        bytes: Vec<u8>,
        decoded: WholeDoc,
        apply: impl FnOnce(&mut Automerge, bool) -> Result<T, automerge::AutomergeError>,
    ) -> Result<(T, bool)> {
        let partition = store::doc_partition(self.store.conn(), id)?;
        let actor = self.actor.clone();
        let doc = self.doc(id)?;
        if !doc.get_heads().is_empty() || decoded.doc.get_heads().is_empty() {
            return self.remote_change(id, dirty, Some(bytes), |doc| apply(doc, false));
        }
        let WholeDoc { doc: mut decoded_doc, reviews, sessions } = decoded;
        decoded_doc.set_actor(actor);
        *doc = decoded_doc;
        let out = match apply(doc, true) {
            Ok(out) => out,
            Err(source) => {
                self.evict(id);
                return Err(EngineError::Document { doc: id.to_string(), source: Box::new(source) });
            }
        };
        let partition = partition.unwrap_or_else(|| UNKNOWN_PARTITION.to_owned());
        let written = Written { touched: None, local: false, whole: Some((reviews, sessions)) };
        if let Err(e) = self.persist(id, &partition, &[], written, dirty, Some(bytes)) {
            self.evict(id);
            return Err(e);
        }
        Ok((out, true))
    }

    /// Writes what the document gained since `before` and updates the views.
    /// `written` names the keys a local write touched, so the (document-sized)
    /// diff is only computed for changes that came from elsewhere.
    fn persist(
        &mut self,
        id: &DocumentId,
        partition: &str,
        before: &[ChangeHash],
        written: Written,
        dirty: bool,
        chunk: Option<Vec<u8>>,
    ) -> Result<()> {
        let Written { touched: written, local, whole } = written;
        let entry = self.cache.get_mut(id).ok_or(EngineError::Poisoned)?;
        let doc = &entry.doc;
        let heads = doc.get_heads();
        let chunk = chunk.unwrap_or_else(|| doc.save_after(before));
        let (reviews, sessions) = if let Some(entries) = whole {
            entries
        } else if written.is_none() && before.is_empty() {
            progress_doc::read_all(doc)
        } else {
            let touched = match written {
                Some(keys) => keys,
                None => progress_doc::touched_since(doc, before),
            };
            let reviews = touched.reviews.iter().filter_map(|k| progress_doc::read_review(doc, k)).collect();
            let sessions = touched.sessions.iter().filter_map(|k| progress_doc::read_session(doc, k)).collect();
            (reviews, sessions)
        };
        let partition = if partition == UNKNOWN_PARTITION {
            reviews
                .first()
                .map(|r| progress_doc::partition_of(r.reviewed_at))
                .or_else(|| sessions.first().map(|s| progress_doc::partition_of(s.started_at)))
                .unwrap_or_else(|| partition.to_owned())
        } else {
            partition.to_owned()
        };
        // Inside a batch, a peer's reviews wait to be materialized with the
        // rest of the batch (same transaction, so the same guarantees).
        let defer = self.store.in_batch() && !local;
        let scheduler = &self.scheduler;
        let mut materialized = (Vec::new(), false);
        let appended = self.store.transaction(|conn| {
            let n = store::append_chunk(conn, id, &partition, &chunk, &heads, dirty)?;
            if partition != UNKNOWN_PARTITION {
                conn.prepare_cached("UPDATE documents SET partition = ?2 WHERE doc_id = ?1 AND partition = ?3")?
                    .execute(rusqlite::params![id.to_string(), partition, UNKNOWN_PARTITION])?;
            }
            if !defer {
                materialized = materialize(conn, scheduler, &reviews, &sessions)?;
            }
            Ok(n)
        })?;
        if defer {
            self.pending.add(reviews, sessions);
            if self.pending.bytes >= PENDING_VIEWS_BYTES {
                self.flush_views()?;
            }
        } else {
            let (changed_items, marked_stale) = materialized;
            self.maybe_stale |= marked_stale;
            if !local {
                self.note_changes(changed_items, &sessions);
            }
        }
        // Compaction saves the whole document (milliseconds for a heavy
        // month), so it waits for a quiet moment ([`Replica::maintain`])
        // unless chunks pile up with no quiet moment (no sync running). The
        // write is committed: a failed compaction (disk full) must not turn
        // it into an error the app would take as "not recorded".
        // Due after a number of chunks that grows with the document
        // (`protocol::compaction` says why).
        let due = protocol::compaction::chunks_before_compaction(appended.snapshot_bytes);
        if appended.chunks >= due.saturating_mul(4) {
            self.compact_due.remove(id);
            if let Err(e) = self.compact(id) {
                tracing::warn!(doc = %id, error = %e, "compaction failed; chunks kept");
            }
        } else if appended.chunks >= due {
            self.compact_due.insert(*id);
        }
        Ok(())
    }

    /// Change events for the app: the items whose memory states a peer's
    /// reviews changed, and the sessions a peer wrote.
    /// Each event lists at most [`change_events::EVENT_BYTES`] of ids (a bootstrap changes
    /// thousands of items at once), so the subscribers' channel, which
    /// holds a number of events, holds a bounded number of bytes.
    fn note_changes(&mut self, mut changed_items: Vec<String>, sessions: &[Session]) {
        changed_items.sort();
        changed_items.dedup();
        for item_ids in change_events::split_by_bytes(changed_items, change_events::EVENT_BYTES) {
            self.pending_events.push(ChangeEvent::ItemsChanged { item_ids });
        }
        let mut session_ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
        session_ids.sort();
        session_ids.dedup();
        for session_ids in change_events::split_by_bytes(session_ids, change_events::EVENT_BYTES) {
            self.pending_events.push(ChangeEvent::SessionsChanged { session_ids });
        }
    }

    /// Materializes the reviews and sessions a batch has received so far,
    /// in the `reviews` table's key order (item, time, id), so the inserts
    /// walk its pages instead of landing on random ones.
    fn flush_views(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let PendingViews { mut reviews, sessions, .. } = std::mem::take(&mut self.pending);
        reviews.sort_unstable_by(|a, b| (&a.item_id, a.reviewed_at, &a.id).cmp(&(&b.item_id, b.reviewed_at, &b.id)));
        let scheduler = &self.scheduler;
        let (changed_items, marked_stale) =
            self.store.transaction(|conn| materialize(conn, scheduler, &reviews, &sessions))?;
        self.maybe_stale |= marked_stale;
        self.note_changes(changed_items, &sessions);
        Ok(())
    }

    /// Runs `f` with all its writes in one transaction (see [`Store::batch`]).
    /// If the batch fails, nothing of it is on disk: every document in
    /// memory is forgotten (reloaded from disk when next used), as a failed
    /// single write forgets its own.
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Replica) -> Result<T>) -> Result<T> {
        self.store.begin_batch()?;
        let out = f(self).and_then(|out| self.flush_views().map(|()| out));
        let ended = self.store.end_batch(out.is_ok());
        let out = ended.and(out);
        if out.is_err() {
            self.cache.clear();
            self.pending = PendingViews::default();
            self.maybe_stale = true;
        }
        out
    }

    /// Replays the memory states of items marked stale, so that reads see
    /// every review. Cheap when nothing is marked; the queries call it first.
    pub fn settle(&mut self) -> Result<()> {
        self.flush_views()?;
        if !self.maybe_stale {
            return Ok(());
        }
        let scheduler = &self.scheduler;
        let replayed = self.store.transaction(|conn| scheduler.settle(conn))?;
        if replayed > 0 {
            tracing::debug!(items = replayed, "memory states replayed");
        }
        self.maybe_stale = false;
        Ok(())
    }

    /// Work that waits for a quiet moment: replaying stale memory states
    /// and compacting documents past the threshold.
    pub fn maintain(&mut self) -> Result<()> {
        self.settle()?;
        for id in std::mem::take(&mut self.compact_due) {
            if let Err(e) = self.compact(&id) {
                tracing::warn!(doc = %id, error = %e, "compaction failed; chunks kept");
            }
        }
        Ok(())
    }

    /// Replaces a document's chunks with one snapshot.
    pub fn compact(&mut self, id: &DocumentId) -> Result<()> {
        let snapshot = match self.cache.get(id) {
            Some(entry) => entry.doc.save(),
            None => self.load(id)?.save(),
        };
        self.store.transaction(|conn| store::compact(conn, id, &snapshot))
    }

    /// Documents created locally and since changed with nothing acknowledged.
    pub fn dirty_docs(&self) -> Result<Vec<DocumentId>> {
        store::dirty_docs(self.store.conn())
    }

    /// Every document this replica has, oldest partition first.
    pub fn doc_ids(&self) -> Result<Vec<DocumentId>> {
        Ok(store::doc_ids(self.store.conn())?.into_iter().map(|(id, _)| id).collect())
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;

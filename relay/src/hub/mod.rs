//! Shared relay state: loaded documents and who is connected.
//!
//! Documents are loaded on demand, one `std::sync::Mutex` per (user,
//! document) so connections of one user serialize on a document while
//! different documents proceed in parallel (held on blocking threads, or
//! only taken when free on async ones), and dropped when idle (see
//! [`Hub::evict_idle`]) so an idle device costs its socket and a few sync
//! heads, not its history.

use crate::budget::{ByteBudget, DropBudget};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::storage::DocStorage;
use automerge::Automerge;
use protocol::DocumentId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

mod catch_up;
mod storing;

pub use storing::Storing;

type DocKey = (Arc<str>, DocumentId);

/// How much memory a loaded document takes per byte of its stored form.
/// Measured with automerge 0.12: the 400k-review history is 14.2 MiB saved
/// and 178 MiB loaded (12.5x); Automerge exposes no size of its own.
pub const MEMORY_PER_STORED_BYTE: usize = 12;

/// One user's presence on this relay.
struct UserEntry {
    /// Open connections, by connection id.
    conns: HashMap<u64, Arc<PeerSignal>>,
    /// Bytes of frames being written to this user's connections.
    outbound: ByteBudget,
    /// Documents created in memory by a `sync` that stored nothing yet; they
    /// count against the document limit until stored or evicted.
    provisional: HashSet<DocumentId>,
}

/// A document slot. `loaded == false` means storage has not been asked yet;
/// `doc == None` after loading means the user has no such document.
pub struct DocSlot {
    pub loaded: bool,
    pub doc: Option<Automerge>,
    pub last_used: Instant,
    /// Estimated memory of `doc` (its stored bytes times
    /// [`MEMORY_PER_STORED_BYTE`]), for [`Limits::max_resident_doc_bytes`].
    pub bytes: usize,
    /// The document exists only in memory (see [`UserEntry::provisional`]).
    pub provisional: bool,
    /// `doc` holds every stored chunk up to this seq (shared storage:
    /// chunks other relays appended after it are fetched by
    /// [`Hub::catch_up`]; 0 where the storage keeps no seqs).
    pub seq: u64,
    /// A change applied to `doc` whose append is not durable yet: see
    /// [`Storing`]. Shared with the connection that waits for the append.
    pub storing: Arc<Storing>,
}

/// Presence messages waiting for one connection, oldest first, bounded in
/// bytes. Entries are shared: one message queued for 31 devices is one copy.
#[derive(Default)]
pub struct EphemeralQueue {
    messages: std::collections::VecDeque<(Arc<protocol::Message>, usize)>,
    bytes: usize,
}

impl EphemeralQueue {
    /// Takes everything queued; the caller returns the bytes to the hub.
    pub fn drain(&mut self) -> (Vec<Arc<protocol::Message>>, usize) {
        let bytes = std::mem::take(&mut self.bytes);
        (self.messages.drain(..).map(|(m, _)| m).collect(), bytes)
    }
}

/// Wakes a connection when another connection of the same user changed
/// documents it may need to forward.
#[derive(Default)]
pub struct PeerSignal {
    pub changed: Mutex<HashSet<DocumentId>>,
    pub ephemeral: Mutex<EphemeralQueue>,
    pub notify: Notify,
}

/// Bytes a presence message is counted as (its payload plus envelope).
pub fn ephemeral_size(m: &protocol::Message) -> usize {
    match m {
        protocol::Message::Ephemeral { data, sender_id, session_id, .. } => {
            data.len() + sender_id.len() + session_id.len() + 128
        }
        _ => 128,
    }
}

pub struct Hub {
    pub storage: Arc<dyn DocStorage>,
    pub limits: Limits,
    pub metrics: Metrics,
    /// The relay's automerge-repo peer id.
    pub peer_id: String,
    /// The storage's identity, announced to devices (see `relay restore`).
    pub storage_id: Option<String>,
    /// Bytes of frames being written to all connections.
    pub outbound: ByteBudget,
    /// Bytes of presence messages queued for all connections.
    ephemeral_bytes: DropBudget,
    /// Bytes of whole offers in flight on all connections (bounded by
    /// `Limits::max_whole_offer_bytes`).
    pub whole_offer_bytes: DropBudget,
    /// A connection ended since the idle sweeper last gave memory back:
    /// what it used (sync states, frames, pages read for whole offers,
    /// which load no document to evict) is freed now.
    pub connection_ended: std::sync::atomic::AtomicBool,
    docs: Mutex<HashMap<DocKey, Arc<Mutex<DocSlot>>>>,
    users: Mutex<HashMap<Arc<str>, UserEntry>>,
    open_connections: AtomicU64,
    next_connection: AtomicU64,
    /// Estimated document memory added since the budget was last enforced.
    resident_growth: AtomicU64,
    /// Turns true when the relay shuts down: every connection closes (1001).
    closing: tokio::sync::watch::Sender<bool>,
    /// Documents being loaded now (bounded by `Limits::max_concurrent_doc_loads`).
    loads: crate::budget::BlockingBudget,
    /// The most documents ever loaded at once.
    loads_peak: AtomicU64,
    /// When the last storage write failed (cleared by the next that
    /// succeeds); `/readyz` reports not-ready for a while after.
    storage_failed_at: Mutex<Option<Instant>>,
}

/// A turn to load a document ([`Hub::begin_load`]).
pub struct LoadPermit<'a> {
    hub: &'a Hub,
}

impl Drop for LoadPermit<'_> {
    fn drop(&mut self) {
        self.hub.loads.release(1);
    }
}

/// A registered connection; unregisters itself when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    pub user: Arc<str>,
    pub id: u64,
    pub signal: Arc<PeerSignal>,
    /// The user's outbound budget (shared by all their connections).
    pub outbound: ByteBudget,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.id);
    }
}

impl Hub {
    pub fn new(storage: Arc<dyn DocStorage>, limits: Limits, peer_id: String) -> Hub {
        let storage_id = match storage.storage_id() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "storage has no identity; devices cannot detect a restore");
                None
            }
        };
        Hub {
            storage,
            storage_id,
            outbound: ByteBudget::new(limits.max_outbound_bytes),
            loads: crate::budget::BlockingBudget::new(limits.max_concurrent_doc_loads.max(1)),
            loads_peak: AtomicU64::new(0),
            limits,
            metrics: Metrics::default(),
            peer_id,
            ephemeral_bytes: DropBudget::default(),
            whole_offer_bytes: DropBudget::default(),
            connection_ended: std::sync::atomic::AtomicBool::new(false),
            docs: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            open_connections: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
            resident_growth: AtomicU64::new(0),
            closing: tokio::sync::watch::Sender::new(false),
            storage_failed_at: Mutex::new(None),
        }
    }

    /// Tells every connection to close (the relay is shutting down).
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when the relay starts shutting down.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Records whether the last storage write succeeded.
    pub fn note_storage(&self, ok: bool) {
        if let Ok(mut at) = self.storage_failed_at.lock() {
            *at = if ok { None } else { Some(Instant::now()) };
        }
    }

    /// A storage write failed in the last 30 s and none succeeded since
    /// (not forever: with no traffic routed here, none would succeed).
    pub fn storage_failing(&self) -> bool {
        self.storage_failed_at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(30))
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, UserEntry>> {
        match self.users.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Admits a connection for `user` unless a limit refuses it.
    pub fn register(self: &Arc<Self>, user: &str) -> Result<Registration, String> {
        let mut users = self.users();
        if self.open_connections.load(Ordering::Relaxed) as usize >= self.limits.max_connections {
            return Err("the relay is at its connection limit".into());
        }
        let user: Arc<str> = Arc::from(user);
        let entry = users.entry(user.clone()).or_insert_with(|| UserEntry {
            conns: HashMap::new(),
            outbound: ByteBudget::new(self.limits.max_outbound_bytes_per_user),
            provisional: HashSet::new(),
        });
        if entry.conns.len() >= self.limits.max_connections_per_user {
            return Err(format!("at most {} connections per user", self.limits.max_connections_per_user));
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(PeerSignal::default());
        entry.conns.insert(id, signal.clone());
        let outbound = entry.outbound.clone();
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.connections_total);
        Ok(Registration { hub: self.clone(), user, id, signal, outbound })
    }

    fn unregister(&self, user: &Arc<str>, id: u64) {
        let mut users = self.users();
        if let Some(entry) = users.get_mut(user) {
            if let Some(signal) = entry.conns.remove(&id) {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
                // Presence bytes queued for the closed connection go back.
                if let Ok(mut q) = signal.ephemeral.lock() {
                    let (_, bytes) = q.drain();
                    self.ephemeral_bytes.give_back(bytes);
                }
            }
            if entry.conns.is_empty() && entry.provisional.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The signals of `user`'s connections other than `except`.
    fn others(&self, user: &Arc<str>, except: u64) -> Vec<Arc<PeerSignal>> {
        self.users()
            .get(user)
            .map(|e| e.conns.iter().filter(|(id, _)| **id != except).map(|(_, s)| s.clone()).collect())
            .unwrap_or_default()
    }

    /// Tells the user's other connections that `doc` changed.
    pub fn notify_others(&self, user: &Arc<str>, except: u64, doc: DocumentId) {
        let signals = self.others(user, except);
        for s in signals {
            if let Ok(mut changed) = s.changed.lock() {
                changed.insert(doc);
            }
            s.notify.notify_one();
        }
    }

    /// Queues an ephemeral message for the user's other connections. One
    /// shared copy; each queue is bounded in bytes (oldest dropped first) and
    /// all queues together are bounded too (then the message is dropped for
    /// that receiver). Returns how many receivers it was queued for.
    pub fn forward_ephemeral(&self, user: &Arc<str>, except: u64, message: protocol::Message) -> usize {
        let size = ephemeral_size(&message);
        let message = Arc::new(message);
        let mut queued = 0;
        for s in self.others(user, except) {
            if let Ok(mut q) = s.ephemeral.lock() {
                while !q.messages.is_empty() && q.bytes + size > self.limits.max_ephemeral_queue_bytes {
                    if let Some((_, dropped)) = q.messages.pop_front() {
                        q.bytes -= dropped;
                        self.ephemeral_bytes.give_back(dropped);
                        Metrics::inc(&self.metrics.ephemeral_dropped);
                    }
                }
                if !self.ephemeral_bytes.try_take(size, self.limits.max_ephemeral_bytes) {
                    Metrics::inc(&self.metrics.ephemeral_dropped);
                    continue;
                }
                q.messages.push_back((message.clone(), size));
                q.bytes += size;
                queued += 1;
            }
            s.notify.notify_one();
        }
        queued
    }

    /// Takes the presence messages queued for a connection.
    pub fn take_ephemeral(&self, signal: &PeerSignal) -> Vec<Arc<protocol::Message>> {
        let (messages, bytes) = match signal.ephemeral.lock() {
            Ok(mut q) => q.drain(),
            Err(_) => return Vec::new(),
        };
        self.ephemeral_bytes.give_back(bytes);
        messages
    }

    /// Bytes of presence messages queued for all connections now.
    pub fn queued_ephemeral_bytes(&self) -> usize {
        self.ephemeral_bytes.in_use()
    }

    /// Admits a document that exists only in memory: `stored` is how many
    /// the user has in storage. Refuses when stored plus in-memory ones would
    /// pass the limit.
    pub fn admit_provisional(&self, user: &Arc<str>, doc: DocumentId, stored: u64) -> Result<(), String> {
        let mut users = self.users();
        let Some(entry) = users.get_mut(user) else { return Err("connection is gone".into()) };
        if entry.provisional.contains(&doc) {
            return Ok(());
        }
        if stored + entry.provisional.len() as u64 >= self.limits.max_docs_per_user {
            return Err(format!("document limit of {} reached", self.limits.max_docs_per_user));
        }
        entry.provisional.insert(doc);
        Ok(())
    }

    /// Forgets an in-memory document whose state is unknown (a failed apply
    /// or store): the next use reloads it from storage.
    pub fn discard(&self, user: &Arc<str>, doc: &DocumentId, slot: &mut DocSlot) {
        slot.loaded = false;
        slot.doc = None;
        if std::mem::take(&mut slot.provisional) {
            self.settle_provisional(user, doc);
        }
    }

    /// Waits while a change to this document is on its way to storage
    /// (see [`Storing`]), with the slot locked: what the caller generates
    /// from the document may then leave the relay. If that append failed,
    /// the in-memory document is discarded (and reloaded by its next use).
    pub fn settle_storing(&self, user: &Arc<str>, doc: &DocumentId, slot: &mut DocSlot) {
        let storing = slot.storing.clone();
        if storing.wait() {
            self.discard(user, doc, slot);
        }
    }

    /// The document is stored (or gone from memory): it no longer counts as provisional.
    pub fn settle_provisional(&self, user: &Arc<str>, doc: &DocumentId) {
        let mut users = self.users();
        if let Some(entry) = users.get_mut(user) {
            entry.provisional.remove(doc);
            if entry.conns.is_empty() && entry.provisional.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The slot of (user, doc), created empty (not loaded) if absent.
    pub fn slot(&self, user: &Arc<str>, doc: DocumentId) -> Arc<Mutex<DocSlot>> {
        let mut docs = match self.docs.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        docs.entry((user.clone(), doc))
            .or_insert_with(|| {
                Arc::new(Mutex::new(DocSlot {
                    loaded: false,
                    doc: None,
                    bytes: 0,
                    last_used: Instant::now(),
                    provisional: false,
                    seq: 0,
                    storing: Arc::default(),
                }))
            })
            .clone()
    }

    /// Waits for a turn to load a document from storage (at most
    /// `Limits::max_concurrent_doc_loads` at once); the turn ends when the
    /// permit is dropped. Called on a blocking thread.
    pub fn begin_load(&self) -> LoadPermit<'_> {
        if self.loads.in_use() >= self.limits.max_concurrent_doc_loads.max(1) {
            Metrics::inc(&self.metrics.doc_load_waits);
        }
        self.loads.reserve(1);
        self.loads_peak.fetch_max(self.loads.in_use() as u64, Ordering::Relaxed);
        LoadPermit { hub: self }
    }

    /// Documents being loaded now, and the most ever at once.
    pub fn loads(&self) -> (u64, u64) {
        (self.loads.in_use() as u64, self.loads_peak.load(Ordering::Relaxed))
    }

    fn docs_map(&self) -> std::sync::MutexGuard<'_, HashMap<DocKey, Arc<Mutex<DocSlot>>>> {
        match self.docs.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Drops slots nobody holds that were idle longer than the limit.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let mut settled = Vec::new();
        let evicted = {
            let mut docs = match self.docs.lock() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            let before = docs.len();
            docs.retain(|key, slot| {
                if Arc::strong_count(slot) > 1 {
                    return true;
                }
                match slot.try_lock() {
                    Ok(s) => {
                        let keep = now.duration_since(s.last_used) < self.limits.doc_idle_eviction;
                        if !keep && s.provisional {
                            settled.push(key.clone());
                        }
                        keep
                    }
                    Err(_) => true,
                }
            });
            before - docs.len()
        };
        for (user, doc) in settled {
            self.settle_provisional(&user, &doc);
        }
        Metrics::add(&self.metrics.docs_evicted, evicted as u64);
        evicted
    }

    /// Notes `bytes` of estimated document memory just added (a load, an
    /// append) and enforces the budget once a sixteenth of it (at most a
    /// MiB) has been added, so the scan over all loaded documents is not
    /// paid per small append.
    pub fn note_resident_growth(&self, bytes: usize) {
        let step = (self.limits.max_resident_doc_bytes as u64 / 16).min(1 << 20);
        let added = self.resident_growth.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        if added >= step {
            self.resident_growth.store(0, Ordering::Relaxed);
            self.enforce_resident_budget();
        }
    }

    /// Drops the least recently used documents nobody is working on until
    /// the estimated memory of those loaded is within the limit. Documents
    /// that exist only in memory (provisional) are never dropped here.
    /// Returns how many were dropped.
    pub fn enforce_resident_budget(&self) -> usize {
        let mut docs = match self.docs.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut total = 0usize;
        let mut candidates = Vec::new();
        for (key, slot) in docs.iter() {
            // A slot locked now is in use; its size is unknown for the moment.
            let Ok(s) = slot.try_lock() else { continue };
            total += s.bytes;
            if Arc::strong_count(slot) == 1 && s.loaded && !s.provisional {
                candidates.push((s.last_used, key.clone(), s.bytes));
            }
        }
        if total <= self.limits.max_resident_doc_bytes {
            return 0;
        }
        candidates.sort_by_key(|(used, _, _)| *used);
        let mut dropped = 0;
        for (_, key, bytes) in candidates {
            if total <= self.limits.max_resident_doc_bytes {
                break;
            }
            // Only the map holds it (checked under the map's lock, which
            // `slot` needs to hand out another): nobody can be using it.
            docs.remove(&key);
            total -= bytes;
            dropped += 1;
        }
        drop(docs);
        Metrics::add(&self.metrics.docs_evicted, dropped as u64);
        dropped
    }

    pub fn resident_docs(&self) -> usize {
        self.docs.lock().map(|d| d.len()).unwrap_or(0)
    }

    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }
}

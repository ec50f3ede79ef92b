//! Shared relay state: loaded documents and who is connected.
//!
//! Documents are loaded on demand, one `tokio::Mutex` per (user, document)
//! so connections of one user serialize on a document while different
//! documents proceed in parallel, and dropped when idle (see
//! [`Hub::evict_idle`]) so an idle device costs its socket and a few sync
//! heads, not its history.

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

type DocKey = (Arc<str>, DocumentId);
/// Each user's open connections, by connection id.
type PeersByUser = HashMap<Arc<str>, HashMap<u64, Arc<PeerSignal>>>;

/// A document slot. `loaded == false` means storage has not been asked yet;
/// `doc == None` after loading means the user has no such document.
pub struct DocSlot {
    pub loaded: bool,
    pub doc: Option<Automerge>,
    pub last_used: Instant,
}

/// Wakes a connection when another connection of the same user changed
/// documents it may need to forward.
#[derive(Default)]
pub struct PeerSignal {
    pub changed: Mutex<HashSet<DocumentId>>,
    /// Ephemeral messages from the user's other devices, oldest first; bounded
    /// (they are presence data: dropping old ones under load is correct).
    pub ephemeral: Mutex<std::collections::VecDeque<protocol::Message>>,
    pub notify: Notify,
}

/// Most ephemeral messages queued for one connection.
const MAX_QUEUED_EPHEMERAL: usize = 64;

pub struct Hub {
    pub storage: Arc<dyn DocStorage>,
    pub limits: Limits,
    pub metrics: Metrics,
    /// The relay's automerge-repo peer id.
    pub peer_id: String,
    docs: Mutex<HashMap<DocKey, Arc<tokio::sync::Mutex<DocSlot>>>>,
    peers: Mutex<PeersByUser>,
    open_connections: AtomicU64,
    next_connection: AtomicU64,
}

/// A registered connection; unregisters itself when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    pub user: Arc<str>,
    pub id: u64,
    pub signal: Arc<PeerSignal>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.id);
    }
}

impl Hub {
    pub fn new(storage: Arc<dyn DocStorage>, limits: Limits, peer_id: String) -> Hub {
        Hub {
            storage,
            limits,
            metrics: Metrics::default(),
            peer_id,
            docs: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            open_connections: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
        }
    }

    /// Admits a connection for `user` unless a limit refuses it.
    pub fn register(self: &Arc<Self>, user: &str) -> Result<Registration, String> {
        let mut peers = self.peers.lock().map_err(|_| "hub lock poisoned".to_owned())?;
        if self.open_connections.load(Ordering::Relaxed) as usize >= self.limits.max_connections {
            return Err("the relay is at its connection limit".into());
        }
        let user: Arc<str> = Arc::from(user);
        let conns = peers.entry(user.clone()).or_default();
        if conns.len() >= self.limits.max_connections_per_user {
            return Err(format!("at most {} connections per user", self.limits.max_connections_per_user));
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(PeerSignal::default());
        conns.insert(id, signal.clone());
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.connections_total);
        Ok(Registration { hub: self.clone(), user, id, signal })
    }

    fn unregister(&self, user: &Arc<str>, id: u64) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(conns) = peers.get_mut(user)
        {
            if conns.remove(&id).is_some() {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
            }
            if conns.is_empty() {
                peers.remove(user);
            }
        }
    }

    /// The signals of `user`'s connections other than `except`.
    fn others(&self, user: &Arc<str>, except: u64) -> Vec<Arc<PeerSignal>> {
        match self.peers.lock() {
            Ok(peers) => peers
                .get(user)
                .map(|c| c.iter().filter(|(id, _)| **id != except).map(|(_, s)| s.clone()).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
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

    /// Queues an ephemeral message for the user's other connections.
    pub fn forward_ephemeral(&self, user: &Arc<str>, except: u64, message: &protocol::Message) {
        let signals = self.others(user, except);
        for s in signals {
            if let Ok(mut q) = s.ephemeral.lock() {
                if q.len() >= MAX_QUEUED_EPHEMERAL {
                    q.pop_front();
                }
                q.push_back(message.clone());
            }
            s.notify.notify_one();
        }
    }

    /// The slot of (user, doc), created empty (not loaded) if absent.
    pub fn slot(&self, user: &Arc<str>, doc: DocumentId) -> Arc<tokio::sync::Mutex<DocSlot>> {
        let mut docs = match self.docs.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        docs.entry((user.clone(), doc))
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(DocSlot { loaded: false, doc: None, last_used: Instant::now() }))
            })
            .clone()
    }

    /// Drops slots nobody holds that were idle longer than the limit.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let mut docs = match self.docs.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = docs.len();
        docs.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.try_lock() {
                Ok(s) => now.duration_since(s.last_used) < self.limits.doc_idle_eviction,
                Err(_) => true,
            }
        });
        let evicted = before - docs.len();
        Metrics::add(&self.metrics.docs_evicted, evicted as u64);
        evicted
    }

    pub fn resident_docs(&self) -> usize {
        self.docs.lock().map(|d| d.len()).unwrap_or(0)
    }

    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }
}

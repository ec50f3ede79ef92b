//! [`DocStorage`] in memory, with a crash model, for the simulator.
//!
//! It keeps the same promises as the SQLite storage: `append` and `compact`
//! are durable when they return; sync-state saves are written behind (held
//! as pending until the next durable write or [`MemStorage::flush`]). A
//! [`MemStorage::crash`] loses exactly what was not yet durable: the
//! pending sync states. Write failures can be switched on (a full disk),
//! and a storage can be copied (a backup) and restored from that copy (a new
//! identity, no sync states, as `relay restore` does). Ordered maps only,
//! so iteration never depends on hashing.

use super::{AppendTicket, Appended, DocStorage, EncodedHeads, Result, StorageError, StoredDoc};
use protocol::DocumentId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Clone, Default)]
struct Doc {
    heads: EncodedHeads,
    snapshot: Option<Vec<u8>>,
    chunks: Vec<Vec<u8>>,
}

type SyncKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct Durable {
    storage_id: String,
    docs: BTreeMap<(String, String), Doc>,
    sync_states: BTreeMap<SyncKey, (Vec<u8>, EncodedHeads)>,
}

/// Bugs the simulator plants on purpose, to show its checks catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlantedBug {
    #[default]
    None,
    /// Appends are acknowledged before they are durable (held as pending,
    /// lost at a crash), as a relay that replies before it stores would.
    AckBeforeDurable,
    /// Every n-th append is acknowledged and never stored.
    DropEveryNthAppend(u64),
}

#[derive(Debug, Clone)]
enum Pending {
    Append { key: (String, String), chunk: Vec<u8>, heads: EncodedHeads },
    Save { key: SyncKey, state: Vec<u8>, heads: EncodedHeads },
    Forget { user: String, device: String, keep: String },
}

#[derive(Debug, Default)]
struct State {
    durable: Durable,
    pending: Vec<Pending>,
    fail_writes: bool,
    planted: PlantedBug,
    appends: u64,
}

#[derive(Debug, Default)]
pub struct MemStorage {
    state: Mutex<State>,
}

/// What a backup holds: the durable part of a storage at one moment.
#[derive(Debug, Clone)]
pub struct MemBackup(Durable);

impl MemStorage {
    /// An empty storage with the identity `storage_id`.
    pub fn new(storage_id: impl Into<String>) -> MemStorage {
        let durable = Durable { storage_id: storage_id.into(), ..Durable::default() };
        MemStorage { state: Mutex::new(State { durable, ..State::default() }) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let mut state = self.state.lock().map_err(|_| StorageError::Poisoned)?;
        Ok(f(&mut state))
    }

    /// Makes every pending write durable.
    pub fn flush(&self) -> Result<()> {
        self.with(apply_pending)
    }

    /// The process died: what was not durable is gone.
    pub fn crash(&self) -> Result<usize> {
        self.with(|s| {
            let lost = s.pending.len();
            s.pending.clear();
            lost
        })
    }

    /// Makes writes fail (`true`), as a full disk does, or succeed again.
    pub fn set_fail_writes(&self, fail: bool) -> Result<()> {
        self.with(|s| s.fail_writes = fail)
    }

    /// Appends accepted so far (the simulator tells "stored" steps apart).
    pub fn appends(&self) -> u64 {
        self.with(|s| s.appends).unwrap_or(0)
    }

    /// Plants a bug (the simulator's proof that its checks can fail).
    pub fn plant(&self, bug: PlantedBug) -> Result<()> {
        self.with(|s| s.planted = bug)
    }

    /// A consistent copy of what is durable now.
    pub fn backup(&self) -> Result<MemBackup> {
        self.with(|s| MemBackup(s.durable.clone()))
    }

    /// Replaces everything with `backup`, as `relay restore` does: a new
    /// identity and no sync states; pending writes are dropped.
    pub fn restore(&self, backup: &MemBackup, new_storage_id: impl Into<String>) -> Result<()> {
        let id = new_storage_id.into();
        self.with(|s| {
            s.durable = backup.0.clone();
            s.durable.storage_id = id;
            s.durable.sync_states.clear();
            s.pending.clear();
        })
    }

    /// Every document of every user: (user, doc id, heads), in order.
    pub fn all_heads(&self) -> Result<Vec<(String, String, EncodedHeads)>> {
        self.with(|s| s.durable.docs.iter().map(|((u, d), doc)| (u.clone(), d.clone(), doc.heads.clone())).collect())
    }
}

fn apply_pending(s: &mut State) {
    for p in std::mem::take(&mut s.pending) {
        match p {
            Pending::Append { key, chunk, heads } => {
                let d = s.durable.docs.entry(key).or_default();
                d.heads = heads;
                d.chunks.push(chunk);
            }
            Pending::Save { key, state, heads } => {
                s.durable.sync_states.insert(key, (state, heads));
            }
            Pending::Forget { user, device, keep } => {
                let prefix = format!("{device}#");
                s.durable
                    .sync_states
                    .retain(|(u, d, _), _| !(u == &user && d != &keep && (d == &device || d.starts_with(&prefix))));
            }
        }
    }
}

fn full() -> StorageError {
    StorageError::Writer("disk full (simulated)".into())
}

impl DocStorage for MemStorage {
    fn load(&self, user: &str, doc: &DocumentId) -> Result<Option<StoredDoc>> {
        self.with(|s| {
            s.durable.docs.get(&(user.to_owned(), doc.to_string())).map(|d| StoredDoc {
                snapshot: d.snapshot.clone(),
                chunks: d.chunks.clone(),
                heads: d.heads.clone(),
                seq: 0,
            })
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
        let since_snapshot = self.with(|s| {
            if s.fail_writes {
                return Err(full());
            }
            s.appends += 1;
            match s.planted {
                PlantedBug::DropEveryNthAppend(n) if n > 0 && s.appends % n == 0 => return Ok(1),
                PlantedBug::AckBeforeDurable => {
                    let key = (user.to_owned(), doc.to_string());
                    s.pending.push(Pending::Append { key, chunk: chunk.to_vec(), heads: heads.clone() });
                    return Ok(1);
                }
                _ => {}
            }
            // Group commit: what was queued before this write is committed with it.
            apply_pending(s);
            let d = s.durable.docs.entry((user.to_owned(), doc.to_string())).or_default();
            d.heads = heads.clone();
            d.chunks.push(chunk.to_vec());
            Ok(d.chunks.len() as u64)
        })??;
        Ok(Appended { since_snapshot, seq: 0 })
    }

    /// Writes at once: the ticket is ready when it is returned.
    fn queues_appends(&self) -> bool {
        true
    }

    fn try_append_queued(
        &self,
        user: &str,
        doc: &DocumentId,
        chunk: &[u8],
        heads: &EncodedHeads,
    ) -> Result<Option<AppendTicket>> {
        Ok(Some(AppendTicket::ready(self.append(user, doc, chunk, heads, 0))))
    }

    fn compact(&self, user: &str, doc: &DocumentId, snapshot: &[u8], _covers_seq: u64) -> Result<()> {
        self.with(|s| {
            if s.fail_writes {
                return Err(full());
            }
            if let Some(d) = s.durable.docs.get_mut(&(user.to_owned(), doc.to_string())) {
                d.snapshot = Some(snapshot.to_vec());
                d.chunks.clear();
            }
            Ok(())
        })?
    }

    fn heads(&self, user: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        self.with(|s| {
            s.durable
                .docs
                .iter()
                .filter(|((u, _), _)| u == user)
                .filter_map(|((_, d), doc)| Some((d.parse().ok()?, doc.heads.clone())))
                .collect()
        })
    }

    fn count_docs(&self, user: &str) -> Result<u64> {
        self.with(|s| s.durable.docs.keys().filter(|(u, _)| u == user).count() as u64)
    }

    fn load_sync_state(&self, user: &str, device: &str, doc: &DocumentId) -> Result<Option<Vec<u8>>> {
        self.with(|s| {
            // Reads see what is committed, as SQLite's reader connection does:
            // a write-behind save is invisible until the writer commits it.
            let key = (user.to_owned(), device.to_owned(), doc.to_string());
            s.durable.sync_states.get(&key).map(|(state, _)| state.clone())
        })
    }

    fn shared_heads(&self, user: &str, device: &str) -> Result<HashMap<DocumentId, EncodedHeads>> {
        self.with(|s| {
            s.durable
                .sync_states
                .iter()
                .filter(|((u, d, _), _)| u == user && d == device)
                .filter_map(|((_, _, doc), (_, heads))| Some((doc.parse().ok()?, heads.clone())))
                .collect()
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
        self.with(|s| {
            s.pending.push(Pending::Save {
                key: (user.to_owned(), device.to_owned(), doc.to_string()),
                state: state.to_vec(),
                heads: shared_heads.clone(),
            })
        })
    }

    fn forget_other_installs(&self, user: &str, device: &str, keep: &str) -> Result<()> {
        self.with(|s| {
            s.pending.push(Pending::Forget { user: user.to_owned(), device: device.to_owned(), keep: keep.to_owned() })
        })
    }

    fn storage_id(&self) -> Result<String> {
        self.with(|s| s.durable.storage_id.clone())
    }

    fn flush(&self) -> Result<()> {
        MemStorage::flush(self)
    }

    fn probe_write(&self) -> Result<()> {
        self.with(|s| if s.fail_writes { Err(full()) } else { Ok(()) })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_exactly_what_was_not_durable() {
        let s = MemStorage::new("one");
        let doc = DocumentId::derive(&["d"]);
        s.append("u", &doc, b"c1", &vec![1; 32], 0).unwrap();
        s.save_sync_state("u", "phone", &doc, b"state", &vec![1; 32]).unwrap();
        assert_eq!(s.crash().unwrap(), 1, "the write-behind sync state was pending");
        assert!(s.shared_heads("u", "phone").unwrap().is_empty());
        assert_eq!(s.load("u", &doc).unwrap().unwrap().chunks.len(), 1, "the append was durable");
        s.save_sync_state("u", "phone", &doc, b"state", &vec![1; 32]).unwrap();
        s.append("u", &doc, b"c2", &vec![2; 32], 0).unwrap();
        assert_eq!(s.crash().unwrap(), 0, "the next append committed it");
        assert_eq!(s.shared_heads("u", "phone").unwrap().len(), 1);

        let backup = s.backup().unwrap();
        s.append("u", &doc, b"c3", &vec![3; 32], 0).unwrap();
        s.set_fail_writes(true).unwrap();
        assert!(s.append("u", &doc, b"c4", &vec![4; 32], 0).is_err());
        s.restore(&backup, "two").unwrap();
        assert_eq!(s.storage_id().unwrap(), "two");
        assert_eq!(s.load("u", &doc).unwrap().unwrap().chunks.len(), 2);
        assert!(s.shared_heads("u", "phone").unwrap().is_empty(), "a restore drops sync states");
    }
}

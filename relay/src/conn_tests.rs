//! Tests of [`ConnCore`](super::ConnCore)'s offer windows, fed messages
//! directly (no socket), over the in-memory storage.

use super::StoringChange;
use super::*;
use crate::limits::Limits;
use crate::storage::{DocStorage, MemStorage, StoredDoc, encode_heads};
use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use protocol::PeerMetadata;

/// `months` stored documents of `user`, each about `size` bytes saved.
fn store_months(storage: &MemStorage, user: &str, months: usize) -> usize {
    let mut size = 0;
    for m in 0..months {
        let mut doc = Automerge::new();
        let _ = doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            for i in 0..40 {
                tx.put(automerge::ROOT, format!("r/{user}-{m}-{i}"), format!("review {i} of month {m}"))?;
            }
            Ok(())
        });
        let saved = doc.save();
        size = size.max(saved.len());
        let id = DocumentId::derive(&[user, &m.to_string()]);
        storage.append(user, &id, &saved, &encode_heads(&doc.get_heads()), 0).expect("stored");
    }
    size
}

fn join(core: &mut ConnCore) -> Vec<Message> {
    let join = Message::Join {
        sender_id: "device".into(),
        supported_protocol_versions: vec![protocol::PROTOCOL_VERSION.into()],
        metadata: Some(PeerMetadata {
            storage_id: Some("install-1".into()),
            is_ephemeral: false,
            takes_whole_offers: true,
        }),
    };
    core.handle(join, Instant::now()).expect("joined")
}

fn offered_bytes(out: &[Message]) -> Vec<usize> {
    out.iter().filter_map(|m| if let Message::Sync { data, .. } = m { Some(data.len()) } else { None }).collect()
}

/// Whole offers are bounded in bytes, per connection and across
/// connections: a second new install arriving while the first holds the
/// relay's budget gets one offer at a time, and a connection's end gives
/// its bytes back.
#[test]
fn whole_offers_in_flight_are_bounded_in_bytes_per_connection_and_in_all() {
    let storage = Arc::new(MemStorage::new("relay"));
    let size = store_months(&storage, "ann", 10);
    store_months(&storage, "bob", 10);
    let limits =
        Limits { max_whole_offer_bytes_per_connection: 3 * size, max_whole_offer_bytes: 4 * size, ..Limits::default() };
    let hub = Arc::new(Hub::new(storage, limits, "relay".into()));

    let mut ann = ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "phone".into());
    let first = offered_bytes(&join(&mut ann));
    let sum: usize = first.iter().sum();
    assert!(first.len() > 1 && first.len() < 10, "a window, not everything: {first:?}");
    assert!(sum < 3 * size + size, "at most the window plus the one crossing it: {sum} for documents of {size}");
    assert_eq!(hub.whole_offer_bytes.in_use(), sum);

    // Ann's offers fill the relay's budget: Bob gets one at a time.
    let extra = Limits { max_whole_offer_bytes: sum, ..hub.limits.clone() };
    let hub_full = Arc::new(Hub::new(hub.storage.clone(), extra, "relay".into()));
    hub_full.whole_offer_bytes.take(sum);
    let mut bob = ConnCore::new(hub_full.clone(), hub_full.register("bob").expect("registered"), "tablet".into());
    assert_eq!(offered_bytes(&join(&mut bob)).len(), 1, "one offer while the relay's budget is spent");

    drop(ann);
    assert_eq!(hub.whole_offer_bytes.in_use(), 0, "a connection's end gives its offers' bytes back");
}

/// A device's side of one document: its automerge copy and sync state.
struct Device {
    doc: Automerge,
    state: sync::State,
}

impl Device {
    fn new(actor: u8) -> Device {
        Device {
            doc: Automerge::new().with_actor(automerge::ActorId::from(vec![actor; 16])),
            state: sync::State::new(),
        }
    }

    fn edit(&mut self, key: &str, value: i64) {
        let _ = self.doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(automerge::ROOT, key, value));
    }

    /// The device's next message for `doc`, if it has one.
    fn message(&mut self, doc: DocumentId) -> Option<Message> {
        let m = self.doc.generate_sync_message(&mut self.state)?;
        Some(Message::Sync {
            sender_id: "device".into(),
            target_id: "relay".into(),
            document_id: doc,
            data: m.encode(),
        })
    }

    fn receive(&mut self, out: &[Message]) {
        for m in out {
            if let Message::Sync { data, .. } = m {
                let m = sync::Message::decode(data).expect("relay's message decodes");
                self.doc.receive_sync_message(&mut self.state, m).expect("relay's message applies");
            }
        }
    }
}

/// How the conversation below hands work to the core.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    BlockingOnly,
    InlineFirst,
}

std::thread_local! {
    /// Changes [`deliver`] saw stored by way of [`Inline::Storing`].
    static CHANGES_INLINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn deliver(core: &mut ConnCore, msg: Message, path: Path) -> Vec<Message> {
    let out = match path {
        Path::BlockingOnly => core.handle(msg, Instant::now()),
        Path::InlineFirst => match core.handle_inline(msg, Instant::now()) {
            Inline::Done(result) => result,
            Inline::Storing(change) => {
                CHANGES_INLINE.with(|c| c.set(c.get() + 1));
                core.store_and_finish(change, Instant::now())
            }
            Inline::Blocking(msg) => core.handle(msg, Instant::now()),
        },
    };
    core.maintain();
    out.expect("handled")
}

fn push(core: &mut ConnCore, doc: DocumentId, path: Path) -> Vec<Message> {
    let inline = match path {
        Path::BlockingOnly => None,
        Path::InlineFirst => core.push_inline(doc, Instant::now()),
    };
    let pushed = match inline {
        Some(pushed) => pushed,
        None => core.push(doc, Instant::now()),
    };
    pushed.expect("pushed").into_iter().collect()
}

/// `from` edits; both sides talk until neither has anything to say.
fn exchange(
    (from, from_core): &mut (Device, ConnCore),
    (to, to_core): &mut (Device, ConnCore),
    doc: DocumentId,
    i: i64,
    path: Path,
    sent: &mut Vec<Vec<u8>>,
) {
    from.edit("n", i);
    for _ in 0..10 {
        let mut quiet = true;
        if let Some(m) = from.message(doc) {
            quiet = false;
            let out = deliver(from_core, m, path);
            sent.extend(out.iter().map(Message::encode));
            from.receive(&out);
        }
        for changed in to_core.take_changed() {
            let out = push(to_core, changed, path);
            sent.extend(out.iter().map(Message::encode));
            to.receive(&out);
        }
        if let Some(m) = to.message(doc) {
            quiet = false;
            let out = deliver(to_core, m, path);
            sent.extend(out.iter().map(Message::encode));
            to.receive(&out);
        }
        if quiet {
            break;
        }
    }
    assert_eq!(from.doc.get_heads(), to.doc.get_heads(), "edit {i} reached the other device ({path:?})");
}

/// Every message the relay sent, the sync states it stored, and how many
/// messages it handled inline.
struct Conversation {
    sent: Vec<Vec<u8>>,
    states: Vec<Option<Vec<u8>>>,
    stored: Option<StoredDoc>,
    handled_inline: u64,
    changes_inline: usize,
}

/// Runs a phone and a tablet of one user through 20 edits each way and
/// tells what the relay did.
fn conversation(path: Path) -> Conversation {
    CHANGES_INLINE.with(|c| c.set(0));
    let storage = Arc::new(MemStorage::new("relay"));
    let hub = Arc::new(Hub::new(storage.clone(), Limits::default(), "relay".into()));
    let doc = DocumentId::derive(&["ann", "progress"]);
    let mut phone_core = ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "phone".into());
    let mut tablet_core = ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "tablet".into());
    join(&mut phone_core);
    join(&mut tablet_core);
    let mut phone = (Device::new(1), phone_core);
    let mut tablet = (Device::new(2), tablet_core);
    let mut sent = Vec::new();
    for i in 0..20 {
        exchange(&mut phone, &mut tablet, doc, i, path, &mut sent);
        // A value of its own: writing the value a key has makes no change.
        exchange(&mut tablet, &mut phone, doc, 100 + i, path, &mut sent);
    }
    storage.flush().expect("flushed");
    let states = ["phone#install-1", "tablet#install-1"]
        .iter()
        .map(|peer| storage.load_sync_state("ann", peer, &doc).expect("read"))
        .collect();
    Conversation {
        sent,
        states,
        stored: storage.load("ann", &doc).expect("read"),
        handled_inline: hub.metrics.handled_inline.load(std::sync::atomic::Ordering::Relaxed),
        changes_inline: CHANGES_INLINE.with(|c| c.get()),
    }
}

/// Changes, acknowledgements and pushes handled on the caller's thread
/// give exactly what the blocking path gives: the same messages, byte for
/// byte, the same stored chunks and the same stored sync states.
#[test]
fn inline_handling_says_and_stores_what_the_blocking_path_does() {
    let blocking = conversation(Path::BlockingOnly);
    let inline = conversation(Path::InlineFirst);
    assert_eq!(blocking.handled_inline, 0);
    assert!(
        inline.handled_inline >= 110,
        "changes, acknowledgements and pushes went inline: {} ({} changes)",
        inline.handled_inline,
        inline.changes_inline
    );
    // All but the first change, which creates the document.
    assert_eq!(inline.changes_inline, 39);
    assert_eq!(inline.sent, blocking.sent);
    let chunks = |c: &Conversation| c.stored.as_ref().map(|d| (d.snapshot.clone(), d.chunks.clone(), d.heads.clone()));
    assert!(chunks(&blocking).is_some_and(|(_, c, _)| c.len() == 40));
    assert_eq!(chunks(&inline), chunks(&blocking));
    assert!(blocking.states.iter().all(Option::is_some));
    assert_eq!(inline.states, blocking.states);
}

/// What may wait (on storage, or on a big document's work) is handed back
/// untouched: a new document's change, a document whose lock is held, a
/// big document, a large change, a connection before its join.
#[test]
fn what_may_wait_on_storage_is_handed_back_untouched() {
    let storage = Arc::new(MemStorage::new("relay"));
    let hub = Arc::new(Hub::new(storage, Limits::default(), "relay".into()));
    let doc = DocumentId::derive(&["ann", "progress"]);
    let mut core = ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "phone".into());
    let mut phone = Device::new(1);
    phone.edit("n", 1);
    let first = phone.message(doc).expect("heads to announce");

    let before_join = match core.handle_inline(first.clone(), Instant::now()) {
        Inline::Blocking(m) => m,
        _ => panic!("handled before the join"),
    };
    assert_eq!(before_join, first);
    join(&mut core);
    // No sync state held for the document: reading one may wait.
    let first = match core.handle_inline(first.clone(), Instant::now()) {
        Inline::Blocking(m) if m == first => m,
        _ => panic!("handled without the document's sync state"),
    };
    phone.receive(&core.handle(first, Instant::now()).expect("answered"));
    let change = phone.message(doc).expect("the change");
    assert!(
        matches!(&change, Message::Sync { data, .. } if !sync::Message::decode(data).expect("decodes").changes.is_empty())
    );
    // A new document, in memory only until its first change is stored.
    let change = match core.handle_inline(change.clone(), Instant::now()) {
        Inline::Blocking(m) if m == change => m,
        _ => panic!("a new document's first change was handled inline"),
    };
    phone.receive(&core.handle(change, Instant::now()).expect("stored"));
    assert!(hub.storage.load("ann", &doc).expect("read").is_some());

    // A message with heads and no changes (a device's first word after a
    // reconnect); with the document's lock held elsewhere (another
    // connection storing), it goes to a blocking thread.
    phone.state = sync::State::new();
    let ack = phone.message(doc).expect("heads to announce");
    let slot = hub.slot(&core.reg.user, doc);
    let held = slot.lock().expect("lock");
    assert!(matches!(core.handle_inline(ack.clone(), Instant::now()), Inline::Blocking(ref m) if *m == ack));
    assert!(core.push_inline(doc, Instant::now()).is_none(), "no push while the lock is held");
    drop(held);
    // A big document: generating its messages may take milliseconds.
    let bytes = std::mem::replace(&mut slot.lock().expect("lock").bytes, 2 << 20);
    assert!(matches!(core.handle_inline(ack.clone(), Instant::now()), Inline::Blocking(_)));
    assert!(core.push_inline(doc, Instant::now()).is_none(), "no inline push of a big document");
    slot.lock().expect("lock").bytes = bytes;
    match core.handle_inline(ack, Instant::now()) {
        Inline::Done(Ok(out)) => phone.receive(&out),
        _ => panic!("an acknowledgement of a small, loaded document is handled inline"),
    }

    // A large change (applying it may take milliseconds): to a blocking thread.
    let mut seed = 7u64;
    let noise: String = (0..200_000)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(b'a' + (seed >> 59) as u8)
        })
        .collect();
    let _ = phone.doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(automerge::ROOT, "big", noise.as_str()));
    let change = phone.doc.get_last_local_change().expect("the large change").raw_bytes().to_vec();
    let carrying = sync::Message {
        heads: phone.doc.get_heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: sync::ChunkList::from(vec![change]),
        flags: None,
        version: sync::MessageVersion::V1,
    };
    let big = Message::Sync {
        sender_id: "device".into(),
        target_id: "relay".into(),
        document_id: doc,
        data: carrying.encode(),
    };
    assert!(matches!(&big, Message::Sync { data, .. } if data.len() > 64 << 10));
    assert!(matches!(core.handle_inline(big.clone(), Instant::now()), Inline::Blocking(ref m) if *m == big));
}

/// A phone and a tablet of one user on a relay over `storage`, both in
/// sync on one document the phone created.
fn synced_pair(storage: Arc<dyn DocStorage>) -> (Arc<Hub>, DocumentId, (Device, ConnCore), (Device, ConnCore)) {
    let hub = Arc::new(Hub::new(storage, Limits::default(), "relay".into()));
    let doc = DocumentId::derive(&["ann", "progress"]);
    let mut phone =
        (Device::new(1), ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "phone".into()));
    let mut tablet =
        (Device::new(2), ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "tablet".into()));
    join(&mut phone.1);
    join(&mut tablet.1);
    let mut sent = Vec::new();
    exchange(&mut phone, &mut tablet, doc, 1, Path::BlockingOnly, &mut sent);
    exchange(&mut tablet, &mut phone, doc, 2, Path::BlockingOnly, &mut sent);
    (hub, doc, phone, tablet)
}

/// The phone's next edit, applied by its connection's inline path.
fn change_in_flight(phone: &mut (Device, ConnCore), doc: DocumentId) -> Box<StoringChange> {
    phone.0.edit("n", 3);
    let change = phone.0.message(doc).expect("the change");
    match phone.1.handle_inline(change, Instant::now()) {
        Inline::Storing(change) => change,
        _ => panic!("a change to a loaded, stored document is applied inline"),
    }
}

/// A change applied in memory whose append is queued reaches no one until
/// it is durable: the tablet is not told, its inline paths step aside, and
/// its blocking push waits (holding the document's lock) until the phone's
/// task finishes the change without needing that lock. Then the push
/// carries the change, and storage has it.
#[test]
fn a_change_on_its_way_to_storage_leaves_the_relay_only_once_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(crate::storage::SqliteStorage::open(&dir.path().join("relay.db")).expect("opened"));
    let (hub, doc, mut phone, mut tablet) = synced_pair(storage.clone());
    let mut change = change_in_flight(&mut phone, doc);
    let ticket = change.take_ticket().expect("queued: the writer's queue has room");

    assert!(tablet.1.take_changed().is_empty(), "told of a change that may not be durable");
    assert!(tablet.1.push_inline(doc, Instant::now()).is_none());
    tablet.0.state = sync::State::new();
    let hello = tablet.0.message(doc).expect("heads to announce");
    let hello = match tablet.1.handle_inline(hello, Instant::now()) {
        Inline::Blocking(m) => m,
        _ => panic!("answered from a document with a change on its way"),
    };
    let storing = hub.slot(&tablet.1.reg.user, doc).lock().expect("lock").storing.clone();
    let (mut tablet_device, mut tablet_core) = tablet;
    let waiting = std::thread::spawn(move || {
        let out = tablet_core.handle(hello, Instant::now()).expect("answered");
        tablet_device.receive(&out);
        tablet_device
    });
    storing.wait_for_waiters(1);

    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let stored = runtime.block_on(ticket.wait());
    let ack = phone.1.finish_change(change, stored, Instant::now()).expect("acknowledged");
    phone.0.receive(&ack);
    let tablet_device = waiting.join().expect("the tablet's answer");
    let phone_heads = phone.0.doc.get_heads();
    assert_eq!(tablet_device.doc.get_heads(), phone_heads, "the change reached the tablet once durable");
    let stored = storage.load("ann", &doc).expect("read").expect("stored");
    assert_eq!(stored.heads, encode_heads(&phone_heads));
}

/// With no room in the writer's queue, the applied change is appended by
/// a thread that may wait for room; the outcome is the same.
#[test]
fn a_change_with_no_room_in_the_queue_is_stored_by_a_thread_that_waits() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Room for one request: the sync states the pair left pending fill it.
    let storage = Arc::new(crate::storage::SqliteStorage::open_with(&dir.path().join("relay.db"), 64).expect("opened"));
    let (_hub, doc, mut phone, mut tablet) = synced_pair(storage.clone());
    assert!(storage.queued_bytes() > 0, "pending sync states hold the queue");
    let mut change = change_in_flight(&mut phone, doc);
    assert!(change.take_ticket().is_none(), "no room: not queued");
    let ack = phone.1.store_and_finish(change, Instant::now()).expect("stored and acknowledged");
    phone.0.receive(&ack);
    let pushed = push(&mut tablet.1, doc, Path::InlineFirst);
    tablet.0.receive(&pushed);
    assert_eq!(tablet.0.doc.get_heads(), phone.0.doc.get_heads());
    let stored = storage.load("ann", &doc).expect("read").expect("stored");
    assert_eq!(stored.heads, encode_heads(&phone.0.doc.get_heads()));
}

/// A change whose append fails is neither acknowledged nor forwarded, and
/// the next user of the document reloads it from storage, without it.
#[test]
fn a_change_that_fails_to_store_is_dropped_from_memory_by_the_next_user() {
    let storage = Arc::new(MemStorage::new("relay"));
    let (hub, doc, mut phone, mut tablet) = synced_pair(storage.clone());
    let stored_heads = tablet.0.doc.get_heads();
    storage.set_fail_writes(true).expect("switch");
    let change = change_in_flight(&mut phone, doc);
    let failed = phone.1.store_and_finish(change, Instant::now()).expect_err("not acknowledged");
    assert_eq!(failed.code, close_code::INTERNAL);
    assert!(tablet.1.take_changed().is_empty(), "not forwarded");
    storage.set_fail_writes(false).expect("switch");

    assert!(tablet.1.push_inline(doc, Instant::now()).is_none(), "a failed append is settled on a blocking thread");
    assert_eq!(tablet.1.push(doc, Instant::now()).expect("pushed"), None, "nothing new for the tablet");
    let slot = hub.slot(&tablet.1.reg.user, doc);
    let guard = slot.lock().expect("lock");
    assert_eq!(guard.doc.as_ref().map(Automerge::get_heads), Some(stored_heads), "reloaded without the change");
}

/// A large document gathers chunks in proportion to its size before the
/// relay compacts it (a save costs in proportion to the size); a small one
/// is compacted after 64 (`protocol::compaction`).
#[test]
fn a_large_document_gathers_more_chunks_before_its_compaction() {
    let storage = Arc::new(MemStorage::new("relay"));
    let (_hub, doc, mut phone, mut tablet) = synced_pair(storage.clone());
    // 150,000 characters of pseudo-random hex text make the document large.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let text: String = (0..150_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap_or('0')
        })
        .collect();
    let _ = phone.0.doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(automerge::ROOT, "big", text.as_str()));
    let mut sent = Vec::new();
    let stored = || storage.load("ann", &doc).expect("read").expect("stored");
    exchange(&mut phone, &mut tablet, doc, 10, Path::InlineFirst, &mut sent);
    let size: usize = stored().chunks.iter().map(Vec::len).sum();
    let threshold = compaction::chunks_before_compaction(size as u64) as usize;
    assert!(threshold > 100, "the document is large: {size} bytes, {threshold} chunks");
    // The document grows with its chunks, and so does its threshold (the
    // relay counts what it holds in memory): compacted a little past the
    // first figure, never at 64.
    let (mut most_chunks, mut compacted) = (0, false);
    for i in 0..threshold * 2 {
        exchange(&mut phone, &mut tablet, doc, 11 + i as i64, Path::InlineFirst, &mut sent);
        let chunks = stored().chunks.len();
        most_chunks = most_chunks.max(chunks);
        if chunks < most_chunks {
            compacted = true;
            break;
        }
    }
    assert!(compacted, "compacted within {} edits", threshold * 2);
    assert!(most_chunks >= threshold, "not before its threshold: {most_chunks} at most, {threshold} due");
    assert!(most_chunks <= threshold + threshold / 4, "soon after it: {most_chunks} at most, {threshold} due");
}

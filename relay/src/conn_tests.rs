//! Tests of [`ConnCore`](super::ConnCore)'s offer windows, fed messages
//! directly (no socket), over the in-memory storage.

use super::*;
use crate::limits::Limits;
use crate::storage::{DocStorage, MemStorage, encode_heads};
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

fn deliver(core: &mut ConnCore, msg: Message, path: Path) -> Vec<Message> {
    let msg = match path {
        Path::BlockingOnly => msg,
        Path::InlineFirst => match core.handle_inline(msg, Instant::now()) {
            Inline::Done(result) => return result.expect("handled"),
            Inline::Blocking(msg) => msg,
        },
    };
    let out = core.handle(msg, Instant::now()).expect("handled");
    core.maintain();
    out
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
    handled_inline: u64,
}

/// Runs a phone and a tablet of one user through 20 edits each way and
/// tells what the relay did.
fn conversation(path: Path) -> Conversation {
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
        exchange(&mut tablet, &mut phone, doc, i, path, &mut sent);
    }
    storage.flush().expect("flushed");
    let states = ["phone#install-1", "tablet#install-1"]
        .iter()
        .map(|peer| storage.load_sync_state("ann", peer, &doc).expect("read"))
        .collect();
    Conversation { sent, states, handled_inline: hub.metrics.handled_inline.load(std::sync::atomic::Ordering::Relaxed) }
}

/// Acknowledgements and pushes handled on the caller's thread give exactly
/// what the blocking path gives: the same messages, byte for byte, and the
/// same stored sync states.
#[test]
fn inline_handling_says_and_stores_what_the_blocking_path_does() {
    let blocking = conversation(Path::BlockingOnly);
    let inline = conversation(Path::InlineFirst);
    assert_eq!(blocking.handled_inline, 0);
    assert!(inline.handled_inline >= 40, "acknowledgements and pushes went inline: {}", inline.handled_inline);
    assert_eq!(inline.sent, blocking.sent);
    assert!(blocking.states.iter().all(Option::is_some));
    assert_eq!(inline.states, blocking.states);
}

/// What may wait (on storage, or on a big document's work) is handed back
/// untouched: a change to store, a document whose lock is held, a big
/// document, a connection before its join.
#[test]
fn what_may_wait_on_storage_is_handed_back_untouched() {
    let storage = Arc::new(MemStorage::new("relay"));
    let hub = Arc::new(Hub::new(storage, Limits::default(), "relay".into()));
    let doc = DocumentId::derive(&["ann", "progress"]);
    let mut core = ConnCore::new(hub.clone(), hub.register("ann").expect("registered"), "phone".into());
    let mut phone = Device::new(1);
    phone.edit("n", 1);
    let change = phone.message(doc).expect("a change to send");

    let before_join = match core.handle_inline(change.clone(), Instant::now()) {
        Inline::Blocking(m) => m,
        Inline::Done(_) => panic!("handled before the join"),
    };
    assert_eq!(before_join, change);
    join(&mut core);
    let with_changes = match core.handle_inline(change.clone(), Instant::now()) {
        Inline::Blocking(m) => m,
        Inline::Done(_) => panic!("a change was handled where storing it cannot wait"),
    };
    assert_eq!(with_changes, change);
    phone.receive(&core.handle(with_changes, Instant::now()).expect("stored"));

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
    assert!(matches!(core.handle_inline(ack, Instant::now()), Inline::Done(Ok(_))));
}

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

//! automerge's sync calls against `protocol::automerge_sync`'s, on the path
//! every synced edit takes through the relay: a device's change received,
//! and the reply to the other device's plain acknowledgement.
//!
//! `cargo bench -p protocol --bench automerge_sync`
//!
//! How: one thread, release build, warm caches. For each history length
//! (changes already in the document, one review each, as a month of
//! reviews is) two relay replicas are built identically; every round the
//! same device change goes to one through automerge's
//! `receive_sync_message` and to the other through `automerge_sync::receive`,
//! alternating which goes first, and each call is timed alone. The same for
//! the reply to the receiving device's acknowledgement
//! (`generate_sync_message` against `automerge_sync::generate`). Figures are
//! the median and the mean over the rounds, in microseconds.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ROOT};
use protocol::automerge_sync;
use std::time::{Duration, Instant};

const ROUNDS: usize = 300;
const REVIEW: &str = r#"{"item":"kanji-1234","rating":3,"reviewed_at":1790000000000,"duration_ms":5400}"#;

fn review(doc: &mut Automerge, key: &str) {
    let mut tx = doc.transaction();
    tx.put(ROOT, key, REVIEW).expect("put");
    tx.commit();
}

/// Syncs `a` and `b` until neither has anything to send.
fn level(a: &mut Automerge, sa: &mut sync::State, b: &mut Automerge, sb: &mut sync::State) {
    for _ in 0..100 {
        let to_b = a.generate_sync_message(sa);
        if let Some(m) = &to_b {
            b.receive_sync_message(sb, m.clone()).expect("receives");
        }
        let to_a = b.generate_sync_message(sb);
        if let Some(m) = &to_a {
            a.receive_sync_message(sa, m.clone()).expect("receives");
        }
        if to_b.is_none() && to_a.is_none() {
            return;
        }
    }
    panic!("the peers did not level");
}

/// A relay replica with its two devices' states: the sender's and the
/// receiver's, whose document it forwards changes to.
struct Relay {
    doc: Automerge,
    from_sender: sync::State,
    to_receiver: sync::State,
    receiver: Automerge,
    receiver_state: sync::State,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let median = times[times.len() / 2];
    format!("{:>8.1} / {:>8.1}", median.as_secs_f64() * 1e6, mean.as_secs_f64() * 1e6)
}

fn main() {
    println!("automerge 0.12's sync calls against protocol::automerge_sync's (median / mean, us; {ROUNDS} rounds)");
    println!(
        "{:>8}  {:>19}  {:>19}  {:>19}  {:>19}",
        "changes", "receive: automerge", "receive: ours", "ack reply: automerge", "ack reply: ours"
    );
    for history in [50usize, 500, 6_500] {
        let mut sender = Automerge::new().with_actor(ActorId::from(vec![1u8; 16]));
        for i in 0..history {
            review(&mut sender, &format!("r{i}"));
        }
        let mut replicas: Vec<Relay> = (0..2u8)
            .map(|i| {
                let mut relay = Relay {
                    doc: Automerge::new().with_actor(ActorId::from(vec![10 + i; 16])),
                    from_sender: sync::State::new(),
                    to_receiver: sync::State::new(),
                    receiver: Automerge::new().with_actor(ActorId::from(vec![20 + i; 16])),
                    receiver_state: sync::State::new(),
                };
                let (mut s, mut s_state) = (sender.clone(), sync::State::new());
                level(&mut s, &mut s_state, &mut relay.doc, &mut relay.from_sender);
                level(&mut relay.doc, &mut relay.to_receiver, &mut relay.receiver, &mut relay.receiver_state);
                relay
            })
            .collect();
        let (mut receive_am, mut receive_ours, mut reply_am, mut reply_ours) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            review(&mut sender, &format!("new{round}"));
            let change = sender.get_last_local_change().expect("a change");
            let message = sync::Message {
                heads: sender.get_heads(),
                need: Vec::new(),
                have: Vec::new(),
                changes: vec![change.raw_bytes().to_vec()].into(),
                flags: None,
                version: sync::MessageVersion::V1,
            };
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let relay = &mut replicas[i];
                let (result, took) = if i == 0 {
                    timed(|| relay.doc.receive_sync_message(&mut relay.from_sender, message.clone()))
                } else {
                    timed(|| automerge_sync::receive(&mut relay.doc, &mut relay.from_sender, message.clone()))
                };
                result.expect("the change applies");
                if i == 0 { &mut receive_am } else { &mut receive_ours }.push(took);
                // Forward to the receiving device, take its acknowledgement.
                let forward = relay.doc.generate_sync_message(&mut relay.to_receiver).expect("forwarded");
                relay.receiver.receive_sync_message(&mut relay.receiver_state, forward).expect("received");
                let ack = relay.receiver.generate_sync_message(&mut relay.receiver_state).expect("acknowledged");
                relay.doc.receive_sync_message(&mut relay.to_receiver, ack).expect("ack received");
                let (reply, took) = if i == 0 {
                    timed(|| relay.doc.generate_sync_message(&mut relay.to_receiver))
                } else {
                    timed(|| automerge_sync::generate(&relay.doc, &mut relay.to_receiver))
                };
                assert!(reply.is_none(), "nothing to answer a plain acknowledgement with");
                if i == 0 { &mut reply_am } else { &mut reply_ours }.push(took);
            }
        }
        assert_eq!(replicas[0].doc.get_heads(), replicas[1].doc.get_heads());
        println!(
            "{history:>8}  {:>19}  {:>19}  {:>19}  {:>19}",
            summary(receive_am),
            summary(receive_ours),
            summary(reply_am),
            summary(reply_ours)
        );
    }
}

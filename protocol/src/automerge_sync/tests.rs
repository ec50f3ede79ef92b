use super::*;
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT};
use proptest::prelude::*;
use std::collections::VecDeque;

fn doc(actor: u8) -> Automerge {
    Automerge::new().with_actor(ActorId::from(vec![actor; 16]))
}

fn edit(doc: &mut Automerge, key: &str, value: i64) {
    let mut tx = doc.transaction();
    tx.put(ROOT, key, value).expect("put");
    tx.commit();
}

/// automerge's receive and ours on two copies of one document and state:
/// the same outcome, the same document heads and the same state after it.
fn receive_both(doc: &mut Automerge, state: &mut sync::State, message: sync::Message) -> Result<(), String> {
    let (mut automerge_doc, mut automerge_state) = (doc.clone(), state.clone());
    let automerge_says =
        automerge_doc.receive_sync_message(&mut automerge_state, message.clone()).map_err(|e| e.to_string());
    let we_say = receive(doc, state, message).map_err(|e| e.to_string());
    assert_eq!(we_say, automerge_says, "the outcome differs from automerge's");
    assert_eq!(doc.get_heads(), automerge_doc.get_heads(), "the document differs from automerge's");
    assert_eq!(format!("{state:?}"), format!("{automerge_state:?}"), "the sync state differs from automerge's");
    we_say
}

/// automerge's answer and ours from two copies of one state: the same
/// message and the same state after it.
fn both(doc: &Automerge, state: &mut sync::State) -> (Option<sync::Message>, bool) {
    let mut automerge_state = state.clone();
    let automerge_says = doc.generate_sync_message(&mut automerge_state);
    let skipped = nothing_to_send(&doc.get_heads(), state);
    let we_say = generate(doc, state);
    assert_eq!(
        we_say.clone().map(sync::Message::encode),
        automerge_says.map(sync::Message::encode),
        "the message differs from automerge's"
    );
    assert_eq!(format!("{state:?}"), format!("{automerge_state:?}"), "the sync state differs from automerge's");
    (we_say, skipped)
}

/// Syncs a relay and a device until neither has anything to send,
/// comparing every call with automerge's.
fn level(relay: &mut Automerge, relay_state: &mut sync::State, device: &mut Automerge, device_state: &mut sync::State) {
    for _ in 0..10 {
        let to_device = both(relay, relay_state).0;
        if let Some(m) = &to_device {
            receive_both(device, device_state, m.clone()).expect("device receives");
        }
        let to_relay = both(device, device_state).0;
        if let Some(m) = &to_relay {
            receive_both(relay, relay_state, m.clone()).expect("relay receives");
        }
        if to_device.is_none() && to_relay.is_none() {
            return;
        }
    }
    panic!("the peers did not level");
}

#[test]
fn a_peer_acknowledging_an_edit_gets_nothing_without_automerge_looking() {
    let (mut relay, mut device) = (doc(1), doc(2));
    let (mut relay_state, mut device_state) = (sync::State::new(), sync::State::new());
    edit(&mut relay, "a", 1);
    level(&mut relay, &mut relay_state, &mut device, &mut device_state);
    assert_eq!(relay.get_heads(), device.get_heads());
    // Another device's edit reaches the relay, which forwards it.
    edit(&mut relay, "b", 2);
    let change = both(&relay, &mut relay_state).0.expect("the relay forwards the edit");
    receive_both(&mut device, &mut device_state, change).expect("device receives");
    let ack = both(&device, &mut device_state).0.expect("the device acknowledges");
    assert!(ack.changes.is_empty(), "a plain acknowledgement");
    receive_both(&mut relay, &mut relay_state, ack).expect("relay receives");
    let (reply, skipped) = both(&relay, &mut relay_state);
    assert!(reply.is_none(), "nothing more to send");
    assert!(skipped, "the acknowledgement was recognised without automerge");
}

/// A peer that claims our heads but summarises what it has from the
/// start, with an empty filter (no honest peer sends that, a peer may):
/// automerge sends it the document again, and so do we.
#[test]
fn a_peer_whose_summary_starts_elsewhere_is_left_to_automerge() {
    let (mut relay, mut device) = (doc(1), doc(2));
    let (mut relay_state, mut device_state) = (sync::State::new(), sync::State::new());
    for value in 0..3 {
        edit(&mut relay, "a", value);
    }
    level(&mut relay, &mut relay_state, &mut device, &mut device_state);
    let heads = relay.get_heads();
    assert!(nothing_to_send(&heads, &relay_state), "level: recognised");
    let odd = sync::Message {
        heads: heads.clone(),
        need: Vec::new(),
        have: vec![sync::Have { last_sync: Vec::new(), bloom: sync::BloomFilter::default() }],
        changes: Vec::<Vec<u8>>::new().into(),
        flags: None,
        version: sync::MessageVersion::V1,
    };
    receive_both(&mut relay, &mut relay_state, odd).expect("relay receives");
    assert!(!nothing_to_send(&heads, &relay_state));
    let (reply, _) = both(&relay, &mut relay_state);
    assert!(reply.is_some_and(|m| !m.changes.is_empty()), "automerge sends what the filter lacks");
}

#[test]
fn an_empty_document_is_left_to_automerge() {
    let (a, b) = (doc(1), doc(2));
    let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
    let hello = both(&a, &mut sa).0.expect("a first message even when empty");
    receive_both(&mut b.clone(), &mut sb, hello).expect("receives");
    assert!(!nothing_to_send(&a.get_heads(), &sa));
}

/// One step of a random exchange between two peers.
#[derive(Debug, Clone)]
enum Step {
    Edit {
        peer: usize,
        value: i64,
    },
    Generate {
        peer: usize,
    },
    Deliver {
        to: usize,
    },
    Drop {
        to: usize,
    },
    Duplicate {
        to: usize,
    },
    /// The message in front arrives after the others.
    Reorder {
        to: usize,
    },
    /// A byte of the changes in the front message is flipped.
    Corrupt {
        to: usize,
        at: usize,
    },
    /// A message no automerge builds: the sender's latest changes as
    /// separate chunks, with no summary and no flags (the multi-chunk and
    /// flagless paths).
    SendRaw {
        from: usize,
        last: usize,
    },
    /// The peer turns read-only, or back (which asks the other to reset).
    ToggleReadOnly {
        peer: usize,
    },
    /// The peers reconnect: messages in transit are lost and each
    /// state is what was persisted of it, as after a restart.
    Reconnect,
}

fn step() -> impl Strategy<Value = Step> {
    let peer = 0..2usize;
    prop_oneof![
        1 => (peer.clone(), any::<i64>()).prop_map(|(peer, value)| Step::Edit { peer, value }),
        4 => peer.clone().prop_map(|peer| Step::Generate { peer }),
        4 => peer.clone().prop_map(|to| Step::Deliver { to }),
        1 => peer.clone().prop_map(|to| Step::Drop { to }),
        1 => peer.clone().prop_map(|to| Step::Duplicate { to }),
        1 => peer.clone().prop_map(|to| Step::Reorder { to }),
        1 => (peer.clone(), any::<usize>()).prop_map(|(to, at)| Step::Corrupt { to, at }),
        1 => (peer, 1..4usize).prop_map(|(from, last)| Step::SendRaw { from, last }),
        1 => (0..2usize).prop_map(|peer| Step::ToggleReadOnly { peer }),
        1 => Just(Step::Reconnect),
    ]
}

fn reconnect(states: &mut [sync::State; 2], in_transit: &mut [VecDeque<sync::Message>; 2]) {
    for state in states.iter_mut() {
        *state = sync::State::decode(&state.encode()).expect("a state decodes");
    }
    *in_transit = [VecDeque::new(), VecDeque::new()];
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Over random edits, lost, repeated and late messages and
    /// reconnections, every answer and every state after it is
    /// automerge's own.
    #[test]
    fn every_answer_is_automerges_own(steps in proptest::collection::vec(step(), 1..80)) {
        let mut docs = [doc(1), doc(2)];
        let mut states = [sync::State::new(), sync::State::new()];
        let mut in_transit: [VecDeque<sync::Message>; 2] = [VecDeque::new(), VecDeque::new()];
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Edit { peer, value } => edit(&mut docs[peer], &format!("k{}", i % 7), value),
                Step::Generate { peer } => {
                    if let Some(m) = both(&docs[peer], &mut states[peer]).0 {
                        in_transit[1 - peer].push_back(m);
                    }
                }
                Step::Deliver { to } => {
                    if let Some(m) = in_transit[to].pop_front() {
                        // A late or repeated message may be refused; both
                        // answers are still compared afterwards.
                        let _ = receive_both(&mut docs[to], &mut states[to], m);
                    }
                }
                Step::Drop { to } => {
                    in_transit[to].pop_front();
                }
                Step::Duplicate { to } => {
                    if let Some(m) = in_transit[to].front().cloned() {
                        in_transit[to].push_back(m);
                    }
                }
                Step::Reorder { to } => {
                    if let Some(m) = in_transit[to].pop_front() {
                        in_transit[to].push_back(m);
                    }
                }
                Step::Corrupt { to, at } => {
                    if let Some(m) = in_transit[to].front_mut() {
                        let mut chunks: Vec<Vec<u8>> = m.changes.iter().map(<[u8]>::to_vec).collect();
                        if let Some(chunk) = chunks.first_mut().filter(|c| !c.is_empty()) {
                            let i = at % chunk.len();
                            chunk[i] ^= 0x5a;
                            m.changes = chunks.into();
                        }
                    }
                }
                Step::SendRaw { from, last } => {
                    let changes = docs[from].get_changes(&[]);
                    let chunks: Vec<Vec<u8>> =
                        changes.iter().rev().take(last).rev().map(|c| c.raw_bytes().to_vec()).collect();
                    in_transit[1 - from].push_back(sync::Message {
                        heads: docs[from].get_heads(),
                        need: Vec::new(),
                        have: Vec::new(),
                        changes: chunks.into(),
                        flags: None,
                        version: sync::MessageVersion::V1,
                    });
                }
                Step::ToggleReadOnly { peer } => {
                    let read_only = states[peer].read_only;
                    states[peer].set_read_only(!read_only);
                }
                Step::Reconnect => reconnect(&mut states, &mut in_transit),
            }
        }
        for state in &mut states {
            state.set_read_only(false);
        }
        // Then reconnect (a dropped message leaves both sides waiting)
        // and level them, still comparing every answer.
        reconnect(&mut states, &mut in_transit);
        for _ in 0..20 {
            let to_1 = both(&docs[0], &mut states[0]).0;
            if let Some(m) = to_1.clone() {
                let _ = receive_both(&mut docs[1], &mut states[1], m);
            }
            let to_0 = both(&docs[1], &mut states[1]).0;
            if let Some(m) = to_0.clone() {
                let _ = receive_both(&mut docs[0], &mut states[0], m);
            }
            if to_1.is_none() && to_0.is_none() {
                break;
            }
        }
        prop_assert_eq!(docs[0].get_heads(), docs[1].get_heads());
    }
}

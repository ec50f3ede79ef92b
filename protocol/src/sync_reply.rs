//! automerge's `generate_sync_message`, without its work when its answer is
//! known to be "nothing".
//!
//! Every synced edit ends with the receiving peer acknowledging it: a
//! message with no changes whose heads are the sender's heads. The sender
//! then asks automerge what to answer, and automerge builds a bloom filter
//! of what it has since the shared heads and walks the change graph for what
//! to send (two clock computations over the document's history) before it
//! finds that the peer is level and returns `None`. On the relay that is a
//! third of all `generate_sync_message` calls and about 6 % of the
//! instructions of a synced edit.
//!
//! [`nothing_to_send`] recognises that case from the sync state alone, in a
//! few comparisons. It is a sufficient condition for automerge 0.12's own
//! `None`, derived from its code (`SyncDoc::generate_sync_message` in
//! `automerge/src/sync.rs`):
//!
//! * the peer's heads are ours, and they are the heads we last sent, and we
//!   have answered this peer before: automerge returns `None` when, in
//!   addition, its message would carry no changes;
//! * the peer needs nothing, and every summary it sent of what it has starts
//!   from our heads (`last_sync`): then the changes automerge would look for
//!   are those after our heads, of which there are none, and the reset
//!   automerge sends when a summary starts from changes it lacks cannot
//!   apply;
//! * our heads are not empty (an empty document takes automerge's
//!   whole-document path, which this does not reason about).
//!
//! When it holds, automerge would return `None` without touching the sync
//! state, so skipping the call is the same answer and the same state. When
//! it does not hold, automerge decides. The tests check both against
//! automerge's own answer over random exchanges, so an automerge upgrade
//! that changes the rule fails them.

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};

/// Whether automerge's `generate_sync_message` would return `None` for
/// this state, decided without touching the document's history. `false`
/// means "ask automerge", not "there is something to send".
pub fn nothing_to_send(our_heads: &[ChangeHash], state: &sync::State) -> bool {
    !our_heads.is_empty()
        && state.have_responded
        && state.last_sent_heads == our_heads
        && state.their_heads.as_deref() == Some(our_heads)
        && state.their_need.as_ref().is_some_and(Vec::is_empty)
        && state
            .their_have
            .as_ref()
            .is_some_and(|haves| !haves.is_empty() && haves.iter().all(|have| have.last_sync == our_heads))
}

/// The next sync message for this peer, as automerge's
/// `generate_sync_message` gives it; without its work when
/// [`nothing_to_send`] says the answer is `None`.
pub fn generate(doc: &Automerge, state: &mut sync::State) -> Option<sync::Message> {
    if nothing_to_send(&doc.get_heads(), state) {
        return None;
    }
    doc.generate_sync_message(state)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_peer_acknowledging_an_edit_gets_nothing_without_automerge_looking() {
        let (mut relay, mut device) = (doc(1), doc(2));
        let (mut relay_state, mut device_state) = (sync::State::new(), sync::State::new());
        edit(&mut relay, "a", 1);
        // Level first.
        for _ in 0..10 {
            let to_device = both(&relay, &mut relay_state).0;
            if let Some(m) = &to_device {
                device.receive_sync_message(&mut device_state, m.clone()).expect("device receives");
            }
            let to_relay = both(&device, &mut device_state).0;
            if let Some(m) = &to_relay {
                relay.receive_sync_message(&mut relay_state, m.clone()).expect("relay receives");
            }
            if to_device.is_none() && to_relay.is_none() {
                break;
            }
        }
        assert_eq!(relay.get_heads(), device.get_heads());
        // Another device's edit reaches the relay, which forwards it.
        edit(&mut relay, "b", 2);
        let change = both(&relay, &mut relay_state).0.expect("the relay forwards the edit");
        device.receive_sync_message(&mut device_state, change).expect("device receives");
        let ack = both(&device, &mut device_state).0.expect("the device acknowledges");
        assert!(ack.changes.is_empty(), "a plain acknowledgement");
        relay.receive_sync_message(&mut relay_state, ack).expect("relay receives");
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
        for _ in 0..10 {
            let to_device = both(&relay, &mut relay_state).0;
            if let Some(m) = &to_device {
                device.receive_sync_message(&mut device_state, m.clone()).expect("device receives");
            }
            let to_relay = both(&device, &mut device_state).0;
            if let Some(m) = &to_relay {
                relay.receive_sync_message(&mut relay_state, m.clone()).expect("relay receives");
            }
            if to_device.is_none() && to_relay.is_none() {
                break;
            }
        }
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
        relay.receive_sync_message(&mut relay_state, odd).expect("relay receives");
        assert!(!nothing_to_send(&heads, &relay_state));
        let (reply, _) = both(&relay, &mut relay_state);
        assert!(reply.is_some_and(|m| !m.changes.is_empty()), "automerge sends what the filter lacks");
    }

    #[test]
    fn an_empty_document_is_left_to_automerge() {
        let (a, b) = (doc(1), doc(2));
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let hello = both(&a, &mut sa).0.expect("a first message even when empty");
        b.clone().receive_sync_message(&mut sb, hello).expect("receives");
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
            1 => peer.prop_map(|to| Step::Duplicate { to }),
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
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

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
                            let _ = docs[to].receive_sync_message(&mut states[to], m);
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
                    Step::Reconnect => reconnect(&mut states, &mut in_transit),
                }
            }
            // Then reconnect (a dropped message leaves both sides waiting)
            // and level them, still comparing every answer.
            reconnect(&mut states, &mut in_transit);
            for _ in 0..20 {
                let to_1 = both(&docs[0], &mut states[0]).0;
                if let Some(m) = to_1.clone() {
                    let _ = docs[1].receive_sync_message(&mut states[1], m);
                }
                let to_0 = both(&docs[1], &mut states[1]).0;
                if let Some(m) = to_0.clone() {
                    let _ = docs[0].receive_sync_message(&mut states[0], m);
                }
                if to_1.is_none() && to_0.is_none() {
                    break;
                }
            }
            prop_assert_eq!(docs[0].get_heads(), docs[1].get_heads());
        }
    }
}

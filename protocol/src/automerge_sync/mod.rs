//! automerge's two sync calls, without work whose outcome is known.
//!
//! A relay and a device run automerge's sync protocol for every edit: the
//! sender's change is received, acknowledged and forwarded, and the
//! receiver's acknowledgement is received and answered. automerge 0.12
//! does two pieces of work on that path whose outcome can be told from the
//! sync state, and whose cost grows with the document's history:
//!
//! * [`generate`]: answering a peer that acknowledged everything, automerge
//!   builds a bloom filter of what it has since the shared heads and walks
//!   the change graph for what to send (two clock computations over the
//!   history) before it finds that the peer is level and returns `None`. On
//!   the relay that is a third of all calls and about 5 % of the
//!   instructions of a synced edit (589 k → 560 k in the sync bench's
//!   `instructions` section). [`nothing_to_send`] recognises the case
//!   in a few comparisons.
//! * [`receive`]: every received message trims the record of changes sent
//!   to the peer to those the peer has not acknowledged, and automerge does
//!   it by walking every ancestor of the peer's heads: the whole history,
//!   even when nothing was sent. For a month of 6,500 reviews that walk is
//!   about four fifths of the 234 µs a received review costs (median,
//!   `cargo bench -p protocol --bench automerge_sync`: 48 µs with this).
//!   [`receive`] is automerge's own steps (`receive_sync_message_inner` in `automerge/src/sync.rs`)
//!   through its public API, with that walk stopping as soon as nothing is
//!   left to remove.
//!
//! Both give automerge's own answer and leave automerge's own sync state:
//! the tests compare them with automerge's calls over random exchanges with
//! lost, repeated and late messages, so an automerge upgrade that changes
//! the protocol's rules fails them. The clean fix for both is in automerge
//! (an early return in each); until then this is the relay's and the
//! engine's one place for it.

mod receive;

pub use receive::receive;

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash};

/// Whether automerge's `generate_sync_message` would return `None` for
/// this state, decided without touching the document's history. `false`
/// means "ask automerge", not "there is something to send".
///
/// It is a sufficient condition for automerge 0.12's own `None`, derived
/// from its code (`SyncDoc::generate_sync_message`):
/// * the peer's heads are ours, they are the heads we last sent, and we
///   have answered this peer before: automerge returns `None` when, in
///   addition, its message would carry no changes;
/// * the peer needs nothing, and every summary it sent of what it has
///   starts from our heads (`last_sync`): then the changes automerge would
///   look for are those after our heads, of which there are none, and the
///   reset automerge sends when a summary starts from changes it lacks
///   cannot apply;
/// * our heads are not empty (an empty document takes automerge's
///   whole-document path, which this does not reason about).
///
/// When it holds, automerge returns `None` without touching the sync
/// state, so skipping the call is the same answer and the same state.
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
mod tests;

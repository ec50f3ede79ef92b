//! Decoding whole documents on worker threads.
//!
//! Loading a saved month (automerge's `load`, ~40 ms for a heavy month)
//! and reading its reviews out of it (~25 ms) is CPU work that touches no
//! shared state, while writing them to SQLite must happen on the one
//! connection. An import of many months, and the months a bootstrap
//! receives together, are decoded on up to [`MAX_WORKERS`] threads while
//! the caller writes the ones already decoded, in order.

use crate::model::{Review, Session};
use crate::progress_doc;
use automerge::{Automerge, AutomergeError};
use std::sync::mpsc;

/// Decoding threads at most; fewer on a device with fewer cores.
pub const MAX_WORKERS: usize = 4;

/// A document loaded from its saved bytes, with every review and session
/// read out of it.
pub struct WholeDoc {
    pub doc: Automerge,
    pub reviews: Vec<Review>,
    pub sessions: Vec<Session>,
}

impl WholeDoc {
    /// Loads `bytes` as an empty document would (`load_incremental`: a
    /// partial load keeps what parsed) and reads its entries.
    pub fn decode(bytes: &[u8]) -> Result<WholeDoc, AutomergeError> {
        let mut doc = Automerge::new();
        doc.load_incremental(bytes)?;
        let (reviews, sessions) = progress_doc::read_all(&doc);
        Ok(WholeDoc { doc, reviews, sessions })
    }
}

/// Why a document could not be decoded.
pub enum DecodeError {
    Document(AutomergeError),
    /// The decoder panicked (a bug in it, on this input): reported as an
    /// error for this document, never an abort of the app.
    Panicked,
}

/// Decodes each of `inputs` and hands the results to `consume` in order
/// (see [`each_in_order`]).
pub fn each_decoded<E>(
    inputs: &[&[u8]],
    mut consume: impl FnMut(usize, Result<WholeDoc, DecodeError>) -> Result<(), E>,
) -> Result<(), E> {
    each_in_order(
        inputs,
        true,
        |bytes| WholeDoc::decode(bytes),
        |i, decoded| consume(i, decoded.ok_or(DecodeError::Panicked).and_then(|r| r.map_err(DecodeError::Document))),
    )
}

/// The cores this process may use, asked of the system once: the answer
/// reads cgroup files on Linux, and every received batch of frames comes
/// through here (most of them one small message, decoded in place).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `work` on each of `inputs` on worker threads, ahead of `consume`,
/// which gets the results in order on the calling thread (`None`: `work`
/// panicked on that input). Each worker holds at most one result waiting,
/// so memory stays a few results. Stops at the first error `consume`
/// returns, and the workers stop with it. Without `parallel`, or with one
/// input or one core, everything runs on the calling thread.
pub fn each_in_order<I: Sync, O: Send, E>(
    inputs: &[I],
    parallel: bool,
    work: impl Fn(&I) -> O + Sync,
    mut consume: impl FnMut(usize, Option<O>) -> Result<(), E>,
) -> Result<(), E> {
    let guarded = |input: &I| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(input))).ok();
    let workers = if parallel && inputs.len() > 1 { cores().min(MAX_WORKERS).min(inputs.len()) } else { 1 };
    if workers <= 1 {
        for (i, input) in inputs.iter().enumerate() {
            consume(i, guarded(input))?;
        }
        return Ok(());
    }
    let guarded = &guarded;
    std::thread::scope(|scope| {
        let mut outputs = Vec::with_capacity(workers);
        for first in 0..workers {
            let (tx, rx) = mpsc::sync_channel(1);
            outputs.push(rx);
            scope.spawn(move || {
                for input in inputs.iter().skip(first).step_by(workers) {
                    // The receiver is gone once the consumer has stopped.
                    if tx.send(guarded(input)).is_err() {
                        return;
                    }
                }
            });
        }
        for i in 0..inputs.len() {
            // A closed channel here would be a worker that died outside `work`.
            let out = outputs[i % workers].recv().ok().flatten();
            consume(i, out)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;

    fn saved(n: i64) -> Vec<u8> {
        let mut doc = Automerge::new();
        let _ = doc.transact(|tx| tx.put(automerge::ROOT, "n", n));
        doc.save()
    }

    #[test]
    fn documents_come_back_in_order_and_a_bad_one_is_an_error_for_it_alone() {
        let mut inputs: Vec<Vec<u8>> = (0..9).map(saved).collect();
        inputs[4] = b"not a document".to_vec();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let mut seen = Vec::new();
        each_decoded(&refs, |i, decoded| {
            let n =
                decoded.ok().and_then(|d| d.doc.get(automerge::ROOT, "n").ok().flatten().and_then(|(v, _)| v.as_i64()));
            seen.push((i, n));
            Ok::<_, ()>(())
        })
        .unwrap();
        let expected: Vec<(usize, Option<i64>)> = (0..9).map(|i| (i, (i != 4).then_some(i as i64))).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn the_consumer_stopping_stops_the_workers() {
        let inputs: Vec<Vec<u8>> = (0..50).map(saved).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let mut consumed = 0;
        let out = each_decoded(&refs, |i, _| {
            consumed += 1;
            if i == 3 { Err("stop") } else { Ok(()) }
        });
        assert_eq!(out, Err("stop"));
        assert_eq!(consumed, 4);
    }
}

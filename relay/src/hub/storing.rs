//! Whether a change applied to a loaded document is still on its way to
//! storage.
//!
//! A connection's task applies a small change in memory, queues its append
//! and releases the document's lock while the append's group is fsynced
//! (`conn_inline.rs`), so no thread waits on the disk for it. Until the
//! append is durable, nothing generated from that document may leave the
//! relay (a forward of a change the disk may still lose), so everyone else
//! using the document waits on [`Storing`] first: the inline paths hand
//! their work to a blocking thread, and the blocking paths wait here. If
//! the append failed, the in-memory document holds a change storage does
//! not: the next user discards it, and it is reloaded from storage.
//!
//! One append per document is on its way at a time: a second change would
//! be stored as a chunk that depends on the first, and if the first failed
//! alone the stored document would miss a dependency.
//!
//! The waiters hold the document's lock; the one who ends the append does
//! not need it, so waiting cannot deadlock.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub struct Storing {
    state: Mutex<State>,
    ended: Condvar,
}

#[derive(Default, Clone, Copy)]
struct State {
    /// An append is queued and its outcome not known yet.
    in_flight: bool,
    /// An append failed: the in-memory document must be reloaded.
    failed: bool,
    /// Threads in [`Storing::wait`] (what a test watches for).
    waiters: usize,
}

impl Storing {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Nothing on its way and nothing to discard: the document in memory
    /// is the stored one.
    pub fn settled(&self) -> bool {
        let s = *self.lock();
        !s.in_flight && !s.failed
    }

    /// An append was queued for a change already applied in memory.
    /// Called with the document's lock held, after [`Storing::settled`].
    pub fn begin(&self) {
        self.lock().in_flight = true;
    }

    /// The append's outcome is known: `stored` or not.
    pub fn end(&self, stored: bool) {
        let mut s = self.lock();
        s.in_flight = false;
        s.failed |= !stored;
        drop(s);
        self.ended.notify_all();
    }

    /// Waits until no append is on its way; returns whether one failed,
    /// so the caller (holding the document's lock) must discard the
    /// in-memory document. The failure is reported once.
    pub fn wait(&self) -> bool {
        let mut guard = self.lock();
        if guard.in_flight {
            guard.waiters += 1;
            guard = match self.ended.wait_while(guard, |s| s.in_flight) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.waiters -= 1;
        }
        std::mem::take(&mut guard.failed)
    }

    /// Threads waiting for the append to end.
    pub fn waiters(&self) -> usize {
        self.lock().waiters
    }

    /// Polls, with a deadline, until `n` threads wait (for tests).
    #[cfg(test)]
    pub fn wait_for_waiters(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.waiters() != n {
            assert!(std::time::Instant::now() < deadline, "{n} waiter(s) expected, {} found", self.waiters());
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_is_released_by_the_end_and_told_of_a_failure_once() {
        let storing = Arc::new(Storing::default());
        assert!(storing.settled());
        assert!(!storing.wait(), "nothing on its way: no wait, nothing to discard");

        storing.begin();
        assert!(!storing.settled());
        let waiter = {
            let storing = storing.clone();
            std::thread::spawn(move || storing.wait())
        };
        storing.wait_for_waiters(1);
        storing.end(false);
        assert!(waiter.join().expect("waiter"), "the waiter learns the append failed");
        assert!(storing.settled(), "and the failure is reported once");

        storing.begin();
        storing.end(true);
        assert!(storing.settled());
        assert!(!storing.wait());
    }
}

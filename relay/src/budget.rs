//! Byte budgets: how much peer data the relay may hold at once.
//!
//! Counting messages is not enough (one message may be 8 MiB), so every
//! place that holds bytes a peer made us hold (frames being written to a
//! slow socket, queued presence messages, the storage writer's queue)
//! draws from a budget counted in bytes. A request larger than the whole
//! budget is clamped to it, so it still goes through, alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An async byte budget (frames in flight to sockets).
#[derive(Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
}

/// Bytes held from a [`ByteBudget`]; returned when dropped.
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    pub fn new(capacity: usize) -> ByteBudget {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        ByteBudget { permits: Arc::new(Semaphore::new(capacity)), capacity }
    }

    /// Waits until `bytes` (clamped to the capacity) are free, and holds them.
    pub async fn acquire(&self, bytes: usize) -> Held {
        let n = bytes.clamp(1, self.capacity) as u32;
        // The semaphore is never closed, so acquiring only fails if it were.
        Held { _permit: self.permits.clone().acquire_many_owned(n).await.ok() }
    }

    /// Bytes held right now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

/// A blocking byte budget for a queue fed from threads (the storage
/// writer's channel): `reserve` waits while the queue is full, unless it is
/// empty (so one request larger than the budget still passes).
pub struct BlockingBudget {
    state: Mutex<Queued>,
    freed: Condvar,
    capacity: usize,
}

/// Bytes held and how many threads wait for some to be freed.
#[derive(Default)]
struct Queued {
    used: usize,
    waiting: usize,
}

impl BlockingBudget {
    pub fn new(capacity: usize) -> BlockingBudget {
        BlockingBudget { state: Mutex::new(Queued::default()), freed: Condvar::new(), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        match self.state.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        }
    }

    fn fits(&self, state: &Queued, bytes: usize) -> bool {
        state.used == 0 || state.used + bytes <= self.capacity
    }

    pub fn reserve(&self, bytes: usize) {
        let mut state = self.lock();
        while !self.fits(&state, bytes) {
            state.waiting += 1;
            state = match self.freed.wait(state) {
                Ok(u) => u,
                Err(p) => p.into_inner(),
            };
            state.waiting -= 1;
        }
        state.used += bytes;
    }

    /// [`BlockingBudget::reserve`] without waiting: false when it would wait.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let mut state = self.lock();
        let fits = self.fits(&state, bytes);
        if fits {
            state.used += bytes;
        }
        fits
    }

    pub fn release(&self, bytes: usize) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(bytes);
        // Only a waiter needs the wake-up: the writer releases after every
        // group, and an unconditional notify is a system call each time
        // (6.5 % of the writer thread's samples under the pair load).
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }

    pub fn in_use(&self) -> usize {
        self.lock().used
    }
}

/// A non-waiting byte counter for data that may be dropped instead of
/// waited for (presence messages): `try_take` says no when full.
#[derive(Default)]
pub struct DropBudget {
    used: AtomicUsize,
}

impl DropBudget {
    pub fn try_take(&self, bytes: usize, capacity: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + bytes <= capacity).then_some(u + bytes))
            .is_ok()
    }

    /// Takes `bytes` whether or not they fit (the caller bounds the excess).
    pub fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub fn give_back(&self, bytes: usize) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn byte_budget_waits_for_bytes_and_clamps_big_requests() {
        let b = ByteBudget::new(100);
        let first = b.acquire(60).await;
        assert_eq!(b.in_use(), 60);
        // 60 more do not fit until the first are returned.
        assert!(tokio::time::timeout(Duration::from_millis(50), b.acquire(60)).await.is_err());
        drop(first);
        let big = b.acquire(10_000).await; // clamped: takes the whole budget
        assert_eq!(b.in_use(), 100);
        drop(big);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn blocking_budget_lets_one_oversized_request_through_alone() {
        let b = Arc::new(BlockingBudget::new(10));
        b.reserve(50);
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                b.reserve(5);
                b.in_use()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.in_use(), 50, "the second request waits while the first is over budget");
        b.release(50);
        assert_eq!(waiter.join().unwrap(), 5);
    }

    #[test]
    fn blocking_budget_try_reserve_says_no_instead_of_waiting() {
        let b = BlockingBudget::new(10);
        assert!(b.try_reserve(50), "an empty budget takes one oversized request");
        assert!(!b.try_reserve(1), "a full one refuses");
        assert_eq!(b.in_use(), 50);
        b.release(50);
        assert!(b.try_reserve(6));
        assert!(!b.try_reserve(5));
        assert!(b.try_reserve(4));
        assert_eq!(b.in_use(), 10);
    }

    #[test]
    fn drop_budget_refuses_past_capacity() {
        let d = DropBudget::default();
        assert!(d.try_take(8, 10));
        assert!(!d.try_take(3, 10));
        d.give_back(8);
        assert!(d.try_take(10, 10));
    }
}

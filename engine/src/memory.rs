//! FSRS memory states, derived from reviews and kept materialized.
//!
//! The rule (see docs/sync-contract.md): an item's state is the result of
//! replaying all its known reviews in the total order (reviewed_at, review
//! id) through FSRS with default parameters. Any device holding the same
//! reviews computes the same state, whatever order they arrived in.
//!
//! Kept incrementally: a review that sorts after the item's last applied
//! review is one FSRS step from the stored state. One that sorts before it
//! (it arrived late from another device, or a bootstrap received an older
//! month after a newer one) marks the item stale (`stale_items`, in the same
//! transaction as the review), and the item's reviews are replayed once,
//! before its state is next read ([`Scheduler::settle`]): a bootstrap that
//! receives 61 months in any order replays each item once, not once per
//! month. Opening the engine never replays anything.

use crate::error::{EngineError, Result};
use crate::model::{MemoryState, Rating, Review};
use crate::store::{self, StoredMemory};
use rusqlite::Connection;

/// The retention FSRS schedules for; Anki's default.
pub const DESIRED_RETENTION: f32 = 0.9;
const DAY_MS: i64 = 86_400_000;

pub struct Scheduler {
    fsrs: fsrs::FSRS,
}

impl Scheduler {
    pub fn new() -> Result<Scheduler> {
        let fsrs = fsrs::FSRS::new(&[]).map_err(|e| EngineError::Scheduler(e.to_string()))?;
        Ok(Scheduler { fsrs })
    }

    /// One FSRS step from `prev` for review `r`.
    fn step(&self, prev: Option<&StoredMemory>, r: &Review) -> Result<StoredMemory> {
        let (state, elapsed_days, count) = match prev {
            Some(p) => {
                let elapsed = (r.reviewed_at - p.state.last_reviewed_at).max(0) / DAY_MS;
                (
                    Some(fsrs::MemoryState { stability: p.state.stability, difficulty: p.state.difficulty }),
                    u32::try_from(elapsed).unwrap_or(u32::MAX),
                    p.state.review_count + 1,
                )
            }
            None => (None, 0, 1),
        };
        let next = self
            .fsrs
            .next_states(state, DESIRED_RETENTION, elapsed_days)
            .map_err(|e| EngineError::Scheduler(e.to_string()))?;
        let chosen = match r.rating {
            Rating::Again => next.again,
            Rating::Hard => next.hard,
            Rating::Good => next.good,
            Rating::Easy => next.easy,
        };
        let interval_days = chosen.interval.round().max(1.0) as i64;
        Ok(StoredMemory {
            state: MemoryState {
                item_id: r.item_id.clone(),
                stability: chosen.memory.stability,
                difficulty: chosen.memory.difficulty,
                due_at: r.reviewed_at.saturating_add(interval_days.saturating_mul(DAY_MS)),
                last_reviewed_at: r.reviewed_at,
                review_count: count,
            },
            last_review_id: r.id.clone(),
        })
    }

    /// Replays every stored review of `item_id` in order and stores the result.
    pub fn recompute_item(&self, conn: &Connection, item_id: &str) -> Result<()> {
        let mut current: Option<StoredMemory> = None;
        for r in store::replay_inputs(conn, item_id)? {
            current = Some(self.step(current.as_ref(), &r)?);
        }
        if let Some(m) = current {
            store::put_memory_state(conn, &m)?;
        }
        Ok(())
    }

    /// Updates memory states for reviews just inserted into `reviews`.
    /// Per item: new reviews that all sort after the last applied one are
    /// stepped in order; otherwise the item is marked stale, to be replayed
    /// once by [`Scheduler::settle`], however many of its reviews arrived
    /// late. Returns the items touched, sorted, and whether any is stale.
    pub fn apply_batch(&self, conn: &Connection, mut reviews: Vec<&Review>) -> Result<(Vec<String>, bool)> {
        reviews.sort_by(|a, b| (&a.item_id, a.reviewed_at, &a.id).cmp(&(&b.item_id, b.reviewed_at, &b.id)));
        let mut items = Vec::new();
        let mut any_stale = false;
        for group in reviews.chunk_by(|a, b| a.item_id == b.item_id) {
            let item = &group[0].item_id;
            let mut prev = store::memory_state(conn, item)?;
            let first = group[0];
            let late = prev.as_ref().is_some_and(|p| {
                (first.reviewed_at, first.id.as_str()) < (p.state.last_reviewed_at, p.last_review_id.as_str())
            });
            // A stale item's stored state is not a base to step from.
            if late || (prev.is_some() && store::is_stale(conn, item)?) {
                store::mark_stale(conn, item)?;
                any_stale = true;
            } else {
                for r in group {
                    prev = Some(self.step(prev.as_ref(), r)?);
                }
                if let Some(m) = &prev {
                    store::put_memory_state(conn, m)?;
                }
            }
            items.push(item.clone());
        }
        Ok((items, any_stale))
    }

    /// Replays every stale item and clears the marks; run inside one
    /// transaction, so a crash leaves the marks (and replays again later).
    pub fn settle(&self, conn: &Connection) -> Result<usize> {
        let items = store::stale_items(conn)?;
        for item in &items {
            self.recompute_item(conn, item)?;
        }
        store::clear_stale(conn)?;
        Ok(items.len())
    }
}

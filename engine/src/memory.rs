//! FSRS memory states, derived from reviews and kept materialized.
//!
//! The rule (see docs/sync-contract.md): an item's state is the result of
//! replaying all its known reviews in the total order (reviewed_at, review
//! id) through FSRS with default parameters. Any device holding the same
//! reviews computes the same state, whatever order they arrived in.
//!
//! Kept incrementally: a review that sorts after the item's last applied
//! review is one FSRS step from the stored state; one that sorts before it
//! (it arrived late from another device) replays that item's reviews only.
//! Opening the engine never replays anything.

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
        for r in store::reviews_for_item(conn, item_id)? {
            current = Some(self.step(current.as_ref(), &r)?);
        }
        if let Some(m) = current {
            store::put_memory_state(conn, &m)?;
        }
        Ok(())
    }

    /// Updates the item's stored state for a review just inserted into `reviews`.
    pub fn apply(&self, conn: &Connection, r: &Review) -> Result<()> {
        let prev = store::memory_state(conn, &r.item_id)?;
        match &prev {
            Some(p) if (r.reviewed_at, r.id.as_str()) < (p.state.last_reviewed_at, p.last_review_id.as_str()) => {
                self.recompute_item(conn, &r.item_id)
            }
            _ => store::put_memory_state(conn, &self.step(prev.as_ref(), r)?),
        }
    }
}

//! The materialized views' side of a write: inserting reviews and sessions
//! and stepping memory states, now or held for the end of a batch.

use crate::error::Result;
use crate::memory::Scheduler;
use crate::model::{Review, Session};
use crate::store;

/// What a batch received and has not materialized yet. Materializing many
/// documents' reviews at once, sorted, inserts into the indexes in key order
/// and reads and writes each item's memory state once, where document by
/// document each of the 20,000 items of a bootstrap was read and written
/// once per month.
#[derive(Default)]
pub(crate) struct PendingViews {
    pub(crate) reviews: Vec<Review>,
    pub(crate) sessions: Vec<Session>,
    /// Estimated heap bytes held, bounded by [`PENDING_VIEWS_BYTES`].
    pub(crate) bytes: usize,
}

impl PendingViews {
    pub(crate) fn add(&mut self, reviews: Vec<Review>, sessions: Vec<Session>) {
        let review_bytes = |r: &Review| {
            std::mem::size_of::<Review>()
                + r.id.len()
                + r.item_id.len()
                + r.device_id.len()
                + r.session_id.as_ref().map_or(0, String::len)
        };
        let session_bytes = |s: &Session| {
            std::mem::size_of::<Session>() + s.id.len() + s.device_id.len() + s.mode.len() + s.notes.len()
        };
        self.bytes +=
            reviews.iter().map(review_bytes).sum::<usize>() + sessions.iter().map(session_bytes).sum::<usize>();
        self.reviews.extend(reviews);
        self.sessions.extend(sessions);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reviews.is_empty() && self.sessions.is_empty()
    }
}

/// Received reviews held for one materialization, at most (a month of a
/// heavy user is about 1.3 MiB of them); past it they are materialized
/// before the batch goes on.
pub(crate) const PENDING_VIEWS_BYTES: usize = 16 * 1024 * 1024;

/// Inserts reviews and sessions into the views and steps the memory states
/// of the items whose reviews were new. Returns the items touched and
/// whether any was marked stale.
pub(crate) fn materialize(
    conn: &rusqlite::Connection,
    scheduler: &Scheduler,
    reviews: &[Review],
    sessions: &[Session],
) -> Result<(Vec<String>, bool)> {
    let mut inserted = Vec::new();
    for r in reviews {
        if store::insert_review(conn, r)? {
            inserted.push(r);
        }
    }
    store::count_new_reviews(conn, inserted.len())?;
    let out = scheduler.apply_batch(conn, inserted)?;
    for s in sessions {
        store::upsert_session(conn, s)?;
    }
    Ok(out)
}

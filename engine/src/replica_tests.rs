//! Tests of [`Replica`](super::Replica): batches, late months, counters.

use super::*;
use crate::model::{Rating, Review};

fn review(id: &str, at: i64, rating: Rating) -> Review {
    Review {
        id: id.into(),
        item_id: "item".into(),
        rating,
        reviewed_at: at,
        duration_ms: 1000,
        device_id: "other".into(),
        session_id: None,
    }
}

/// A month's document holding `reviews`, as another device saved it.
fn month(reviews: &[Review]) -> Vec<u8> {
    let mut doc = Automerge::new();
    for r in reviews {
        let _ = doc.transact(|tx| progress_doc::put_review(tx, r));
    }
    doc.save()
}

fn receive(replica: &mut Replica, partition: &str, bytes: Vec<u8>) {
    let id = progress_doc::doc_id("u", partition);
    replica.remote_change(&id, false, Some(bytes.clone()), |doc| doc.load_incremental(&bytes)).unwrap();
}

/// Reviews in the table, counted the slow way.
fn counted(replica: &Replica) -> u64 {
    replica.store.conn().query_row("SELECT count(*) FROM reviews", [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

fn open(path: &Path) -> Replica {
    Replica::open(path, "u", Box::new(crate::ids::RandomIds)).unwrap()
}

fn state(replica: &mut Replica) -> Option<crate::model::MemoryState> {
    replica.settle().unwrap();
    store::memory_state(replica.store.conn(), "item").unwrap().map(|m| m.state)
}

const DAY: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

#[test]
fn a_month_arriving_late_is_replayed_before_any_read_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let older = month(&[review("a", T0, Rating::Again), review("b", T0 + DAY, Rating::Hard)]);
    let newer = month(&[review("c", T0 + 40 * DAY, Rating::Good)]);

    // In order: the reference.
    let mut in_order = open(&dir.path().join("in-order.db"));
    receive(&mut in_order, "2026-09", older.clone());
    receive(&mut in_order, "2026-10", newer.clone());
    let expected = state(&mut in_order);
    assert_eq!(expected.as_ref().map(|s| s.review_count), Some(3));

    // Newest month first, then the older one: the item is marked stale,
    // and the process ends before anything reads it.
    let path = dir.path().join("late.db");
    {
        let mut late = open(&path);
        receive(&mut late, "2026-10", newer);
        receive(&mut late, "2026-09", older);
        assert_eq!(store::stale_items(late.store.conn()).unwrap(), vec!["item".to_string()]);
    }
    let mut reopened = open(&path);
    assert_eq!(store::review_count(reopened.store.conn()).unwrap(), 3);
    assert_eq!(counted(&reopened), 3, "the counter is the table's count");
    assert_eq!(state(&mut reopened), expected, "the mark survived the restart and the replay ran");
    assert!(store::stale_items(reopened.store.conn()).unwrap().is_empty());
}

#[test]
fn a_batch_with_a_failed_write_keeps_none_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = open(&dir.path().join("batch.db"));
    let bytes = month(&[review("a", T0, Rating::Good)]);
    let failed = replica.batch(|r| {
        receive(r, "2026-09", bytes.clone());
        // A later write in the same batch fails (a constraint, as a full
        // disk would): the whole batch is rolled back.
        let _ = r.store.transaction(|conn| {
            conn.execute("INSERT INTO meta(key, value) VALUES ('k', NULL)", [])?;
            Ok(())
        });
        Ok(())
    });
    assert!(failed.is_err());
    assert_eq!(store::review_count(replica.store.conn()).unwrap(), 0, "the counter rolled back with the batch");
    assert_eq!(counted(&replica), 0);
    assert!(replica.doc_ids().unwrap().is_empty());
    // And the document in memory was forgotten with it: receiving it again stores it.
    receive(&mut replica, "2026-09", bytes.clone());
    assert_eq!(store::review_count(replica.store.conn()).unwrap(), 1);
    assert_eq!(replica.doc_ids().unwrap().len(), 1);
    // The same review in another document adds nothing, to the table or the counter.
    replica
        .batch(|r| {
            receive(r, "2026-10", bytes.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(replica.doc_ids().unwrap().len(), 2);
    assert_eq!(store::review_count(replica.store.conn()).unwrap(), 1);
    assert_eq!(counted(&replica), 1);
}

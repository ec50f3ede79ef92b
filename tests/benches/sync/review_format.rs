//! What the review layout costs: one heavy month (6,500 reviews, one change
//! each) written as the engine writes reviews (one JSON string per review)
//! and as it wrote them before (a map of six fields), then loaded and read
//! the engine's way (`progress_doc::read_all`), the median of five runs each,
//! warm (the bytes are in memory). This is the measurement behind reviews
//! becoming one value.

use crate::report::{Report, kib, ms};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ScalarValue};
use engine::{Rating, Review, progress_doc};
use std::time::{Duration, Instant};

const REVIEWS: usize = 6_500;

fn review(i: usize) -> Review {
    Review {
        id: format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)),
        item_id: format!("item-{}", i % 3_000),
        rating: Rating::Good,
        reviewed_at: 1_790_000_000_000 + i as i64 * 60_000,
        duration_ms: 4_200,
        device_id: "phone".into(),
        session_id: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

/// The month with reviews as maps of fields (how they were written before).
fn as_maps() -> Automerge {
    let mut doc = Automerge::new();
    for i in 0..REVIEWS {
        let r = review(i);
        let _ = doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            let obj = tx.put_object(ROOT, progress_doc::review_key(&r.id), ObjType::Map)?;
            tx.put(&obj, "item", r.item_id.as_str())?;
            tx.put(&obj, "rating", r.rating as i64)?;
            tx.put(&obj, "at", ScalarValue::Timestamp(r.reviewed_at))?;
            tx.put(&obj, "duration_ms", i64::from(r.duration_ms))?;
            tx.put(&obj, "device", r.device_id.as_str())?;
            if let Some(s) = &r.session_id {
                tx.put(&obj, "session", s.as_str())?;
            }
            Ok(())
        });
    }
    doc
}

/// The month as the engine writes it now.
fn as_values() -> Automerge {
    let mut doc = Automerge::new();
    for i in 0..REVIEWS {
        let r = review(i);
        let _ = doc.transact(|tx| progress_doc::put_review(tx, &r));
    }
    doc
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (saved size, load time, read time) of `doc`.
fn measure(doc: &Automerge) -> (usize, Duration, Duration) {
    let saved = doc.save();
    let (mut loads, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        let Ok(loaded) = Automerge::load(&saved) else { continue };
        loads.push(t0.elapsed());
        let t0 = Instant::now();
        let (reviews, _) = progress_doc::read_all(&loaded);
        reads.push(t0.elapsed());
        assert_eq!(reviews.len(), REVIEWS, "every review reads back");
    }
    (saved.len(), median(loads), median(reads))
}

pub fn run(report: &mut Report) {
    for (label, doc) in [("one JSON value each (now)", as_values()), ("a map of fields each (before)", as_maps())] {
        let (size, load, read) = measure(&doc);
        report.figure(
            format!("a month of {REVIEWS} reviews, {label}: saved / load / read_all"),
            format!("{} / {} / {}", kib(size as u64), ms(load), ms(read)),
        );
    }
}

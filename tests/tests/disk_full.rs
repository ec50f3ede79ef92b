//! A full disk on the device: a write the app was told failed is on no
//! device, writes succeed again once space is back, and a reopen loads
//! every document. With a real ENOSPC from a size-limited tmpfs.

use engine::{NewReview, Rating};
use integration_tests::tmpfs::tmpfs_or_skip;
use integration_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn review(item: &str, i: i64) -> NewReview {
    NewReview {
        item_id: item.to_owned(),
        rating: Rating::Good,
        reviewed_at: 1_790_000_000_000 + i * 1000,
        duration_ms: 1000,
        session_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_failed_on_a_full_disk_syncs_nowhere_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = tmpfs_or_skip(&dir.path().join("phone-disk"), 4 << 20) else { return };
    let relay = start_relay(&dir.path().join("relay")).await;
    let phone_dir = dir.path().join("phone-disk/phone");
    let phone = open_engine(&phone_dir, "alice", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    tablet.start_sync(relay_config(&relay.ws_url(), "alice", "tablet")).expect("sync");

    let mut ok = Vec::new();
    for i in 0..5 {
        let item = format!("before-{i}");
        phone.record_review(review(&item, i)).expect("review with space");
        ok.push(item);
    }
    eventually("the tablet has the first reviews", WAIT, || tablet.review_count().ok() == Some(5)).await;

    // Fill the disk, then write until the engine reports the failure.
    let filler = disk.fill();
    let mut failed = None;
    for i in 0..20_000 {
        let item = format!("full-{i}");
        match phone.record_review(review(&item, 100 + i)) {
            Ok(_) => ok.push(item),
            Err(e) => {
                println!("write {i} on the full disk failed as it should: {e}");
                failed = Some(item);
                break;
            }
        }
    }
    let failed = failed.expect("a write on a full disk fails");
    assert_eq!(phone.memory_state(&failed).expect("query"), None, "the failed review is not on the phone");

    // Space comes back: writes succeed and everything the app was told
    // succeeded reaches the tablet; the failed review never does.
    std::fs::remove_file(&filler).expect("free the space");
    for i in 0..3 {
        let item = format!("after-{i}");
        phone.record_review(review(&item, 50_000 + i)).expect("review once space is back");
        ok.push(item);
    }
    let expected = ok.len() as u64;
    eventually("the tablet has every acknowledged review", WAIT, || {
        tablet.review_count().ok() == Some(expected) && settled(&phone)
    })
    .await;
    assert_eq!(tablet.memory_state(&failed).expect("query"), None, "the failed review reached the tablet");
    for item in &ok {
        assert!(tablet.memory_state(item).expect("query").is_some(), "{item} is missing on the tablet");
    }

    // A reopen loads every document, complete: the same heads as the tablet.
    phone.stop_sync();
    drop(phone);
    let phone = open_engine(&phone_dir, "alice", "phone");
    assert_eq!(phone.review_count().expect("count"), expected);
    assert_eq!(phone.document_heads().expect("heads"), tablet.document_heads().expect("heads"));
    assert_eq!(
        phone.export_documents().expect("every document loads").len(),
        tablet.export_documents().expect("docs").len()
    );
    relay.shutdown().await;
}

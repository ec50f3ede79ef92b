//! Recovery as users and operators live it: a phone wiped and signed in
//! again with the same device id, and a relay restored from a backup.

use engine::{NewReview, Rating};
use integration_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Reviews 0..5 fall in one month; later ones in the next month's document.
fn review(i: i64) -> NewReview {
    let next_month = if i >= 5 { 45 * 24 * 3_600_000 } else { 0 };
    NewReview {
        item_id: format!("word-{i}"),
        rating: Rating::Good,
        reviewed_at: 1_790_000_000_000 + next_month + i * 60_000,
        duration_ms: 1200,
        session_id: None,
    }
}

/// A wiped phone that signs in again with the same device id receives its
/// whole history (the relay keys sync state by the install's storage id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_device_with_the_same_device_id_receives_its_whole_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let phone_dir = dir.path().join("phone");
    let phone = open_engine(&phone_dir, "alice", "phone");
    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    for i in 0..5 {
        phone.record_review(review(i)).expect("review");
    }
    eventually("the relay acknowledged the phone's reviews", WAIT, || settled(&phone)).await;
    let heads = phone.document_heads().expect("heads");
    phone.stop_sync();
    drop(phone);

    std::fs::remove_dir_all(&phone_dir).expect("wipe the phone");
    let phone = open_engine(&phone_dir, "alice", "phone");
    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    eventually("the reinstalled phone receives its 5 reviews", WAIT, || phone.review_count().ok() == Some(5)).await;
    eventually("and reports itself in sync", WAIT, || settled(&phone)).await;
    assert_eq!(phone.document_heads().expect("heads"), heads);
    relay.shutdown().await;
}

/// The operator restores the relay from a backup taken before the phone's
/// last 3 reviews were acknowledged: the phone re-offers them, and a new
/// tablet ends with all 8. The 3 are in a document the restored relay has
/// never heard of, so only the device can bring it back (it sees the new
/// storage identity and offers everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restored_from_an_older_backup_gets_back_what_devices_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("relay");
    let relay = start_relay(&live).await;
    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    for i in 0..5 {
        phone.record_review(review(i)).expect("review");
    }
    eventually("first 5 acknowledged", WAIT, || settled(&phone)).await;

    // Online backup while the relay serves.
    let backup = dir.path().join("backup");
    relay::backup::backup(&live, &backup).expect("backup");

    for i in 5..8 {
        phone.record_review(review(i)).expect("review");
    }
    eventually("the next 3 acknowledged", WAIT, || settled(&phone)).await;
    phone.stop_sync();
    relay.shutdown().await;

    // The live data is lost; the operator restores the backup elsewhere.
    let restored = dir.path().join("restored");
    relay::backup::restore(&backup, &restored).expect("restore");
    assert!(relay::backup::restore(&backup, &restored).is_err(), "restore refuses to overwrite a database");
    let relay = start_relay(&restored).await;

    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    tablet.start_sync(relay_config(&relay.ws_url(), "alice", "tablet")).expect("sync");
    eventually("the new tablet ends with all 8 reviews", WAIT, || tablet.review_count().ok() == Some(8)).await;
    eventually("the phone is in sync again", WAIT, || settled(&phone)).await;
    assert_eq!(phone.review_count().expect("count"), 8);
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    relay.shutdown().await;
}

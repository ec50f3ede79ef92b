//! A relay killed with SIGKILL and restarted loses nothing it acknowledged.

use engine::{NewReview, Rating};
use integration_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn spawn_relay(data_dir: &std::path::Path) -> (std::process::Child, String) {
    spawn_relay_process(env!("CARGO_BIN_EXE_test-relay"), data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_keeps_everything_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let (mut relay, url) = spawn_relay(&relay_dir);

    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    phone.start_sync(relay_config(&url, "alice", "phone")).expect("sync");
    for i in 0..200 {
        phone
            .record_review(NewReview {
                item_id: format!("item-{}", i % 40),
                rating: Rating::Good,
                reviewed_at: 1_790_000_000_000 + i * 60_000,
                duration_ms: 900,
                session_id: None,
            })
            .expect("review");
    }
    // The phone clears `pending` only once the relay acknowledged every change.
    eventually("relay acknowledged all", WAIT, || settled(&phone)).await;
    phone.stop_sync();

    relay.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    relay.wait().expect("reaped");

    let (mut relay, url) = spawn_relay(&relay_dir);
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    tablet.start_sync(relay_config(&url, "alice", "tablet")).expect("sync");
    eventually("tablet receives all 200 reviews", WAIT, || tablet.review_count().ok() == Some(200)).await;
    assert_eq!(tablet.memory_states().expect("states"), phone.memory_states().expect("states"));
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    relay.kill().expect("kill");
    let _ = relay.wait();
}

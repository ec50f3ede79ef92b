//! Documents in PostgreSQL (issue #18): the storage against a real,
//! throwaway cluster, and relays on it as separate processes.

use engine::{NewReview, Rating};
use integration_tests::pg::PgCluster;
use integration_tests::*;
use relay::storage::{Appended, DocStorage, PgStorage, StorageError, encode_heads};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn cluster() -> PgCluster {
    PgCluster::start().unwrap_or_else(|e| panic!("a throwaway PostgreSQL cluster starts: {e}"))
}

fn doc(n: u8) -> protocol::DocumentId {
    protocol::DocumentId::from_bytes([n; 16])
}

fn heads(n: u8) -> Vec<u8> {
    encode_heads(&[automerge::ChangeHash([n; 32])])
}

#[test]
fn documents_are_chunks_scoped_per_user_and_a_compaction_keeps_later_chunks() {
    let pg = cluster();
    let storage = PgStorage::connect(&pg.url).expect("connects and migrates");
    let appended = storage.append("alice", &doc(1), b"one", &heads(1), 0).expect("append");
    assert_eq!(appended, Appended { since_snapshot: 1, seq: 1 });
    let appended = storage.append("alice", &doc(1), b"two", &heads(2), 1).expect("append");
    assert_eq!(appended, Appended { since_snapshot: 2, seq: 2 });
    let stored = storage.load("alice", &doc(1)).expect("load").expect("alice has it");
    assert_eq!(
        (stored.snapshot, stored.chunks, stored.heads, stored.seq),
        (None, vec![b"one".to_vec(), b"two".to_vec()], heads(2), 2)
    );
    // Another user can neither read nor count it.
    assert!(storage.load("bob", &doc(1)).expect("load").is_none());
    assert_eq!(storage.count_docs("bob").expect("count"), 0);
    assert!(storage.heads("bob").expect("heads").is_empty());

    storage.compact("alice", &doc(1), b"snapshot", 2).expect("compact");
    assert_eq!(
        storage.append("alice", &doc(1), b"three", &heads(3), 2).expect("append").since_snapshot,
        1,
        "one chunk since the snapshot"
    );
    let stored = storage.load("alice", &doc(1)).expect("load").expect("alice has it");
    assert_eq!(stored.snapshot.as_deref(), Some(&b"snapshot"[..]));
    assert_eq!(stored.chunks, vec![b"three".to_vec()]);
    assert_eq!(storage.heads("alice").expect("heads"), [(doc(1), heads(3))].into_iter().collect());
    assert_eq!(storage.count_docs("alice").expect("count"), 1);
    // The chunks the snapshot holds are gone; seq keeps counting.
    assert_eq!(pg.psql("SELECT string_agg(seq::text, ',') FROM doc_chunks").expect("psql"), "3");
    storage.probe_write().expect("the probe writes");
}

#[test]
fn sync_states_are_per_install_and_other_installs_are_forgotten() {
    let pg = cluster();
    let storage = PgStorage::connect(&pg.url).expect("connects");
    for device in ["phone", "phone#old", "phone#new", "phonebook"] {
        storage.save_sync_state("alice", device, &doc(1), device.as_bytes(), &heads(1)).expect("save");
    }
    storage.save_sync_state("alice", "phone#new", &doc(1), b"newer", &heads(2)).expect("save again");
    assert_eq!(storage.load_sync_state("alice", "phone#new", &doc(1)).expect("load"), Some(b"newer".to_vec()));
    assert_eq!(storage.shared_heads("alice", "phone#new").expect("shared"), [(doc(1), heads(2))].into_iter().collect());
    assert_eq!(storage.load_sync_state("bob", "phone#new", &doc(1)).expect("load"), None);

    storage.forget_other_installs("alice", "phone", "phone#new").expect("forget");
    let left = pg.psql("SELECT string_agg(device_id, ',' ORDER BY device_id) FROM sync_states").expect("psql");
    assert_eq!(left, "phone#new,phonebook", "only the kept install and another device remain");
}

#[test]
fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let pg = cluster();
    let storage = PgStorage::connect(&pg.url).expect("connects");
    let id = storage.storage_id().expect("id");
    assert_eq!(id.len(), 32, "a random identity: {id}");
    drop(storage);
    // Connecting again migrates nothing and keeps the identity.
    let storage = PgStorage::connect(&pg.url).expect("connects again");
    assert_eq!(storage.storage_id().expect("id"), id);
    assert_eq!(pg.psql("SELECT string_agg(version::text, ',') FROM relay_schema_migrations").expect("psql"), "1");
    drop(storage);
    pg.psql("INSERT INTO relay_schema_migrations(version) VALUES (99)").expect("psql");
    match PgStorage::connect(&pg.url) {
        Err(StorageError::SchemaTooNew { found, .. }) => assert_eq!(found, 99),
        other => panic!("a newer schema is refused, got {:?}", other.err()),
    }
}

#[test]
fn an_append_from_a_copy_that_was_behind_leaves_heads_unknown_and_a_compaction_keeps_later_chunks() {
    let pg = cluster();
    let (a, b) = (PgStorage::connect(&pg.url).expect("relay A"), PgStorage::connect(&pg.url).expect("relay B"));
    a.append("alice", &doc(2), b"a1", &heads(1), 0).expect("A appends");
    // B's copy holds seq 1; A appends seq 2; B appends from its copy at 1.
    a.append("alice", &doc(2), b"a2", &heads(2), 1).expect("A appends");
    let from_b = b.append("alice", &doc(2), b"b3", &heads(3), 1).expect("B appends");
    assert_eq!(from_b.seq, 3);
    let stored = a.load("alice", &doc(2)).expect("load").expect("exists");
    assert!(stored.heads.is_empty(), "B's heads miss A's chunk: recorded as unknown");
    // B catches up: A's chunk (and its own), and records the heads it now knows.
    let catch_up = b.changes_after("alice", &doc(2), 1).expect("catch up").expect("shared storage");
    assert_eq!(
        (catch_up.snapshot, catch_up.chunks.clone(), catch_up.seq),
        (None, vec![b"a2".to_vec(), b"b3".to_vec()], 3)
    );
    assert!(catch_up.heads_unknown);
    b.record_heads("alice", &doc(2), 3, &heads(9)).expect("record");
    assert_eq!(a.heads("alice").expect("heads").get(&doc(2)), Some(&heads(9)));

    // A compacts from a copy at seq 2 while B appended seq 4: chunk 4 stays.
    b.append("alice", &doc(2), b"b4", &heads(4), 3).expect("B appends");
    a.compact("alice", &doc(2), b"snap-at-2", 2).expect("A compacts");
    let stored = b.load("alice", &doc(2)).expect("load").expect("exists");
    assert_eq!(stored.snapshot.as_deref(), Some(&b"snap-at-2"[..]));
    assert_eq!(stored.chunks, vec![b"b3".to_vec(), b"b4".to_vec()], "chunks after the snapshot's seq stay");
    // An older snapshot never replaces a newer one.
    b.compact("alice", &doc(2), b"snap-at-4", 4).expect("B compacts");
    a.compact("alice", &doc(2), b"stale-snap-at-3", 3).expect("a stale compaction is a no-op");
    let stored = a.load("alice", &doc(2)).expect("load").expect("exists");
    assert_eq!((stored.snapshot.as_deref(), stored.chunks.len()), (Some(&b"snap-at-4"[..]), 0));
    // A copy behind the snapshot gets the snapshot to catch up.
    let catch_up = a.changes_after("alice", &doc(2), 2).expect("catch up").expect("shared storage");
    assert_eq!(catch_up.snapshot.as_deref(), Some(&b"snap-at-4"[..]));
    assert_eq!(catch_up.seq, 4);
}

#[test]
fn remote_database_hosts_are_refused_without_tls() {
    let remote = PgStorage::connect("postgresql://postgres@192.0.2.1:5432/postgres").err().expect("refused");
    assert!(remote.to_string().contains("loopback"), "{remote}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_is_announced_once_committed() {
    let pg = cluster();
    let (client, mut connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.expect("connect");
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    let url = pg.url.clone();
    let storage = tokio::task::spawn_blocking(move || PgStorage::connect(&url)).await.expect("join").expect("connects");
    client.batch_execute(&format!("LISTEN {}", relay::storage::postgres::CHANGES_CHANNEL)).await.expect("listen");
    let storage = std::sync::Arc::new(storage);
    for n in 1..=2u8 {
        let s = storage.clone();
        tokio::task::spawn_blocking(move || s.append("alice", &doc(7), &[n], &heads(n), u64::from(n) - 1))
            .await
            .expect("join")
            .expect("append");
    }
    for seq in 1..=2 {
        let note = tokio::time::timeout(WAIT, notes.recv()).await.expect("announced in time").expect("a note");
        assert_eq!(note, format!("alice {} {seq}", doc(7)));
    }
}

fn spawn_relay_on(url: &str, data_dir: &std::path::Path) -> (std::process::Child, String) {
    spawn_relay_process_with(env!("CARGO_BIN_EXE_test-relay"), data_dir, &[("RELAY_DATABASE_URL", url)])
}

/// A relay on PostgreSQL acknowledges reviews, is killed with SIGKILL, and
/// another relay process with an empty data directory serves them all to a
/// new device from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_postgres_keeps_what_it_acknowledged_for_the_next_relay() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay_on(&pg.url, &dir.path().join("relay-a"));
    assert!(url.starts_with("ws://"), "relay A started on PostgreSQL: {url:?}\n{}", pg.log());

    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    phone.start_sync(relay_config(&url, "alice", "phone")).expect("sync");
    for i in 0..120 {
        phone
            .record_review(NewReview {
                item_id: format!("item-{}", i % 30),
                rating: Rating::Good,
                reviewed_at: 1_790_000_000_000 + i * 60_000,
                duration_ms: 900,
                session_id: None,
            })
            .expect("review");
    }
    eventually("relay A acknowledged every review", WAIT, || settled(&phone)).await;
    phone.stop_sync();
    relay.kill().expect("SIGKILL");
    relay.wait().expect("reaped");

    // A second relay, nothing on its disk: the database is the truth.
    let (mut relay, url) = spawn_relay_on(&pg.url, &dir.path().join("relay-b"));
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    tablet.start_sync(relay_config(&url, "alice", "tablet")).expect("sync");
    eventually("the tablet gets all 120 reviews from relay B", WAIT, || tablet.review_count().ok() == Some(120)).await;
    assert_eq!(tablet.memory_states().expect("states"), phone.memory_states().expect("states"));
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));

    // Another user on the same database sees nothing of alice's.
    let mallory = open_engine(&dir.path().join("mallory"), "mallory", "laptop");
    mallory.start_sync(relay_config(&url, "mallory", "laptop")).expect("sync");
    eventually("mallory's empty sync completes", WAIT, || settled(&mallory)).await;
    assert_eq!(mallory.review_count().expect("count"), 0);
    relay.kill().expect("kill");
    let _ = relay.wait();
}

fn review(i: i64) -> NewReview {
    NewReview {
        item_id: format!("item-{}", i % 10),
        rating: Rating::Good,
        reviewed_at: 1_790_000_000_000 + i * 60_000,
        duration_ms: 900,
        session_id: None,
    }
}

/// Relays A and B as separate processes on one database, devices split
/// across them: edits on A reach devices on B and back, through the
/// database's announcements; another user on B hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_one_relay_reach_devices_on_another() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay_a, url_a) = spawn_relay_on(&pg.url, &dir.path().join("relay-a"));
    let (mut relay_b, url_b) = spawn_relay_on(&pg.url, &dir.path().join("relay-b"));
    assert!(url_a.starts_with("ws://") && url_b.starts_with("ws://"), "both relays start: {url_a:?} {url_b:?}");

    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    let mallory = open_engine(&dir.path().join("mallory"), "mallory", "laptop");
    phone.record_review(review(0)).expect("review");
    phone.start_sync(relay_config(&url_a, "alice", "phone")).expect("sync");
    tablet.start_sync(relay_config(&url_b, "alice", "tablet")).expect("sync");
    mallory.start_sync(relay_config(&url_b, "mallory", "laptop")).expect("sync");
    eventually("the tablet on B has the phone's first review", WAIT, || tablet.review_count().ok() == Some(1)).await;

    // Both devices stay connected, each document loaded on both relays.
    for i in 1..=20 {
        phone.record_review(review(i)).expect("review on A");
    }
    eventually("edits on A reach the tablet on B", WAIT, || tablet.review_count().ok() == Some(21)).await;
    for i in 21..=40 {
        tablet.record_review(review(i)).expect("review on B");
    }
    eventually("edits on B reach the phone on A", WAIT, || phone.review_count().ok() == Some(41)).await;
    eventually("both settle", WAIT, || settled(&phone) && settled(&tablet)).await;
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    assert_eq!(tablet.memory_states().expect("states"), phone.memory_states().expect("states"));
    assert_eq!(mallory.review_count().expect("count"), 0, "another user on B gets nothing of alice's");
    // Through announcements, not the slow timer (10 s) alone.
    let base_b = url_b.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    let metrics = get(format!("{base_b}/metrics")).await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(value("relay_feed_events_total ") >= 1, "B heard A's changes announced:\n{metrics}");
    assert!(value("relay_catch_ups_total ") >= 1, "B caught its loaded copy up:\n{metrics}");
    for relay in [&mut relay_a, &mut relay_b] {
        let _ = relay.kill();
        let _ = relay.wait();
    }
}

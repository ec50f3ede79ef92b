//! Documents in PostgreSQL (issue #18): the storage against a real,
//! throwaway cluster, and relays on it as separate processes.

use engine::{NewReview, Rating};
use integration_tests::pg::PgCluster;
use integration_tests::*;
use relay::storage::{DocStorage, PgStorage, StorageError, encode_heads};
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

/// Connects, waiting out the previous holder's lock (PostgreSQL releases
/// a session's advisory lock once it notices the session ended).
fn connect_when_free(url: &str) -> PgStorage {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match PgStorage::connect(url) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("another relay") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("storage connects: {e}"),
        }
    }
}

#[test]
fn documents_are_chunks_scoped_per_user_and_a_compaction_keeps_later_chunks() {
    let pg = cluster();
    let storage = PgStorage::connect(&pg.url).expect("connects and migrates");
    assert_eq!(storage.append("alice", &doc(1), b"one", &heads(1)).expect("append"), 1);
    assert_eq!(storage.append("alice", &doc(1), b"two", &heads(2)).expect("append"), 2);
    let stored = storage.load("alice", &doc(1)).expect("load").expect("alice has it");
    assert_eq!(
        (stored.snapshot, stored.chunks, stored.heads),
        (None, vec![b"one".to_vec(), b"two".to_vec()], heads(2))
    );
    // Another user can neither read nor count it.
    assert!(storage.load("bob", &doc(1)).expect("load").is_none());
    assert_eq!(storage.count_docs("bob").expect("count"), 0);
    assert!(storage.heads("bob").expect("heads").is_empty());

    storage.compact("alice", &doc(1), b"snapshot").expect("compact");
    assert_eq!(
        storage.append("alice", &doc(1), b"three", &heads(3)).expect("append"),
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
    let storage = connect_when_free(&pg.url);
    assert_eq!(storage.storage_id().expect("id"), id);
    assert_eq!(pg.psql("SELECT string_agg(version::text, ',') FROM relay_schema_migrations").expect("psql"), "1");
    drop(storage);
    pg.psql("INSERT INTO relay_schema_migrations(version) VALUES (99)").expect("psql");
    let deadline = std::time::Instant::now() + WAIT;
    let err = loop {
        match PgStorage::connect(&pg.url) {
            Err(StorageError::SchemaTooNew { found, .. }) => break found,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("another relay") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("a newer schema is refused, got {:?}", other.err()),
        }
    };
    assert_eq!(err, 99);
}

#[test]
fn one_relay_per_database_until_fan_out_and_remote_hosts_are_refused() {
    let pg = cluster();
    let first = PgStorage::connect(&pg.url).expect("connects");
    let second = PgStorage::connect(&pg.url).err().expect("a second relay on the same database is refused");
    assert!(second.to_string().contains("another relay"), "{second}");
    drop(first);
    let _again = connect_when_free(&pg.url);

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
        tokio::task::spawn_blocking(move || s.append("alice", &doc(7), &[n], &heads(n)))
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
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_test-relay"))
        .arg(data_dir)
        .env("RELAY_DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay process starts");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    (child, line.trim().to_owned())
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

    // A second relay, nothing on its disk: the database is the truth. It
    // may have to wait for PostgreSQL to notice A's session ended.
    let (mut relay, url) = {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (mut child, url) = spawn_relay_on(&pg.url, &dir.path().join("relay-b"));
            if url.starts_with("ws://") {
                break (child, url);
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(std::time::Instant::now() < deadline, "relay B starts once A's lock is gone");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
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

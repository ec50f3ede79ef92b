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
    // Written behind, in order: flushed, the last save of a key is the one kept.
    storage.flush().expect("flush");
    assert_eq!(storage.load_sync_state("alice", "phone#new", &doc(1)).expect("load"), Some(b"newer".to_vec()));
    assert_eq!(storage.shared_heads("alice", "phone#new").expect("shared"), [(doc(1), heads(2))].into_iter().collect());
    assert_eq!(storage.load_sync_state("bob", "phone#new", &doc(1)).expect("load"), None);

    storage.forget_other_installs("alice", "phone", "phone#new").expect("forget");
    storage.flush().expect("flush");
    let left = pg.psql("SELECT string_agg(device_id, ',' ORDER BY device_id) FROM sync_states").expect("psql");
    assert_eq!(left, "phone#new,phonebook", "only the kept install and another device remain");
}

/// A sync state saved and not yet committed is read back from memory: a
/// device reconnecting to this relay meanwhile would otherwise find no
/// state, be taken for a new install and be offered whole months again.
/// The writer is held back by a lock another session holds on the table
/// (reads still pass), so the window is as wide as the test needs.
#[test]
fn sync_states_saved_and_not_yet_committed_are_read_back() {
    let pg = cluster();
    let storage = PgStorage::connect(&pg.url).expect("connects");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let locker = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute("BEGIN; LOCK TABLE sync_states IN SHARE MODE").await.expect("lock");
        client
    });
    for i in 1..=5u8 {
        storage.save_sync_state("alice", "phone#a", &doc(1), &[i; 8], &heads(i)).expect("save");
    }
    assert_eq!(storage.load_sync_state("alice", "phone#a", &doc(1)).expect("load"), Some(vec![5; 8]));
    assert_eq!(storage.shared_heads("alice", "phone#a").expect("shared"), [(doc(1), heads(5))].into_iter().collect());
    assert_eq!(storage.load_sync_state("alice", "phone#b", &doc(1)).expect("load"), None, "another install's");
    assert_eq!(pg.psql("SELECT count(*) FROM sync_states").expect("psql"), "0", "nothing committed yet");

    runtime.block_on(locker.batch_execute("COMMIT")).expect("unlock");
    storage.flush().expect("flush");
    assert_eq!(pg.psql("SELECT encode(state, 'hex') FROM sync_states").expect("psql"), "0505050505050505");
    assert_eq!(storage.load_sync_state("alice", "phone#a", &doc(1)).expect("load"), Some(vec![5; 8]));
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
    assert_eq!(
        pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM relay_schema_migrations").expect("psql"),
        "1,2"
    );
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
    relay.kill().expect("SIGKILL");
    relay.wait().expect("reaped");
    phone.stop_sync();

    // A second relay, nothing on its disk: the database is the truth. The
    // phone reconnects there (as a load balancer would send it) and goes on.
    let (mut relay, url) = spawn_relay_on(&pg.url, &dir.path().join("relay-b"));
    phone.start_sync(relay_config(&url, "alice", "phone")).expect("sync to B");
    phone.record_review(review(500)).expect("review after the move");
    eventually("relay B acknowledged the phone's next review", WAIT, || settled(&phone)).await;
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    tablet.start_sync(relay_config(&url, "alice", "tablet")).expect("sync");
    eventually("the tablet gets all 121 reviews from relay B", WAIT, || tablet.review_count().ok() == Some(121)).await;
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
    let ((mut relay_a, _), (mut relay_b, url_b), phone, tablet) = two_relays_and_two_devices(&pg, dir.path()).await;
    let mallory = open_engine(&dir.path().join("mallory"), "mallory", "laptop");
    mallory.start_sync(relay_config(&url_b, "mallory", "laptop")).expect("sync");
    // Another user on B asks for alice's document by id: doc-unavailable.
    let alice_doc: protocol::DocumentId = phone.document_heads().expect("heads")[0].0.parse().expect("a document id");
    let mut script = integration_tests::peer::TestPeer::connect(&url_b, &token("mallory", "script"), "script")
        .await
        .expect("connect");
    let (mut empty, mut state) = (automerge::Automerge::new(), automerge::sync::State::new());
    edit(&mut empty, 0);
    let served = script.sync_doc(alice_doc, &mut empty, &mut state, true).await.expect("an answer");
    assert!(!served, "mallory gets doc-unavailable for alice's document");

    // Both devices stay connected, each document loaded on both relays.
    for i in 1..=20 {
        phone.record_review(review(i)).expect("review on A");
    }
    eventually("edits on A reach the tablet on B", WAIT, || tablet.review_count().ok() == Some(21)).await;
    // B has handled alice's changes (the tablet on B has them): mallory's
    // socket on B got no frame of them.
    match script.recv(Duration::from_millis(300)).await {
        Ok(None) => {}
        other => panic!("mallory's connection got a frame when alice wrote: {other:?}"),
    }
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

/// One user's document, changed once more.
fn edit(doc: &mut automerge::Automerge, value: i64) {
    use automerge::transaction::Transactable;
    let mut tx = doc.transaction();
    let _ = tx.put(automerge::ROOT, "value", value);
    tx.commit();
}

/// `GET /metrics` of the relay at `ws_url`, one value.
async fn metric(ws_url: &str, name: &str) -> u64 {
    let base = ws_url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    let text = get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Relay A dies with 300 devices on it (300 users, one document each);
/// they all arrive at relay B at once. B loads at most its cap of
/// documents at a time (latency grows, memory does not), and every device
/// converges with what A had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_devices_moving_to_another_relay_stay_under_the_load_cap_and_converge() {
    use futures_util::future::join_all;
    use integration_tests::peer::TestPeer;
    const DEVICES: usize = 300;
    const CAP: u64 = 2;
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay_a, url_a) = spawn_relay_on(&pg.url, &dir.path().join("relay-a"));
    let (mut relay_b, url_b) = spawn_relay_process_with(
        env!("CARGO_BIN_EXE_test-relay"),
        &dir.path().join("relay-b"),
        &[("RELAY_DATABASE_URL", pg.url.as_str()), ("RELAY_MAX_CONCURRENT_DOC_LOADS", "2")],
    );
    assert!(url_a.starts_with("ws://") && url_b.starts_with("ws://"), "both relays start");

    let on_a = join_all((0..DEVICES).map(|i| {
        let url = url_a.clone();
        async move {
            let user = format!("user-{i}");
            let mut peer = TestPeer::connect(&url, &token(&user, "phone"), "phone").await.expect("connect to A");
            let (id, mut doc, mut state) = (doc(1), automerge::Automerge::new(), automerge::sync::State::new());
            edit(&mut doc, 1);
            assert!(peer.sync_doc(id, &mut doc, &mut state, false).await.expect("sync on A"), "A stores it");
            (user, peer, doc)
        }
    }))
    .await;
    relay_a.kill().expect("SIGKILL A");
    relay_a.wait().expect("reaped");

    // Everyone at once, each with one more change (B must load each document).
    let results = join_all(on_a.into_iter().map(|(user, peer, mut held)| {
        drop(peer);
        let url = url_b.clone();
        async move {
            let mut peer = TestPeer::connect(&url, &token(&user, "phone"), "phone").await?;
            edit(&mut held, 2);
            let mut state = automerge::sync::State::new();
            peer.sync_doc(doc(1), &mut held, &mut state, false).await
        }
    }))
    .await;
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(true))).collect();
    assert!(failed.is_empty(), "every device converged on B: {} failed, e.g. {:?}", failed.len(), failed.first());
    assert_eq!(
        pg.psql("SELECT count(*) FROM docs WHERE last_seq = 2").expect("psql"),
        DEVICES.to_string(),
        "each document holds A's change and B's"
    );
    let (peak, waits) =
        (metric(&url_b, "relay_doc_loads_peak ").await, metric(&url_b, "relay_doc_load_waits_total ").await);
    assert!(peak <= CAP, "B never loaded more than {CAP} documents at once (peak {peak})");
    assert!(waits > 0, "the storm did press on the cap (no load waited: the test would prove nothing)");
    let _ = relay_b.kill();
    let _ = relay_b.wait();
}

/// Relays A and B on one database, the phone on A and the tablet on B,
/// synced once.
async fn two_relays_and_two_devices(
    pg: &PgCluster,
    dir: &std::path::Path,
) -> ((std::process::Child, String), (std::process::Child, String), engine::Engine, engine::Engine) {
    let a = spawn_relay_on(&pg.url, &dir.join("relay-a"));
    let b = spawn_relay_on(&pg.url, &dir.join("relay-b"));
    assert!(a.1.starts_with("ws://") && b.1.starts_with("ws://"), "both relays start");
    let phone = open_engine(&dir.join("phone"), "alice", "phone");
    let tablet = open_engine(&dir.join("tablet"), "alice", "tablet");
    phone.record_review(review(0)).expect("review");
    phone.start_sync(relay_config(&a.1, "alice", "phone")).expect("sync");
    tablet.start_sync(relay_config(&b.1, "alice", "tablet")).expect("sync");
    eventually("the tablet on B has the first review", WAIT, || tablet.review_count().ok() == Some(1)).await;
    (a, b, phone, tablet)
}

/// B's listening connection is terminated while the phone on A writes;
/// B listens again and the tablet on B converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_listener_is_cut_mid_write_still_converges() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let ((mut relay_a, _), (mut relay_b, _), phone, tablet) = two_relays_and_two_devices(&pg, dir.path()).await;
    let listener = format!("relay-listener-{}", relay_b.id());
    let count_listeners =
        || pg.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{listener}'"));
    assert_eq!(count_listeners().expect("psql"), "1", "B listens");
    for i in 1..=30 {
        phone.record_review(review(i)).expect("review on A");
        if i == 10 {
            let cut = pg
                .psql(&format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{listener}'"
                ))
                .expect("psql");
            assert_eq!(cut, "1", "B's listener was cut");
        }
    }
    eventually("the tablet on B gets every review", WAIT, || tablet.review_count().ok() == Some(31)).await;
    eventually("B listens again", WAIT, || count_listeners().ok().as_deref() == Some("1")).await;
    for relay in [&mut relay_a, &mut relay_b] {
        let _ = relay.kill();
        let _ = relay.wait();
    }
}

/// PostgreSQL restarts under two running relays: both recover by
/// themselves (pools reconnect, listeners listen again), and edits flow
/// both ways afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_relays_recover_when_postgres_restarts() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let ((mut relay_a, _), (mut relay_b, _), phone, tablet) = two_relays_and_two_devices(&pg, dir.path()).await;
    pg.restart().unwrap_or_else(|e| panic!("PostgreSQL restarts: {e}\n{}", pg.log()));
    for i in 1..=10 {
        phone.record_review(review(i)).expect("review on A");
    }
    eventually("edits on A reach the tablet on B after the restart", WAIT, || tablet.review_count().ok() == Some(11))
        .await;
    for i in 11..=20 {
        tablet.record_review(review(i)).expect("review on B");
    }
    eventually("edits on B reach the phone on A", WAIT, || phone.review_count().ok() == Some(21)).await;
    eventually("both settle", WAIT, || settled(&phone) && settled(&tablet)).await;
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    for relay in [&mut relay_a, &mut relay_b] {
        let _ = relay.kill();
        let _ = relay.wait();
    }
}

/// The phone on A and the tablet on B take turns writing one document, a
/// chunk each time, past the compaction threshold: both relays compact it
/// while the other appends. Nothing is lost: a new device on a third relay
/// gets every review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_compacting_one_document_keep_every_change() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let ((mut relay_a, _), (mut relay_b, _), phone, tablet) = two_relays_and_two_devices(&pg, dir.path()).await;
    let writes = 160;
    for i in 1..=writes {
        let (writer, reader) = if i % 2 == 0 { (&phone, &tablet) } else { (&tablet, &phone) };
        writer.record_review(review(i)).expect("review");
        let want = i as u64 + 1;
        eventually("each review reaches the other relay's device", WAIT, || reader.review_count().ok() == Some(want))
            .await;
    }
    let compacted = pg.psql("SELECT snapshot_seq FROM docs WHERE snapshot IS NOT NULL").expect("psql");
    assert!(
        compacted.lines().any(|s| s.parse::<u64>().is_ok_and(|n| n >= 64)),
        "compacted past 64 chunks: {compacted:?}"
    );
    let (mut relay_c, url_c) = spawn_relay_on(&pg.url, &dir.path().join("relay-c"));
    let laptop = open_engine(&dir.path().join("laptop"), "alice", "laptop");
    laptop.start_sync(relay_config(&url_c, "alice", "laptop")).expect("sync");
    let all = writes as u64 + 1;
    eventually("a new device on relay C gets every review", WAIT, || laptop.review_count().ok() == Some(all)).await;
    eventually("phone and tablet settle", WAIT, || settled(&phone) && settled(&tablet)).await;
    assert_eq!(laptop.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    assert_eq!(tablet.document_heads().expect("heads"), phone.document_heads().expect("heads"));
    for relay in [&mut relay_a, &mut relay_b, &mut relay_c] {
        let _ = relay.kill();
        let _ = relay.wait();
    }
}

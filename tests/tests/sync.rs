//! Two, then three devices of one user sync through a real relay on
//! loopback; another user is refused; bad peers are closed, not the relay.

use engine::{Engine, NewReview, Rating, SessionCounts};
use futures_util::{SinkExt, StreamExt};
use integration_tests::*;
use protocol::{DocumentId, Message};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const T0: i64 = 1_790_000_000_000; // 2026-09-21
const DAY: i64 = 86_400_000;
const WAIT: Duration = Duration::from_secs(20);

fn review(e: &Engine, item: &str, rating: Rating, at: i64) {
    e.record_review(NewReview { item_id: item.into(), rating, reviewed_at: at, duration_ms: 1500, session_id: None })
        .expect("review recorded");
}

/// Device-side work done while offline: a session and reviews over two months.
fn offline_work(e: &Engine, device_offset: i64, items: &[&str]) {
    let s = e.start_session("review", T0 + device_offset).expect("session");
    for (i, item) in items.iter().enumerate() {
        let rating = if i % 3 == 0 { Rating::Hard } else { Rating::Good };
        review(e, item, rating, T0 + device_offset + i as i64 * 1000);
        review(e, item, Rating::Easy, T0 + 35 * DAY + device_offset + i as i64 * 1000);
    }
    e.end_session(&s.id, T0 + device_offset + 60_000, SessionCounts { reviewed: 2, correct: 2, new_items: 0 }, "ok")
        .expect("end session");
}

fn same_progress(a: &Engine, b: &Engine) -> bool {
    a.document_heads().ok() == b.document_heads().ok()
        && a.memory_states().ok() == b.memory_states().ok()
        && a.sessions(0, i64::MAX).ok() == b.sessions(0, i64::MAX).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_converge_and_a_third_bootstraps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");

    // Offline: both review the shared items, each also its own.
    offline_work(&phone, 0, &["apple", "pear", "plum"]);
    offline_work(&tablet, 500, &["apple", "pear", "fig"]);
    assert_eq!(phone.sync_status().expect("status").pending_documents, 2);
    assert_ne!(phone.memory_states().expect("states"), tablet.memory_states().expect("states"));

    phone.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    tablet.start_sync(relay_config(&relay.ws_url(), "alice", "tablet")).expect("sync");
    eventually("phone and tablet converge", WAIT, || {
        settled(&phone) && settled(&tablet) && same_progress(&phone, &tablet)
    })
    .await;

    // Concurrent reviews of one item on both devices are both kept.
    assert_eq!(phone.review_count().expect("count"), 12);
    let apple = phone.memory_state("apple").expect("query").expect("apple reviewed");
    assert_eq!(apple.review_count, 4);
    assert_eq!(phone.sessions(0, i64::MAX).expect("sessions").len(), 2);

    // A new review travels while both are online.
    review(&phone, "kiwi", Rating::Good, T0 + 40 * DAY);
    eventually("kiwi reaches the tablet", WAIT, || tablet.memory_state("kiwi").ok().flatten().is_some()).await;

    // A third device of the same user bootstraps everything from the relay.
    let laptop = open_engine(&dir.path().join("laptop"), "alice", "laptop");
    laptop.start_sync(relay_config(&relay.ws_url(), "alice", "laptop")).expect("sync");
    eventually("laptop bootstraps", WAIT, || settled(&phone) && same_progress(&phone, &laptop)).await;
    assert_eq!(laptop.review_count().expect("count"), 13);
    assert_eq!(laptop.due_items(i64::MAX, 50).expect("due").len(), phone.due_items(i64::MAX, 50).expect("due").len());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_gets_nothing_of_alices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let alice = open_engine(&dir.path().join("alice"), "alice", "phone");
    review(&alice, "secret", Rating::Good, T0);
    alice.start_sync(relay_config(&relay.ws_url(), "alice", "phone")).expect("sync");
    eventually("alice synced", WAIT, || settled(&alice)).await;
    let alice_doc: DocumentId = alice.document_heads().expect("heads")[0].0.parse().expect("doc id");
    let alice_heads = alice.document_heads().expect("heads");

    // Mallory's engine syncs and receives nothing.
    let mallory = open_engine(&dir.path().join("mallory"), "mallory", "laptop");
    mallory.start_sync(relay_config(&relay.ws_url(), "mallory", "laptop")).expect("sync");
    eventually("mallory connected", WAIT, || settled(&mallory)).await;
    assert_eq!(mallory.review_count().expect("count"), 0);

    // Asking by id gets doc-unavailable, as for an id that does not exist.
    let mut ws = raw_connect(&relay.ws_url(), Some(&token("mallory", "script"))).await.expect("upgrade");
    join(&mut ws, "mallory-script").await;
    let doc = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    let first = automerge::sync::SyncDoc::generate_sync_message(&doc, &mut state).expect("first message");
    let unknown = DocumentId::derive(&["never", "created"]);
    for id in [alice_doc, unknown] {
        send(
            &mut ws,
            Message::Request {
                sender_id: "m".into(),
                target_id: "r".into(),
                document_id: id,
                data: first.clone().encode(),
            },
        )
        .await;
        match recv(&mut ws).await {
            Some(Message::DocUnavailable { document_id, .. }) => assert_eq!(document_id, id),
            other => panic!("expected doc-unavailable, got {other:?}"),
        }
    }

    // Mallory forges a real review in a document with Alice's id (an engine
    // opened as "alice" on Mallory's machine derives the same id) and pushes
    // it under Mallory's own token: it lands in Mallory's namespace only.
    let forger = open_engine(&dir.path().join("forger"), "alice", "forged");
    review(&forger, "evil", Rating::Again, T0 + 2);
    let forged = forger.export_documents().expect("export");
    let (forged_id, forged_bytes) = forged.iter().find(|(id, _)| *id == alice_doc.to_string()).expect("same doc id");
    assert_eq!(forged_id.parse::<DocumentId>().expect("id"), alice_doc);
    let mut doc = automerge::Automerge::load(forged_bytes).expect("forged document");
    let alice_on_relay = relay.hub.storage.heads("alice").expect("heads");
    let mut state = automerge::sync::State::new();
    while let Some(msg) = automerge::sync::SyncDoc::generate_sync_message(&doc, &mut state) {
        send(
            &mut ws,
            Message::Sync { sender_id: "m".into(), target_id: "r".into(), document_id: alice_doc, data: msg.encode() },
        )
        .await;
        match recv(&mut ws).await {
            Some(Message::Sync { data, .. }) => {
                let reply = automerge::sync::Message::decode(&data).expect("reply");
                automerge::sync::SyncDoc::receive_sync_message(&mut doc, &mut state, reply).expect("apply");
            }
            other => panic!("the relay should accept Mallory's write to her own namespace, got {other:?}"),
        }
    }
    let mallory_on_relay = relay.hub.storage.heads("mallory").expect("heads");
    assert!(mallory_on_relay.contains_key(&alice_doc), "the forged write was stored (for Mallory)");
    assert_eq!(relay.hub.storage.heads("alice").expect("heads"), alice_on_relay, "Alice's documents are unchanged");

    // Alice's devices never see it: her phone after another exchange, and a
    // new device that bootstraps everything Alice has.
    review(&alice, "another", Rating::Good, T0 + 1);
    eventually("alice synced again", WAIT, || settled(&alice)).await;
    let laptop = open_engine(&dir.path().join("alice2"), "alice", "laptop");
    laptop.start_sync(relay_config(&relay.ws_url(), "alice", "laptop")).expect("sync");
    eventually("alice's second device matches", WAIT, || same_progress(&alice, &laptop)).await;
    assert_ne!(alice.document_heads().expect("heads"), alice_heads, "alice's own change arrived");
    for device in [&alice, &laptop] {
        assert_eq!(device.review_count().expect("count"), 2);
        assert_eq!(device.memory_state("evil").expect("query"), None, "Mallory's review reached Alice");
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_malformed_peers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    // No token, a forged token, an expired one: refused at the upgrade with 401.
    let forged = protocol::TokenIssuer::new("dev", [1u8; 32]).issue("alice", "x", u64::MAX / 2).expect("token");
    let expired = relay::config::dev_issuer().issue("alice", "x", 1).expect("token");
    for t in [None, Some(forged.as_str()), Some(expired.as_str()), Some("garbage")] {
        match raw_connect(&relay.ws_url(), t).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    // The token also works as a query parameter (browsers).
    let url = format!("{}?token={}", relay.ws_url(), token("alice", "browser"));
    let mut ws = raw_connect(&url, None).await.expect("query token accepted");
    join(&mut ws, "browser").await;

    // Garbage bytes close that connection with an error message.
    ws.send(tungstenite::Message::Binary(vec![0xff, 0x00, 0x13].into())).await.expect("send");
    assert!(matches!(recv(&mut ws).await, Some(Message::Error { .. })));
    // Sync before join closes too.
    let mut ws2 = raw_connect(&relay.ws_url(), Some(&token("alice", "b"))).await.expect("upgrade");
    send(
        &mut ws2,
        Message::Sync {
            sender_id: "a".into(),
            target_id: "r".into(),
            document_id: DocumentId::derive(&["x"]),
            data: vec![],
        },
    )
    .await;
    assert!(matches!(recv(&mut ws2).await, Some(Message::Error { .. })));
    // An oversized frame closes the connection.
    let mut ws3 = raw_connect(&relay.ws_url(), Some(&token("alice", "c"))).await.expect("upgrade");
    join(&mut ws3, "c").await;
    let _ = ws3.send(tungstenite::Message::Binary(vec![0u8; 9 * 1024 * 1024].into())).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws3.next().await {
                None | Some(Err(_)) | Some(Ok(tungstenite::Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true));

    // The relay still serves everyone else.
    let mut ws4 = raw_connect(&relay.ws_url(), Some(&token("alice", "d"))).await.expect("upgrade");
    join(&mut ws4, "d").await;
    relay.shutdown().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_connect(url: &str, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

async fn send(ws: &mut Ws, m: Message) {
    ws.send(tungstenite::Message::Binary(m.encode().into())).await.expect("send");
}

async fn recv(ws: &mut Ws) -> Option<Message> {
    let next = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await? {
                Ok(tungstenite::Message::Binary(b)) => return Message::decode(&b).ok(),
                Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    });
    next.await.ok().flatten()
}

async fn join(ws: &mut Ws, peer: &str) {
    send(ws, Message::Join { sender_id: peer.into(), supported_protocol_versions: vec!["1".into()], metadata: None })
        .await;
    assert!(matches!(recv(ws).await, Some(Message::Peer { .. })), "handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_reconnects_when_the_relay_comes_back_and_reports_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let relay = start_relay(&relay_dir).await;
    let (addr, url) = (relay.addr, relay.ws_url());
    relay.shutdown().await;

    // The relay is down: the engine keeps working offline and says why it is not connected.
    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    phone.start_sync(relay_config(&url, "alice", "phone")).expect("sync");
    review(&phone, "apple", Rating::Good, T0);
    eventually("phone reports the connection error", WAIT, || {
        phone.sync_status().map(|s| !s.connected && s.last_error.is_some()).unwrap_or(false)
    })
    .await;
    assert_eq!(phone.sync_status().expect("status").pending_documents, 1);
    assert!(phone.memory_state("apple").expect("query").is_some(), "offline write is queryable");

    // The relay returns on the same address: the engine reconnects by itself.
    let relay = start_relay_with(&relay_dir, addr, relay::limits::Limits::default()).await;
    eventually("phone reconnects and uploads", WAIT, || settled(&phone)).await;
    assert!(phone.sync_status().expect("status").last_sync_at.is_some(), "settled implies a recorded sync");

    // A connected second device is told about new reviews by an event.
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    let mut events = tablet.subscribe();
    tablet.start_sync(relay_config(&url, "alice", "tablet")).expect("sync");
    review(&phone, "pear", Rating::Easy, T0 + DAY);
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(engine::ChangeEvent::ItemsChanged { item_ids }) if item_ids.contains(&"pear".to_string()) => {
                    return true;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true));
    assert!(tablet.memory_state("pear").expect("query").is_some());
    relay.shutdown().await;
}

/// Compaction moved off a review's path (after the relay's reply, and into
/// the engine's quiet time) still happens on both sides: a busy month ends
/// as one snapshot and a few chunks, not hundreds of chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_documents_are_compacted_on_the_relay_and_on_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let phone = open_engine(&dir.path().join("phone"), "carol", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "carol", "tablet");
    phone.start_sync(relay_config(&relay.ws_url(), "carol", "phone")).expect("sync");
    tablet.start_sync(relay_config(&relay.ws_url(), "carol", "tablet")).expect("sync");
    let writes = 150;
    for i in 0..writes {
        review(&phone, &format!("item-{}", i % 9), Rating::Good, T0 + i * 60_000);
        // Synced one by one, as an app used online would: each is a chunk.
        eventually("each review reaches the tablet", WAIT, || tablet.review_count().ok() == Some(i as u64 + 1)).await;
    }
    let chunks = |db: std::path::PathBuf, sql: &'static str| {
        move || {
            let conn = rusqlite::Connection::open(&db).expect("open database");
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect("count chunks")
        }
    };
    let relay_chunks = chunks(
        dir.path().join("relay").join("relay.sqlite3"),
        "SELECT count(*) FROM doc_chunks WHERE user_id = 'carol'",
    );
    let tablet_chunks = chunks(dir.path().join("tablet").join("progress.sqlite3"), "SELECT count(*) FROM doc_changes");
    eventually("the relay compacted", WAIT, || relay_chunks() < 64).await;
    eventually("the tablet compacted in a quiet moment", WAIT, || tablet_chunks() < 64).await;
    assert_eq!(tablet.review_count().expect("count"), writes as u64);
    assert_eq!(phone.document_heads().expect("heads"), tablet.document_heads().expect("heads"));
}

/// A relay whose document memory budget holds about one month drops the
/// least recently used months as others load (reloading them from storage
/// when needed), and every device still gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_over_its_document_memory_budget_drops_and_reloads_months() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = relay::limits::Limits { max_resident_doc_bytes: 64 * 1024, ..Default::default() };
    let relay = start_relay_with(&dir.path().join("relay"), "127.0.0.1:0".parse().expect("addr"), limits).await;
    let phone = open_engine(&dir.path().join("phone"), "dave", "phone");
    // Six months of reviews, each month a few KiB stored (tens in memory).
    for month in 0..6 {
        for i in 0..40 {
            review(&phone, &format!("item-{}", i % 11), Rating::Good, T0 + month * 31 * DAY + i * 60_000);
        }
    }
    phone.start_sync(relay_config(&relay.ws_url(), "dave", "phone")).expect("sync");
    eventually("the phone uploaded", WAIT, || settled(&phone)).await;
    let evicted = || relay.hub.metrics.docs_evicted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(evicted() > 0, "months were dropped to stay within the budget");
    assert!(relay.hub.resident_docs() < 6, "not every month stays loaded");

    let tablet = open_engine(&dir.path().join("tablet"), "dave", "tablet");
    tablet.start_sync(relay_config(&relay.ws_url(), "dave", "tablet")).expect("sync");
    eventually("the tablet has every month", WAIT, || same_progress(&phone, &tablet)).await;
    assert_eq!(tablet.review_count().expect("count"), 240);

    // The tablet, back after every month changed, catches up the usual way
    // (it has sync states): each month loaded to be offered, dropped, and
    // loaded again for the tablet's answers.
    tablet.stop_sync();
    for month in 0..6 {
        review(&phone, "item-late", Rating::Easy, T0 + month * 31 * DAY + 3_600_000);
    }
    eventually("the phone uploaded the changes", WAIT, || settled(&phone)).await;
    let loaded = || relay.hub.metrics.docs_loaded.load(std::sync::atomic::Ordering::Relaxed);
    let before = loaded();
    tablet.start_sync(relay_config(&relay.ws_url(), "dave", "tablet")).expect("sync");
    eventually("the tablet caught up", WAIT, || same_progress(&phone, &tablet)).await;
    assert_eq!(tablet.review_count().expect("count"), 246);
    assert!(loaded() > before, "months were loaded again to catch the tablet up");
}

/// A new install gets each month in one message, as the relay stored it
/// (one saved document, or a snapshot and the chunks after it), and the
/// relay takes its acknowledgements without loading the months: a relay
/// restarted with nothing in memory serves a whole bootstrap without
/// loading one document. Either way the device ends with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_gets_months_as_stored_without_the_relay_loading_them() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let phone = open_engine(&dir.path().join("phone"), "erin", "phone");
    for month in 0..3 {
        for i in 0..20 {
            review(&phone, &format!("item-{}", i % 7), Rating::Good, T0 + month * 31 * DAY + i * 60_000);
        }
    }
    phone.start_sync(relay_config(&relay.ws_url(), "erin", "phone")).expect("sync");
    eventually("the phone uploaded", WAIT, || settled(&phone)).await;
    phone.stop_sync();
    relay.shutdown().await;

    // The idle sweeper runs every 100 ms here.
    let limits = relay::limits::Limits { doc_idle_eviction: Duration::from_millis(300), ..Default::default() };
    let relay = start_relay_with(&dir.path().join("relay"), "127.0.0.1:0".parse().expect("addr"), limits).await;
    let metrics = &relay.hub.metrics;
    let (from_storage, acks, loaded) = (
        || metrics.whole_docs_from_storage.load(Relaxed),
        || metrics.acks_without_doc.load(Relaxed),
        || metrics.docs_loaded.load(Relaxed),
    );
    let tablet = open_engine(&dir.path().join("tablet"), "erin", "tablet");
    tablet.start_sync(relay_config(&relay.ws_url(), "erin", "tablet")).expect("sync");
    eventually("the tablet has every month", WAIT, || same_progress(&phone, &tablet)).await;
    eventually("the relay took the tablet's acknowledgements", WAIT, || acks() == 3).await;
    assert_eq!(from_storage(), 3, "each month went out as the relay stored it");
    assert_eq!(loaded(), 0, "and the relay loaded none of them");
    // With no document loaded there is none to evict; the connection's end
    // is what tells the sweeper to give back what serving it used.
    let releases = || metrics.memory_releases.load(Relaxed);
    let before = releases();
    tablet.stop_sync();
    eventually("the relay gave memory back after the tablet left", WAIT, || releases() > before).await;
    tablet.start_sync(relay_config(&relay.ws_url(), "erin", "tablet")).expect("sync");

    // One month changes: the relay now holds it as two chunks.
    phone.start_sync(relay_config(&relay.ws_url(), "erin", "phone")).expect("sync");
    review(&phone, "item-1", Rating::Hard, T0 + 2 * 31 * DAY + 3_600_000);
    eventually("the change reached the tablet", WAIT, || same_progress(&phone, &tablet)).await;
    let laptop = open_engine(&dir.path().join("laptop"), "erin", "laptop");
    laptop.start_sync(relay_config(&relay.ws_url(), "erin", "laptop")).expect("sync");
    eventually("the laptop has every month", WAIT, || same_progress(&phone, &laptop)).await;
    assert_eq!(laptop.review_count().expect("count"), 61);
    assert_eq!(from_storage(), 6, "all three months as stored, the changed one as its two chunks");
    eventually("the relay took the laptop's acknowledgements", WAIT, || acks() == 6).await;
    let chunk_counts: Vec<usize> = phone
        .export_documents()
        .expect("export")
        .iter()
        .map(|(id, _)| {
            let id: DocumentId = id.parse().expect("doc id");
            relay.hub.storage.load("erin", &id).expect("storage").map_or(0, |d| d.chunks.len())
        })
        .collect();
    assert_eq!(chunk_counts.iter().filter(|&&n| n == 2).count(), 1, "one month as two chunks: {chunk_counts:?}");
    assert_eq!(relay.hub.whole_offer_bytes.in_use(), 0, "every offer's bytes given back to the relay's budget");
}

/// A month imported whole goes to the relay as it was stored, not saved
/// again, in one message (a whole offer: the relay takes them): here the
/// import was saved uncompressed, which `save` never writes, and the relay
/// ends up holding exactly those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_month_is_uploaded_as_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let old_phone = open_engine(&dir.path().join("old-phone"), "fay", "old-phone");
    for i in 0..40 {
        review(&old_phone, &format!("item-{}", i % 9), Rating::Good, T0 + i * 60_000);
    }
    let (id, _) = old_phone.export_documents().expect("export").pop().expect("one month");
    let doc_id: DocumentId = id.parse().expect("doc id");
    let mut month = automerge::Automerge::new();
    month.load_incremental(&old_phone.export_documents().expect("export")[0].1).expect("load");
    let uncompressed = month.save_nocompress();
    assert_ne!(uncompressed, month.save(), "save compresses: the bytes tell the two apart");

    let phone = open_engine(&dir.path().join("phone"), "fay", "phone");
    phone.import_documents(&[(id, uncompressed.clone())]).expect("import");
    phone.start_sync(relay_config(&relay.ws_url(), "fay", "phone")).expect("sync");
    eventually("the phone uploaded", WAIT, || settled(&phone)).await;
    let stored = relay.hub.storage.load("fay", &doc_id).expect("storage").expect("the relay has the month");
    assert_eq!(protocol::whole_doc::one_blob(stored.snapshot, stored.chunks), Some(uncompressed));
    // A whole offer: the month went in the device's first message about it
    // (after `join`), and the relay's plain acknowledgement was the answer.
    let traffic = phone.sync_status().expect("status").traffic;
    assert_eq!((traffic.messages_sent, traffic.messages_received), (2, 2), "{traffic:?}");
}

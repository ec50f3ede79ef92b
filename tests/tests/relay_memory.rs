//! The relay's memory is bounded in bytes, whatever its peers do: peers that
//! stop reading, floods of presence messages at the largest message size,
//! documents that store nothing, tokens that expire mid-connection.

use automerge::Automerge;
use engine::{NewReview, Rating};
use integration_tests::peer::TestPeer;
use integration_tests::*;
use protocol::{DocumentId, Message};
use relay::limits::Limits;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Peak resident memory of a process, from the kernel's accounting.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc status")
}

async fn metric(http_url: &str, name: &str) -> u64 {
    let text =
        integration_tests::get(format!("{http_url}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// The outside probe: one user holds 32 connections, 31 of which stop
/// reading, and floods presence messages of the largest accepted size on
/// the 32nd. The relay process stays under 256 MiB resident (it reached
/// 4.4 GB before), closes the readers that stopped, and another user's
/// devices keep syncing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_and_a_presence_flood_keep_the_relay_under_its_bound() {
    const BOUND: u64 = 256 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay_process(env!("CARGO_BIN_EXE_test-relay"), &dir.path().join("relay"));
    let http_url = url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    let idle_rss = peak_rss_bytes(relay.id());

    let max = Limits::default().max_message_bytes;
    let mut stalled = Vec::new();
    for i in 0..31 {
        // Handshake done, then never read again.
        stalled.push(TestPeer::connect(&url, &token("mallory", &format!("d{i}")), &format!("p{i}")).await.expect("c"));
    }
    let mut flooder = TestPeer::connect(&url, &token("mallory", "flood"), "flood").await.expect("flooder");

    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    phone.start_sync(relay_config(&url, "alice", "phone")).expect("sync");
    tablet.start_sync(relay_config(&url, "alice", "tablet")).expect("sync");

    let doc = DocumentId::derive(&["presence"]);
    let flood = async {
        for count in 0..100u64 {
            let m = Message::Ephemeral {
                sender_id: "flood".into(),
                target_id: "relay".into(),
                count,
                session_id: "s".into(),
                document_id: doc,
                data: vec![count as u8; max - 1024],
            };
            if flooder.send(m).await.is_err() {
                break;
            }
        }
    };
    let others = async {
        for i in 0..5 {
            phone
                .record_review(NewReview {
                    item_id: format!("word-{i}"),
                    rating: Rating::Good,
                    reviewed_at: 1_790_000_000_000 + i * 1000,
                    duration_ms: 1000,
                    session_id: None,
                })
                .expect("review");
        }
        eventually("alice's tablet receives her reviews during the flood", WAIT, || {
            tablet.review_count().ok() == Some(5)
        })
        .await;
    };
    tokio::join!(flood, others);

    eventually_async("the relay closes the readers that stopped reading", WAIT, || {
        let http_url = http_url.clone();
        async move { metric(&http_url, "relay_slow_consumers_closed_total").await >= 1 }
    })
    .await;
    let peak = peak_rss_bytes(relay.id());
    println!("relay peak resident: idle {} MiB, after the flood {} MiB", idle_rss >> 20, peak >> 20);
    assert!(peak < BOUND, "relay peaked at {} MiB resident, over the {} MiB bound", peak >> 20, BOUND >> 20);
    drop(stalled);
    relay.kill().expect("kill");
    let _ = relay.wait();
}

/// A `sync` that creates a document in memory and stores nothing still
/// counts against the user's document limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_new_documents_count_against_the_document_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { max_docs_per_user: 2, ..Limits::default() };
    let relay = start_relay_with(dir.path(), "127.0.0.1:0".parse().expect("literal"), limits).await;
    let mut peer = TestPeer::connect(&relay.ws_url(), &token("nia", "a"), "a").await.expect("connect");
    let empty = Automerge::new();
    for i in 0..3 {
        let id = DocumentId::derive(&["empty", &i.to_string()]);
        let m = peer.sync_message(id, &empty, &mut automerge::sync::State::new()).expect("a first sync message");
        peer.send(m).await.expect("send");
        match peer.recv(Duration::from_secs(10)).await.expect("recv") {
            Some(Message::Sync { .. }) if i < 2 => {}
            Some(Message::Error { message }) if i == 2 => {
                assert!(message.contains("document limit"), "{message}");
                relay.shutdown().await;
                return;
            }
            other => panic!("document {i}: unexpected {other:?}"),
        }
    }
    panic!("a third empty document was accepted over a limit of 2");
}

/// A connection ends when its token expires; a token that would live longer
/// than the relay allows is refused at the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_have_a_maximum_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let short = relay::config::dev_issuer().issue("olga", "a", now + 2).expect("token");
    let mut peer = TestPeer::connect(&relay.ws_url(), &short, "a").await.expect("connect");
    match peer.recv(Duration::from_secs(20)).await.expect("recv") {
        Some(Message::Error { message }) => assert!(message.contains("token expired"), "{message}"),
        other => panic!("expected the relay to close on expiry, got {other:?}"),
    }
    assert_eq!(peer.recv(Duration::from_secs(10)).await.ok().flatten(), None, "closed after the error");

    let long = relay::config::dev_issuer().issue("olga", "b", now + 40 * 24 * 3600).expect("token");
    match TestPeer::connect(&relay.ws_url(), &long, "b").await {
        Err(e) => assert!(e.contains("401"), "{e}"),
        Ok(_) => panic!("a 40-day token was accepted"),
    }
    relay.shutdown().await;
}

//! The relay's limits, health endpoints and metrics, against a real relay.

use automerge::Automerge;
use automerge::transaction::Transactable;
use integration_tests::peer::TestPeer;
use integration_tests::*;
use protocol::{DocumentId, Message};
use relay::limits::Limits;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

const WAIT: Duration = Duration::from_secs(20);

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("literal")
}

fn doc_with(key: &str) -> Automerge {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, key, 1i64).expect("put");
    tx.commit();
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_limited_with_a_json_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { max_connections_per_user: 2, ..Limits::default() };
    let relay = start_relay_with(dir.path(), loopback(), limits).await;
    let first = TestPeer::connect(&relay.ws_url(), &token("dana", "a"), "a").await.expect("first");
    let _second = TestPeer::connect(&relay.ws_url(), &token("dana", "b"), "b").await.expect("second");
    match TestPeer::connect(&relay.ws_url(), &token("dana", "c"), "c").await {
        Err(e) => assert!(e.contains("429"), "{e}"),
        Ok(_) => panic!("third connection of one user was accepted"),
    }
    // Another user is not affected.
    let _erin = TestPeer::connect(&relay.ws_url(), &token("erin", "a"), "a").await.expect("other user");
    // A slot frees when a connection closes: await the relay noticing, then connect.
    assert_eq!(relay.hub.open_connections(), 3);
    drop(first);
    eventually("the relay releases the closed connection", WAIT, || relay.hub.open_connections() == 2).await;
    TestPeer::connect(&relay.ws_url(), &token("dana", "c"), "c").await.expect("the freed slot is usable");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_a_json_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let err = tokio_tungstenite::connect_async(relay.ws_url()).await.expect_err("refused");
    let tungstenite::Error::Http(resp) = err else { panic!("expected an HTTP refusal, got {err:?}") };
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value =
        serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json body");
    assert_eq!(body["error"], "unauthorized");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_per_user_are_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { max_docs_per_user: 2, ..Limits::default() };
    let relay = start_relay_with(dir.path(), loopback(), limits).await;
    let mut peer = TestPeer::connect(&relay.ws_url(), &token("fay", "a"), "a").await.expect("connect");
    for i in 0..2 {
        let mut doc = doc_with("k");
        let mut state = automerge::sync::State::new();
        let id = DocumentId::derive(&["limit", &i.to_string()]);
        assert!(peer.sync_doc(id, &mut doc, &mut state, false).await.expect("within the limit"));
    }
    let mut doc = doc_with("k");
    let mut state = automerge::sync::State::new();
    let third = DocumentId::derive(&["limit", "3"]);
    let err = peer.sync_doc(third, &mut doc, &mut state, false).await.expect_err("over the limit");
    assert!(err.contains("document limit"), "{err}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sync_payload_closes_only_that_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let mut bad = TestPeer::connect(&relay.ws_url(), &token("gus", "a"), "a").await.expect("connect");
    let doc = DocumentId::derive(&["x"]);
    bad.send(Message::Sync {
        sender_id: "a".into(),
        target_id: "relay".into(),
        document_id: doc,
        data: vec![0x42; 40],
    })
    .await
    .expect("send");
    assert!(matches!(bad.recv(WAIT).await, Ok(Some(Message::Error { .. }))));
    let mut good = TestPeer::connect(&relay.ws_url(), &token("gus", "b"), "b").await.expect("connect");
    let mut d = doc_with("k");
    let mut state = automerge::sync::State::new();
    assert!(good.sync_doc(doc, &mut d, &mut state, false).await.expect("sync"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_peer_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ping_interval: Duration::from_millis(100),
        ..Limits::default()
    };
    let relay = start_relay_with(dir.path(), loopback(), limits).await;
    // A raw WebSocket handshake, then silence: no pong, no frame.
    let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.expect("tcp");
    let request = format!(
        "GET /sync?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("hal", "a"),
        relay.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        let mut total = Vec::new();
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the relay closed the silent connection");
    assert!(String::from_utf8_lossy(&closed).starts_with("HTTP/1.1 101"), "upgrade happened first");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let mut peer = TestPeer::connect(&relay.ws_url(), &token("ivy", "a"), "a").await.expect("connect");
    let mut doc = doc_with("k");
    let mut state = automerge::sync::State::new();
    assert!(peer.sync_doc(DocumentId::derive(&["m"]), &mut doc, &mut state, false).await.expect("sync"));
    let _ = tokio_tungstenite::connect_async(relay.ws_url()).await; // one auth failure

    let http = integration_tests::http();
    let health = http.get(format!("{}/healthz", relay.http_url())).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value =
        http.get(format!("{}/readyz", relay.http_url())).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "ready");
    let metrics =
        http.get(format!("{}/metrics", relay.http_url())).send().await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{metrics}"))
    };
    assert!(value("relay_connections_total") >= 1);
    assert_eq!(value("relay_connections_open"), 1);
    assert!(value("relay_changes_stored_total") >= 1);
    assert!(value("relay_auth_failures_total") >= 1);
    assert!(value("relay_bytes_in_total") > 0);
    assert!(value("relay_sync_apply_seconds_count") >= 1, "sync latency is observed");
    assert!(metrics.contains("relay_sync_apply_seconds_bucket{le=\"+Inf\"}"));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_documents_are_evicted_and_reloaded_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { doc_idle_eviction: Duration::from_millis(100), ..Limits::default() };
    let relay = start_relay_with(dir.path(), loopback(), limits).await;
    let doc_id = DocumentId::derive(&["evict"]);
    let mut writer = TestPeer::connect(&relay.ws_url(), &token("jo", "a"), "a").await.expect("connect");
    let mut doc = doc_with("k");
    let mut state = automerge::sync::State::new();
    assert!(writer.sync_doc(doc_id, &mut doc, &mut state, false).await.expect("sync"));
    assert!(relay.hub.resident_docs() >= 1);
    eventually("document evicted", WAIT, || relay.hub.resident_docs() == 0).await;
    // Still served, from storage, to another device.
    let mut reader = TestPeer::connect(&relay.ws_url(), &token("jo", "b"), "b").await.expect("connect");
    let mut copy = Automerge::new();
    let mut state = automerge::sync::State::new();
    assert!(reader.sync_doc(doc_id, &mut copy, &mut state, true).await.expect("sync"));
    assert_eq!(copy.get_heads(), doc.get_heads());
    relay.shutdown().await;
}

/// The committed Grafana dashboard charts only metrics the relay exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_references_only_exported_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let metrics =
        integration_tests::get(format!("{}/metrics", relay.http_url())).await.expect("get").text().await.expect("text");
    let exported: Vec<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-sync-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("dashboard")).expect("json");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("relay_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(exported.contains(&base), "{name} in the dashboard is not exported");
                checked += 1;
            }
        }
    }
    assert!(checked >= 10);
    relay.shutdown().await;
}

/// Ephemeral messages (presence) reach the user's other devices, unchanged,
/// and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_messages_reach_the_users_other_devices_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(dir.path()).await;
    let mut a = TestPeer::connect(&relay.ws_url(), &token("kim", "a"), "peer-a").await.expect("a");
    let mut b = TestPeer::connect(&relay.ws_url(), &token("kim", "b"), "peer-b").await.expect("b");
    let mut other = TestPeer::connect(&relay.ws_url(), &token("lee", "a"), "peer-c").await.expect("c");
    let doc = DocumentId::derive(&["presence"]);
    let sent = Message::Ephemeral {
        sender_id: "peer-a".into(),
        target_id: "relay".into(),
        count: 3,
        session_id: "s1".into(),
        document_id: doc,
        data: b"cursor at 42".to_vec(),
    };
    a.send(sent).await.expect("send");
    match b.recv(WAIT).await.expect("recv") {
        Some(Message::Ephemeral { sender_id, target_id, count, session_id, document_id, data }) => {
            assert_eq!((sender_id.as_str(), target_id.as_str(), count), ("peer-a", "peer-b", 3));
            assert_eq!((session_id.as_str(), document_id, data.as_slice()), ("s1", doc, &b"cursor at 42"[..]));
        }
        other => panic!("expected the ephemeral message, got {other:?}"),
    }
    // Another user's device gets nothing (bounded wait for an absence).
    assert_eq!(other.recv(Duration::from_millis(300)).await.expect("recv"), None);
    relay.shutdown().await;
}

/// Reads frames until the relay's close frame; returns its code.
async fn close_code_after(ws: &mut integration_tests::peer::Ws) -> Option<u16> {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(tungstenite::Message::Close(Some(c))) => return Some(u16::from(c.code)),
                Ok(tungstenite::Message::Close(None)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// A malformed, text or oversized frame closes its connection with a code
/// that says which (1002, 1003, 1009), not 1005 or 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_with_a_code_that_says_why() {
    use futures_util::SinkExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits { max_message_bytes: 64 * 1024, ..Limits::default() };
    let relay = start_relay_with(dir.path(), loopback(), limits).await;
    let cases: [(tungstenite::Message, u16); 3] = [
        (tungstenite::Message::Binary(vec![0xff, 0x00, 0x13].into()), 1002),
        (tungstenite::Message::Text("hello".into()), 1003),
        (tungstenite::Message::Binary(vec![0u8; 200 * 1024].into()), 1009),
    ];
    for (i, (frame, expected)) in cases.into_iter().enumerate() {
        let mut peer =
            TestPeer::connect(&relay.ws_url(), &token("quinn", &format!("d{i}")), "q").await.expect("connect");
        peer.ws.send(frame).await.expect("send");
        assert_eq!(close_code_after(&mut peer.ws).await, Some(expected), "case {i}");
    }
    relay.shutdown().await;
}

/// `/readyz` says not ready while storage cannot take writes (a real full
/// disk), and ready again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = integration_tests::tmpfs::tmpfs_or_skip(&dir.path().join("relay-disk"), 8 << 20) else { return };
    let relay = start_relay(&dir.path().join("relay-disk/relay")).await;
    let ready = || async { integration_tests::get(format!("{}/readyz", relay.http_url())).await.expect("readyz") };
    assert_eq!(ready().await.status(), 200);

    let filler = disk.fill();
    let mut peer = TestPeer::connect(&relay.ws_url(), &token("rae", "a"), "a").await.expect("connect");
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "big", "x".repeat(1 << 20)).expect("put");
    tx.commit();
    let mut state = automerge::sync::State::new();
    let stored = peer.sync_doc(DocumentId::derive(&["full"]), &mut doc, &mut state, false).await;
    assert!(stored.is_err(), "a write on a full disk is refused, not acknowledged");
    let resp = ready().await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "storage", "{body}");

    std::fs::remove_file(&filler).expect("free the space");
    let mut peer = TestPeer::connect(&relay.ws_url(), &token("rae", "b"), "b").await.expect("connect");
    let mut state = automerge::sync::State::new();
    assert!(peer.sync_doc(DocumentId::derive(&["full"]), &mut doc, &mut state, false).await.expect("stored now"));
    assert_eq!(ready().await.status(), 200);
    relay.shutdown().await;
}

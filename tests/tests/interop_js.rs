//! automerge-repo's own JavaScript client (npm `@automerge/automerge-repo`
//! 2.x with its WebSocket adapter, run by node) and Rust clients exchange
//! documents through the relay, both ways.
//!
//! Needs `node` and `npm`; the JavaScript packages are installed on first
//! run (`ensure_interop_deps`). Without node the test fails and says why:
//! interop is a requirement, not an optional extra.

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use engine::{NewReview, Rating};
use integration_tests::peer::TestPeer;
use integration_tests::*;
use protocol::DocumentId;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn node_command(args: &[&str]) -> Command {
    let dir = ensure_interop_deps().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir).arg("client.mjs").args(args).stderr(Stdio::inherit());
    cmd
}

/// JS automerge 3 writes strings as collaborative text objects; Rust here
/// writes scalars. Read either.
fn read_string(doc: &Automerge, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_owned),
        (automerge::Value::Object(automerge::ObjType::Text), id) => doc.text(&id).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_rust_clients_exchange_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&dir.path().join("relay")).await;
    let js_url = |device: &str| format!("{}?token={}", relay.ws_url(), token("carol", device));

    // JS → Rust: the JS client creates a document; a Rust peer of the same
    // user asks for it by id and receives its content.
    let mut js = node_command(&["create", &js_url("js-creator")]).stdout(Stdio::piped()).spawn().expect("node runs");
    let mut line = String::new();
    BufReader::new(js.stdout.take().expect("stdout")).read_line(&mut line).expect("js prints the doc url");
    let js_doc: DocumentId = line.trim().parse().expect("automerge url from js");

    // Await the relay storing what the JS client pushed (it is the only client so far).
    let stored = || relay.hub.metrics.changes_stored.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the relay stored the JS document", Duration::from_secs(30), || stored() >= 1).await;
    let mut rust = TestPeer::connect(&relay.ws_url(), &token("carol", "rust"), "rust-peer").await.expect("connect");
    let mut doc = Automerge::new();
    let mut state = automerge::sync::State::new();
    assert!(rust.sync_doc(js_doc, &mut doc, &mut state, true).await.expect("sync"), "the relay has the JS document");
    assert_eq!(read_string(&doc, "text").as_deref(), Some("hello from js"));
    let _ = js.kill();
    let _ = js.wait();

    // Rust → JS: a Rust peer creates a document; the JS client finds it.
    let rust_doc = DocumentId::from_random(uuid::Uuid::new_v4().into_bytes());
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "text", "hello from rust").expect("put");
    tx.commit();
    let mut state = automerge::sync::State::new();
    assert!(rust.sync_doc(rust_doc, &mut doc, &mut state, false).await.expect("sync"));
    let out = node_command(&["find", &js_url("js-finder"), &rust_doc.url()]).output().expect("node runs");
    assert!(out.status.success(), "js find failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from js");
    assert_eq!(json["text"], "hello from rust");

    // The engine's own documents are plain automerge-repo documents too.
    let phone = open_engine(&dir.path().join("phone"), "carol", "phone");
    phone
        .record_review(NewReview {
            item_id: "apple".into(),
            rating: Rating::Good,
            reviewed_at: 1_790_000_000_000,
            duration_ms: 1000,
            session_id: None,
        })
        .expect("review");
    phone.start_sync(relay_config(&relay.ws_url(), "carol", "phone")).expect("sync");
    eventually("phone synced", Duration::from_secs(20), || settled(&phone)).await;
    let progress_doc: DocumentId = phone.document_heads().expect("heads")[0].0.parse().expect("id");
    let out = node_command(&["find", &js_url("js-reader"), &progress_doc.url(), "r/"]).output().expect("node runs");
    assert!(out.status.success(), "js find failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from js");
    let reviews: Vec<&serde_json::Value> =
        json.as_object().expect("map").iter().filter(|(k, _)| k.starts_with("r/")).map(|(_, v)| v).collect();
    assert_eq!(reviews.len(), 1);
    // A review is one JSON string, which JavaScript reads with JSON.parse.
    let review: serde_json::Value =
        serde_json::from_str(reviews[0].as_str().expect("a review is a string")).expect("JSON");
    assert_eq!(review["item"], "apple");
    assert_eq!(review["rating"], 3);
    relay.shutdown().await;
}

/// automerge-repo's JS client bootstraps a large document it has never seen
/// (20,000 changes, one key each) from the relay alone: the Rust peer that
/// uploaded it has gone, and the relay was restarted, so what the client
/// gets is what the relay stored. Every key arrives with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_client_bootstraps_a_large_document_from_the_relay() {
    const CHANGES: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let relay = start_relay(&relay_dir).await;
    let mut doc = Automerge::new();
    for i in 0..CHANGES {
        let key = if i + 1 == CHANGES { "zz-last".to_string() } else { format!("k{i:05}") };
        let mut tx = doc.transaction();
        tx.put(ROOT, key.as_str(), i as i64).expect("put");
        tx.commit();
    }
    let id = DocumentId::from_random(uuid::Uuid::new_v4().into_bytes());
    let mut uploader = TestPeer::connect(&relay.ws_url(), &token("dana", "rust"), "uploader").await.expect("connect");
    let mut state = automerge::sync::State::new();
    assert!(uploader.sync_doc(id, &mut doc, &mut state, false).await.expect("upload"), "the relay took the document");
    drop(uploader);
    relay.shutdown().await;

    let relay = start_relay(&relay_dir).await;
    let url = format!("{}?token={}", relay.ws_url(), token("dana", "js-phone"));
    let out = node_command(&["find", &url, &id.url(), "zz-last"]).output().expect("node runs");
    assert!(out.status.success(), "js find failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from js");
    let map = json.as_object().expect("the document is a map");
    assert_eq!(map.len(), CHANGES, "every key reached the JS client");
    assert_eq!(map["zz-last"], (CHANGES - 1) as i64);
    assert_eq!(map["k00000"], 0);
    assert_eq!(map["k12345"], 12345);
    relay.shutdown().await;
}

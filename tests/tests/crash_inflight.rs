//! The relay is SIGKILLed while acknowledgements are flowing (not after the
//! devices settled): every change a device saw acknowledged is there after
//! the restart.

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash};
use integration_tests::peer::TestPeer;
use integration_tests::*;
use protocol::{DocumentId, Message};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WRITERS: usize = 4;
/// Acknowledgements seen (in all) before the relay is killed.
const KILL_AFTER_ACKS: usize = 150;

/// Writes one change at a time and waits for the relay's reply; a change is
/// acknowledged when the relay's advertised heads include it. Returns the
/// acknowledged changes when the connection dies.
async fn writer(url: String, user: &'static str, n: usize, acks: Arc<AtomicUsize>) -> (DocumentId, Vec<ChangeHash>) {
    let doc_id = DocumentId::derive(&["inflight", &n.to_string()]);
    let mut acked = Vec::new();
    let Ok(mut peer) = TestPeer::connect(&url, &token(user, &format!("w{n}")), &format!("w{n}")).await else {
        return (doc_id, acked);
    };
    let mut doc = Automerge::new();
    let mut state = automerge::sync::State::new();
    for i in 0..100_000u64 {
        let mut tx = doc.transaction();
        if tx.put(automerge::ROOT, format!("k{i}"), i as i64).is_err() {
            break;
        }
        tx.commit();
        let head = doc.get_heads();
        // Exchange until the relay's heads include the new change.
        let Some(m) = peer.sync_message(doc_id, &doc, &mut state) else { break };
        if peer.send(m).await.is_err() {
            return (doc_id, acked);
        }
        loop {
            match peer.recv(Duration::from_secs(5)).await {
                Ok(Some(Message::Sync { data, .. })) => {
                    let Ok(msg) = automerge::sync::Message::decode(&data) else { return (doc_id, acked) };
                    if doc.receive_sync_message(&mut state, msg).is_err() {
                        return (doc_id, acked);
                    }
                    if state.their_heads.as_ref().is_some_and(|h| head.iter().all(|x| h.contains(x))) {
                        acked.extend(head.iter().copied());
                        acks.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if let Some(m) = peer.sync_message(doc_id, &doc, &mut state)
                        && peer.send(m).await.is_err()
                    {
                        return (doc_id, acked);
                    }
                }
                Ok(Some(_)) => {}
                _ => return (doc_id, acked), // killed
            }
        }
    }
    (doc_id, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_acknowledging_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay_dir = dir.path().join("relay");
    let exe = env!("CARGO_BIN_EXE_test-relay");
    let (mut relay, url) = spawn_relay_process(exe, &relay_dir);
    let acks = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS).map(|n| tokio::spawn(writer(url.clone(), "alice", n, acks.clone()))).collect();

    eventually("acknowledgements are flowing", Duration::from_secs(60), || {
        acks.load(Ordering::SeqCst) >= KILL_AFTER_ACKS
    })
    .await;
    relay.kill().expect("SIGKILL"); // mid-flow: writers are still writing
    relay.wait().expect("reaped");
    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.expect("writer task"));
    }
    let total: usize = results.iter().map(|(_, a)| a.len()).sum();
    println!("killed after {total} acknowledged changes");

    let (mut relay, url) = spawn_relay_process(exe, &relay_dir);
    let mut reader = TestPeer::connect(&url, &token("alice", "reader"), "reader").await.expect("reader");
    for (doc_id, acked) in results {
        let mut copy = Automerge::new();
        let mut state = automerge::sync::State::new();
        if acked.is_empty() {
            continue;
        }
        assert!(reader.sync_doc(doc_id, &mut copy, &mut state, true).await.expect("sync"), "{doc_id} is gone");
        let missing: Vec<_> = acked.iter().filter(|h| copy.get_change_meta_by_hash(h).is_none()).collect();
        assert!(missing.is_empty(), "{doc_id}: {} of {} acknowledged changes lost", missing.len(), acked.len());
    }
    relay.kill().expect("kill");
    let _ = relay.wait();
}

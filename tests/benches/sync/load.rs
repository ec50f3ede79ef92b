//! Many device pairs editing shared documents through a server: our relay
//! or automerge-repo's Node sync server, driven by the same Rust peers.

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use integration_tests::peer::TestPeer;
use integration_tests::token;
use protocol::{DocumentId, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

pub struct LoadResult {
    pub edits: usize,
    pub failed_pairs: usize,
    pub wall: Duration,
    /// Sender's change acknowledged by the server.
    pub ack: Vec<Duration>,
    /// Sender's change applied on the other device.
    pub delivery: Vec<Duration>,
    pub first_error: Option<String>,
}

impl LoadResult {
    fn fail(&mut self, e: String) {
        self.failed_pairs += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    pub fn throughput(&self) -> f64 {
        self.edits as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn contains_all(have: &[automerge::ChangeHash], want: &[automerge::ChangeHash]) -> bool {
    want.iter().all(|h| have.contains(h))
}

/// Reads messages for `doc_id` on `peer`, applying and answering them,
/// until `done(doc, state)` holds.
async fn pump(
    peer: &mut TestPeer,
    doc_id: DocumentId,
    doc: &mut Automerge,
    state: &mut sync::State,
    done: impl Fn(&Automerge, &sync::State) -> bool,
) -> Result<Instant, String> {
    while !done(doc, state) {
        match peer.recv(Duration::from_secs(20)).await? {
            Some(Message::Sync { document_id, data, .. }) if document_id == doc_id => {
                let m = sync::Message::decode(&data).map_err(|e| e.to_string())?;
                doc.receive_sync_message(state, m).map_err(|e| e.to_string())?;
                if let Some(reply) = peer.sync_message(doc_id, doc, state) {
                    peer.send(reply).await?;
                }
            }
            Some(Message::Error { message }) => return Err(message),
            Some(_) => {}
            None => return Err("server went quiet".into()),
        }
    }
    Ok(Instant::now())
}

/// Applies one message that arrived outside the measured loop.
async fn answer(
    peer: &mut TestPeer,
    doc_id: DocumentId,
    doc: &mut Automerge,
    state: &mut sync::State,
    message: Option<Message>,
) -> Result<(), String> {
    match message {
        None => Err("server closed the connection".into()),
        Some(Message::Sync { document_id, data, .. }) if document_id == doc_id => {
            let m = sync::Message::decode(&data).map_err(|e| e.to_string())?;
            doc.receive_sync_message(state, m).map_err(|e| e.to_string())?;
            if let Some(reply) = peer.sync_message(doc_id, doc, state) {
                peer.send(reply).await?;
            }
            Ok(())
        }
        Some(Message::Error { message }) => Err(message),
        Some(_) => Ok(()),
    }
}

/// How the senders pace their edits.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Each sender edits again as soon as its last edit was acknowledged
    /// and delivered: every pair always has one edit in flight, so the
    /// latency is the queue (Little's law: edits in flight / throughput).
    Saturated,
    /// Each sender edits once per interval, the senders' schedules spread
    /// evenly over it: a fixed offered load. Latency is measured from the
    /// scheduled time, so an edit that starts late because the one before
    /// it was slow counts its wait (no coordinated omission).
    Every(Duration),
}

async fn pair(
    (url_a, url_b): (String, String),
    i: usize,
    edits: usize,
    pace: (Pace, usize),
    barrier: Arc<Barrier>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Measured, String> {
    let (pace, pairs) = pace;
    let user = format!("load-{i}");
    let connected = async {
        let a = TestPeer::connect(&url_a, &token(&user, "a"), &format!("a-{i}")).await?;
        let b = TestPeer::connect(&url_b, &token(&user, "b"), &format!("b-{i}")).await?;
        Ok::<_, String>((a, b))
    }
    .await;
    let (mut a, mut b) = match connected {
        Ok(p) => p,
        Err(e) => {
            drop(permit);
            barrier.wait().await;
            return Err(e);
        }
    };
    let doc_id = DocumentId::from_random(uuid::Uuid::new_v4().into_bytes());
    let mut da = Automerge::new();
    let mut tx = da.transaction();
    let _ = tx.put(automerge::ROOT, "n", 0i64);
    tx.commit();
    let mut sa = sync::State::new();
    let mut db = Automerge::new();
    let mut sb = sync::State::new();
    let setup = async {
        a.sync_doc(doc_id, &mut da, &mut sa, false).await?;
        if !b.sync_doc(doc_id, &mut db, &mut sb, true).await? {
            return Err("server does not have the document".to_string());
        }
        Ok(())
    }
    .await;
    drop(permit);
    if let Err(e) = setup {
        barrier.wait().await;
        return Err(format!("setup: {e}"));
    }
    // Keep both sockets read while the other pairs set up: servers ping idle
    // peers (automerge-repo's Node adapter drops one that misses a pong).
    {
        let wait = barrier.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                m = a.recv(Duration::from_secs(3600)) => answer(&mut a, doc_id, &mut da, &mut sa, m?).await.map_err(|e| format!("waiting: {e}"))?,
                m = b.recv(Duration::from_secs(3600)) => answer(&mut b, doc_id, &mut db, &mut sb, m?).await.map_err(|e| format!("waiting: {e}"))?,
            }
        }
    }

    let mut measured = Measured { acks: Vec::with_capacity(edits), deliveries: Vec::with_capacity(edits), error: None };
    let start = tokio::time::Instant::now();
    for e in 1..=edits {
        let scheduled = match pace {
            Pace::Saturated => None,
            Pace::Every(interval) => {
                let offset = interval.mul_f64(i as f64 / pairs.max(1) as f64);
                let at = start + offset + interval * (e as u32 - 1);
                tokio::time::sleep_until(at).await;
                Some(at.into_std())
            }
        };
        let mut tx = da.transaction();
        let _ = tx.put(automerge::ROOT, "n", e as i64);
        tx.commit();
        let target = da.get_heads();
        let t0 = scheduled.unwrap_or_else(Instant::now);
        if let Some(m) = a.sync_message(doc_id, &da, &mut sa)
            && let Err(err) = a.send(m).await
        {
            measured.error = Some(format!("edit {e}, sending: {err}"));
            break;
        }
        let wa = pump(&mut a, doc_id, &mut da, &mut sa, |_, s| contains_all(&s.shared_heads, &target));
        let wb = pump(&mut b, doc_id, &mut db, &mut sb, |d, _| contains_all(&d.get_heads(), &target));
        match tokio::join!(wa, wb) {
            (Ok(acked), Ok(delivered)) => {
                measured.acks.push(acked.duration_since(t0));
                measured.deliveries.push(delivered.duration_since(t0));
            }
            (Err(err), _) => {
                measured.error = Some(format!("edit {e}, sender: {err}"));
                break;
            }
            (_, Err(err)) => {
                measured.error = Some(format!("edit {e}, receiver: {err}"));
                break;
            }
        }
    }
    Ok(measured)
}

/// What one pair measured: an acknowledgement and a delivery per edit that
/// completed, and what stopped it early, if anything. A pair that fails
/// midway keeps the edits it completed: the server's CPU for them counts,
/// so they count too.
struct Measured {
    acks: Vec<Duration>,
    deliveries: Vec<Duration>,
    error: Option<String>,
}

/// `pairs` pairs of devices (one user each) make `edits` sequential edits to
/// their shared document, all pairs at once, paced by `pace`.
pub async fn run(url: &str, pairs: usize, edits: usize, pace: Pace) -> LoadResult {
    run_across(|_| (url.to_owned(), url.to_owned()), pairs, edits, pace).await
}

/// [`run`] with each pair's two devices on the servers `urls(i)` names
/// (sender, receiver): several relays behind one database.
pub async fn run_across(
    urls: impl Fn(usize) -> (String, String),
    pairs: usize,
    edits: usize,
    pace: Pace,
) -> LoadResult {
    let barrier = Arc::new(Barrier::new(pairs + 1));
    let mut tasks = Vec::with_capacity(pairs);
    // Few handshakes at once: a pair reads one socket at a time while it sets up,
    // and a slow server must not take so long that it drops the other for a
    // missed ping.
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..pairs {
        let (urls, barrier, limit) = (urls(i), barrier.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            // Bound concurrent handshakes; the permit is released before the measured phase.
            let Ok(permit) = limit.acquire_owned().await else {
                barrier.wait().await;
                return Err("semaphore closed".to_string());
            };
            pair(urls, i, edits, (pace, pairs), barrier, permit).await
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    let mut result = LoadResult {
        edits: 0,
        failed_pairs: 0,
        wall: Duration::ZERO,
        ack: Vec::new(),
        delivery: Vec::new(),
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok(Ok(measured)) => {
                result.edits += measured.deliveries.len();
                result.ack.extend(measured.acks);
                result.delivery.extend(measured.deliveries);
                if let Some(e) = measured.error {
                    result.fail(e);
                }
            }
            Ok(Err(e)) => result.fail(e),
            Err(e) => result.fail(e.to_string()),
        }
    }
    result.wall = t0.elapsed();
    result.ack.sort();
    result.delivery.sort();
    result
}

/// Connects `n` devices (two per user) that then sit idle; returns them.
/// `n` connected devices (two per user); with `sync_one_doc` each has synced
/// a document of its user's first.
pub async fn idle_devices(url: &str, n: usize, sync_one_doc: bool) -> (Vec<TestPeer>, usize) {
    let limit = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (url, limit) = (url.to_owned(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut peer = TestPeer::connect(
                &url,
                &token(&format!("idle-{}", i / 2), &format!("d{}", i % 2)),
                &format!("idle-{i}"),
            )
            .await?;
            if sync_one_doc {
                // A device that has synced its progress: the relay holds a
                // sync state for it, not just a bare socket.
                let doc_id = DocumentId::derive(&["idle", &(i / 2).to_string()]);
                let mut doc = Automerge::new();
                let mut tx = doc.transaction();
                tx.put(automerge::ROOT, format!("device-{}", i % 2), i as i64).map_err(|e| e.to_string())?;
                tx.commit();
                let mut state = sync::State::new();
                peer.sync_doc(doc_id, &mut doc, &mut state, false).await?;
            }
            Ok::<TestPeer, String>(peer)
        }));
    }
    let mut peers = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(p)) => peers.push(p),
            _ => failed += 1,
        }
    }
    (peers, failed)
}

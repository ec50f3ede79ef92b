//! What the app is told when sync cannot connect, and where the device
//! token comes from: a provider asked before every connection attempt.

use engine::{Credentials, NewReview, Rating, RelayConfig, SyncProblem, TokenProvider};
use integration_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Counts how often it was asked; answers with `answer(n)` for the n-th ask.
struct Provider<F: Fn(u32) -> Result<String, String> + Send + Sync> {
    asked: AtomicU32,
    answer: F,
}

impl<F: Fn(u32) -> Result<String, String> + Send + Sync> TokenProvider for Provider<F> {
    fn token(&self) -> Result<String, String> {
        (self.answer)(self.asked.fetch_add(1, Ordering::SeqCst))
    }
}

fn config(url: &str, credentials: Credentials) -> RelayConfig {
    let mut c = RelayConfig::with_credentials(url, credentials);
    c.initial_backoff = Duration::from_millis(20);
    c.max_backoff = Duration::from_millis(100);
    c
}

fn problem(e: &engine::Engine) -> Option<SyncProblem> {
    e.sync_status().ok().and_then(|s| s.problem)
}

#[tokio::test]
async fn each_failure_is_named_for_the_app_and_a_fresh_token_is_asked_for_each_attempt() {
    let dir = tempfile::tempdir().expect("tmp");
    let relay = start_relay(&dir.path().join("relay")).await;
    let url = relay.ws_url();
    let engine = open_engine(&dir.path().join("phone"), "alice", "phone");
    engine
        .record_review(NewReview {
            item_id: "w".into(),
            rating: Rating::Good,
            reviewed_at: 1_790_000_000_000,
            duration_ms: 1000,
            session_id: None,
        })
        .expect("review");

    // A token the relay cannot verify.
    engine.start_sync(config(&url, Credentials::Fixed("garbage".into()))).expect("starts");
    eventually("unauthorized", WAIT, || problem(&engine) == Some(SyncProblem::Unauthorized)).await;

    // A provider with no token, asked again at every attempt.
    let none = Arc::new(Provider { asked: AtomicU32::new(0), answer: |_| Err("signed out".to_string()) });
    engine.start_sync(config(&url, Credentials::Provider(none.clone()))).expect("starts");
    eventually("no token, asked three times", WAIT, || {
        problem(&engine) == Some(SyncProblem::NoToken) && none.asked.load(Ordering::SeqCst) >= 3
    })
    .await;
    let status = engine.sync_status().expect("status");
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("signed out")), "{status:?}");

    // An expired token first, then a fresh one: synced, the problem cleared.
    let refreshing = Arc::new(Provider {
        asked: AtomicU32::new(0),
        answer: |n| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
            let exp = if n == 0 { now.as_secs() - 60 } else { now.as_secs() + 3600 };
            relay::config::dev_issuer().issue("alice", "phone", exp).map_err(|e| e.to_string())
        },
    });
    engine.start_sync(config(&url, Credentials::Provider(refreshing.clone()))).expect("starts");
    eventually("synced with the second token", WAIT, || {
        engine.sync_status().is_ok_and(|s| s.connected && s.pending_documents == 0 && s.problem.is_none())
    })
    .await;
    assert!(refreshing.asked.load(Ordering::SeqCst) >= 2);

    // Nothing listening on the port.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    engine
        .start_sync(config(&format!("ws://127.0.0.1:{closed_port}/sync"), Credentials::Fixed(token("alice", "phone"))))
        .expect("starts");
    eventually("unreachable", WAIT, || problem(&engine) == Some(SyncProblem::Unreachable)).await;
    engine.stop_sync();
}

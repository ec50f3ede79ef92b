//! TLS end to end, on loopback with a CA made in the test: devices sync over
//! `wss://`, download releases over `https://`, and refuse a relay whose
//! certificate they cannot verify.

use engine::bootstrap::download::RetryPolicy;
use engine::bootstrap::manager::{BootstrapConfig, ReleaseManager, UpdateOutcome};
use engine::{NewReview, Rating};
use integration_tests::tls::TestPki;
use integration_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const SEED: [u8; 32] = [5; 32];

async fn tls_relay(dir: &std::path::Path, pki: &TestPki) -> relay::RunningRelay {
    let mut config = relay::Config::local(dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
    config.tls = Some(pki.server_config());
    config.admin_tokens = vec![relay::release::admin::AdminToken { name: "t".into(), token: TEST_ADMIN_TOKEN.into() }];
    config.manifest_key = Some(("k1".into(), SEED));
    relay::start(config).await.expect("relay")
}

fn localhost(url: &str) -> String {
    url.replace("127.0.0.1", "localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_sync_over_wss_and_refuse_an_unverified_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new();
    let relay = tls_relay(&dir.path().join("relay"), &pki).await;
    assert!(relay.ws_url().starts_with("wss://"));
    let url = localhost(&relay.ws_url());

    let tls_config = |device: &str| {
        let mut c = relay_config(&url, "alice", device);
        c.extra_ca_pem = Some(pki.ca_pem.as_bytes().to_vec());
        c
    };
    let phone = open_engine(&dir.path().join("phone"), "alice", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "alice", "tablet");
    phone.start_sync(tls_config("phone")).expect("sync");
    tablet.start_sync(tls_config("tablet")).expect("sync");
    phone
        .record_review(NewReview {
            item_id: "apple".into(),
            rating: Rating::Good,
            reviewed_at: 1_790_000_000_000,
            duration_ms: 900,
            session_id: None,
        })
        .expect("review");
    eventually("the review crosses wss://", WAIT, || tablet.review_count().ok() == Some(1)).await;

    // Without the CA, the relay's certificate is not trusted: no connection.
    let stranger = open_engine(&dir.path().join("stranger"), "alice", "laptop");
    stranger.start_sync(relay_config(&url, "alice", "laptop")).expect("sync");
    eventually("the untrusted connection fails with a certificate error", WAIT, || {
        stranger.sync_status().ok().and_then(|s| s.last_error).is_some_and(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    assert_eq!(stranger.review_count().expect("count"), 0);
    assert!(!stranger.sync_status().expect("status").connected);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_download_over_https_with_a_pinned_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new();
    let relay = tls_relay(&dir.path().join("relay"), &pki).await;
    let base = localhost(&relay.http_url());
    assert!(base.starts_with("https://"));
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config::client_config(Some(pki.ca_pem.as_bytes())).expect("tls"))
        .build()
        .expect("client");
    let id = integration_tests::admin::publish(
        &http,
        &base,
        TEST_ADMIN_TOKEN,
        ("vocab-en", "stable", "1.0.0"),
        &[("words.db", b"words over tls".to_vec())],
    )
    .await;

    let mut keys = release::TrustedKeys::new();
    keys.trust("k1", release::ManifestSigner::new("k1", SEED).public_key()).expect("key");
    let config = |ca: Option<Vec<u8>>| BootstrapConfig {
        dataset: "vocab-en".into(),
        channel: "stable".into(),
        app_version: "1.0.0".parse().expect("version"),
        install_id: "install-1".into(),
        relay_url: base.clone(),
        trusted_keys: keys.clone(),
        embedded: None,
        remote_bootstrap: true,
        max_failed_launches: 2,
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        extra_ca_pem: ca,
        crash_point: None,
    };
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    let untrusting = ReleaseManager::open(&dir.path().join("device-a"), config(None)).expect("open");
    assert!(untrusting.check_for_update(&|_| {}, &mut rx).await.is_err(), "an unverified relay is refused");

    let m = ReleaseManager::open(&dir.path().join("device-b"), config(Some(pki.ca_pem.clone().into_bytes())))
        .expect("open");
    let outcome = m.check_for_update(&|_| {}, &mut rx).await.expect("update over https");
    assert_eq!(outcome, UpdateOutcome::Activated { release_id: id, version: "1.0.0".into() });
    let active = m.active().expect("active");
    assert_eq!(std::fs::read(&active.files[0].1).expect("file"), b"words over tls");
    relay.shutdown().await;
}

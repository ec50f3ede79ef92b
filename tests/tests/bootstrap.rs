//! Device-side release bootstrap (D-011, D-013..D-017) against a real relay:
//! offline first launch on the embedded release, updates, refusal of bad
//! manifests, interrupted updates, failed launches and deprecation.

use engine::bootstrap::activation::{ActivePointer, PointerArtifact};
use engine::bootstrap::download::{Progress, RetryPolicy};
use engine::bootstrap::manager::{BootstrapConfig, BootstrapError, EmbeddedRelease, ReleaseManager, UpdateOutcome};
use integration_tests::TEST_ADMIN_TOKEN;
use release::checksum::sha256_hex;
use release::{ManifestError, ManifestSigner, TrustedKeys};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const SEED: [u8; 32] = [9; 32];

struct Relay {
    relay: relay::RunningRelay,
    http: reqwest::Client,
}

impl Relay {
    async fn start(dir: &Path, ttl: Duration) -> Relay {
        let mut config = relay::Config::local(dir.join("relay"), "127.0.0.1:0".parse().expect("addr"));
        config.admin_tokens =
            vec![relay::release::admin::AdminToken { name: "t".into(), token: TEST_ADMIN_TOKEN.into() }];
        config.manifest_key = Some(("k1".into(), SEED));
        config.manifest_ttl = ttl;
        Relay { relay: relay::start(config).await.expect("relay"), http: integration_tests::http() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req =
            self.http.request(method, format!("{}{path}", self.relay.http_url())).bearer_auth(TEST_ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    /// Publishes a release of `files`; returns its id.
    async fn publish(&self, version: &str, files: &[(&str, Vec<u8>)]) -> String {
        integration_tests::admin::publish(
            &self.http,
            &self.relay.http_url(),
            TEST_ADMIN_TOKEN,
            ("vocab-en", "stable", version),
            files,
        )
        .await
    }
}

fn keys() -> TrustedKeys {
    let mut k = TrustedKeys::new();
    k.trust("k1", ManifestSigner::new("k1", SEED).public_key()).expect("key");
    k
}

fn embedded(dir: &Path) -> EmbeddedRelease {
    let edir = dir.join("app-bundle");
    std::fs::create_dir_all(&edir).expect("dir");
    std::fs::write(edir.join("words.db"), b"embedded words").expect("write");
    EmbeddedRelease {
        dir: edir,
        pointer: ActivePointer {
            release_id: "embedded".into(),
            dataset: "vocab-en".into(),
            channel: "stable".into(),
            version: "0.1.0".into(),
            artifacts: vec![PointerArtifact {
                name: "words.db".into(),
                sha256: sha256_hex(b"embedded words"),
                size: 14,
            }],
        },
    }
}

fn config(dir: &Path, relay_url: &str) -> BootstrapConfig {
    BootstrapConfig {
        dataset: "vocab-en".into(),
        channel: "stable".into(),
        app_version: "1.0.0".parse().expect("version"),
        install_id: "install-1".into(),
        relay_url: relay_url.into(),
        trusted_keys: keys(),
        embedded: Some(embedded(dir)),
        remote_bootstrap: true,
        max_failed_launches: 2,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        extra_ca_pem: None,
        crash_point: None,
    }
}

async fn update(m: &ReleaseManager) -> Result<UpdateOutcome, BootstrapError> {
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    m.check_for_update(&|_| {}, &mut rx).await
}

fn active_files_verify(m: &ReleaseManager) -> bool {
    let Some(active) = m.active() else { return false };
    active.files.iter().all(|(_, path)| std::fs::read(path).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_launch_is_offline_on_the_embedded_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens here.
    let m = ReleaseManager::open(dir.path(), config(dir.path(), "http://127.0.0.1:9")).expect("open");
    let active = m.active().expect("embedded");
    assert!(active.embedded);
    assert_eq!(std::fs::read(&active.files[0].1).expect("file"), b"embedded words");
    assert!(matches!(update(&m).await, Err(BootstrapError::Offline(_))));
    assert_eq!(m.active(), Some(active));

    let mut off = config(dir.path(), "http://127.0.0.1:9");
    off.remote_bootstrap = false;
    let m = ReleaseManager::open(dir.path(), off).expect("open");
    assert_eq!(update(&m).await.expect("no error"), UpdateOutcome::Disabled);
    // This build of the engine is a non-dev build: remote bootstrap defaults to on.
    const { assert!(engine::bootstrap::manager::REMOTE_BOOTSTRAP_DEFAULT) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_failed_launches_roll_back_and_the_bad_release_is_never_picked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
    let v1 = relay.publish("1.0.0", &[("words.db", b"words v1".to_vec())]).await;
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
    assert_eq!(
        update(&m).await.expect("update"),
        UpdateOutcome::Activated { release_id: v1.clone(), version: "1.0.0".into() }
    );
    assert_eq!(m.active().expect("active").release_id, v1);
    assert!(active_files_verify(&m));
    assert_eq!(update(&m).await.expect("update"), UpdateOutcome::UpToDate);
    assert_eq!(m.report_launch(true).expect("report"), None);

    let v2 = relay.publish("2.0.0", &[("words.db", b"words v2, broken".to_vec())]).await;
    assert!(matches!(update(&m).await.expect("update"), UpdateOutcome::Activated { .. }));
    assert_eq!(m.active().expect("active").release_id, v2);
    let stored = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("releases/store"))
            .expect("store")
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    };
    let mut expected = vec![v1.clone(), v2.clone()];
    expected.sort();
    assert_eq!(stored(dir.path()), expected, "the active and the previous known-good are kept");
    let v3 = relay.publish("3.0.0", &[("words.db", b"words v3".to_vec())]).await;
    // (v2 has not launched fine yet, so v1 stays the known-good fallback and v2 is collected.)
    update(&m).await.expect("v3");
    let mut expected = vec![v1.clone(), v3.clone()];
    expected.sort();
    assert_eq!(stored(dir.path()), expected, "old releases are garbage-collected");
    let v2 = v3;
    // The new release fails to launch twice: back to the previous known-good one.
    assert_eq!(m.report_launch(false).expect("report"), None);
    assert_eq!(m.report_launch(false).expect("report"), Some(v1.clone()));
    assert_eq!(m.active().expect("active").release_id, v1);
    assert!(active_files_verify(&m));
    // v2 is still the newest offered: it is not picked again.
    assert_eq!(update(&m).await.expect("update"), UpdateOutcome::SkippedBad { release_id: v2 });
    assert_eq!(m.active().expect("active").release_id, v1);

    // A reopened manager (app restart) sees the same state.
    drop(m);
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("reopen");
    assert_eq!(m.active().expect("active").release_id, v1);

    // Deprecated upstream while active: back to the embedded release.
    relay
        .call(reqwest::Method::POST, &format!("/admin/releases/{v1}/deprecate"), Some(json!({"reason": "typo"})))
        .await;
    assert_eq!(update(&m).await.expect("update"), UpdateOutcome::RolledBack { from: v1, to: "embedded".into() });
    assert!(m.active().expect("active").embedded);
    relay.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_update_never_disturbs_the_active_release_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
    let small = vec![1u8; 64 * 1024];
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let v1 = relay.publish("1.0.0", &[("a.db", small.clone())]).await;
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
    update(&m).await.expect("v1");
    let v2 = relay.publish("2.0.0", &[("a.db", small.clone()), ("b.db", big.clone())]).await;

    // The app is stopped in the middle of b.db.
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let stop_at = small.len() as u64 + 500_000;
    let stopper = move |p: Progress| {
        if p.done >= stop_at {
            let _ = tx.send(true);
        }
    };
    let out = m.check_for_update(&stopper, &mut rx).await;
    assert!(matches!(out, Err(BootstrapError::Download(_))), "{out:?}");
    assert_eq!(m.active().expect("active").release_id, v1, "the active release is untouched");
    assert!(active_files_verify(&m));

    // Next start: a.db is not fetched again, b.db resumes.
    let first = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = first.clone();
    let report = move |p: Progress| {
        if let Ok(mut f) = seen.lock() {
            f.get_or_insert(p.done);
        }
    };
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    let out = m.check_for_update(&report, &mut rx).await.expect("update");
    assert_eq!(out, UpdateOutcome::Activated { release_id: v2.clone(), version: "2.0.0".into() });
    let first_report = first.lock().ok().and_then(|f| *f).expect("progress reported");
    assert!(first_report > small.len() as u64 + 400_000, "resumed at {first_report}");
    let active = m.active().expect("active");
    assert_eq!(active.release_id, v2);
    for (name, path) in &active.files {
        let expected = if name == "a.db" { &small } else { &big };
        assert_eq!(&std::fs::read(path).expect("file"), expected);
    }
    relay.relay.shutdown().await;
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Serves one fixed body at every path (a replayed or forged manifest).
async fn fake_relay(body: String) -> String {
    serve(axum::Router::new().fallback(move || {
        let b = body.clone();
        async move { ([("content-type", "application/json")], b) }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_expired_unsigned_and_wrongly_signed_manifests_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
    let v1 = relay.publish("1.0.0", &[("words.db", b"one".to_vec())]).await;
    let old_manifest = integration_tests::get(format!("{}/v1/releases/{v1}/manifest", relay.relay.http_url()))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let v2 = relay.publish("2.0.0", &[("words.db", b"two".to_vec())]).await;
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
    update(&m).await.expect("v2");
    assert_eq!(m.active().expect("active").release_id, v2);

    type Expect = fn(&BootstrapError) -> bool;
    let refusals: Vec<(String, Expect)> = vec![
        (old_manifest, |e| matches!(e, BootstrapError::Manifest(ManifestError::Rollback { .. }))),
        ("{\"key_id\":\"k1\",\"payload\":\"e30=\",\"signature\":\"AAAA\"}".into(), |e| {
            matches!(e, BootstrapError::Manifest(ManifestError::BadSignature))
        }),
        (
            {
                let forged = ManifestSigner::new("k9", [1; 32]);
                let mut m = release::manifest::Manifest {
                    format: 1,
                    release_id: "evil".into(),
                    dataset: "vocab-en".into(),
                    channel: "stable".into(),
                    version: "9.0.0".parse().expect("v"),
                    notes: String::new(),
                    min_app_version: "1.0.0".parse().expect("v"),
                    mandatory: false,
                    channel_min_version: None,
                    deprecated: None,
                    sequence: 1_000,
                    issued_at: 0,
                    expires_at: i64::MAX,
                    artifacts: vec![],
                    latest: true,
                    downgrade_allowed: false,
                };
                m.notes = "forged".into();
                serde_json::to_string(&forged.sign(&m)).expect("json")
            },
            |e| matches!(e, BootstrapError::Manifest(ManifestError::UnknownKey(_))),
        ),
        ("not json at all".into(), |e| matches!(e, BootstrapError::Offline(_))),
    ];
    for (body, expected) in refusals {
        let url = fake_relay(body).await;
        let evil = ReleaseManager::open(dir.path(), config(dir.path(), &url)).expect("open");
        let out = update(&evil).await;
        match &out {
            Err(e) if expected(e) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(evil.active().expect("active").release_id, v2, "active release untouched");
        assert!(active_files_verify(&evil));
    }

    // A relay whose manifests expire at once: refused (freeze), active untouched.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let stale = Relay::start(dir2.path(), Duration::from_millis(0)).await;
    stale.publish("1.0.0", &[("words.db", b"x".to_vec())]).await;
    let m2 = ReleaseManager::open(dir2.path(), config(dir2.path(), &stale.relay.http_url())).expect("open");
    assert!(matches!(update(&m2).await, Err(BootstrapError::Manifest(ManifestError::Expired { .. }))));
    assert!(m2.active().expect("embedded").embedded);
    relay.relay.shutdown().await;
    stale.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_killed_at_any_activation_step_leaves_a_valid_release_and_downloads_nothing_again() {
    use engine::bootstrap::activation::CrashPoint;
    for crash in [CrashPoint::AfterTempWrite, CrashPoint::AfterTempFsync, CrashPoint::AfterRename] {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
        let v1 = relay.publish("1.0.0", &[("words.db", b"one".to_vec())]).await;
        let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
        update(&m).await.expect("v1");
        drop(m);
        let v2 = relay.publish("2.0.0", &[("words.db", b"two".to_vec())]).await;
        let mut crashing = config(dir.path(), &relay.relay.http_url());
        crashing.crash_point = Some(crash);
        let m = ReleaseManager::open(dir.path(), crashing).expect("open");
        assert!(matches!(update(&m).await, Err(BootstrapError::Activation(_))), "{crash:?}");
        drop(m);
        // Reopened, offline: a valid release is active, old or new.
        let offline = ReleaseManager::open(dir.path(), config(dir.path(), "http://127.0.0.1:9")).expect("reopen");
        let active = offline.active().expect("active");
        let expected = if crash == CrashPoint::AfterRename { &v2 } else { &v1 };
        assert_eq!(&active.release_id, expected, "{crash:?}");
        assert!(active_files_verify(&offline));
        drop(offline);
        // Online again: the verified files are not downloaded again.
        let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("reopen");
        let downloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = downloads.clone();
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let out = m
            .check_for_update(
                &move |_| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                },
                &mut rx,
            )
            .await
            .expect("update");
        assert!(matches!(out, UpdateOutcome::Activated { .. } | UpdateOutcome::UpToDate), "{out:?}");
        assert_eq!(m.active().expect("active").release_id, v2);
        assert_eq!(downloads.load(std::sync::atomic::Ordering::Relaxed), 0, "{crash:?}: nothing re-downloaded");
        relay.relay.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_learns_when_its_release_is_below_the_mandatory_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
    let created = relay
        .call(
            reqwest::Method::POST,
            "/admin/releases",
            Some(json!({"dataset": "vocab-en", "channel": "stable", "version": "1.0.0", "min_app_version": "1.0.0", "notes": "n"})),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let resp = relay
        .http
        .put(format!("{}/admin/releases/{id}/artifacts/words.db", relay.relay.http_url()))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .body(vec![5u8; 100_000])
        .send()
        .await
        .expect("upload");
    assert!(resp.status().is_success());
    relay.call(reqwest::Method::POST, &format!("/admin/releases/{id}/publish"), Some(json!({"mandatory": true}))).await;

    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
    assert!(!m.mandatory_status().active_is_below, "nothing known yet");
    // The update is interrupted (the app is closed): the device still runs 0.1.0 and knows it must not.
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let _ = tx.send(true);
    assert!(m.check_for_update(&|_| {}, &mut rx).await.is_err());
    let status = m.mandatory_status();
    assert_eq!(status.minimum.map(|v| v.to_string()).as_deref(), Some("1.0.0"));
    assert!(status.active_is_below);
    // Once the mandatory release is installed, the app is no longer below it.
    update(&m).await.expect("update");
    assert!(!m.mandatory_status().active_is_below);
    relay.relay.shutdown().await;
}

/// Answers `/v1/releases/*/manifest` with 404 and passes everything else to
/// `upstream` (the real relay): a network that hides a release's own manifest.
async fn relay_without_named_manifests(upstream: String) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let upstream = upstream.clone();
        async move {
            let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            if path.starts_with("/v1/releases/") && uri.path().ends_with("/manifest") {
                return (axum::http::StatusCode::NOT_FOUND, Vec::new());
            }
            match integration_tests::get(format!("{upstream}{path}")).await {
                Ok(r) => {
                    let status = axum::http::StatusCode::from_u16(r.status().as_u16())
                        .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                    (status, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
                }
                Err(_) => (axum::http::StatusCode::BAD_GATEWAY, Vec::new()),
            }
        }
    });
    serve(app).await
}

/// Whoever answers a device's `latest` cannot move it back with a genuine,
/// fresh manifest of an older release; only a signed rollback can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moves_back_only_when_the_signed_manifest_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path(), Duration::from_secs(3600)).await;
    let v1 = relay.publish("1.0.0", &[("words.db", b"one".to_vec())]).await;
    let v2 = relay.publish("2.0.0", &[("words.db", b"two".to_vec())]).await;
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &relay.relay.http_url())).expect("open");
    update(&m).await.expect("v2");
    assert_eq!(m.active().expect("active").release_id, v2);

    // A genuine manifest of v1, signed now with the channel's current sequence,
    // replayed as the answer to `latest`.
    let fresh_v1 = integration_tests::get(format!("{}/v1/releases/{v1}/manifest", relay.relay.http_url()))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let evil = ReleaseManager::open(dir.path(), config(dir.path(), &fake_relay(fresh_v1).await)).expect("open");
    let refused = update(&evil).await;
    assert!(matches!(refused, Err(BootstrapError::NotLatest(ref id)) if *id == v1), "{refused:?}");
    assert_eq!(evil.active().expect("active").release_id, v2);
    drop(evil);

    // `latest` itself names the older release (v2 rolled out to nobody), but
    // the operator did not roll the channel back: refused.
    relay.call(reqwest::Method::POST, &format!("/admin/releases/{v2}/rollout"), Some(json!({"percent": 0}))).await;
    let outcome = update(&m).await.expect("checked");
    assert_eq!(
        outcome,
        UpdateOutcome::RefusedDowngrade {
            release_id: v1.clone(),
            version: "1.0.0".into(),
            active_version: "2.0.0".into()
        }
    );
    assert_eq!(m.active().expect("active").release_id, v2);

    // The operator deprecates v2: the channel is rolled back, and the signed
    // `latest` says so. Even where v2's own manifest cannot be fetched (so
    // the device cannot see the deprecation that way), it moves back to v1.
    relay
        .call(reqwest::Method::POST, &format!("/admin/releases/{v2}/deprecate"), Some(json!({"reason": "bad data"})))
        .await;
    let hidden = relay_without_named_manifests(relay.relay.http_url()).await;
    let m = ReleaseManager::open(dir.path(), config(dir.path(), &hidden)).expect("open");
    assert_eq!(
        update(&m).await.expect("rolled back"),
        UpdateOutcome::Activated { release_id: v1.clone(), version: "1.0.0".into() }
    );
    assert_eq!(m.active().expect("active").release_id, v1);
    relay.relay.shutdown().await;
}

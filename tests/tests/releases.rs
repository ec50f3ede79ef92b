//! The release lifecycle over HTTP against a real relay (D-001..D-010):
//! create, attach, validate, publish, roll out, deprecate, public endpoints,
//! and every refusal.

use base64::Engine;
use integration_tests::*;
use release::checksum::sha256_hex;
use release::manifest::SignedManifest;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[path = "common/registry.rs"]
mod registry;
use registry::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_need_a_valid_token_and_refusals_are_audited() {
    let r = Registry::start(1 << 20).await;
    let body = json!({"dataset": "vocab-en", "channel": "stable", "version": "1.0.0", "min_app_version": "1.0.0"});
    let resp = r.http.post(r.url("/admin/releases")).json(&body).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let err: Value = resp.json().await.expect("json error");
    assert_eq!(err["error"], "unauthorized");
    let resp = r.http.post(r.url("/admin/releases")).bearer_auth("wrong-token-but-long").json(&body).send().await;
    assert_eq!(resp.expect("send").status(), StatusCode::FORBIDDEN);
    let resp = r.http.get(r.url("/admin/audit")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A flood of refused requests costs no write each: refusals are counted
    // per source and written as one entry per source and interval.
    for _ in 0..500 {
        let resp = r.http.get(r.url("/admin/releases")).bearer_auth("another-wrong-token").send().await;
        assert_eq!(resp.expect("send").status(), StatusCode::FORBIDDEN);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (refused, total) = loop {
        let audit = r.audit().await;
        let refused: Vec<Value> = audit.iter().filter(|e| e["outcome"] == "refused").cloned().collect();
        let total: u64 =
            refused.iter().filter_map(|e| e["detail"].as_str()?.split_whitespace().next()?.parse::<u64>().ok()).sum();
        if total >= 503 || std::time::Instant::now() > deadline {
            break (refused, total);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(total, 503, "every refusal is counted: {refused:?}");
    assert!(refused.len() <= 4, "503 refusals cost {} audit rows", refused.len());
    assert!(refused.iter().all(|e| e["actor"] == "unauthenticated" && e["action"] == "admin.refused"));
    assert!(refused.iter().all(|e| e["target"] == "127.0.0.1"), "{refused:?}");
    let details: String = refused.iter().filter_map(|e| e["detail"].as_str()).collect();
    assert!(details.contains("release.create") && details.contains("audit.read") && details.contains("release.list"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let r = Registry::start(1 << 20).await;
    let resp = r
        .http
        .post(r.url("/admin/releases"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<Value>().await.expect("json")["error"], "bad_request");

    let cases = [
        (json!({"dataset": "vocab-en", "channel": "stable", "min_app_version": "1.0.0"}), "version"),
        (json!({"dataset": "vocab-en", "channel": "stable", "version": "one", "min_app_version": "1.0.0"}), "version"),
        (
            json!({"dataset": "Vocab EN", "channel": "stable", "version": "1.0.0", "min_app_version": "1.0.0"}),
            "dataset",
        ),
        (json!({"dataset": "v", "channel": "stable", "version": "1.0.0", "min_app_version": "x"}), "min_app_version"),
        (json!({"dataset": "v", "channel": "s", "version": "1.0.0", "min_app_version": "1.0.0", "extra": 1}), "extra"),
    ];
    for (body, field) in cases {
        let (status, err) = r.admin(reqwest::Method::POST, "/admin/releases", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["field"], field, "{body} -> {err}");
    }
    let (status, err) = r.admin(reqwest::Method::GET, "/admin/releases/no-such-id", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");

    let id = r.create("1.0.0").await;
    // (A literal `..` segment never reaches the relay: clients normalize it away.)
    for name in ["x..y", "a%2Fb", "a%5Cb", ".hidden"] {
        let (status, err) = r.upload(&id, name, b"x".to_vec()).await;
        assert_eq!((status, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")), "{name}");
    }
    let (status, err) = r.upload(&id, "a%0Ab", b"x".to_vec()).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")), "{err}");
    let external = json!({"name": "big.pack", "url": "https://cdn.example/big.pack", "sha256": "xyz", "size": 10});
    let (status, err) =
        r.admin(reqwest::Method::POST, &format!("/admin/releases/{id}/artifacts"), Some(external)).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("sha256")));
    let (status, _) = r.upload("no-such-release", "a.db", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = r.create_duplicate("1.0.0").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_from_draft_to_deprecated() {
    let r = Registry::start(1 << 20).await;
    let (status, _) = r
        .admin(reqwest::Method::PUT, "/admin/datasets/vocab-en", Some(json!({"required_artifacts": ["words.db"]})))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Draft with no artifacts: validation lists the problems, publish refuses with them.
    let id = r.create("1.0.0").await;
    let (status, report) = r.admin(reqwest::Method::POST, &format!("/admin/releases/{id}/validate"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["valid"], false);
    let rules: Vec<&str> =
        report["findings"].as_array().expect("findings").iter().filter_map(|f| f["rule"].as_str()).collect();
    assert!(rules.contains(&"has-artifacts") && rules.contains(&"required-artifacts"), "{rules:?}");
    let (status, err) = r.publish(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err["findings"].as_array().is_some_and(|f| !f.is_empty()), "{err}");

    // Attach: an upload (hashed while streaming) and an external artifact.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (status, release) = r.upload(&id, "words.db", bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    let artifact = &release["artifacts"][0];
    assert_eq!(artifact["sha256"], sha256_hex(&bytes));
    assert_eq!(artifact["size"], bytes.len());
    let (status, _) = r.upload(&id, "words.db", b"again".to_vec()).await;
    assert_eq!(status, StatusCode::CONFLICT, "names are unique");
    let external =
        json!({"name": "audio.pack", "url": "https://cdn.example/audio.pack", "sha256": sha256_hex(b"a"), "size": 1});
    let (status, _) = r.admin(reqwest::Method::POST, &format!("/admin/releases/{id}/artifacts"), Some(external)).await;
    assert_eq!(status, StatusCode::CREATED);

    let (_, report) = r.admin(reqwest::Method::POST, &format!("/admin/releases/{id}/validate"), None).await;
    assert_eq!(report["valid"], true, "{report}");
    let (_, shown) = r.admin(reqwest::Method::GET, &format!("/admin/releases/{id}"), None).await;
    assert_eq!(shown["state"], "validated");

    // Publish; then the release is immutable.
    let (status, published) = r.publish(&id, json!({"rollout_percent": 100})).await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["state"], "published");
    let (status, _) = r.upload(&id, "late.db", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) =
        r.admin(reqwest::Method::PATCH, &format!("/admin/releases/{id}"), Some(json!({"notes": "edited"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = r.admin(reqwest::Method::DELETE, &format!("/admin/releases/{id}/artifacts/words.db"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = r.publish(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "already published");

    // A version not above the published one cannot be published.
    let older = r.create("0.9.0").await;
    r.upload(&older, "words.db", b"old".to_vec()).await;
    let (status, err) = r.publish(&older, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err["findings"].as_array().expect("findings").iter().any(|f| f["rule"] == "version-increases"), "{err}");

    // Public: latest is a signed manifest covering the artifacts.
    let m = r.latest("device-1", "1.0.0").await.expect("a release is offered");
    assert_eq!((m.release_id.as_str(), m.version.to_string().as_str()), (id.as_str(), "1.0.0"));
    assert_eq!(m.artifacts.len(), 2);
    let words = m.artifacts.iter().find(|a| a.name == "words.db").expect("words.db");
    assert_eq!(words.sha256, sha256_hex(&bytes));
    let download = r.http.get(r.url(&words.url)).send().await.expect("download");
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["etag"], format!("\"{}\"", words.sha256));
    assert_eq!(download.bytes().await.expect("body").as_ref(), bytes.as_slice());
    let audio = m.artifacts.iter().find(|a| a.name == "audio.pack").expect("audio");
    assert_eq!(audio.url, "https://cdn.example/audio.pack");

    // Deprecate: never `latest` again, but its manifest still resolves and says why.
    let (status, _) = r
        .admin(reqwest::Method::POST, &format!("/admin/releases/{id}/deprecate"), Some(json!({"reason": "bad data"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(r.latest("device-1", "1.0.0").await.is_none());
    let signed: SignedManifest = r
        .http
        .get(r.url(&format!("/v1/releases/{id}/manifest")))
        .send()
        .await
        .expect("manifest")
        .json()
        .await
        .expect("json");
    let m2 = trusted().verify(&signed).expect("signature");
    assert_eq!(m2.deprecated.as_deref(), Some("bad data"));
    assert!(m2.sequence > m.sequence, "sequence grows with every change");

    // Drafts and unknown releases are invisible to the public.
    let draft = r.create("5.0.0").await;
    for path in [
        format!("/v1/releases/{draft}/manifest"),
        format!("/v1/releases/{draft}/artifacts/x"),
        "/v1/releases/nope/manifest".into(),
    ] {
        let resp = r.http.get(r.url(&path)).send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // Every action is in the audit log, with its actor.
    let audit = r.audit().await;
    let actions: Vec<(&str, &str)> =
        audit.iter().filter_map(|e| Some((e["action"].as_str()?, e["outcome"].as_str()?))).collect();
    for expected in [
        ("dataset.configure", "ok"),
        ("release.create", "ok"),
        ("artifact.upload", "ok"),
        ("artifact.upload", "refused"),
        ("artifact.attach", "ok"),
        ("release.validate", "ok"),
        ("release.publish", "ok"),
        ("release.publish", "refused"),
        ("release.update", "refused"),
        ("release.deprecate", "ok"),
        ("release.show", "ok"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} missing from {actions:?}");
    }
    assert!(audit.iter().filter(|e| e["outcome"] == "ok").all(|e| e["actor"] == "ops"));
    // Reading the log is itself logged (after the read).
    assert!(r.audit().await.iter().any(|e| e["action"] == "audit.read" && e["outcome"] == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_with_ranges_and_a_strong_etag() {
    let r = Registry::start(1 << 20).await;
    let id = r.create("1.0.0").await;
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    r.upload(&id, "words.db", bytes.clone()).await;
    assert_eq!(r.publish(&id, json!({})).await.0, StatusCode::OK);
    let url = r.url(&format!("/v1/releases/{id}/artifacts/words.db"));
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    let resp = r.http.get(&url).header("range", "bytes=40000-").header("if-range", &etag).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 40000-99999/100000");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &bytes[40000..]);

    let resp = r.http.get(&url).header("range", "bytes=-10").send().await.expect("get");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &bytes[99990..]);

    let resp = r.http.get(&url).header("range", "bytes=100000-").send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], "bytes */100000");

    // A partial file from another version (other ETag) gets the whole file.
    let resp = r.http.get(&url).header("range", "bytes=10-").header("if-range", "\"stale\"").send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").len(), bytes.len());

    let resp = r.http.get(&url).header("if-none-match", &etag).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    // The release side is in /metrics: requests, ranges, bytes, manifests, open streams.
    let manifest = r.http.get(r.url(&format!("/v1/releases/{id}/manifest"))).send().await.expect("manifest");
    assert_eq!(manifest.status(), StatusCode::OK);
    let metrics = r.http.get(r.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("relay_artifact_requests_total"), 3, "two ranges and one whole file");
    assert_eq!(value("relay_artifact_range_requests_total"), 2);
    assert_eq!(value("relay_artifact_bytes_total"), 60_000 + 10 + 100_000);
    assert!(value("relay_manifests_served_total") >= 1);
    assert!(metrics.contains("relay_artifact_streams_open"));
    assert!(metrics.contains("relay_upload_failures_total") && metrics.contains("relay_admin_refusals_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_interrupted_uploads_leave_nothing_behind() {
    let r = Registry::start(64 * 1024).await;
    let id = r.create("1.0.0").await;
    // Declared too large: refused before reading.
    let (status, err) = r.upload(&id, "big.db", vec![0u8; 100 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    // Streamed without a length, found too large while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![1u8; 16 * 1024])).collect();
    let resp = r
        .http
        .put(r.url(&format!("/admin/releases/{id}/artifacts/stream.db")))
        .bearer_auth(ADMIN)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    // The relay may answer 413 before reading everything, or reset the connection.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Interrupted: headers promise 50 KiB, the client sends 10 KiB and vanishes.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(r.relay.addr).await.expect("tcp");
        let head = format!(
            "PUT /admin/releases/{id}/artifacts/cut.db HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Length: 51200\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        tcp.write_all(&[2u8; 10 * 1024]).await.expect("write");
        drop(tcp);
    }
    eventually("the interrupted upload is cleaned up", std::time::Duration::from_secs(10), || {
        r.artifact_files().is_empty()
    })
    .await;
    let (_, release) = r.admin(reqwest::Method::GET, &format!("/admin/releases/{id}"), None).await;
    assert_eq!(release["artifacts"].as_array().map(Vec::len), Some(0), "{release}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_that_no_longer_match_fail_validation() {
    let r = Registry::start(1 << 20).await;
    let id = r.create("1.0.0").await;
    r.upload(&id, "words.db", b"original bytes".to_vec()).await;
    let files = r.artifact_files();
    assert_eq!(files.len(), 1);
    std::fs::write(&files[0], b"tampered bytes").expect("tamper");
    let (status, err) = r.publish(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let findings = err["findings"].as_array().expect("findings");
    assert!(findings.iter().any(|f| f["rule"] == "artifact-integrity" && f["artifact"] == "words.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_rollout_mandatory_releases_and_app_versions() {
    let r = Registry::start(1 << 20).await;
    let v1 = r.published("1.0.0", json!({})).await;
    let v2 = r.published("2.0.0", json!({"rollout_percent": 10})).await;
    let ids: Vec<String> = (0..1000).map(|i| format!("install-{i}")).collect();
    let mut offered = Vec::new();
    for id in &ids {
        let m = r.latest(id, "1.0.0").await.expect("something is offered");
        if m.release_id == v2 {
            offered.push(id.clone());
        } else {
            assert_eq!(m.release_id, v1, "outside the rollout: the previous release");
        }
    }
    assert!((50..=150).contains(&offered.len()), "10 % rollout offered to {} of 1000", offered.len());

    let (status, _) =
        r.admin(reqwest::Method::POST, &format!("/admin/releases/{v2}/rollout"), Some(json!({"percent": 50}))).await;
    assert_eq!(status, StatusCode::OK);
    let mut at_fifty = 0;
    for id in &ids {
        let m = r.latest(id, "1.0.0").await.expect("offered");
        if m.release_id == v2 {
            at_fifty += 1;
        } else {
            assert!(!offered.contains(id), "{id} lost the release when the rollout grew");
        }
    }
    assert!((400..=600).contains(&at_fifty), "50 % rollout offered to {at_fifty}");

    // Pause: nobody is offered it; the previous release is answered.
    r.admin(reqwest::Method::POST, &format!("/admin/releases/{v2}/rollout"), Some(json!({"percent": 0}))).await;
    assert_eq!(r.latest(&offered[0], "1.0.0").await.expect("offered").release_id, v1);

    // Mandatory: every device on the channel learns the lowest version it may keep.
    let v3 = r.published("3.0.0", json!({"mandatory": true})).await;
    let m = r.latest("install-1", "1.0.0").await.expect("offered");
    assert_eq!(m.release_id, v3);
    assert_eq!(m.channel_min_version.map(|v| v.to_string()).as_deref(), Some("3.0.0"));
    let of_v1 =
        r.http.get(r.url(&format!("/v1/releases/{v1}/manifest?install_id=install-1"))).send().await.expect("get");
    let m1 = trusted().verify(&of_v1.json().await.expect("json")).expect("sig");
    assert_eq!(m1.channel_min_version.map(|v| v.to_string()).as_deref(), Some("3.0.0"));

    // A release needing a newer app is never offered to an older app.
    let id = r.create("4.0.0").await;
    r.upload(&id, "words.db", b"v4".to_vec()).await;
    r.admin(reqwest::Method::PATCH, &format!("/admin/releases/{id}"), Some(json!({"min_app_version": "9.0.0"}))).await;
    assert_eq!(r.publish(&id, json!({})).await.0, StatusCode::OK);
    assert_eq!(r.latest("install-1", "2.0.0").await.expect("offered").release_id, v3);
    assert_eq!(r.latest("install-1", "9.1.0").await.expect("offered").release_id, id);
    let resp = r.http.get(r.url("/v1/datasets/vocab-en/channels/stable/latest?app_version=nine")).send().await;
    assert_eq!(resp.expect("get").status(), StatusCode::UNPROCESSABLE_ENTITY);
    let _ = base64::engine::general_purpose::STANDARD.encode([0u8]);
}

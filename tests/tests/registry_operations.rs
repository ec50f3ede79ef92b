//! Operating the registry: strict input, what the audit log says, JSON for
//! every refusal, dry-run uploads, and a shutdown that cuts stalled downloads.

#[path = "common/registry.rs"]
mod registry;
use registry::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// What a new operator stumbled on: strict versions, empty required
/// artifacts, the audit log naming releases and rollouts, JSON for every
/// refusal, any-case `Bearer`, and a dry run for uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_strict_and_says_what_it_did() {
    let r = Registry::start(1 << 20).await;
    // `01.1.0` is not a version.
    let (status, body) = r
        .admin(
            reqwest::Method::POST,
            "/admin/releases",
            Some(json!({"dataset": "vocab-en", "channel": "stable", "version": "01.1.0", "min_app_version": "1.0.0"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // An empty required artifact fails validation: it cannot be published.
    let (status, _) = r
        .admin(reqwest::Method::PUT, "/admin/datasets/vocab-en", Some(json!({"required_artifacts": ["words.db"]})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = r.create("1.0.0").await;
    assert_eq!(r.upload(&id, "words.db", Vec::new()).await.0, StatusCode::CREATED);
    let (status, body) = r.publish(&id, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["findings"].to_string().contains("empty"), "{body}");

    // The audit log has the creation under the release's id, and rollouts with their share.
    let good = r.published("1.1.0", json!({"rollout_percent": 10})).await;
    let (status, _) =
        r.admin(reqwest::Method::POST, &format!("/admin/releases/{good}/rollout"), Some(json!({"percent": 40}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, log) = r.admin(reqwest::Method::GET, &format!("/admin/audit?target={good}"), None).await;
    let entries = log["entries"].as_array().expect("entries");
    let detail_of = |action: &str| -> String {
        entries.iter().find(|e| e["action"] == action).map(|e| e["detail"].to_string()).unwrap_or_default()
    };
    assert!(detail_of("release.create").contains("1.1.0"), "{log}");
    assert!(detail_of("release.publish").contains("rollout 10 %"), "{log}");
    assert!(detail_of("release.rollout").contains("rollout 40 %"), "{log}");

    // A malformed body is refused with JSON naming the problem, and audited.
    let resp = r
        .http
        .post(r.url(&format!("/admin/releases/{good}/rollout")))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"percent\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.expect("a JSON error body");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    let resp = r
        .http
        .post(r.url(&format!("/admin/releases/{good}/publish")))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let _: Value = resp.json().await.expect("a JSON error body");
    let resp = r.http.get(r.url("/admin/audit?limit=lots")).bearer_auth(ADMIN).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(err["field"], "limit", "{err}");
    let (_, log) = r.admin(reqwest::Method::GET, &format!("/admin/audit?target={good}"), None).await;
    let refused = log["entries"].as_array().expect("entries").iter().filter(|e| e["outcome"] == "refused").count();
    assert!(refused >= 2, "malformed bodies are audited: {log}");

    // Unknown endpoints and methods answer JSON too.
    let resp = r.http.get(r.url("/admin/nothing-here")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let _: Value = resp.json().await.expect("json 404");
    let resp = r.http.delete(r.url("/admin/releases")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let _: Value = resp.json().await.expect("json 405");

    // `bearer` in any case.
    let resp = r.http.get(r.url("/admin/releases")).header("authorization", format!("bearer {ADMIN}")).send().await;
    assert_eq!(resp.expect("send").status(), StatusCode::OK);

    // A dry run answers what an upload would meet, without the body: the size limit in units.
    let draft = r.create("1.2.0").await;
    let resp = r
        .http
        .put(r.url(&format!("/admin/releases/{draft}/artifacts/big.db?dry_run=true&size={}", 2u64 << 20)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = resp.json().await.expect("json");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("1.0 MiB")), "{err}");
    let resp = r
        .http
        .put(r.url(&format!("/admin/releases/{draft}/artifacts/small.db?dry_run=true&size=10")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(r.artifact_files().len(), 2, "a dry run stores nothing (the two files are the earlier uploads)");
}

/// A shutdown gives downloads in flight until its deadline, then cuts them
/// and says so, instead of waiting for a slow reader forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stalled_download_at_its_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = Registry::start(64 << 20).await;
    let id = r.create("1.0.0").await;
    assert_eq!(r.upload(&id, "words.db", vec![9u8; 48 << 20]).await.0, StatusCode::CREATED);
    assert_eq!(r.publish(&id, json!({})).await.0, StatusCode::OK);
    // A client that asks for the file, reads its first bytes, then stops reading.
    let mut tcp = tokio::net::TcpStream::connect(r.relay.addr).await.expect("connect");
    let request = format!("GET /v1/releases/{id}/artifacts/words.db HTTP/1.1\r\nHost: x\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut first = [0u8; 1024];
    let n = tcp.read(&mut first).await.expect("the download starts");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    integration_tests::eventually("the relay counts the download in flight", Duration::from_secs(10), || {
        r.relay.hub.metrics.artifact_streams_open() == 1
    })
    .await;

    let Registry { relay, .. } = r;
    let started = std::time::Instant::now();
    let report = relay.shutdown_within(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline holds: {:?}", started.elapsed());
    assert_eq!((report.downloads, report.cut_downloads), (1, 1), "{report:?}");
    assert!(report.flushed);
    drop(tcp);
}

//! The registry a release test talks to: a relay on loopback with a known
//! admin token and manifest key, and the admin calls the tests make.
#![allow(dead_code)] // each test file uses its own share of the helpers

use release::manifest::{SignedManifest, TrustedKeys};
use release::{Manifest, ManifestSigner};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;

pub const ADMIN: &str = "ops-token-0123456789abcdef";
pub const SEED: [u8; 32] = [7; 32];

pub struct Registry {
    pub relay: relay::RunningRelay,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start(max_artifact_bytes: u64) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = relay::Config::local(dir.path().join("relay"), "127.0.0.1:0".parse().expect("addr"));
        config.admin_tokens = vec![relay::release::admin::AdminToken { name: "ops".into(), token: ADMIN.into() }];
        config.manifest_key = Some(("test-key".into(), SEED));
        config.release_limits.max_artifact_bytes = max_artifact_bytes;
        config.refusal_audit_interval = std::time::Duration::from_millis(200);
        let relay = relay::start(config).await.expect("relay starts");
        Registry { relay, http: integration_tests::http(), dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.relay.http_url())
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn create(&self, version: &str) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/admin/releases",
                Some(json!({"dataset": "vocab-en", "channel": "stable", "version": version, "notes": "n", "min_app_version": "1.0.0"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    pub async fn upload(&self, id: &str, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(self.url(&format!("/admin/releases/{id}/artifacts/{name}")))
            .bearer_auth(ADMIN)
            .body(bytes)
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn publish(&self, id: &str, body: Value) -> (StatusCode, Value) {
        self.admin(reqwest::Method::POST, &format!("/admin/releases/{id}/publish"), Some(body)).await
    }

    /// A published release with one uploaded artifact.
    pub async fn published(&self, version: &str, publish: Value) -> String {
        let id = self.create(version).await;
        let (status, _) = self.upload(&id, "words.db", format!("words {version}").into_bytes()).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = self.publish(&id, publish).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        id
    }

    pub async fn latest(&self, install_id: &str, app: &str) -> Option<Manifest> {
        let resp = self
            .http
            .get(self.url("/v1/datasets/vocab-en/channels/stable/latest"))
            .query(&[("install_id", install_id), ("app_version", app)])
            .send()
            .await
            .expect("latest");
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        let signed: SignedManifest = resp.json().await.expect("signed manifest");
        Some(trusted().accept(&signed, None, release::model::TimestampMs::MIN + 1).expect("valid signature"))
    }

    pub fn artifact_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["tmp", "files"] {
            let root = self.dir.path().join("relay/artifacts").join(sub);
            let mut stack = vec![root];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }

    pub async fn audit(&self) -> Vec<Value> {
        let (status, body) = self.admin(reqwest::Method::GET, "/admin/audit?limit=1000", None).await;
        assert_eq!(status, StatusCode::OK);
        body["entries"].as_array().cloned().unwrap_or_default()
    }
}

pub fn trusted() -> TrustedKeys {
    let mut keys = TrustedKeys::new();
    keys.trust("test-key", ManifestSigner::new("test-key", SEED).public_key()).expect("key");
    keys
}

impl Registry {
    pub async fn create_duplicate(&self, version: &str) -> (StatusCode, Value) {
        self.admin(
            reqwest::Method::POST,
            "/admin/releases",
            Some(json!({"dataset": "vocab-en", "channel": "stable", "version": version, "min_app_version": "1.0.0"})),
        )
        .await
    }
}

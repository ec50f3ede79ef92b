//! The release registry on PostgreSQL (issue #18): the repository against a
//! throwaway cluster with the guarantees SQLite gives (the database itself
//! refuses edits of published releases and any change to the audit log),
//! and a release published through one relay served, signed, by another.

use integration_tests::pg::PgCluster;
use integration_tests::*;
use relay::release::repository::{NewRelease, PgReleases, ReleaseRepository, RepoError};
use release::dto::{AuditEntry, DatasetConfig};
use release::model::{Artifact, ArtifactSource, ReleaseState};
use release::version::Version;
use std::sync::Arc;

fn cluster() -> PgCluster {
    PgCluster::start().unwrap_or_else(|e| panic!("a throwaway PostgreSQL cluster starts: {e}"))
}

fn releases(pg: &PgCluster) -> PgReleases {
    PgReleases::on(Arc::new(relay::pg::Pg::connect(&pg.url).expect("connects and migrates")))
}

fn new<'a>(id: &'a str, version: &str) -> NewRelease<'a> {
    NewRelease {
        id,
        dataset: "vocab-en",
        channel: "stable",
        version: version.parse().expect("version"),
        notes: "",
        min_app_version: "1.0.0",
        now: 1,
    }
}

fn artifact(name: &str) -> Artifact {
    Artifact { name: name.into(), size: 1, sha256: "00".into(), source: ArtifactSource::Uploaded, created_at: 1 }
}

#[test]
fn create_attach_publish_and_immutability() {
    let pg = cluster();
    let repo = releases(&pg);
    repo.create(new("r1", "1.0.0")).expect("create");
    assert!(matches!(repo.create(new("r2", "1.0.0")), Err(RepoError::Conflict(_))), "version unique per channel");
    let r = repo.add_artifact("r1", &artifact("a"), Some("r1/x")).expect("attach");
    assert_eq!(r.artifacts.len(), 1);
    assert!(matches!(repo.add_artifact("r1", &artifact("a"), None), Err(RepoError::Conflict(_))));
    let v = repo.get("r1").expect("get");
    assert_eq!(repo.channel_sequence("vocab-en", "stable").expect("seq"), 0);
    repo.publish("r1", v.revision, 100, false, 5).expect("publish");
    assert_eq!(repo.channel_sequence("vocab-en", "stable").expect("seq"), 1);
    assert!(matches!(repo.add_artifact("r1", &artifact("b"), None), Err(RepoError::Conflict(_))));
    assert!(matches!(repo.update("r1", None, Some("x"), None), Err(RepoError::Conflict(_))));
    assert!(matches!(repo.remove_artifact("r1", "a"), Err(RepoError::Conflict(_))));
    repo.set_rollout("r1", 50).expect("rollout");
    repo.deprecate("r1", "bad").expect("deprecate");
    assert_eq!(repo.channel_sequence("vocab-en", "stable").expect("seq"), 3);
    assert!(matches!(repo.set_rollout("r1", 10), Err(RepoError::Conflict(_))), "deprecated is final");
    assert_eq!(repo.published_versions("vocab-en", "stable", "other").expect("versions"), vec![Version::new(1, 0, 0)]);
    assert!(repo.live_releases("vocab-en", "stable").expect("live").is_empty());
    assert!(matches!(repo.get("nope"), Err(RepoError::NotFound(_))));
    assert_eq!(repo.stored_files("r1").expect("files").len(), 1);
    assert_eq!(repo.all_file_keys().expect("keys"), vec!["r1/x".to_owned()]);
    assert_eq!(repo.list(Some("vocab-en"), None).expect("list").len(), 1);
}

#[test]
fn publishing_a_changed_release_is_refused() {
    let pg = cluster();
    let repo = releases(&pg);
    repo.create(new("r1", "1.0.0")).expect("create");
    let validated_at = repo.get("r1").expect("get").revision;
    assert!(repo.mark_validated("r1", validated_at).expect("validate"));
    repo.add_artifact("r1", &artifact("late"), None).expect("attach");
    assert_eq!(repo.get("r1").expect("get").release.state, ReleaseState::Draft, "content change un-validates");
    assert!(!repo.mark_validated("r1", validated_at).expect("validate"));
    assert!(matches!(repo.publish("r1", validated_at, 100, false, 1), Err(RepoError::Conflict(_))));
}

#[test]
fn the_database_itself_refuses_edits_of_published_releases_and_of_the_audit_log() {
    let pg = cluster();
    let repo = releases(&pg);
    repo.create(new("r1", "1.0.0")).expect("create");
    repo.add_artifact("r1", &artifact("a"), None).expect("attach");
    let v = repo.get("r1").expect("get");
    repo.publish("r1", v.revision, 100, false, 1).expect("publish");
    let entry = AuditEntry {
        id: 0,
        at: 1,
        actor: "ops".into(),
        action: "release.publish".into(),
        target: "r1".into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    let id = repo.audit(&entry).expect("audit");
    for sql in [
        "UPDATE dataset_releases SET notes = 'x' WHERE id = 'r1'",
        "DELETE FROM dataset_release_artifacts WHERE release_id = 'r1'",
        "INSERT INTO dataset_release_artifacts(release_id, name, size, sha256, source, created_at)
           VALUES ('r1', 'b', 1, '00', 'uploaded', 1)",
        "UPDATE admin_audit_log SET outcome = 'refused'",
        "DELETE FROM admin_audit_log",
        "TRUNCATE admin_audit_log",
    ] {
        let refused = pg.psql(sql).expect_err(sql);
        assert!(refused.contains("immutable") || refused.contains("append-only"), "{sql}: {refused}");
    }
    assert_eq!(repo.audit_log(None, None, 10).expect("log"), vec![AuditEntry { id, ..entry.clone() }]);
    assert_eq!(repo.audit_log(Some("r1"), None, 10).expect("by target").len(), 1);
    assert!(repo.audit_log(Some("r"), None, 10).expect("prefix only by path").is_empty());
}

#[test]
fn dataset_config_round_trips() {
    let pg = cluster();
    let repo = releases(&pg);
    assert_eq!(repo.dataset_config("vocab-en").expect("config"), DatasetConfig::default());
    let config = DatasetConfig { required_artifacts: vec!["words.db".into()] };
    repo.set_dataset_config("vocab-en", &config).expect("set");
    assert_eq!(repo.dataset_config("vocab-en").expect("config"), config);
}

/// test-relay's manifest key (`test-relay manifest-key`).
fn trusted() -> release::TrustedKeys {
    let mut keys = release::TrustedKeys::new();
    keys.trust("test", release::ManifestSigner::new("test", [7; 32]).public_key()).expect("key");
    keys
}

/// Relays A and B on one database and one artifact directory: a release
/// created, uploaded and published through A is offered by B, signed, and
/// B serves its bytes with Range. The audit log, shared, holds A's actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_published_through_one_relay_is_served_signed_by_another() {
    let pg = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("artifacts");
    let env =
        |url: &str| [("RELAY_DATABASE_URL", url.to_owned()), ("RELAY_ARTIFACT_DIR", shared.display().to_string())];
    let spawn = |name: &str| {
        let vars = env(&pg.url);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_relay_process_with(env!("CARGO_BIN_EXE_test-relay"), &dir.path().join(name), &vars)
    };
    let (mut relay_a, url_a) = spawn("relay-a");
    let (mut relay_b, url_b) = spawn("relay-b");
    let base = |url: &str| url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    let (base_a, base_b) = (base(&url_a), base(&url_b));
    let words: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let http = http();
    let id = admin::publish(
        &http,
        &base_a,
        TEST_ADMIN_TOKEN,
        ("vocab-en", "stable", "1.2.0"),
        &[("words.db", words.clone())],
    )
    .await;

    let resp = http
        .get(format!("{base_b}/v1/datasets/vocab-en/channels/stable/latest"))
        .query(&[("install_id", "device-1"), ("app_version", "1.0.0")])
        .send()
        .await
        .expect("latest from B");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let signed: release::manifest::SignedManifest = resp.json().await.expect("signed manifest");
    let manifest = trusted().verify(&signed).expect("signed with the relays' key");
    assert_eq!((manifest.release_id.as_str(), manifest.version.to_string()), (id.as_str(), "1.2.0".to_owned()));
    let artifact = &manifest.artifacts[0];
    let resp = http
        .get(format!("{base_b}{}", artifact.url))
        .header("range", "bytes=100000-")
        .send()
        .await
        .expect("download from B");
    assert_eq!(resp.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &words[100_000..]);

    let log: serde_json::Value = http
        .get(format!("{base_b}/admin/audit"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .expect("audit from B")
        .json()
        .await
        .expect("json");
    let text = log.to_string();
    assert!(text.contains("release.publish") && text.contains(&id), "B reads A's audit entries: {text}");
    for relay in [&mut relay_a, &mut relay_b] {
        let _ = relay.kill();
        let _ = relay.wait();
    }
}

//! Direct tests of the repository (D-003) on a real SQLite file.

use super::*;
use release::model::{ArtifactSource, ReleaseState};
use rusqlite::Connection;

fn repo() -> (tempfile::TempDir, SqliteReleases) {
    let dir = tempfile::tempdir().unwrap();
    let repo = SqliteReleases::open(&dir.path().join("relay.sqlite3")).unwrap();
    (dir, repo)
}

fn new<'a>(id: &'a str, version: &str) -> NewRelease<'a> {
    NewRelease {
        id,
        dataset: "vocab-en",
        channel: "stable",
        version: version.parse().unwrap(),
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
    let (_d, repo) = repo();
    repo.create(new("r1", "1.0.0")).unwrap();
    assert!(matches!(repo.create(new("r2", "1.0.0")), Err(RepoError::Conflict(_))), "version unique per channel");
    let r = repo.add_artifact("r1", &artifact("a"), Some("r1/x")).unwrap();
    assert_eq!(r.artifacts.len(), 1);
    assert!(matches!(repo.add_artifact("r1", &artifact("a"), None), Err(RepoError::Conflict(_))));
    let v = repo.get("r1").unwrap();
    assert_eq!(repo.channel_sequence("vocab-en", "stable").unwrap(), 0);
    repo.publish("r1", v.revision, 100, false, 5).unwrap();
    assert_eq!(repo.channel_sequence("vocab-en", "stable").unwrap(), 1);
    assert!(matches!(repo.add_artifact("r1", &artifact("b"), None), Err(RepoError::Conflict(_))));
    assert!(matches!(repo.update("r1", None, Some("x"), None), Err(RepoError::Conflict(_))));
    assert!(matches!(repo.remove_artifact("r1", "a"), Err(RepoError::Conflict(_))));
    repo.set_rollout("r1", 50).unwrap();
    repo.deprecate("r1", "bad").unwrap();
    assert_eq!(repo.channel_sequence("vocab-en", "stable").unwrap(), 3);
    assert!(matches!(repo.set_rollout("r1", 10), Err(RepoError::Conflict(_))), "deprecated is final");
    assert_eq!(repo.published_versions("vocab-en", "stable", "other").unwrap(), vec![Version::new(1, 0, 0)]);
    assert!(repo.live_releases("vocab-en", "stable").unwrap().is_empty());
    assert!(matches!(repo.get("nope"), Err(RepoError::NotFound(_))));
}

#[test]
fn publishing_a_changed_release_is_refused() {
    let (_d, repo) = repo();
    repo.create(new("r1", "1.0.0")).unwrap();
    let validated_at = repo.get("r1").unwrap().revision;
    assert!(repo.mark_validated("r1", validated_at).unwrap());
    repo.add_artifact("r1", &artifact("late"), None).unwrap();
    assert_eq!(repo.get("r1").unwrap().release.state, ReleaseState::Draft, "content change un-validates");
    assert!(!repo.mark_validated("r1", validated_at).unwrap());
    assert!(matches!(repo.publish("r1", validated_at, 100, false, 1), Err(RepoError::Conflict(_))));
}

#[test]
fn the_database_itself_refuses_edits_of_published_releases_and_of_the_audit_log() {
    let (dir, repo) = repo();
    repo.create(new("r1", "1.0.0")).unwrap();
    let v = repo.get("r1").unwrap();
    repo.publish("r1", v.revision, 100, false, 1).unwrap();
    let entry = AuditEntry {
        id: 0,
        at: 1,
        actor: "ops".into(),
        action: "release.publish".into(),
        target: "r1".into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    repo.audit(&entry).unwrap();
    let conn = Connection::open(dir.path().join("relay.sqlite3")).unwrap();
    assert!(conn.execute("UPDATE dataset_releases SET notes = 'x' WHERE id = 'r1'", []).is_err());
    assert!(
        conn.execute("DELETE FROM dataset_release_artifacts WHERE release_id = 'r1'", []).is_ok(),
        "none to delete"
    );
    assert!(conn.execute("UPDATE admin_audit_log SET outcome = 'refused'", []).is_err());
    assert!(conn.execute("DELETE FROM admin_audit_log", []).is_err());
    assert_eq!(repo.audit_log(None, None, 10).unwrap(), vec![AuditEntry { id: 1, ..entry }]);
}

#[test]
fn dataset_config_round_trips() {
    let (_d, repo) = repo();
    assert_eq!(repo.dataset_config("vocab-en").unwrap(), DatasetConfig::default());
    let config = DatasetConfig { required_artifacts: vec!["words.db".into()] };
    repo.set_dataset_config("vocab-en", &config).unwrap();
    assert_eq!(repo.dataset_config("vocab-en").unwrap(), config);
}

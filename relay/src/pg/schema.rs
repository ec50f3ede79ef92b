//! The relay's schema on PostgreSQL: versioned steps in
//! `relay_schema_migrations`, each run once, in one transaction with its
//! version row, under an advisory lock so two relays starting at once
//! migrate once. Append, never edit.

use super::{PgError, StorageErrorKind};
use deadpool_postgres::Pool;

/// Key of the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x7265_6c61_796d; // "relaym"

/// Versioned schema. Each step runs once, in one transaction with its
/// version row. Append, never edit.
pub(crate) const STEPS: &[&str] = &[
    // 1: documents, chunks with per-document seq, sync states, identity.
    r#"
    CREATE TABLE relay_meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    INSERT INTO relay_meta(key, value) VALUES ('storage_id', replace(gen_random_uuid()::text, '-', ''));
    CREATE TABLE docs (
        user_id       TEXT NOT NULL,
        doc_id        TEXT NOT NULL,
        heads         BYTEA NOT NULL,
        snapshot      BYTEA,
        snapshot_seq  BIGINT NOT NULL DEFAULT 0,  -- chunks up to here are in the snapshot
        last_seq      BIGINT NOT NULL DEFAULT 0,  -- the newest chunk's seq
        created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, doc_id)
    );
    CREATE TABLE doc_chunks (
        user_id  TEXT NOT NULL,
        doc_id   TEXT NOT NULL,
        seq      BIGINT NOT NULL,
        data     BYTEA NOT NULL,
        PRIMARY KEY (user_id, doc_id, seq)
    );
    CREATE TABLE sync_states (
        user_id       TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        doc_id        TEXT NOT NULL,
        state         BYTEA NOT NULL,
        shared_heads  BYTEA NOT NULL,
        PRIMARY KEY (user_id, device_id, doc_id)
    );
    "#,
    // 2: the release registry and the append-only admin audit log, with the
    // same guarantees as on SQLite: the database itself refuses edits of a
    // published release and any change to the audit log.
    r#"
    CREATE TABLE datasets (
        dataset             TEXT PRIMARY KEY,
        required_artifacts  TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE dataset_channels (
        dataset   TEXT NOT NULL,
        channel   TEXT NOT NULL,
        sequence  BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (dataset, channel)
    );
    CREATE TABLE dataset_releases (
        id                 TEXT PRIMARY KEY,
        dataset            TEXT NOT NULL,
        channel            TEXT NOT NULL,
        version            TEXT NOT NULL,
        version_major      BIGINT NOT NULL,
        version_minor      BIGINT NOT NULL,
        version_patch      BIGINT NOT NULL,
        notes              TEXT NOT NULL DEFAULT '',
        min_app_version    TEXT NOT NULL,
        state              TEXT NOT NULL CHECK (state IN ('draft', 'validated', 'published', 'deprecated')),
        revision           BIGINT NOT NULL DEFAULT 0,
        rollout_percent    INTEGER NOT NULL DEFAULT 0 CHECK (rollout_percent BETWEEN 0 AND 100),
        mandatory          BOOLEAN NOT NULL DEFAULT false,
        deprecated_reason  TEXT,
        created_at         BIGINT NOT NULL,
        published_at       BIGINT,
        UNIQUE (dataset, channel, version)
    );
    CREATE INDEX releases_by_channel ON dataset_releases(dataset, channel, state);
    CREATE TABLE dataset_release_artifacts (
        release_id  TEXT NOT NULL REFERENCES dataset_releases(id),
        name        TEXT NOT NULL,
        size        BIGINT NOT NULL,
        sha256      TEXT NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('uploaded', 'external')),
        url         TEXT,
        file_key    TEXT,
        created_at  BIGINT NOT NULL,
        PRIMARY KEY (release_id, name)
    );
    CREATE FUNCTION refuse_published_release_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'a published release is immutable' USING ERRCODE = 'P0001';
    END $$;
    CREATE TRIGGER published_content_is_immutable
    BEFORE UPDATE OF version, notes, min_app_version, dataset, channel ON dataset_releases
    FOR EACH ROW WHEN (OLD.state IN ('published', 'deprecated'))
    EXECUTE FUNCTION refuse_published_release_change();
    CREATE FUNCTION refuse_published_artifact_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        release TEXT;
    BEGIN
        IF TG_OP = 'DELETE' THEN release := OLD.release_id; ELSE release := NEW.release_id; END IF;
        IF (SELECT state FROM dataset_releases WHERE id = release) IN ('published', 'deprecated') THEN
            RAISE EXCEPTION 'a published release is immutable' USING ERRCODE = 'P0001';
        END IF;
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER published_artifacts_are_immutable
    BEFORE INSERT OR UPDATE OR DELETE ON dataset_release_artifacts
    FOR EACH ROW EXECUTE FUNCTION refuse_published_artifact_change();
    CREATE TABLE admin_audit_log (
        id       BIGSERIAL PRIMARY KEY,
        at       BIGINT NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'error')),
        detail   TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_target ON admin_audit_log(target, id);
    CREATE FUNCTION refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'P0001';
    END $$;
    CREATE TRIGGER audit_log_is_append_only BEFORE UPDATE OR DELETE ON admin_audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
    CREATE TRIGGER audit_log_is_never_truncated BEFORE TRUNCATE ON admin_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();
    "#,
];

/// The schema version this relay writes.
pub const SCHEMA_VERSION: i64 = STEPS.len() as i64;

/// Brings the schema to [`SCHEMA_VERSION`]; a newer schema is refused.
pub(super) async fn migrate(pool: &Pool) -> Result<(), PgError> {
    let mut client = pool.get().await.map_err(PgError::from_display)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS relay_schema_migrations (
             version     BIGINT PRIMARY KEY,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i64 = tx.query_one("SELECT coalesce(max(version), 0) FROM relay_schema_migrations", &[]).await?.get(0);
    if found > SCHEMA_VERSION {
        return Err(PgError {
            kind: StorageErrorKind::SchemaTooNew { found, supported: SCHEMA_VERSION },
            text: String::new(),
        });
    }
    for (i, step) in STEPS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        tx.batch_execute(step)
            .await
            .map_err(|e| PgError { kind: StorageErrorKind::Migration, text: format!("step {version}: {e}") })?;
        tx.execute("INSERT INTO relay_schema_migrations(version) VALUES ($1)", &[&version]).await?;
    }
    Ok(tx.commit().await?)
}

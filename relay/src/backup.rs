//! `relay backup` and `relay restore`: an online, consistent copy of the
//! relay's data directory, and putting one back.
//!
//! The database is copied with SQLite's `VACUUM INTO`, a transactionally
//! consistent snapshot taken while the relay keeps serving; the artifact
//! files that snapshot references are copied after it (they are immutable
//! once recorded). A restore gives the restored storage a **new identity**
//! and drops every persisted sync state: devices see the new identity at
//! their next join, forget what they believed the relay had, and offer
//! everything again, so changes acknowledged after the backup was taken
//! come back from the devices that hold them.

use crate::error::RelayError;
use crate::storage::open_connection;
use rusqlite::OptionalExtension;
use std::path::Path;

const DATABASE: &str = "relay.sqlite3";
/// Files next to the database that belong to the relay's identity.
const KEY_FILES: &[&str] = &["dev-manifest-key", "dev-admin-token"];

/// What a backup or restore copied.
#[derive(Debug, Default)]
pub struct Copied {
    pub artifacts: usize,
    pub artifact_bytes: u64,
}

fn err(context: &str, e: impl std::fmt::Display) -> RelayError {
    RelayError::Config(format!("{context}: {e}"))
}

/// Copies the relay data in `data_dir` to `dest` (which must be new or empty)
/// while a relay may be running on it.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<Copied, RelayError> {
    let db = data_dir.join(DATABASE);
    if !db.exists() {
        return Err(RelayError::Config(format!("no relay database at {}", db.display())));
    }
    if dest.exists() && std::fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(RelayError::Config(format!(
            "{} exists and is not empty; back up into a new directory",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dest)?;
    let target = dest.join(DATABASE);
    let conn = open_connection(&db).map_err(|e| err("opening the relay database", e))?;
    let target_text = target.to_str().ok_or_else(|| RelayError::Config("backup path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [target_text]).map_err(|e| err("snapshotting the database", e))?;
    drop(conn);
    std::fs::File::open(&target)?.sync_all()?;
    let copied = copy_artifacts(&target, data_dir, dest)?;
    copy_key_files(data_dir, dest)?;
    sync_dir(dest)?;
    Ok(copied)
}

/// Puts the backup in `backup` into `data_dir`, which must hold no relay
/// database (move the damaged one aside first). The restored storage gets a
/// new identity and no sync states.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<Copied, RelayError> {
    let source = backup.join(DATABASE);
    if !source.exists() {
        return Err(RelayError::Config(format!("{} holds no relay backup ({DATABASE} missing)", backup.display())));
    }
    let db = data_dir.join(DATABASE);
    if db.exists() {
        return Err(RelayError::Config(format!(
            "{} already holds a relay database; move the data directory aside and restore into an empty one",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(data_dir)?;
    let staging = data_dir.join(format!("{DATABASE}.restoring"));
    std::fs::copy(&source, &staging)?;
    {
        let conn = open_connection(&staging).map_err(|e| err("opening the restored database", e))?;
        let has_meta: Option<String> = conn
            .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'relay_meta'", [], |r| r.get(0))
            .optional()
            .map_err(|e| err("reading the restored database", e))?;
        if has_meta.is_some() {
            conn.execute("UPDATE relay_meta SET value = lower(hex(randomblob(16))) WHERE key = 'storage_id'", [])
                .map_err(|e| err("giving the restored storage a new identity", e))?;
        }
        conn.execute("DELETE FROM sync_states", []).map_err(|e| err("dropping sync states", e))?;
        conn.pragma_update(None, "journal_mode", "DELETE").map_err(|e| err("checkpointing", e))?;
    }
    std::fs::File::open(&staging)?.sync_all()?;
    std::fs::rename(&staging, &db)?;
    let copied = copy_artifacts(&db, backup, data_dir)?;
    copy_key_files(backup, data_dir)?;
    sync_dir(data_dir)?;
    Ok(copied)
}

/// Copies the artifact files the database at `db` references from `from` to `to`.
fn copy_artifacts(db: &Path, from: &Path, to: &Path) -> Result<Copied, RelayError> {
    let conn = open_connection(db).map_err(|e| err("reading the copied database", e))?;
    let keys: Vec<String> = conn
        .prepare("SELECT file_key FROM dataset_release_artifacts WHERE file_key IS NOT NULL")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| err("listing artifact files", e))?;
    let mut copied = Copied::default();
    for key in keys {
        if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(RelayError::Config(format!("refusing an artifact key that leaves the store: {key}")));
        }
        let relative = crate::release::artifacts::relative_path(&key);
        let (src, dst) = (from.join("artifacts/files").join(&relative), to.join("artifacts/files").join(&relative));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        copied.artifact_bytes +=
            std::fs::copy(&src, &dst).map_err(|e| err(&format!("copying {}", src.display()), e))?;
        std::fs::File::open(&dst)?.sync_all()?;
        copied.artifacts += 1;
    }
    Ok(copied)
}

fn copy_key_files(from: &Path, to: &Path) -> Result<(), RelayError> {
    for name in KEY_FILES {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name))?; // permissions (0600) come along
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

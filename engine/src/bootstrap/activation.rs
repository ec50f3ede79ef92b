//! Atomic activation (D-014).
//!
//! The active release is named by one small file, `ACTIVE`. Switching is:
//! write `ACTIVE.tmp`, fsync it, rename it over `ACTIVE`, fsync the
//! directory. Rename is atomic, so a crash at any instant leaves either the
//! old pointer or the new one, never a mixture or nothing; and a pointer is
//! only written for a release whose every file is already verified on disk.
//! [`CrashPoint`] lets tests stop the sequence between any two steps.

use release::checksum::Hasher;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const ACTIVE: &str = "ACTIVE";
const ACTIVE_TMP: &str = "ACTIVE.tmp";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointerArtifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// What `ACTIVE` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivePointer {
    pub release_id: String,
    pub dataset: String,
    pub channel: String,
    pub version: String,
    pub artifacts: Vec<PointerArtifact>,
}

/// Where a test stops the activation, as if the app were killed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    AfterTempWrite,
    AfterTempFsync,
    AfterRename,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("artifact `{0}` is not verified on disk")]
    NotVerified(String),
    #[error("stopped at {0:?} (test crash point)")]
    Crashed(CrashPoint),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The release files on the device: `store/<release>/<artifact>` and the pointer.
pub struct ReleaseDir {
    root: PathBuf,
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let len = hasher.len();
    Ok((hasher.finish(), len))
}

impl ReleaseDir {
    pub fn open(root: &Path) -> std::io::Result<ReleaseDir> {
        std::fs::create_dir_all(root.join("store"))?;
        // A temp pointer is a switch that never happened.
        let _ = std::fs::remove_file(root.join(ACTIVE_TMP));
        Ok(ReleaseDir { root: root.to_path_buf() })
    }

    pub fn release_dir(&self, release_id: &str) -> PathBuf {
        self.root.join("store").join(release_id)
    }

    pub fn artifact_path(&self, release_id: &str, name: &str) -> PathBuf {
        self.release_dir(release_id).join(name)
    }

    /// Whether every artifact of `pointer` is on disk with the right size and hash.
    pub fn verify(&self, pointer: &ActivePointer) -> Result<(), ActivationError> {
        for a in &pointer.artifacts {
            match hash_file(&self.artifact_path(&pointer.release_id, &a.name)) {
                Ok((sha, size)) if sha == a.sha256 && size == a.size => {}
                _ => return Err(ActivationError::NotVerified(a.name.clone())),
            }
        }
        Ok(())
    }

    /// The pointer, if there is a readable one.
    pub fn active(&self) -> Option<ActivePointer> {
        let text = std::fs::read(self.root.join(ACTIVE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Switches `ACTIVE` to `pointer` in one atomic step, after verifying it.
    pub fn activate(&self, pointer: &ActivePointer, crash: Option<CrashPoint>) -> Result<(), ActivationError> {
        self.verify(pointer)?;
        let stop = |at: CrashPoint| if crash == Some(at) { Err(ActivationError::Crashed(at)) } else { Ok(()) };
        let tmp = self.root.join(ACTIVE_TMP);
        let bytes = serde_json::to_vec_pretty(pointer).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        stop(CrashPoint::AfterTempWrite)?;
        file.sync_all()?;
        drop(file);
        stop(CrashPoint::AfterTempFsync)?;
        std::fs::rename(&tmp, self.root.join(ACTIVE))?;
        stop(CrashPoint::AfterRename)?;
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(())
    }

    /// Removes the pointer (atomically): the embedded release is active again.
    pub fn deactivate(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.root.join(ACTIVE)) {
            Ok(()) => std::fs::File::open(&self.root)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes stored releases other than `keep` (active, previous known-good).
    pub fn collect_garbage(&self, keep: &[&str]) -> std::io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(self.root.join("store"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                std::fs::remove_dir_all(entry.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(dir: &ReleaseDir, id: &str, files: &[(&str, &[u8])]) -> ActivePointer {
        std::fs::create_dir_all(dir.release_dir(id)).unwrap();
        let mut artifacts = Vec::new();
        for (name, bytes) in files {
            std::fs::write(dir.artifact_path(id, name), bytes).unwrap();
            artifacts.push(PointerArtifact {
                name: name.to_string(),
                sha256: release::checksum::sha256_hex(bytes),
                size: bytes.len() as u64,
            });
        }
        ActivePointer {
            release_id: id.into(),
            dataset: "d".into(),
            channel: "c".into(),
            version: "1.0.0".into(),
            artifacts,
        }
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_old_or_the_new_release_active() {
        for crash in
            [None, Some(CrashPoint::AfterTempWrite), Some(CrashPoint::AfterTempFsync), Some(CrashPoint::AfterRename)]
        {
            let root = tempfile::tempdir().unwrap();
            let dir = ReleaseDir::open(root.path()).unwrap();
            let old = stored(&dir, "old", &[("a.db", b"old a"), ("b.db", b"old b")]);
            dir.activate(&old, None).unwrap();
            let new = stored(&dir, "new", &[("a.db", b"new a"), ("b.db", b"new b")]);
            let result = dir.activate(&new, crash);
            assert_eq!(result.is_ok(), crash.is_none(), "{crash:?}");
            // The app is killed here and reopened.
            drop(dir);
            let reopened = ReleaseDir::open(root.path()).unwrap();
            let active = reopened.active().expect("a release is always active");
            let expected = if matches!(crash, None | Some(CrashPoint::AfterRename)) { &new } else { &old };
            assert_eq!(&active, expected, "{crash:?}");
            reopened.verify(&active).expect("every file of the active release re-hashes");
        }
    }

    #[test]
    fn an_unverified_release_is_never_activated() {
        let root = tempfile::tempdir().unwrap();
        let dir = ReleaseDir::open(root.path()).unwrap();
        let mut p = stored(&dir, "r", &[("a.db", b"bytes")]);
        p.artifacts[0].sha256 = "00".repeat(32);
        assert!(matches!(dir.activate(&p, None), Err(ActivationError::NotVerified(_))));
        assert!(dir.active().is_none());
        let gone = stored(&dir, "gone", &[("a.db", b"x")]);
        std::fs::remove_file(dir.artifact_path("gone", "a.db")).unwrap();
        assert!(dir.activate(&gone, None).is_err());
        assert_eq!(dir.collect_garbage(&["r"]).unwrap(), vec!["gone".to_string()]);
    }
}

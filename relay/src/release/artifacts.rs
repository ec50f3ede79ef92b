//! Artifact files on the relay's disk.
//!
//! Uploads stream into `tmp/` under a fresh name while being hashed, are
//! fsynced, then renamed to `files/<release>/<uuid>` (and the directory
//! fsynced) before any database row points at them. A crash or a dropped
//! upload therefore leaves at most a temporary file, which the next start
//! sweeps; no row ever points at a partial file.
//!
//! Several relays may share the directory (a shared mount): the sweeps at
//! start leave files younger than [`SWEEP_GRACE`] alone, since another
//! relay may be writing them or about to record them.

use futures_util::{Stream, StreamExt};
use release::checksum::Hasher;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A verified file waiting to be recorded.
pub struct Staged {
    pub file_key: String,
    pub size: u64,
    pub sha256: String,
}

/// Files modified this recently are never swept (see the module doc).
pub const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether a file was last modified longer ago than [`SWEEP_GRACE`].
fn past_grace(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > SWEEP_GRACE)
}

pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// Opens (creating) the store under `root`, removing leftovers of
    /// interrupted uploads (past the grace).
    pub fn open(root: &Path) -> std::io::Result<ArtifactStore> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("files"))?;
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            if past_grace(&path) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(ArtifactStore { root: root.to_path_buf() })
    }

    pub fn path(&self, file_key: &str) -> PathBuf {
        self.root.join("files").join(file_key)
    }

    /// Streams `body` to disk, hashing as it goes, refusing more than `limit`
    /// bytes. On any failure the partial file is removed.
    pub async fn stage<S, E>(&self, release_id: &str, body: S, limit: u64) -> Result<Staged, UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let unique = uuid::Uuid::new_v4().to_string();
        let tmp = self.root.join("tmp").join(format!("{unique}.part"));
        let result = self.write_hashed(&tmp, body, limit).await;
        let (size, sha256) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dir = self.root.join("files").join(release_id);
        let file_key = format!("{release_id}/{unique}");
        let finish = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::rename(&tmp, self.path(&file_key)).await?;
            sync_dir(&dir).await
        };
        if let Err(e) = finish.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(Staged { file_key, size, sha256 })
    }

    async fn write_hashed<S, E>(&self, path: &Path, mut body: S, limit: u64) -> Result<(u64, String), UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(path).await?);
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Interrupted(e.to_string()))?;
            if hasher.len() + chunk.len() as u64 > limit {
                return Err(UploadError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        let size = hasher.len();
        Ok((size, hasher.finish()))
    }

    /// Re-reads a stored file: its SHA-256 and size, or `None` if unreadable.
    pub async fn rehash(&self, file_key: &str) -> Option<(String, u64)> {
        let path = self.path(file_key);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = std::fs::File::open(path).ok()?;
            let mut hasher = Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let size = hasher.len();
            Some((hasher.finish(), size))
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn remove(&self, file_key: &str) {
        let _ = tokio::fs::remove_file(self.path(file_key)).await;
    }

    /// Deletes files no artifact row points at (a crash between rename and
    /// insert, or a removed artifact), once past the grace.
    pub fn sweep_orphans(&self, referenced: &[String]) -> std::io::Result<usize> {
        let referenced: std::collections::HashSet<&str> = referenced.iter().map(String::as_str).collect();
        let mut removed = 0;
        let files = self.root.join("files");
        for dir in std::fs::read_dir(&files)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(dir.path())? {
                let f = f?;
                let key = format!("{}/{}", dir.file_name().to_string_lossy(), f.file_name().to_string_lossy());
                if !referenced.contains(key.as_str()) && past_grace(&f.path()) {
                    std::fs::remove_file(f.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

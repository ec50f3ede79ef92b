//! Artifact bytes, kept by content: [`ArtifactStore`] is the interface the
//! release service uses, [`DirectoryStore`] the default, a directory that
//! several relays may share (a shared mount).
//!
//! An upload streams into `tmp/` under a fresh name while being hashed, is
//! fsynced, then renamed to `files/sha256/<first two hex digits>/<sha256>`
//! (and the directory fsynced) before any database row points at it; the
//! row records the key `sha256/<hex>`. A crash or a dropped upload leaves
//! at most a temporary file; no row ever points at a partial file. The same
//! bytes uploaded twice are stored once.
//!
//! Files are never deleted on the request path: a key may be shared by
//! several releases, and on a shared directory another relay may be
//! recording the same bytes right now. The sweep (at start and hourly)
//! deletes files no row points at once they are older than
//! [`SWEEP_GRACE`]; an upload that finds its bytes already stored touches
//! the file, so the grace counts from then.

use futures_util::{Stream, StreamExt};
use release::checksum::Hasher;
use std::path::{Path, PathBuf};
use std::pin::Pin;
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

/// An upload's body: chunks, or why it broke off.
pub type Body<'a> = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, String>> + Send + 'a>>;

/// Files modified this recently are never swept (see the module doc).
pub const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where artifact bytes are kept. Keys name content (`sha256/<hex>`);
/// keys of older uploads (`<release>/<uuid>`) stay readable.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Streams `body` in, hashing as it goes, refusing more than `limit`
    /// bytes; on any failure nothing is kept.
    async fn stage(&self, body: Body<'_>, limit: u64) -> Result<Staged, UploadError>;
    /// The local file holding a key's bytes (served with Range).
    fn path(&self, file_key: &str) -> PathBuf;
    /// Re-reads stored bytes: their SHA-256 and size, or `None` if unreadable.
    async fn rehash(&self, file_key: &str) -> Option<(String, u64)>;
    /// Deletes files no key in `referenced` names, once past the grace.
    fn sweep_orphans(&self, referenced: &[String]) -> std::io::Result<usize>;
}

/// Whether a file was last modified longer ago than [`SWEEP_GRACE`].
fn past_grace(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > SWEEP_GRACE)
}

/// [`ArtifactStore`] on a directory.
pub struct DirectoryStore {
    root: PathBuf,
}

impl DirectoryStore {
    /// Opens (creating) the store under `root`, removing leftovers of
    /// interrupted uploads (past the grace).
    pub fn open(root: &Path) -> std::io::Result<DirectoryStore> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("files"))?;
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            if past_grace(&path) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(DirectoryStore { root: root.to_path_buf() })
    }

    async fn write_hashed(&self, path: &Path, mut body: Body<'_>, limit: u64) -> Result<(u64, String), UploadError> {
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(path).await?);
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(UploadError::Interrupted)?;
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
}

#[async_trait::async_trait]
impl ArtifactStore for DirectoryStore {
    async fn stage(&self, body: Body<'_>, limit: u64) -> Result<Staged, UploadError> {
        let tmp = self.root.join("tmp").join(format!("{}.part", uuid::Uuid::new_v4()));
        let (size, sha256) = match self.write_hashed(&tmp, body, limit).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let file_key = format!("sha256/{sha256}");
        let (dest, dir) = (self.path(&file_key), self.root.join("files/sha256").join(&sha256[..2]));
        let finish = async {
            tokio::fs::create_dir_all(&dir).await?;
            if tokio::fs::try_exists(&dest).await? {
                // The same bytes are stored already: keep that file, and
                // restart its grace so no sweep takes it before our row exists.
                tokio::fs::remove_file(&tmp).await?;
                let dest = dest.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::File::options().append(true).open(&dest)?.set_modified(std::time::SystemTime::now())
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
            } else {
                tokio::fs::rename(&tmp, &dest).await?;
                sync_dir(&dir).await
            }
        };
        if let Err(e) = finish.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(Staged { file_key, size, sha256 })
    }

    fn path(&self, file_key: &str) -> PathBuf {
        self.root.join("files").join(relative_path(file_key))
    }

    async fn rehash(&self, file_key: &str) -> Option<(String, u64)> {
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

    fn sweep_orphans(&self, referenced: &[String]) -> std::io::Result<usize> {
        let referenced: std::collections::HashSet<PathBuf> = referenced.iter().map(|k| self.path(k)).collect();
        let mut removed = 0;
        let mut stack = vec![self.root.join("files")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else if !referenced.contains(&entry.path()) && past_grace(&entry.path()) {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Where a key's file is under a directory store's `files/` (also what a
/// backup copies): `sha256/<hex>` is spread over 256 subdirectories.
pub fn relative_path(file_key: &str) -> PathBuf {
    match file_key.strip_prefix("sha256/") {
        Some(hex) if hex.len() > 2 && hex.is_char_boundary(2) => Path::new("sha256").join(&hex[..2]).join(hex),
        _ => PathBuf::from(file_key),
    }
}

/// The body of an upload as a [`Body`].
pub fn body<'a, S, E>(stream: S) -> Body<'a>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Send + 'a,
    E: std::fmt::Display,
{
    Box::pin(stream.map(|r| r.map_err(|e| e.to_string())))
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Body<'static> {
        body(futures_util::stream::iter(
            parts.iter().map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from_static(p))).collect::<Vec<_>>(),
        ))
    }

    fn age(path: &Path, by: std::time::Duration) {
        let file = std::fs::File::options().append(true).open(path).expect("open");
        file.set_modified(std::time::SystemTime::now() - by).expect("set mtime");
    }

    #[tokio::test]
    async fn bytes_are_kept_once_by_content_and_swept_only_unreferenced_and_past_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirectoryStore::open(dir.path()).expect("open");
        let a = store.stage(chunks(&[b"hello ", b"world"]), 1 << 20).await.expect("stage");
        assert_eq!(a.file_key, format!("sha256/{}", a.sha256));
        assert_eq!((a.size, std::fs::read(store.path(&a.file_key)).expect("read")), (11, b"hello world".to_vec()));
        let again = store.stage(chunks(&[b"hello world"]), 1 << 20).await.expect("stage");
        assert_eq!(again.file_key, a.file_key, "the same bytes, one file");
        assert_eq!(store.rehash(&a.file_key).await, Some((a.sha256.clone(), 11)));
        let b = store.stage(chunks(&[b"other"]), 1 << 20).await.expect("stage");
        assert!(matches!(store.stage(chunks(&[b"too large"]), 4).await, Err(UploadError::TooLarge { limit: 4 })));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0, "nothing partial kept");

        // Unreferenced but young: kept (another relay may be recording it).
        assert_eq!(store.sweep_orphans(std::slice::from_ref(&a.file_key)).expect("sweep"), 0);
        age(&store.path(&b.file_key), SWEEP_GRACE * 2);
        age(&store.path(&a.file_key), SWEEP_GRACE * 2);
        assert_eq!(store.sweep_orphans(std::slice::from_ref(&a.file_key)).expect("sweep"), 1, "old and unreferenced");
        assert!(store.path(&a.file_key).exists() && !store.path(&b.file_key).exists());
        // Uploading bytes already stored restarts their grace.
        store.stage(chunks(&[b"hello world"]), 1 << 20).await.expect("stage");
        assert_eq!(store.sweep_orphans(&[]).expect("sweep"), 0, "just touched");

        // Keys of the layout before (`<release>/<uuid>`) still read.
        std::fs::create_dir_all(dir.path().join("files/r1")).expect("dir");
        std::fs::write(dir.path().join("files/r1/u1"), b"old").expect("write");
        assert_eq!(store.rehash("r1/u1").await.map(|(_, n)| n), Some(3));
    }

    #[test]
    fn leftovers_of_interrupted_uploads_go_at_start_once_past_the_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        let (young, old) = (dir.path().join("tmp/young.part"), dir.path().join("tmp/old.part"));
        std::fs::write(&young, b"another relay is writing this").expect("write");
        std::fs::write(&old, b"left by a crash").expect("write");
        age(&old, SWEEP_GRACE * 2);
        DirectoryStore::open(dir.path()).expect("open");
        assert!(young.exists() && !old.exists());
    }
}

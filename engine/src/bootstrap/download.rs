//! Resumable artifact downloads with SHA-256 verification (D-012).
//!
//! Bytes stream into `<dest>.part` and are hashed as they arrive. After a
//! dropped connection, an app kill or a reboot, the next attempt asks for
//! the rest with `Range: bytes=<have>-` and `If-Range: <etag the part came
//! from>`. Only a `206` whose `Content-Range` starts exactly where we asked,
//! for the size the manifest says, is appended; anything else (a `200` with
//! the whole body, a shifted range, `416`) restarts the file instead. A file
//! is trusted only when its size and SHA-256 match the manifest; then it is
//! fsynced and renamed to `dest`. Mismatches discard the file and retry with
//! backoff, up to a bound.

use release::checksum::Hasher;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub url: String,
    pub dest: PathBuf,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Bytes done out of the total, for the app's progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadStats {
    /// Bytes received from the network over all attempts.
    pub bytes_received: u64,
    pub attempts: u32,
    /// Bytes already on disk when the first attempt started (resumed).
    pub resumed_from: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the disk is full; the partial file was removed")]
    DiskFull,
    #[error("the download was cancelled (the partial file is kept for later)")]
    Cancelled,
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the server refused the download: HTTP {0}")]
    Refused(u16),
    #[error("io: {0}")]
    Io(std::io::Error),
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

fn io_err(e: std::io::Error) -> DownloadError {
    if is_disk_full(&e) { DownloadError::DiskFull } else { DownloadError::Io(e) }
}

/// Why one attempt ended without the file.
enum Attempt {
    /// Keep the part, resume later (network dropped).
    Retry(String),
    /// The part is wrong or unusable: delete it, start over.
    Restart(String),
}

fn part_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn etag_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".etag");
    PathBuf::from(p)
}

/// Parses `bytes start-end/total`.
fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total.trim().parse().ok()?))
}

async fn remove_part(dest: &Path) {
    let _ = tokio::fs::remove_file(part_path(dest)).await;
    let _ = tokio::fs::remove_file(etag_path(dest)).await;
}

/// Hashes what is already in the part file (to continue hashing after a resume).
async fn hash_existing(part: &Path, len: u64) -> std::io::Result<Hasher> {
    let mut hasher = Hasher::new();
    let mut file = tokio::fs::File::open(part).await?;
    const BUF: usize = 1 << 20;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let want = left.min(BUF as u64) as usize;
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

/// Downloads `req` to `req.dest`, resuming any earlier partial file.
pub async fn download(
    client: &reqwest::Client,
    req: &DownloadRequest,
    policy: RetryPolicy,
    progress: &(dyn Fn(Progress) + Send + Sync),
    cancel: &mut watch::Receiver<bool>,
) -> Result<DownloadStats, DownloadError> {
    let mut stats = DownloadStats::default();
    if let Some(parent) = req.dest.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io_err)?;
    }
    stats.resumed_from = tokio::fs::metadata(part_path(&req.dest)).await.map(|m| m.len()).unwrap_or(0);
    let mut backoff = policy.initial_backoff;
    let mut last = String::new();
    while stats.attempts < policy.max_attempts {
        if *cancel.borrow() {
            return Err(DownloadError::Cancelled);
        }
        stats.attempts += 1;
        match attempt(client, req, progress, cancel, &mut stats).await {
            Ok(()) => return Ok(stats),
            Err(AttemptError::Fatal(e)) => {
                if matches!(e, DownloadError::DiskFull) {
                    remove_part(&req.dest).await;
                }
                return Err(e);
            }
            Err(AttemptError::Again(Attempt::Restart(why))) => {
                remove_part(&req.dest).await;
                last = why;
            }
            Err(AttemptError::Again(Attempt::Retry(why))) => last = why,
        }
        tracing::info!(url = %req.url, attempt = stats.attempts, reason = %last, "download attempt failed");
        if stats.attempts >= policy.max_attempts {
            break;
        }
        let jittered = Duration::from_millis(rand::random_range(0..=backoff.as_millis().max(1) as u64));
        tokio::select! {
            _ = tokio::time::sleep(jittered) => {}
            _ = cancel.changed() => return Err(DownloadError::Cancelled),
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
    Err(DownloadError::GaveUp { attempts: stats.attempts, last })
}

enum AttemptError {
    Again(Attempt),
    Fatal(DownloadError),
}

impl From<std::io::Error> for AttemptError {
    fn from(e: std::io::Error) -> Self {
        AttemptError::Fatal(io_err(e))
    }
}

async fn attempt(
    client: &reqwest::Client,
    req: &DownloadRequest,
    progress: &(dyn Fn(Progress) + Send + Sync),
    cancel: &mut watch::Receiver<bool>,
    stats: &mut DownloadStats,
) -> Result<(), AttemptError> {
    let part = part_path(&req.dest);
    let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    let etag = tokio::fs::read_to_string(etag_path(&req.dest)).await.ok();
    if have > req.size || (have > 0 && etag.is_none()) {
        // Longer than the artifact, or of unknown origin: never trusted.
        remove_part(&req.dest).await;
        have = 0;
    }
    let mut request = client.get(&req.url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        if let Some(tag) = &etag {
            request = request.header(reqwest::header::IF_RANGE, tag.trim());
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Err(AttemptError::Again(Attempt::Retry(e.to_string()))),
    };
    let status = response.status().as_u16();
    let append = match status {
        206 if have > 0 => {
            let range = response.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
            match range.and_then(content_range) {
                Some((start, _, total)) if start == have && total == req.size => true,
                other => {
                    return Err(AttemptError::Again(Attempt::Restart(format!(
                        "asked for bytes {have}-, got Content-Range {other:?}"
                    ))));
                }
            }
        }
        200 => false,
        206 => return Err(AttemptError::Again(Attempt::Restart("206 to a request without Range".into()))),
        416 => return Err(AttemptError::Again(Attempt::Restart("416: the partial file does not fit".into()))),
        s if s == 404 || s == 410 || s == 401 || s == 403 => {
            return Err(AttemptError::Fatal(DownloadError::Refused(s)));
        }
        s => return Err(AttemptError::Again(Attempt::Retry(format!("HTTP {s}")))),
    };
    let (mut file, mut hasher, mut done) = if append {
        let hasher = hash_existing(&part, have).await?;
        let file = tokio::fs::OpenOptions::new().append(true).open(&part).await?;
        (file, hasher, have)
    } else {
        // A fresh start: remember which version of the file this part is.
        let tag = response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match tag {
            Some(t) => tokio::fs::write(etag_path(&req.dest), t).await?,
            None => {
                let _ = tokio::fs::remove_file(etag_path(&req.dest)).await;
            }
        }
        (tokio::fs::File::create(&part).await?, Hasher::new(), 0)
    };
    let mut body = response;
    loop {
        if *cancel.borrow() {
            let _ = file.flush().await;
            return Err(AttemptError::Fatal(DownloadError::Cancelled));
        }
        let chunk = match body.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                file.flush().await?;
                return Err(AttemptError::Again(Attempt::Retry(format!("connection dropped at {done}: {e}"))));
            }
        };
        stats.bytes_received += chunk.len() as u64;
        if done + chunk.len() as u64 > req.size {
            return Err(AttemptError::Again(Attempt::Restart(format!("more than the {} bytes announced", req.size))));
        }
        file.write_all(&chunk).await?;
        hasher.update(&chunk);
        done += chunk.len() as u64;
        progress(Progress { done, total: req.size });
    }
    file.flush().await?;
    if done != req.size {
        // The server closed early without an error: resumable.
        return Err(AttemptError::Again(Attempt::Retry(format!("stream ended at {done} of {} bytes", req.size))));
    }
    let digest = hasher.finish();
    if digest != req.sha256 {
        return Err(AttemptError::Again(Attempt::Restart(format!("SHA-256 {digest}, manifest says {}", req.sha256))));
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&part, &req.dest).await?;
    let _ = tokio::fs::remove_file(etag_path(&req.dest)).await;
    if let Some(parent) = req.dest.parent() {
        sync_dir(parent).await?;
    }
    Ok(())
}

pub(crate) async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(content_range("bytes 10-99/100"), Some((10, 99, 100)));
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(content_range("items 1-2/3"), None);
    }
}

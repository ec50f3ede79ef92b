//! The engine's resumable downloader (D-012) against real HTTP servers: the
//! relay, and a server that injects faults (cuts, corruption, wrong ranges).

use engine::bootstrap::download::{DownloadError, DownloadRequest, Progress, RetryPolicy, download};
use integration_tests::faulty::{Fault, FaultyServer};
use release::checksum::sha256_hex;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SIZE: usize = 1 << 20;

fn data() -> Vec<u8> {
    (0..SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(5) }
}

fn request(url: &str, dest: &Path, bytes: &[u8]) -> DownloadRequest {
    DownloadRequest { url: url.into(), dest: dest.into(), sha256: sha256_hex(bytes), size: bytes.len() as u64 }
}

async fn fetch(
    req: &DownloadRequest,
    attempts: u32,
) -> (Result<engine::bootstrap::download::DownloadStats, DownloadError>, Vec<Progress>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let report = move |p: Progress| {
        if let Ok(mut v) = sink.lock() {
            v.push(p);
        }
    };
    let (_tx, mut rx) = tokio::sync::watch::channel(false);
    let out = download(&integration_tests::http(), req, policy(attempts), &report, &mut rx).await;
    let progress = seen.lock().map(|v| v.clone()).unwrap_or_default();
    (out, progress)
}

fn no_leftovers(dest: &Path) -> bool {
    let part = format!("{}.part", dest.display());
    !Path::new(&part).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_where_it_stopped() {
    let bytes = data();
    let server = FaultyServer::start(bytes.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("words.db");
    server.push(&[Fault::CutAfter(SIZE as u64 / 2)]);
    let req = request(&server.url, &dest, &bytes);
    let (stats, progress) = fetch(&req, 3).await;
    let stats = stats.expect("downloaded");
    assert_eq!(std::fs::read(&dest).expect("file"), bytes);
    assert_eq!(stats.attempts, 2);
    assert!(stats.bytes_received <= SIZE as u64 + SIZE as u64 / 100, "re-downloaded {} bytes", stats.bytes_received);
    let (_, ranged, _) = server.served();
    assert_eq!(ranged, 1, "the second request asked for the rest only");
    assert_eq!(progress.last(), Some(&Progress { done: SIZE as u64, total: SIZE as u64 }));
    assert!(no_leftovers(&dest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_survives_an_app_kill_and_is_resumed_after() {
    let bytes = data();
    let server = FaultyServer::start(bytes.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("words.db");
    let req = request(&server.url, &dest, &bytes);
    server.push(&[Fault::CutAfter(300_000)]);
    // One attempt only: the "app" dies with a partial file on disk.
    let (first, _) = fetch(&req, 1).await;
    assert!(matches!(first, Err(DownloadError::GaveUp { .. })));
    assert!(!dest.exists(), "a partial file is never the artifact");
    // A new process picks it up.
    let (stats, _) = fetch(&req, 3).await;
    let stats = stats.expect("downloaded");
    assert_eq!(stats.resumed_from, 300_000);
    assert_eq!(stats.bytes_received, SIZE as u64 - 300_000);
    assert_eq!(std::fs::read(&dest).expect("file"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answers_to_a_range_restart_the_file_instead_of_corrupting_it() {
    let bytes = data();
    for wrong in [Fault::IgnoreRange, Fault::ShiftRange(1000), Fault::Unsatisfiable, Fault::ExtraBytes(10)] {
        let server = FaultyServer::start(bytes.clone()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("words.db");
        server.push(&[Fault::CutAfter(400_000), wrong]);
        let (stats, _) = fetch(&request(&server.url, &dest, &bytes), 5).await;
        stats.unwrap_or_else(|e| panic!("{wrong:?}: {e}"));
        assert_eq!(std::fs::read(&dest).expect("file"), bytes, "{wrong:?}");
        assert!(no_leftovers(&dest));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_is_discarded_and_retried_and_finally_given_up() {
    let bytes = data();
    let server = FaultyServer::start(bytes.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("words.db");
    server.push(&[Fault::CorruptByte(12_345)]);
    let (stats, _) = fetch(&request(&server.url, &dest, &bytes), 3).await;
    assert_eq!(stats.expect("second try is clean").attempts, 2);
    assert_eq!(std::fs::read(&dest).expect("file"), bytes);

    // Always corrupt: bounded retries, then a clear error, nothing left behind.
    let dest2 = dir.path().join("other.db");
    server.push(&[Fault::CorruptByte(1); 3]);
    let (out, _) = fetch(&request(&server.url, &dest2, &bytes), 3).await;
    assert!(matches!(out, Err(DownloadError::GaveUp { attempts: 3, .. })), "{out:?}");
    assert!(!dest2.exists() && no_leftovers(&dest2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_artifact_is_refused_without_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FaultyServer::start(data()).await;
    let url = server.url.replace("/file", "/nothing-here");
    let (out, _) = fetch(&request(&url, &dir.path().join("x"), &data()), 5).await;
    assert!(matches!(out, Err(DownloadError::Refused(404))), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_from_the_relay_resume_too() {
    // Publish through the relay's admin API, then download as a device would.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = relay::Config::local(dir.path().join("relay"), "127.0.0.1:0".parse().expect("addr"));
    config.admin_tokens =
        vec![relay::release::admin::AdminToken { name: "t".into(), token: integration_tests::TEST_ADMIN_TOKEN.into() }];
    let relay = relay::start(config).await.expect("relay");
    let http = integration_tests::http();
    let base = relay.http_url();
    let bytes = data();
    let id = integration_tests::admin::publish(
        &http,
        &base,
        integration_tests::TEST_ADMIN_TOKEN,
        ("d", "c", "1.0.0"),
        &[("words.db", bytes.clone())],
    )
    .await;
    let dest = dir.path().join("device/words.db");
    // Pretend an earlier run got the first 100,000 bytes of this very file.
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("dir");
    std::fs::write(format!("{}.part", dest.display()), &bytes[..100_000]).expect("part");
    std::fs::write(format!("{}.etag", dest.display()), format!("\"{}\"", sha256_hex(&bytes))).expect("etag");
    let req = request(&format!("{base}/v1/releases/{id}/artifacts/words.db"), &dest, &bytes);
    let (stats, _) = fetch(&req, 3).await;
    let stats = stats.expect("downloaded");
    assert_eq!(stats.bytes_received, SIZE as u64 - 100_000, "only the rest came over the wire");
    assert_eq!(std::fs::read(&dest).expect("file"), bytes);
    relay.shutdown().await;
}

/// A full disk: the kernel's ENOSPC (the partial file is made to point at
/// /dev/full, which refuses every write with it) is reported as `DiskFull`,
/// and nothing is left behind.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_leaves_nothing_behind() {
    let bytes = data();
    let server = FaultyServer::start(bytes.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("words.db");
    std::os::unix::fs::symlink("/dev/full", format!("{}.part", dest.display())).expect("symlink");
    let (out, _) = fetch(&request(&server.url, &dest, &bytes), 5).await;
    assert!(matches!(out, Err(DownloadError::DiskFull)), "{out:?}");
    assert!(!dest.exists());
    assert!(std::fs::symlink_metadata(format!("{}.part", dest.display())).is_err(), "partial file removed");
    let (requests, _, _) = server.served();
    assert_eq!(requests, 1, "a full disk is not retried");
}

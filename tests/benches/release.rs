//! The release bench: `cargo bench -p integration-tests --bench release`.
//!
//! For a 256 MiB artifact: upload time beside copying the file locally;
//! download time from the relay beside nginx serving the same file from the
//! same disk (both fetched with `curl -o`); peak relay memory during both;
//! and requests per second for `latest` with 100 concurrent clients.
//! Environment: RELEASE_BENCH_MIB (default 256). nginx is used if installed.

use integration_tests::{TEST_ADMIN_TOKEN, spawn_relay_process};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn rss(pid: u32) -> (u64, u64) {
    integration_tests::admin::process_memory(&pid.to_string())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn curl(url: &str, out: &Path) -> Option<Duration> {
    let t0 = Instant::now();
    let status = Command::new("curl").args(["-s", "-f", "-o"]).arg(out).arg(url).status().ok()?;
    status.success().then(|| t0.elapsed())
}

fn row(name: &str, target: &str, measured: String) {
    println!("{name:<62} {target:>12} {measured:>28}");
}

/// Serves `dir` with nginx on a free loopback port; returns (child pid holder, url prefix).
fn start_nginx(dir: &Path, work: &Path) -> Option<(std::process::Child, String)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    std::fs::create_dir_all(work.join("logs")).ok()?;
    let conf = work.join("nginx.conf");
    let mut f = std::fs::File::create(&conf).ok()?;
    writeln!(
        f,
        "daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/logs/error.log;
         events {{ worker_connections 64; }}
         http {{ access_log off; sendfile on; tcp_nopush on;
           client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
           uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
           server {{ listen 127.0.0.1:{port}; root {root}; }} }}",
        work = work.display(),
        root = dir.display()
    )
    .ok()?;
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // Wait (bounded) for it to listen.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, format!("http://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("release bench: run with `cargo bench -p integration-tests --bench release`");
        return;
    }
    let size_mib: u64 = std::env::var("RELEASE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = dir.path().join("serve");
    std::fs::create_dir_all(&serve).expect("dir");
    let file = serve.join("artifact.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("file"));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&block).expect("write");
        }
        f.flush().expect("flush");
    }
    let bytes = size_mib << 20;
    println!("release bench: {size_mib} MiB artifact\n");
    row("measure", "target", "measured".into());
    println!("{}", "-".repeat(104));

    // Floor for upload: copy the file locally and fsync it, like the relay does.
    let t0 = Instant::now();
    std::fs::copy(&file, dir.path().join("copy.bin")).expect("copy");
    std::fs::File::open(dir.path().join("copy.bin")).and_then(|f| f.sync_all()).expect("fsync");
    let copy_time = t0.elapsed();
    let _ = std::fs::remove_file(dir.path().join("copy.bin"));

    let (mut relay, ws_url) = spawn_relay_process(env!("CARGO_BIN_EXE_test-relay"), &dir.path().join("relay"));
    let base = ws_url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    let pid = relay.id();
    let http = integration_tests::http();

    runtime.block_on(async {
        let id = integration_tests::admin::create(&http, &base, TEST_ADMIN_TOKEN, ("bench", "stable", "1.0.0")).await;
        let (rss_before, _) = rss(pid);

        let f = tokio::fs::File::open(&file).await.expect("open");
        let t0 = Instant::now();
        let resp = http
            .put(format!("{base}/admin/releases/{id}/artifacts/artifact.bin"))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .header("content-length", bytes)
            .body(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024)))
            .send()
            .await
            .expect("upload");
        let upload_time = t0.elapsed();
        assert!(resp.status().is_success(), "upload: {}", resp.status());
        let (_, peak_upload) = rss(pid);
        row("upload to the relay (streamed, hashed, fsynced)", "-", secs(upload_time));
        row("local copy + fsync of the same file (floor)", "-", secs(copy_time));
        row("upload / local copy", "-", format!("{:.2}x", upload_time.as_secs_f64() / copy_time.as_secs_f64()));
        row(
            "relay peak memory during upload (rss before -> peak)",
            "flat",
            format!("{} -> {}", mib(rss_before), mib(peak_upload)),
        );

        integration_tests::admin::publish_draft(&http, &base, TEST_ADMIN_TOKEN, &id).await;

        // Downloads: relay vs nginx, both with `curl -o` to the same disk,
        // interleaved (relay, nginx, relay, nginx, ...) so both see the same
        // page cache and machine state; every download is checked for size
        // and SHA-256 (a fast wrong answer is not a fast answer).
        let out = dir.path().join("download.bin");
        let relay_url = format!("{base}/v1/releases/{id}/artifacts/artifact.bin");
        let expected = release::checksum::sha256_hex(&std::fs::read(&file).expect("read"));
        let expected_size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let checked = |url: &str| -> Option<Duration> {
            let t = curl(url, &out)?;
            let bytes = std::fs::read(&out).ok()?;
            (bytes.len() as u64 == expected_size && release::checksum::sha256_hex(&bytes) == expected).then_some(t)
        };
        let nginx_work = dir.path().join("nginx");
        let nginx = start_nginx(&serve, &nginx_work);
        const PAIRS: usize = 7;
        let (mut relay_times, mut nginx_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut bad = 0;
        for _ in 0..PAIRS {
            let r = checked(&relay_url);
            let n = nginx.as_ref().and_then(|(_, u)| checked(&format!("{u}/artifact.bin")));
            match (r, n) {
                (Some(r), Some(n)) => ratios.push(r.as_secs_f64() / n.as_secs_f64()),
                (None, _) => bad += 1,
                _ => {}
            }
            relay_times.extend(r);
            nginx_times.extend(n);
        }
        let (_, peak_download) = rss(pid);
        if let Some((mut child, _)) = nginx {
            // SIGTERM (not SIGKILL) so the master takes its worker down with it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v.get(v.len() / 2).copied()
        };
        let relay_time = median(&mut relay_times);
        match relay_time {
            Some(t) => row(
                &format!(
                    "download from the relay (curl -o, median of {} interleaved, size and hash checked)",
                    relay_times.len()
                ),
                "-",
                format!("{} ({:.0} MiB/s)", secs(t), size_mib as f64 / t.as_secs_f64()),
            ),
            None => row("download from the relay", "-", "failed (is curl installed?)".into()),
        }
        if bad > 0 {
            row("relay downloads that failed or did not match size and hash", "0", bad.to_string());
        }
        match median(&mut nginx_times) {
            Some(t) => row(
                "download from nginx, same file and disk (median, interleaved)",
                "-",
                format!("{} ({:.0} MiB/s)", secs(t), size_mib as f64 / t.as_secs_f64()),
            ),
            None => row("download from nginx", "-", "nginx not installed (apt-get install nginx-light)".into()),
        }
        if !ratios.is_empty() {
            ratios.sort_by(f64::total_cmp);
            let mid = ratios[ratios.len() / 2];
            row(
                "relay time / nginx time, per interleaved pair (min / median / max)",
                "<= 1.1x",
                format!(
                    "{:.2}x / {mid:.2}x / {:.2}x {}",
                    ratios[0],
                    ratios[ratios.len() - 1],
                    if mid <= 1.1 { "ok" } else { "MISSED" }
                ),
            );
        }
        row("relay peak memory after downloads", "flat", mib(peak_download));

        // The device side: download + verify with the engine, beside curl.
        let device = dir.path().join("device");
        let dest = device.join("artifact.bin");
        let sha = expected.clone();
        let req = engine::bootstrap::download::DownloadRequest {
            url: relay_url.clone(),
            dest: dest.clone(),
            sha256: sha,
            size: bytes,
        };
        let policy = engine::bootstrap::download::RetryPolicy::default();
        let mut engine_best: Option<Duration> = None;
        for _ in 0..3 {
            let _ = std::fs::remove_file(&dest);
            let (_tx, mut rx) = tokio::sync::watch::channel(false);
            let t0 = Instant::now();
            engine::bootstrap::download::download(&http, &req, policy, &|_| {}, &mut rx).await.expect("download");
            let t = t0.elapsed();
            engine_best = Some(engine_best.map_or(t, |b| b.min(t)));
        }
        let floor = relay_time;
        let mut script_best: Option<Duration> = None;
        for _ in 0..3 {
            let t0 = Instant::now();
            if curl(&relay_url, &out).is_some()
                && Command::new("sha256sum")
                    .arg(&out)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                let t = t0.elapsed();
                script_best = Some(script_best.map_or(t, |b| b.min(t)));
            }
        }
        if let Some(e) = engine_best {
            row("engine: download + verify (SHA-256 while streaming), best of 3", "-", secs(e));
        }
        if let Some(f) = floor {
            row("curl -o alone (the transfer floor)", "-", secs(f));
        }
        if let Some(s) = script_best {
            row("curl -o then sha256sum (what a script does)", "-", secs(s));
        }
        if let (Some(e), Some(f)) = (engine_best, floor) {
            let r = e.as_secs_f64() / f.as_secs_f64();
            row("engine / transfer floor", "<= 1.2x", format!("{r:.2}x {}", if r <= 1.2 { "ok" } else { "MISSED" }));
        }
        // Cut at 50 %, then resume: how much comes over the wire twice?
        let _ = std::fs::remove_file(&dest);
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let half = bytes / 2;
        let stop = move |p: engine::bootstrap::download::Progress| {
            if p.done >= half {
                let _ = tx.send(true);
            }
        };
        let first = engine::bootstrap::download::download(&http, &req, policy, &stop, &mut rx).await;
        let received_first = std::fs::metadata(format!("{}.part", dest.display())).map(|m| m.len()).unwrap_or(0);
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let second =
            engine::bootstrap::download::download(&http, &req, policy, &|_| {}, &mut rx).await.expect("resume");
        let again = (received_first + second.bytes_received).saturating_sub(bytes);
        row(
            "bytes downloaded twice after a cut at 50 %",
            "< 1 %",
            format!(
                "{again} B ({:.3} %){}",
                again as f64 * 100.0 / bytes as f64,
                if first.is_err() { "" } else { " (cut missed)" }
            ),
        );

        // `latest` with 100 concurrent clients for 5 s.
        let count = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tasks = Vec::new();
        for c in 0..100 {
            let (http, base, count, errors) = (integration_tests::http(), base.clone(), count.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let url = format!(
                        "{base}/v1/datasets/bench/channels/stable/latest?app_version=1.0.0&install_id=c{c}-{i}"
                    );
                    match http.get(url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        row(
            "`latest` with 100 concurrent clients (signed manifest each)",
            "-",
            format!(
                "{:.0} req/s ({} errors)",
                count.load(Ordering::Relaxed) as f64 / 5.0,
                errors.load(Ordering::Relaxed)
            ),
        );
    });
    let _ = relay.kill();
    let _ = relay.wait();
}

//! The sync bench: `cargo bench -p integration-tests --bench sync`.
//!
//! Prints every scale target of the sync-core issue beside its measured
//! figure, then relay latency with 1,000 connected devices, the same pair
//! load against automerge-repo's Node sync server with the throughput ratio,
//! and the relay's memory per idle connected device with 10,000 devices.
//!
//! Sections can be chosen: `cargo bench ... -- scale load idle` (default all).
//! Environment: SYNC_BENCH_REVIEWS (default 400000), SYNC_BENCH_IDLE (10000).

mod engine_open;
mod history;
mod load;
mod report;
mod wire;

use integration_tests::open_engine;
use report::{Report, kib, mib, ms, percentile, rss_of};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn main() {
    if let Ok(dir) = std::env::var(engine_open::CHILD_ENV) {
        let now = std::env::var("SYNC_BENCH_NOW").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        engine_open::child(&dir, now);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs bench binaries without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!("sync bench: run with `cargo bench -p integration-tests --bench sync`");
        return;
    }
    let sections: Vec<&str> = args.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
    let want = |s: &str| sections.is_empty() || sections.contains(&s);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    let mut report = Report::default();
    runtime.block_on(async {
        if want("scale") {
            scale(&mut report).await;
        }
        if want("load") {
            load(&mut report).await;
        }
        if want("idle") {
            idle(&mut report).await;
        }
    });
    report.print();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A relay in its own process (so its memory can be read), on a loopback port.
pub fn spawn_relay(data_dir: &Path) -> (Child, String) {
    integration_tests::spawn_relay_process(env!("CARGO_BIN_EXE_test-relay"), data_dir)
}

fn spawn_node_server(data_dir: &Path) -> Option<(Child, String)> {
    let dir = integration_tests::ensure_interop_deps().ok()?;
    let mut child = Command::new("node")
        .current_dir(&dir)
        .arg("sync-server.mjs")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take()?).read_line(&mut line);
    let url = line.trim().to_owned();
    if url.starts_with("ws://") { Some((child, url)) } else { None }
}

async fn scale(report: &mut Report) {
    let reviews = env_usize("SYNC_BENCH_REVIEWS", 400_000);
    println!("scale: building a history of {reviews} reviews (five years, one change per review)");
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let history = history::build("heavy", "phone", reviews, 20_000, 5 * 365);
    report.figure(
        format!("history: {} reviews in {} monthly documents built", history.reviews, history.docs.len()),
        ms(t0.elapsed()),
    );
    let total: usize = history.docs.iter().map(|(_, b)| b.len()).sum();
    let largest = history.docs.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    report.figure(
        "history: saved size, all documents / largest month",
        format!("{} / {}", kib(total as u64), kib(largest as u64)),
    );

    let phone_dir = dir.path().join("phone");
    {
        let phone = open_engine(&phone_dir, "heavy", "phone");
        let t0 = Instant::now();
        phone.import_documents(&history.docs).expect("import");
        report.figure("400k: import into a device database (materialize + FSRS)", ms(t0.elapsed()));
    }
    engine_open::measure(report, &phone_dir, history.end);

    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));
    let phone = open_engine(&phone_dir, "heavy", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "heavy", "tablet");
    wire::run(report, &phone, &tablet, &url, history.reviews as u64, history.end).await;
    let (rss, hwm) = rss_of(&relay.id().to_string());
    report.figure("relay process memory after the scale section (rss / peak)", format!("{} / {}", mib(rss), mib(hwm)));
    phone.stop_sync();
    tablet.stop_sync();
    let _ = relay.kill();
    let _ = relay.wait();
}

async fn load(report: &mut Report) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));

    // Latency with 1,000 connected devices (500 pairs), 20 edits each.
    let r = load::run(&url, 500, 20).await;
    report.figure(
        format!("1,000 devices: relay ack round trip p50 / p99 ({} edits)", r.edits),
        format!("{} / {}", ms(percentile(&r.ack, 0.5)), ms(percentile(&r.ack, 0.99))),
    );
    report.figure(
        "1,000 devices: device-to-device delivery p50 / p99",
        format!("{} / {}", ms(percentile(&r.delivery, 0.5)), ms(percentile(&r.delivery, 0.99))),
    );
    if r.failed_pairs > 0 {
        report.figure("1,000 devices: failed pairs", format!("{} ({:?})", r.failed_pairs, r.first_error));
    }

    // Same load against both servers: 100 pairs x 50 edits.
    let (pairs, edits) = (100, 50);
    let ours = load::run(&url, pairs, edits).await;
    let _ = relay.kill();
    let _ = relay.wait();
    report.figure(
        format!("{pairs} pairs x {edits} edits, our relay: throughput"),
        format!("{:.0} edits/s (p50 {})", ours.throughput(), ms(percentile(&ours.delivery, 0.5))),
    );
    match spawn_node_server(&dir.path().join("node")) {
        None => report
            .figure("automerge-repo Node sync server", "not available (node or tests/interop/node_modules missing)"),
        Some((mut node, node_url)) => {
            let theirs = load::run(&node_url, pairs, edits).await;
            let _ = node.kill();
            let _ = node.wait();
            report.figure(
                format!("{pairs} pairs x {edits} edits, automerge-repo Node server"),
                format!("{:.0} edits/s (p50 {})", theirs.throughput(), ms(percentile(&theirs.delivery, 0.5))),
            );
            if theirs.failed_pairs > 0 {
                report
                    .figure("Node server: failed pairs", format!("{} ({:?})", theirs.failed_pairs, theirs.first_error));
            }
            let ratio = ours.throughput() / theirs.throughput().max(1e-9);
            report.target(
                "throughput ratio, our relay / Node sync server",
                ">= 3x",
                format!("{ratio:.1}x"),
                ratio >= 3.0,
            );
        }
    }
}

/// `relay_connections_open` as the relay reports it.
async fn open_connections(base: &str) -> u64 {
    let text = match integration_tests::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix("relay_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn idle(report: &mut Report) {
    let n = env_usize("SYNC_BENCH_IDLE", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));
    let pid = relay.id().to_string();
    // Warm up allocator and runtime with a few connections first.
    let (warm, _) = load::idle_devices(&url, 10).await;
    // Every handshake completed, so the relay holds them all: measure now.
    let base = url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    report.figure("relay connections open after warm-up", open_connections(&base).await.to_string());
    let (before, _) = rss_of(&pid);
    let t0 = Instant::now();
    let (peers, failed) = load::idle_devices(&url, n).await;
    let connect_time = t0.elapsed();
    let open = open_connections(&base).await;
    let (after, _) = rss_of(&pid);
    let per_device = after.saturating_sub(before) / peers.len().max(1) as u64;
    report.figure(
        format!("{} idle devices connected (failed {failed}; relay counts {open} open)", peers.len()),
        ms(connect_time),
    );
    report.target(
        format!("relay memory per connected idle device ({} devices)", peers.len()),
        "<= 1 MiB",
        kib(per_device),
        peers.len() == n && per_device <= 1 << 20,
    );
    report.figure("relay resident memory with all of them", mib(after));
    drop(peers);
    drop(warm);
    let _ = relay.kill();
    let _ = relay.wait();
}

//! The sync bench: `cargo bench -p integration-tests --bench sync`.
//!
//! Prints every scale target of the sync-core issue beside its measured
//! figure, then relay latency with 1,000 connected devices, the same pair
//! load against automerge-repo's Node sync server with the throughput ratio,
//! and the relay's memory per idle connected device with 10,000 devices.
//!
//! Sections can be chosen: `cargo bench ... -- scale load multi js idle` (default all;
//! `import` runs only the first part of `scale`, for profiling;
//! `instructions`, only when named, counts the relay's instructions per
//! synced edit under valgrind: see `instructions.rs`).
//! Environment: SYNC_BENCH_REVIEWS (default 400000), SYNC_BENCH_IDLE (10000).

mod engine_open;
mod history;
mod instructions;
mod js_fetch;
mod load;
mod multi_relay;
mod report;
mod review_format;
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
        if want("scale") || sections.contains(&"import") {
            scale(&mut report, !want("scale")).await;
        }
        if want("load") {
            load(&mut report).await;
        }
        if want("multi") {
            let dir = tempfile::tempdir().expect("tempdir");
            multi_relay::run(&mut report, dir.path()).await;
        }
        if want("js") {
            let dir = tempfile::tempdir().expect("tempdir");
            js_fetch::run(&mut report, dir.path()).await;
        }
        if want("idle") {
            idle(&mut report).await;
        }
        if sections.contains(&"instructions") {
            let dir = tempfile::tempdir().expect("tempdir");
            instructions::run(&mut report, dir.path()).await;
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

pub fn spawn_node_server(data_dir: &Path) -> Option<(Child, String)> {
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
    let mut out = BufReader::new(child.stdout.take()?);
    let _ = out.read_line(&mut line);
    // Keep reading what it prints later: a closed pipe would kill it (EPIPE).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line.trim().to_owned();
    if url.starts_with("ws://") { Some((child, url)) } else { None }
}

/// The 400k history: import, queries, then sync through a relay. With
/// `import_only` (section `import`, for profiling) it stops after the import.
async fn scale(report: &mut Report, import_only: bool) {
    let reviews = env_usize("SYNC_BENCH_REVIEWS", 400_000);
    println!("scale: building a history of {reviews} reviews (five years, one change per review)");
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let (history, from_cache) = history::cached("heavy", "phone", reviews, 20_000, 5 * 365);
    report.figure(
        format!(
            "history: {} reviews in {} monthly documents {}",
            history.reviews,
            history.docs.len(),
            if from_cache { "read from the cache" } else { "built" }
        ),
        ms(t0.elapsed()),
    );
    let total: usize = history.docs.iter().map(|(_, b)| b.len()).sum();
    let largest = history.docs.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    report.figure(
        "history: saved size, all documents / largest month",
        format!("{} / {}", kib(total as u64), kib(largest as u64)),
    );

    review_format::run(report);

    let phone_dir = dir.path().join("phone");
    {
        let phone = open_engine(&phone_dir, "heavy", "phone");
        let t0 = Instant::now();
        phone.import_documents(&history.docs).expect("import");
        let took = t0.elapsed();
        report.target(
            "400k: import into a device database (materialize + FSRS)",
            "<= 3 s",
            ms(took),
            took <= std::time::Duration::from_secs(3),
        );
    }
    if import_only {
        return;
    }
    engine_open::measure(report, &phone_dir, history.end);

    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));
    let pid = relay.id().to_string();
    let (idle_rss, _) = rss_of(&pid);
    let base = url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    // A relay that has served one small sync and dropped its document: the
    // code of the sync path is paged in (2.3 MiB of the binary's text, file
    // backed) and the runtime's threads exist. Memory held for a history is
    // judged against this, so that neither counts as held for it.
    let warm_rss = warm_idle(&dir.path().join("warmup"), &url, &base, &pid).await;
    let phone = open_engine(&phone_dir, "heavy", "phone");
    let tablet = open_engine(&dir.path().join("tablet"), "heavy", "tablet");
    // The high-water mark is reset between phases (each phase's own peak is
    // printed): the section's peak is the highest of them.
    let hwm = wire::run(report, &phone, &tablet, &url, &pid, history.reviews as u64, history.end).await;
    let (rss, _) = rss_of(&pid);
    report.figure(
        "relay process memory: idle before / after the scale section",
        format!("{} / {}", mib(idle_rss), mib(rss)),
    );
    let extra = hwm.saturating_sub(idle_rss);
    report.target(
        "relay peak memory above idle while a 400k history syncs",
        "<= 64 MiB",
        mib(extra),
        extra <= 64 << 20,
    );
    phone.stop_sync();
    tablet.stop_sync();
    report.figure(
        "relay: months sent to a device that had none, as stored (not saved again)",
        metric(&base, "relay_whole_docs_from_storage_total ").await.map_or("-".into(), |n| n.to_string()),
    );
    wait_for_eviction(&base).await;
    let (after, _) = rss_of(&pid);
    report.figure(
        "relay memory idle: fresh / after one small sync (warm)",
        format!("{} / {}", mib(idle_rss), mib(warm_rss)),
    );
    report.target(
        "relay memory once the documents are evicted (vs warm idle)",
        "<= idle + 10 %",
        format!(
            "{} ({:+.0} % warm, {:+.0} % fresh)",
            mib(after),
            (after as f64 / warm_rss.max(1) as f64 - 1.0) * 100.0,
            (after as f64 / idle_rss.max(1) as f64 - 1.0) * 100.0
        ),
        after as f64 <= warm_rss as f64 * 1.10,
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

async fn load(report: &mut Report) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));

    // Latency with 1,000 connected devices (500 pairs), 20 edits each: first
    // at a fixed offered load (each sender edits every 500 ms: 1,000 edits/s
    // in all), then as fast as each pair can (500 edits always in flight).
    let every = std::time::Duration::from_millis(500);
    // 1,000 devices: a sender and a receiver per pair.
    const PAIRS: usize = 500;
    for (label, pace) in
        [("1 edit / 500 ms per sender, 1,000 edits/s", load::Pace::Every(every)), ("saturated", load::Pace::Saturated)]
    {
        let cpu = || {
            let of = |pid: u32| integration_tests::admin::process_cpu_seconds(&pid.to_string());
            (of(relay.id()), of(std::process::id()), std::time::Instant::now())
        };
        let before = cpu();
        let r = load::run(&url, PAIRS, 20, pace).await;
        let after = cpu();
        let ack_p99 = percentile(&r.ack, 0.99);
        report.target(
            format!("1,000 devices ({label}): relay ack p50 / p99 ({} edits)", r.edits),
            "p99 <= 50 ms",
            format!("{} / {}", ms(percentile(&r.ack, 0.5)), ms(ack_p99)),
            r.failed_pairs == 0 && ack_p99 <= std::time::Duration::from_millis(50),
        );
        report.figure(
            format!("1,000 devices ({label}): delivery p50 / p99, throughput"),
            format!(
                "{} / {}, {:.0} edits/s",
                ms(percentile(&r.delivery, 0.5)),
                ms(percentile(&r.delivery, 0.99)),
                r.throughput()
            ),
        );
        if let load::Pace::Saturated = pace {
            // What bounds a closed loop: with every pair's edit in flight,
            // the mean wait is the edits in flight over the throughput
            // (Little's law), whatever the server; and the throughput is
            // bounded by the cores the relay and the devices share.
            let wall = after.2.duration_since(before.2).as_secs_f64();
            report.figure(
                format!(
                    "1,000 devices ({label}): CPU meanwhile, relay / the devices' process, of {wall:.1} s on {} cores",
                    cores()
                ),
                format!("{:.1} s / {:.1} s", after.0 - before.0, after.1 - before.1),
            );
            report.figure(
                format!("1,000 devices ({label}): {PAIRS} edits in flight / throughput (Little's law: the mean wait at this throughput)"),
                ms(std::time::Duration::from_secs_f64(PAIRS as f64 / r.throughput().max(1.0))),
            );
        }
        if r.failed_pairs > 0 {
            report.figure(
                format!("1,000 devices ({label}): failed pairs"),
                format!("{} ({:?})", r.failed_pairs, r.first_error),
            );
        }
    }

    let _ = relay.kill();
    let _ = relay.wait();
    compare_servers(report, &dir).await;
}

/// One run of the pair load against a fresh server process.
struct ServerRun {
    throughput: f64,
    p50_delivery: std::time::Duration,
    cpu_us_per_edit: f64,
    peak_rss: u64,
    failed_pairs: usize,
    first_error: Option<String>,
}

async fn run_against(child: &mut Child, url: &str, pairs: usize, edits: usize) -> ServerRun {
    let pid = child.id().to_string();
    let cpu_before = integration_tests::admin::process_cpu_seconds(&pid);
    let r = load::run(url, pairs, edits, load::Pace::Saturated).await;
    let cpu = integration_tests::admin::process_cpu_seconds(&pid) - cpu_before;
    let (_, peak) = rss_of(&pid);
    let _ = child.kill();
    let _ = child.wait();
    ServerRun {
        throughput: r.throughput(),
        p50_delivery: percentile(&r.delivery, 0.5),
        cpu_us_per_edit: cpu * 1e6 / r.edits.max(1) as f64,
        peak_rss: peak,
        failed_pairs: r.failed_pairs,
        first_error: r.first_error,
    }
}

fn range(values: impl Iterator<Item = f64>, fmt: impl Fn(f64) -> String) -> String {
    let v: Vec<f64> = values.collect();
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    if v.is_empty() {
        "-".into()
    } else if (hi - lo).abs() < f64::EPSILON {
        fmt(lo)
    } else {
        format!("{}..{}", fmt(lo), fmt(hi))
    }
}

/// The same load, the same Rust peers, against our relay and automerge-repo's
/// Node sync server: each run on a fresh server process, runs interleaved
/// (ours, Node, ours, Node), CPU time and peak memory read from the
/// kernel's accounting of the server process. Node's server forwards a
/// document's changes at most every 100 ms (automerge-repo's
/// `syncDebounceRate`), so with edits made one after another its delivery
/// time and throughput measure that debounce, not the server: the fair
/// comparison is CPU per synced edit and memory, on the same load.
async fn compare_servers(report: &mut Report, dir: &tempfile::TempDir) {
    let (pairs, edits, rounds) = (200, 50, 2);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (mut relay, url) = spawn_relay(&dir.path().join(format!("relay-{round}")));
        ours.push(run_against(&mut relay, &url, pairs, edits).await);
        match spawn_node_server(&dir.path().join(format!("node-{round}"))) {
            Some((mut node, node_url)) => theirs.push(run_against(&mut node, &node_url, pairs, edits).await),
            None => break,
        }
    }
    let label = format!("{pairs} pairs x {edits} edits, {} interleaved runs", ours.len());
    for (name, runs) in [("our relay", &ours), ("automerge-repo Node server (syncDebounceRate 100 ms)", &theirs)] {
        if runs.is_empty() {
            report.figure(format!("{label}: {name}"), "not available (node or tests/interop/node_modules missing)");
            continue;
        }
        report.figure(
            format!("{label}: {name}: server CPU per synced edit / peak resident"),
            format!(
                "{} / {}",
                range(runs.iter().map(|r| r.cpu_us_per_edit), |v| format!("{v:.0} us")),
                range(runs.iter().map(|r| r.peak_rss as f64), |v| mib(v as u64))
            ),
        );
        report.figure(
            format!("{label}: {name}: throughput / delivery p50"),
            format!(
                "{} / {}",
                range(runs.iter().map(|r| r.throughput), |v| format!("{v:.0} edits/s")),
                range(runs.iter().map(|r| r.p50_delivery.as_secs_f64() * 1000.0), |v| format!("{v:.1} ms"))
            ),
        );
        let failed: usize = runs.iter().map(|r| r.failed_pairs).sum();
        if failed > 0 {
            // Their completed edits are counted (CPU per synced edit divides
            // by every edit that reached the other device).
            let first = runs.iter().find_map(|r| r.first_error.as_deref()).unwrap_or("");
            report.figure(format!("{label}: {name}: failed pairs (first error)"), format!("{failed} ({first})"));
        }
    }
    if !theirs.is_empty() {
        let ratios: Vec<f64> =
            ours.iter().zip(&theirs).map(|(o, t)| t.cpu_us_per_edit / o.cpu_us_per_edit.max(1e-9)).collect();
        report.target(
            "server CPU per synced edit, Node / ours (per interleaved pair of runs)",
            ">= 10x every run",
            range(ratios.iter().copied(), |v| format!("{v:.1}x")),
            ratios.len() == ours.len() && ratios.iter().all(|r| *r >= 10.0),
        );
    }
}

/// A metric (name with its trailing space) as the relay reports it.
/// The relay drops documents 30 s after their last use: waits for that
/// (at most two minutes).
async fn wait_for_eviction(base: &str) {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while Instant::now() < deadline && metric(base, "relay_docs_resident ").await != Some(0) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// One device of another user records a review and syncs it, then leaves;
/// once the relay dropped the document, its resident memory.
async fn warm_idle(dir: &Path, url: &str, base: &str, pid: &str) -> u64 {
    let device = open_engine(dir, "warmup", "phone");
    let _ = device.record_review(engine::NewReview {
        item_id: "warm".into(),
        rating: engine::Rating::Good,
        reviewed_at: 1_790_000_000_000,
        duration_ms: 1000,
        session_id: None,
    });
    device.start_sync(integration_tests::relay_config(url, "warmup", "phone")).expect("sync");
    integration_tests::eventually("the warm-up review is stored", std::time::Duration::from_secs(60), || {
        integration_tests::settled(&device)
    })
    .await;
    device.stop_sync();
    drop(device);
    wait_for_eviction(base).await;
    rss_of(pid).0
}

async fn metric(base: &str, name: &str) -> Option<u64> {
    let text = integration_tests::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
}

/// `relay_connections_open` as the relay reports it.
async fn open_connections(base: &str) -> u64 {
    metric(base, "relay_connections_open ").await.unwrap_or(0)
}

async fn idle(report: &mut Report) {
    let n = env_usize("SYNC_BENCH_IDLE", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut relay, url) = spawn_relay(&dir.path().join("relay"));
    let pid = relay.id().to_string();
    // Warm up allocator and runtime with a few connections first.
    let (warm, _) = load::idle_devices(&url, 10, true).await;
    // Every handshake completed, so the relay holds them all: measure now.
    let base = url.replace("ws://", "http://").trim_end_matches("/sync").to_owned();
    report.figure("relay connections open after warm-up", open_connections(&base).await.to_string());
    let (before, _) = rss_of(&pid);
    let t0 = Instant::now();
    let (peers, failed) = load::idle_devices(&url, n, true).await;
    let connect_time = t0.elapsed();
    let open = open_connections(&base).await;
    let (after, _) = rss_of(&pid);
    let per_device = after.saturating_sub(before) / peers.len().max(1) as u64;
    report.figure(
        format!("{} idle devices connected (failed {failed}; relay counts {open} open)", peers.len()),
        ms(connect_time),
    );
    report.target(
        format!("relay memory per connected device that has synced a document ({} devices)", peers.len()),
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

/// The cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

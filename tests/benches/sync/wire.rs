//! What sync costs on the wire and in time, measured with real engines
//! (each with the 400k history) through a relay process on loopback.

use crate::report::{Report, kib, mib, ms};
use engine::{ChangeEvent, Engine, NewReview, Rating, Traffic};
use integration_tests::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(600);

fn traffic(e: &Engine) -> Traffic {
    e.sync_status().map(|s| s.traffic).unwrap_or_default()
}

fn delta(a: Traffic, b: Traffic) -> Traffic {
    Traffic {
        messages_sent: b.messages_sent - a.messages_sent,
        messages_received: b.messages_received - a.messages_received,
        bytes_sent: b.bytes_sent - a.bytes_sent,
        bytes_received: b.bytes_received - a.bytes_received,
        turns: b.turns - a.turns,
        last_was_send: b.last_was_send,
    }
}

/// Waits until neither engine's traffic moved for `quiet`.
async fn quiescent(engines: &[&Engine], quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Vec<Traffic> = engines.iter().map(|e| traffic(e)).collect();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now: Vec<Traffic> = engines.iter().map(|e| traffic(e)).collect();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn review_at(e: &Engine, item: &str, at: i64) {
    let _ = e.record_review(NewReview {
        item_id: item.into(),
        rating: Rating::Good,
        reviewed_at: at,
        duration_ms: 3000,
        session_id: None,
    });
}

/// Round trips on a link: waits for the other side, counted from the
/// direction changes of its traffic (two turns make one round trip; a
/// message batch in one direction is one leg, however many messages).
fn round_trips(t: Traffic) -> u64 {
    if t.messages_sent + t.messages_received == 0 { 0 } else { t.turns.div_ceil(2).max(1) }
}

/// One review recorded on `a` until `b` has it; reports bytes and round trips per link.
async fn one_review(report: &mut Report, label: &str, a: &Engine, b: &Engine, item: &str, at: i64) {
    quiescent(&[a, b], Duration::from_millis(300)).await;
    let (ta, tb) = (traffic(a), traffic(b));
    let mut events = b.subscribe();
    let t0 = Instant::now();
    review_at(a, item, at);
    let arrived = arrival(&mut events, item).await;
    let latency = t0.elapsed();
    quiescent(&[a, b], Duration::from_millis(300)).await;
    let (da, db) = (delta(ta, traffic(a)), delta(tb, traffic(b)));
    let link_a = da.bytes_sent + da.bytes_received;
    let link_b = db.bytes_sent + db.bytes_received;
    report.figure(
        format!("{label}: review reaches the other device"),
        if arrived { ms(latency) } else { "never".into() },
    );
    report.target(format!("{label}: bytes on the sender's link"), "<= 1 KiB", kib(link_a), arrived && link_a <= 1024);
    report.target(format!("{label}: bytes on the receiver's link"), "<= 1 KiB", kib(link_b), arrived && link_b <= 1024);
    report.target(
        format!("{label}: round trips (sender / receiver link)"),
        "<= 3",
        format!("{} / {}", round_trips(da), round_trips(db)),
        arrived && round_trips(da) <= 3 && round_trips(db) <= 3,
    );
}

/// Waits until `b` reports a change to `item`; false after 30 s.
async fn arrival(events: &mut tokio::sync::broadcast::Receiver<ChangeEvent>, item: &str) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(ChangeEvent::ItemsChanged { item_ids }) if item_ids.iter().any(|i| i == item) => return true,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Warm delivery: `n` reviews, alternately from each device, each timed
/// from `record_review` on one device to the change event on the other. The
/// first of each direction is left out (it may load the month's document).
/// Also the CPU a review costs the relay and the devices' process (both
/// engines), read from the kernel's per-thread accounting over the `n`
/// reviews (the ticks of `cpu` are too coarse for a few milliseconds): they
/// land in the history's last month, a heavy one.
async fn warm_latency(report: &mut Report, a: &Engine, b: &Engine, relay_pid: &str, n: usize, at: i64) {
    let mut samples = Vec::new();
    let fine = |pid: &str| integration_tests::admin::process_cpu_seconds_fine(pid);
    let own = std::process::id().to_string();
    let mut cpu0 = (0.0, 0.0);
    let mut profile = None;
    for i in 0..n + 2 {
        if i == 2 {
            cpu0 = (fine(relay_pid), fine(&own));
            profile = perf_record(relay_pid);
        }
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let item = format!("warm-{i}");
        let mut events = to.subscribe();
        let t0 = Instant::now();
        review_at(from, &item, at + i as i64 * 1000);
        if !arrival(&mut events, &item).await {
            report.figure("warm: a review never arrived", item);
            return;
        }
        if i >= 2 {
            samples.push(t0.elapsed());
        }
    }
    let cpu1 = (fine(relay_pid), fine(&own));
    // perf's sampling costs both processes CPU: a profiled run's figure
    // says so, and is not one to compare with an unprofiled run's.
    let profiled = if profile.is_some() { ", under perf record" } else { "" };
    if let Some(perf) = profile {
        perf_stop(report, perf);
    }
    let reviews = n.max(1) as f64;
    report.figure(
        format!("warm: CPU per review, relay / devices' process ({n} reviews into a heavy month{profiled})"),
        format!("{:.0} us / {:.0} us", (cpu1.0 - cpu0.0) * 1e6 / reviews, (cpu1.1 - cpu0.1) * 1e6 / reviews),
    );
    samples.sort();
    let p50 = crate::report::percentile(&samples, 0.5);
    let p99 = crate::report::percentile(&samples, 0.99);
    report.target(
        format!("warm: a review reaches the other device, p50 ({n} reviews)"),
        "<= 10 ms",
        ms(p50),
        p50 <= Duration::from_millis(10),
    );
    report.target(
        format!("warm: a review reaches the other device, p99 ({n} reviews)"),
        "<= 30 ms",
        ms(p99),
        p99 <= Duration::from_millis(30),
    );
}

/// With `SYNC_BENCH_PERF_WARM` naming a directory, `perf record` (call
/// graphs through DWARF) of the relay and of this process over the warm
/// reviews, into `relay.perf` and `devices.perf` there, for `perf report -i`.
fn perf_record(relay_pid: &str) -> Option<Vec<std::process::Child>> {
    let dir = std::path::PathBuf::from(std::env::var_os("SYNC_BENCH_PERF_WARM")?);
    let own = std::process::id().to_string();
    let record = |pid: &str, file: &str| {
        std::process::Command::new("perf")
            .args(["record", "--call-graph", "dwarf", "-F", "1000", "-p", pid, "-o"])
            .arg(dir.join(file))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    };
    // perf takes a moment to attach: the first reviews are left out of the
    // profiles rather than the phase delayed.
    Some([record(relay_pid, "relay.perf"), record(&own, "devices.perf")].into_iter().flatten().collect())
}

/// Stops each `perf record` as Ctrl-C would, so it writes its file.
fn perf_stop(report: &mut Report, perfs: Vec<std::process::Child>) {
    for mut perf in perfs {
        let _ = std::process::Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
        if perf.wait().is_err() {
            report.figure("warm: perf record", "did not stop");
        }
    }
}

/// CPU seconds the relay process and this (the devices') process used.
fn cpu(relay_pid: &str) -> (f64, f64) {
    let own = std::process::id().to_string();
    (integration_tests::admin::process_cpu_seconds(relay_pid), integration_tests::admin::process_cpu_seconds(&own))
}

/// Who was busy during a phase: the relay's and the devices' CPU time
/// (from the kernel's process accounting), against the wall time.
fn busy(report: &mut Report, what: &str, before: (f64, f64), after: (f64, f64), wall: Duration) {
    report.figure(
        format!("{what}: CPU of relay / of the devices' process (wall {:.1} s)", wall.as_secs_f64()),
        format!("{:.1} s / {:.1} s", after.0 - before.0, after.1 - before.1),
    );
}

/// The relay's peak resident memory since the last call (the kernel's
/// high-water mark, `VmHWM`, reset by writing 5 to `clear_refs`), so each
/// phase's peak is its own. Returns the peak.
fn phase_peak(report: &mut Report, what: &str, relay_pid: &str, idle: u64) -> u64 {
    let (_, hwm) = integration_tests::admin::process_memory(relay_pid);
    let _ = std::fs::write(format!("/proc/{relay_pid}/clear_refs"), "5");
    report.figure(format!("{what}: relay peak memory above idle"), mib(hwm.saturating_sub(idle)));
    hwm
}

pub async fn run(
    report: &mut Report,
    phone: &Engine,
    tablet: &Engine,
    url: &str,
    relay_pid: &str,
    reviews: u64,
    end: i64,
) -> u64 {
    let (idle, _) = integration_tests::admin::process_memory(relay_pid);
    let mut peak = 0;
    // Initial backup of the whole history, then a new device bootstrapping it.
    let t0 = Instant::now();
    let cpu0 = cpu(relay_pid);
    phone.start_sync(relay_config(url, "heavy", "phone")).expect("sync");
    eventually("phone uploads its history", LONG, || settled(phone)).await;
    let took = t0.elapsed();
    busy(report, "400k: first upload", cpu0, cpu(relay_pid), took);
    peak = peak.max(phase_peak(report, "400k: first upload", relay_pid, idle));
    report.target(
        "400k: first upload of the whole history to the relay",
        "<= 3 s",
        ms(took),
        took <= Duration::from_secs(3),
    );
    report.figure("400k: bytes uploaded", kib(traffic(phone).bytes_sent));

    let t0 = Instant::now();
    let cpu0 = cpu(relay_pid);
    tablet.start_sync(relay_config(url, "heavy", "tablet")).expect("sync");
    eventually("tablet bootstraps", LONG, || tablet.review_count().ok() == Some(reviews)).await;
    let to_last = t0.elapsed();
    busy(report, "400k: bootstrap", cpu0, cpu(relay_pid), to_last);
    peak = peak.max(phase_peak(report, "400k: bootstrap", relay_pid, idle));
    // The first query after the last review: it sees every review (queries
    // replay what arrived out of order first).
    let _ = tablet.due_items(end, 50);
    let to_due = t0.elapsed();
    report.target(
        "400k: a new device bootstraps the whole history (last review)",
        "<= 3 s",
        ms(to_last),
        to_last <= Duration::from_secs(3),
    );
    report.figure("400k: ... and answers due_items with every review", ms(to_due));
    quiescent(&[phone, tablet], Duration::from_millis(500)).await;

    one_review(report, "warm", phone, tablet, "item-1", end + 1000).await;
    let n = std::env::var("SYNC_BENCH_WARM_REVIEWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    warm_latency(report, phone, tablet, relay_pid, n, end + 5000).await;

    // Reconnect both (sync states restored from disk), then one review.
    phone.stop_sync();
    tablet.stop_sync();
    phone.start_sync(relay_config(url, "heavy", "phone")).expect("sync");
    tablet.start_sync(relay_config(url, "heavy", "tablet")).expect("sync");
    eventually("both reconnected", LONG, || settled(phone) && settled(tablet)).await;
    one_review(report, "after reconnect", phone, tablet, "item-2", end + 2000).await;

    // An up-to-date device reconnecting.
    quiescent(&[phone, tablet], Duration::from_millis(300)).await;
    let before = traffic(tablet);
    tablet.stop_sync();
    tablet.start_sync(relay_config(url, "heavy", "tablet")).expect("sync");
    eventually("tablet reconnected", LONG, || settled(tablet)).await;
    quiescent(&[tablet], Duration::from_millis(300)).await;
    let d = delta(before, traffic(tablet));
    let total = d.bytes_sent + d.bytes_received;
    report.target(
        "400k: up-to-date device reconnects (all bytes)",
        "<= 8 KiB",
        format!("{} in {} msgs", kib(total), d.messages_sent + d.messages_received),
        total <= 8 * 1024,
    );

    // A month offline with 7,000 new reviews.
    phone.stop_sync();
    let t0 = Instant::now();
    for i in 0..7000i64 {
        review_at(phone, &format!("item-{}", i % 3000), end + 10 * 86_400_000 + i * 5_000);
    }
    let local = t0.elapsed();
    report.figure(
        "7,000 local reviews recorded offline (each durable)",
        format!("{} ({:.2} ms each)", ms(local), local.as_secs_f64() * 1000.0 / 7000.0),
    );
    let target_count = tablet.review_count().unwrap_or(0) + 7000;
    let t0 = Instant::now();
    phone.start_sync(relay_config(url, "heavy", "phone")).expect("sync");
    eventually("tablet has the month", LONG, || tablet.review_count().ok() == Some(target_count)).await;
    let took = t0.elapsed();
    report.target(
        "offline month (7,000 reviews) in sync on the other device",
        "<= 2 s",
        ms(took),
        took <= Duration::from_secs(2),
    );
    let (_, rest) = integration_tests::admin::process_memory(relay_pid);
    peak.max(rest)
}

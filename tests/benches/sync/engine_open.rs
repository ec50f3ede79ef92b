//! Opening a device database with a 400k-review history, measured in a
//! fresh child process so resident memory is the engine's alone.

use crate::report::{Report, mib, ms, percentile, rss_of};
use engine::{Engine, EngineConfig};
use std::path::Path;
use std::time::{Duration, Instant};

pub const CHILD_ENV: &str = "SYNC_BENCH_OPEN_DIR";

/// Runs in the child: prints one line of `key=value` figures.
pub fn child(dir: &str, now: i64) {
    let t0 = Instant::now();
    let engine =
        match Engine::open(EngineConfig { data_dir: dir.into(), user_id: "heavy".into(), device_id: "phone".into() }) {
            Ok(e) => e,
            Err(e) => {
                println!("error={e}");
                return;
            }
        };
    let first = engine.memory_state("item-1").ok().flatten().is_some();
    let open_to_first = t0.elapsed();
    let mut state_lat = Vec::new();
    for i in 0..2000u64 {
        let item = format!("item-{}", (i * 7919) % 20_000);
        let t = Instant::now();
        let _ = engine.memory_state(&item);
        state_lat.push(t.elapsed());
    }
    let mut due_lat = Vec::new();
    let mut due_len = 0;
    for i in 0..2000i64 {
        let t = Instant::now();
        due_len = engine.due_items(now - i * 60_000, 50).map(|d| d.len()).unwrap_or(0);
        due_lat.push(t.elapsed());
    }
    state_lat.sort();
    due_lat.sort();
    let (rss, hwm) = rss_of("self");
    println!(
        "first_found={first} open_us={} state_p50_us={} state_p99_us={} due_p50_us={} due_p99_us={} due_len={due_len} rss={rss} hwm={hwm}",
        open_to_first.as_micros(),
        percentile(&state_lat, 0.5).as_micros(),
        percentile(&state_lat, 0.99).as_micros(),
        percentile(&due_lat, 0.5).as_micros(),
        percentile(&due_lat, 0.99).as_micros(),
    );
}

/// Empties the kernel's page cache (needs root), so the next open reads the
/// database from disk as a phone does after a reboot or under memory pressure.
fn drop_page_cache() -> Result<(), String> {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot drop the page cache ({e}); run as root"))
}

fn run_child(exe: &Path, dir: &Path, now: i64) -> String {
    let out = std::process::Command::new(exe).env(CHILD_ENV, dir).env("SYNC_BENCH_NOW", now.to_string()).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => format!("error={e}"),
    }
}

fn field(text: &str, k: &str) -> u64 {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(u64::MAX)
}

/// Runs the child on `dir`, first with a cold page cache, then warm, and
/// reports both (the cold figure is the one a user feels after a reboot).
pub fn measure(report: &mut Report, dir: &Path, now: i64) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            report.figure("engine open (child process)", format!("cannot re-run bench: {e}"));
            return;
        }
    };
    match drop_page_cache() {
        Ok(()) => {
            let cold = run_child(&exe, dir, now);
            let open = Duration::from_micros(field(&cold, "open_us"));
            report.target(
                "400k: open to first answered query, cold page cache",
                "<= 100 ms",
                ms(open),
                open <= Duration::from_millis(100),
            );
        }
        Err(e) => report.figure("400k: open to first answered query, cold page cache", e),
    }
    let text = run_child(&exe, dir, now);
    let get = |k: &str| field(&text, k);
    let us = |k: &str| Duration::from_micros(get(k));
    report.target(
        "400k: open to first answered query, warm page cache",
        "<= 100 ms",
        ms(us("open_us")),
        us("open_us") <= Duration::from_millis(100),
    );
    report.target(
        "400k: engine resident memory (VmHWM of the app process)",
        "<= 64 MiB",
        mib(get("hwm")),
        get("hwm") <= 64 << 20,
    );
    for (label, key) in [
        ("400k: memory_state(item) p50", "state_p50_us"),
        ("400k: memory_state(item) p99", "state_p99_us"),
        ("400k: due_items(now, 50) p50", "due_p50_us"),
        ("400k: due_items(now, 50) p99", "due_p99_us"),
    ] {
        report.target(label, "<= 1 ms", ms(us(key)), us(key) <= Duration::from_millis(1));
    }
}

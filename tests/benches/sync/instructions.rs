//! The relay's instructions per synced edit, counted by valgrind's
//! callgrind: section `instructions`, not in the default run (it needs
//! valgrind and takes a few minutes).
//!
//! CPU time on a shared 2-core virtual machine drifts 10–20 % within an
//! hour, which hides any change smaller than that however the runs are
//! interleaved. An instruction count moves far less (runs of the same
//! relay differ by 2–4 %, with how the writer's groups fall), so a change
//! of 5 % or more shows with one run of each relay. It is a complement to
//! the CPU rows, not a replacement:
//! - only user space is counted: the kernel's share (sockets, fsync,
//!   wake-ups; about a third of the relay's CPU under the pair load, from
//!   `perf`) is not;
//! - valgrind runs the relay's threads one at a time and slower, so group
//!   commits are larger than natively;
//! - valgrind hides the CPU's SHA extensions, so SHA-256 runs in software
//!   and is overcounted.
//!
//! The load is the CPU row's own: device pairs editing shared documents,
//! 50 edits a pair, as fast as each pair can. Two runs, 100 and 200 pairs
//! (the CPU row's count), each against a fresh relay; the figure is the
//! difference in instructions over the difference in edits, so start-up
//! and shutdown drop out, while each pair's connections and joins stay in,
//! as in the CPU row. About two minutes per relay. `SYNC_BENCH_RELAY`
//! names another relay binary to count (another commit's `test-relay`),
//! for an A/B with one run each. `SYNC_BENCH_CALLGRIND_DIR` keeps each
//! run's callgrind file there (`callgrind.<pairs>.out`), for
//! `callgrind_annotate`.

use crate::load;
use crate::report::Report;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const EDITS_PER_PAIR: usize = 50;
const PAIRS: [usize; 2] = [100, 200];

pub async fn run(report: &mut Report, dir: &Path) {
    let relay = std::env::var_os("SYNC_BENCH_RELAY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_test-relay")));
    let label = "relay instructions per synced edit (callgrind, user space only)";
    if Command::new("valgrind").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        report.figure(label, "not available (valgrind missing)");
        return;
    }
    let mut counts = Vec::new();
    for (i, pairs) in PAIRS.into_iter().enumerate() {
        match count(&relay, &dir.join(format!("run-{i}")), pairs).await {
            Ok(c) => counts.push(c),
            Err(e) => {
                report.figure(label, format!("failed: {e}"));
                return;
            }
        }
    }
    let [(e1, i1), (e2, i2)] = [counts[0], counts[1]];
    let per_edit = i2.saturating_sub(i1) as f64 / e2.saturating_sub(e1).max(1) as f64;
    report.figure(
        format!("{label}, {} vs {} pairs x {EDITS_PER_PAIR} edits", PAIRS[1], PAIRS[0]),
        format!("{:.0} k", per_edit / 1000.0),
    );
}

/// One run: the relay under callgrind, the pair load, a clean stop (so
/// callgrind writes its counts); returns (edits, instructions).
async fn count(relay: &Path, dir: &Path, pairs: usize) -> Result<(usize, u64), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = dir.join("callgrind.out");
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(relay)
        .arg(dir.join("relay"))
        // What the relay would start itself again with (see
        // `relay::allocator`); set here so it does not exec under valgrind.
        .env("GLIBC_TUNABLES", relay::allocator::TUNABLES)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("valgrind: {e}"))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let url = line.trim().to_owned();
    if !url.starts_with("ws://") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("the relay did not start under valgrind: {line:?}"));
    }
    let r = load::run(&url, pairs, EDITS_PER_PAIR, load::Pace::Saturated).await;
    // SIGTERM: the relay stops cleanly and callgrind writes its file.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    if r.failed_pairs > 0 {
        return Err(format!("{} pairs failed: {:?}", r.failed_pairs, r.first_error));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    if let Some(keep) = std::env::var_os("SYNC_BENCH_CALLGRIND_DIR") {
        let kept = PathBuf::from(keep).join(format!("callgrind.{pairs}.out"));
        std::fs::copy(&out, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
    }
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or("no totals in callgrind's output")?;
    Ok((r.edits, total))
}

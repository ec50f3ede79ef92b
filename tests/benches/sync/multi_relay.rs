//! Several relays on one PostgreSQL (issue #18), section `multi`: relay CPU
//! per synced edit on PostgreSQL against SQLite (and PostgreSQL's own CPU),
//! two relays against one on the same load, and how long an edit takes to
//! reach a device on another relay.
//!
//! Everything runs on this one machine: the load generator, the relays and
//! PostgreSQL share its cores, so "two relays" cannot show more capacity
//! than the cores allow; the figure says what splitting costs or gives here.
//! CPU is read from the kernel's accounting of each process (PostgreSQL:
//! the postmaster and every backend). Runs are interleaved; PostgreSQL's
//! caches are warm after the first run (one database for all of them).

use crate::load::{self, LoadResult, Pace};
use crate::report::{Report, percentile};
use integration_tests::admin::process_cpu_seconds;
use integration_tests::pg::PgCluster;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

fn spawn(database: Option<&str>, dir: &Path) -> (Child, String) {
    let exe = env!("CARGO_BIN_EXE_test-relay");
    match database {
        Some(url) => integration_tests::spawn_relay_process_with(exe, dir, &[("RELAY_DATABASE_URL", url)]),
        None => integration_tests::spawn_relay_process(exe, dir),
    }
}

fn stop(relays: Vec<(Child, String)>) {
    for (mut child, _) in relays {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One run's CPU, per synced edit: the relays' and PostgreSQL's.
struct Run {
    result: LoadResult,
    relay_us: f64,
    pg_us: f64,
}

/// Runs `load` against `relays` and reads their CPU and PostgreSQL's around it.
async fn measured(
    relays: &[(Child, String)],
    pg: &PgCluster,
    load: impl std::future::Future<Output = LoadResult>,
) -> Run {
    let pids: Vec<String> = relays.iter().map(|(c, _)| c.id().to_string()).collect();
    let relay_cpu = || pids.iter().map(|p| process_cpu_seconds(p)).sum::<f64>();
    let (relay0, pg0) = (relay_cpu(), pg.cpu_seconds());
    let result = load.await;
    let per_edit = |seconds: f64| seconds * 1e6 / result.edits.max(1) as f64;
    let (relay_us, pg_us) = (per_edit(relay_cpu() - relay0), per_edit(pg.cpu_seconds() - pg0));
    Run { result, relay_us, pg_us }
}

/// A range of figures with a unit (the section's runs), as `crate::range` prints it.
fn range(values: impl Iterator<Item = f64>, unit: &str) -> String {
    crate::range(values, |v| format!("{v:.0} {unit}"))
}

/// [`range`] with one decimal.
fn range_f(values: impl Iterator<Item = f64>, unit: &str) -> String {
    crate::range(values, |v| format!("{v:.1} {unit}"))
}

pub async fn run(report: &mut Report, dir: &Path) {
    let pg = match PgCluster::start() {
        Ok(pg) => pg,
        Err(e) => {
            report.figure("several relays on PostgreSQL", format!("not run: {e}"));
            return;
        }
    };
    let (pairs, edits, rounds) = (200, 50, 2);
    let label = format!("{pairs} pairs x {edits} edits, saturated, {rounds} interleaved runs");

    // Relay CPU per synced edit: SQLite against PostgreSQL, one relay each.
    let (mut sqlite, mut postgres) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for on_pg in [false, true] {
            let relay = spawn(on_pg.then_some(pg.url.as_str()), &dir.join(format!("cpu-{round}-{on_pg}")));
            let url = relay.1.clone();
            let run = measured(std::slice::from_ref(&relay), &pg, load::run(&url, pairs, edits, Pace::Saturated)).await;
            stop(vec![relay]);
            if on_pg { postgres.push(run) } else { sqlite.push(run) }
        }
    }
    report.figure(
        format!("{label}: relay CPU per synced edit, on SQLite / on PostgreSQL"),
        format!(
            "{} / {}",
            range(sqlite.iter().map(|r| r.relay_us), "us"),
            range(postgres.iter().map(|r| r.relay_us), "us")
        ),
    );
    report.figure(
        format!("{label}: PostgreSQL's own CPU per synced edit, its share of relay + PostgreSQL"),
        format!(
            "{} , {}",
            range(postgres.iter().map(|r| r.pg_us), "us"),
            range(postgres.iter().map(|r| 100.0 * r.pg_us / (r.pg_us + r.relay_us).max(1e-9)), "%")
        ),
    );
    report.figure(
        format!("{label}: throughput, on SQLite / on PostgreSQL"),
        format!(
            "{} / {}",
            range(sqlite.iter().map(|r| r.result.throughput()), "edits/s"),
            range(postgres.iter().map(|r| r.result.throughput()), "edits/s")
        ),
    );

    // Two relays against one, same database and load; each user's two
    // devices on one relay (routing by user, as the runbook advises).
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        for relays in order {
            let started: Vec<(Child, String)> =
                (0..relays).map(|r| spawn(Some(&pg.url), &dir.join(format!("split-{round}-{relays}-{r}")))).collect();
            let urls: Vec<String> = started.iter().map(|(_, u)| u.clone()).collect();
            let route = move |i: usize| (urls[i % urls.len()].clone(), urls[i % urls.len()].clone());
            let run = measured(&started, &pg, load::run_across(route, pairs, edits, Pace::Saturated)).await;
            stop(started);
            if relays == 1 { one.push(run) } else { two.push(run) }
        }
    }
    for (name, runs) in [("one relay", &one), ("two relays, users split between them", &two)] {
        report.figure(
            format!("{label}, on PostgreSQL: {name}: throughput / CPU per synced edit (relays + PostgreSQL)"),
            format!(
                "{} / {}",
                range(runs.iter().map(|r| r.result.throughput()), "edits/s"),
                range(runs.iter().map(|r| r.relay_us + r.pg_us), "us")
            ),
        );
    }

    // Propagation: the sender on relay A, the receiver on relay B, at a
    // fixed offered load; the same load with both on A for comparison.
    let (paced_pairs, paced_edits) = (100, 20);
    let pace = Pace::Every(Duration::from_millis(200));
    let started: Vec<(Child, String)> =
        (0..2).map(|r| spawn(Some(&pg.url), &dir.join(format!("latency-{r}")))).collect();
    let (a, b) = (started[0].1.clone(), started[1].1.clone());
    let mut delivery: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    let (mut failed, mut first_error) = (0, None);
    for _round in 0..rounds {
        for (slot, across) in [(0, true), (1, false)] {
            let (a, b) = (a.clone(), b.clone());
            let route = move |_: usize| (a.clone(), if across { b.clone() } else { a.clone() });
            let r = load::run_across(route, paced_pairs, paced_edits, pace).await;
            failed += r.failed_pairs;
            first_error = first_error.or(r.first_error.clone());
            let millis = |q| percentile(&r.delivery, q).as_secs_f64() * 1000.0;
            delivery[slot].push((millis(0.5), millis(0.99)));
        }
    }
    for (slot, name) in [(0, "across relays (sender on A, receiver on B)"), (1, "on one relay")] {
        let runs = &delivery[slot];
        report.figure(
            format!(
                "{paced_pairs} pairs, 1 edit / 200 ms per sender (500 edits/s), on PostgreSQL, {rounds} interleaved runs: delivery p50 / p99 {name}"
            ),
            format!(
                "{} / {}",
                range_f(runs.iter().map(|r| r.0), "ms"),
                range_f(runs.iter().map(|r| r.1), "ms")
            ),
        );
    }
    if failed > 0 {
        report.figure("propagation runs: failed pairs", format!("{failed} ({first_error:?})"));
    }
    stop(started);
}

//! automerge-repo's own JavaScript client (node) fetching one document of
//! 20,000 changes it has never seen, from our relay and from automerge-repo's
//! Node sync server, in the same run: the same document bytes uploaded by
//! the same Rust peer, a fresh server process each run, runs interleaved
//! (ours, Node, ours, Node, ...). Timed inside the JS client, from creating
//! its repo (which connects) to having the document's last key
//! (`client.mjs time-find`), so node's own start-up is left out of both.
//! Both servers hold the document in memory when the client asks (each just
//! received it). The Node server runs automerge-repo's defaults, among them
//! `syncDebounceRate` 100 ms (how often it sends a document's changes).
//!
//! The client also reports its own work from the arrival of the last message
//! before it had the key (decoding the document, building its JS object):
//! no server can take that away, so that time over Node's whole fetch is the
//! best ratio any server could show with this client.

use crate::report::{Report, ms};
use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT};
use integration_tests::peer::TestPeer;
use integration_tests::*;
use protocol::DocumentId;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHANGES: usize = 20_000;
const RUNS: usize = 3;

/// One document of `CHANGES` changes (one key each); the last one writes
/// `zz-last`, which the JS client waits for.
fn big_doc() -> Automerge {
    let mut doc = Automerge::new();
    for i in 0..CHANGES {
        let key = if i + 1 == CHANGES { "zz-last".to_string() } else { format!("k{i:05}") };
        let _ = doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, key.as_str(), i as i64)?;
            Ok(())
        });
    }
    doc
}

/// One timed fetch by the JS client.
struct Fetch {
    /// From creating the client's repo to having the key.
    time: Duration,
    /// From the arrival of the last message before that to having the key.
    after_last_message: Duration,
    /// The server process's CPU time meanwhile (the kernel's accounting).
    server_cpu: Duration,
    /// The client process's own CPU time, start-up included.
    client_cpu: Duration,
}

/// Uploads `doc` through a Rust peer, then times the JS client finding it.
/// Beside the times, the CPU of both processes from the kernel's
/// accounting: they say how much of the client's time a server could save.
async fn one_run(ws_url: &str, js_url: &str, token: &str, doc: &Automerge, server_pid: u32) -> Result<Fetch, String> {
    let id = DocumentId::from_random(uuid::Uuid::new_v4().into_bytes());
    // automerge-repo's Node server prints its address before its repo
    // listens: a socket accepted in between is reset. Retry, bounded.
    let mut attempt = 0;
    let mut peer = loop {
        match TestPeer::connect(ws_url, token, "uploader").await {
            Ok(p) => break p,
            Err(e) if attempt >= 20 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut copy = doc.clone();
    let mut state = automerge::sync::State::new();
    if !peer.sync_doc(id, &mut copy, &mut state, false).await? {
        return Err("upload did not complete".into());
    }
    let dir = ensure_interop_deps()?;
    let server_cpu = || integration_tests::admin::process_cpu_seconds(&server_pid.to_string());
    let cpu_before = server_cpu();
    // Through bash, whose `times` then reports the client's own CPU time
    // (user and system, from the kernel's accounting of the reaped child).
    let out = Command::new("bash")
        .current_dir(&dir)
        .args(["-c", r#"node client.mjs time-find "$1" "$2" zz-last; status=$?; times >&2; exit $status"#, "bash"])
        .args([js_url, id.url().as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let cpu = Duration::from_secs_f64((server_cpu() - cpu_before).max(0.0));
    drop(peer);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let millis: Vec<f64> = stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("client output {stdout:?}: {e}"))?;
    let [total, after_last_message] = millis[..] else {
        return Err(format!("client output {stdout:?}: two times expected"));
    };
    Ok(Fetch {
        time: Duration::from_secs_f64(total / 1000.0),
        after_last_message: Duration::from_secs_f64(after_last_message / 1000.0),
        server_cpu: cpu,
        client_cpu: client_cpu(&String::from_utf8_lossy(&out.stderr)),
    })
}

/// The children's user + system time from bash's `times` (its second line,
/// `0m0.512s 0m0.060s`).
fn client_cpu(times: &str) -> Duration {
    let seconds = |field: &str| {
        let (m, s) = field.trim_end_matches('s').split_once('m')?;
        Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
    };
    let line = times.lines().last().unwrap_or("");
    let total: f64 = line.split_whitespace().filter_map(seconds).sum();
    Duration::from_secs_f64(total)
}

pub async fn run(report: &mut Report, dir: &std::path::Path) {
    let doc = big_doc();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..RUNS {
        let (mut relay, url) = crate::spawn_relay(&dir.join(format!("js-relay-{round}")));
        let tok = token("js-bench", "uploader");
        let js_url = format!("{url}?token={}", token("js-bench", "js"));
        match one_run(&url, &js_url, &tok, &doc, relay.id()).await {
            Ok(fetch) => ours.push(fetch),
            Err(e) => report.figure("JS client fetch from our relay failed", e),
        }
        let _ = relay.kill();
        let _ = relay.wait();
        let Some((mut node, node_url)) = crate::spawn_node_server(&dir.join(format!("js-node-{round}"))) else {
            report.figure("JS client fetch: Node server", "not available (node or tests/interop/node_modules missing)");
            return;
        };
        match one_run(&node_url, &node_url, "unused", &doc, node.id()).await {
            Ok(fetch) => theirs.push(fetch),
            Err(e) => report.figure("JS client fetch from the Node server failed", e),
        }
        let _ = node.kill();
        let _ = node.wait();
    }
    let list = |v: &[Fetch], f: fn(&Fetch) -> Duration| v.iter().map(|x| ms(f(x))).collect::<Vec<_>>().join(", ");
    report.figure(format!("JS client fetches a {CHANGES}-change document: our relay"), list(&ours, |f| f.time));
    report.figure(
        format!("JS client fetches a {CHANGES}-change document: Node server (syncDebounceRate 100 ms)"),
        list(&theirs, |f| f.time),
    );
    report.figure(
        "JS client fetch: server CPU meanwhile, our relay / Node server",
        format!("{} / {}", list(&ours, |f| f.server_cpu), list(&theirs, |f| f.server_cpu)),
    );
    report.figure(
        "JS client fetch: the client's own CPU (node, start-up included), our relay / Node server",
        format!("{} / {}", list(&ours, |f| f.client_cpu), list(&theirs, |f| f.client_cpu)),
    );
    report.figure(
        "JS client fetch: the client's work after the last message arrived, our relay / Node server",
        format!("{} / {}", list(&ours, |f| f.after_last_message), list(&theirs, |f| f.after_last_message)),
    );
    let ratio = |a: Duration, b: Duration| format!("{:.2}", a.as_secs_f64() / b.as_secs_f64());
    let floors: Vec<String> = ours.iter().zip(&theirs).map(|(o, t)| ratio(o.after_last_message, t.time)).collect();
    report
        .figure("JS client fetch: the best ratio any server could reach (that work / Node's time)", floors.join(", "));
    let every_run_half = ours.len() == RUNS
        && theirs.len() == RUNS
        && ours.iter().zip(&theirs).all(|(o, t)| o.time.as_secs_f64() <= t.time.as_secs_f64() / 2.0);
    let ratios: Vec<String> = ours.iter().zip(&theirs).map(|(o, t)| ratio(o.time, t.time)).collect();
    report.target(
        "JS client fetch, ours / Node's time (per interleaved run)",
        "<= 0.5 every run",
        ratios.join(", "),
        every_run_half,
    );
}

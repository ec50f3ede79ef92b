//! The relay binary as an operator runs it: stopped by SIGTERM, a second
//! instance on the same data directory, logs for collectors.

use futures_util::{SinkExt, StreamExt};
use protocol::Message;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// Starts the relay binary on a free loopback port; returns it and its base URL.
fn start(data: &Path, extra: &[&str]) -> (Child, String, BufReader<std::process::ChildStdout>) {
    start_with(data, extra, |_| {})
}

/// [`start`], with the command adjusted by `env` before it is spawned.
fn start_with(
    data: &Path,
    extra: &[&str],
    env: impl FnOnce(&mut Command),
) -> (Child, String, BufReader<std::process::ChildStdout>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    env(&mut command);
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env_remove("RELAY_TOKEN_KEYS")
        .env_remove("RELAY_ADMIN_TOKENS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relay runs");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(rest) = line.split("relay listening on ").nth(1) {
            let url = rest.split_whitespace().next().expect("url").to_owned();
            return (child, url, out);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the relay did not say where it listens; last line: {line}");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dev_token(user: &str, device: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    relay::config::dev_issuer().issue(user, device, now + 3600).expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut relay, base, mut out) = start(&data, &[]);
    let mut req = format!("{}/sync", base.replace("http://", "ws://")).into_client_request().expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {}", dev_token("ann", "phone")).parse().expect("hdr"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
    let join = Message::Join { sender_id: "p".into(), supported_protocol_versions: vec!["1".into()], metadata: None };
    ws.send(tungstenite::Message::Binary(join.encode().into())).await.expect("join");
    assert!(matches!(ws.next().await, Some(Ok(tungstenite::Message::Binary(_)))), "peer answer");

    let status = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = ws.next().await {
            if let Ok(tungstenite::Message::Close(c)) = frame {
                return c;
            }
        }
        None
    })
    .await
    .expect("the relay closes the WebSocket");
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1001, "going away: {close:?}");
    let exit = wait_exit(&mut relay, Duration::from_secs(30));
    assert!(exit.success(), "SIGTERM is a clean stop, not exit 143: {exit:?}");
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(rest.contains("relay stopped (SIGTERM)"), "{rest}");
    let wal = data.join("relay.sqlite3-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the WAL was checkpointed away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_data_directory_refuses_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut first, _, _out) = start(&data, &[]);
    // An upload in flight of the first relay, as it sits on disk.
    let marker = data.join("artifacts/tmp/upload-in-flight.part");
    std::fs::write(&marker, b"partial upload").expect("marker");

    let second = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("RELAY_TOKEN_KEYS")
        .env_remove("RELAY_ADMIN_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second relay runs");
    let mut second = second;
    let status = wait_exit(&mut second, Duration::from_secs(30));
    let mut stderr = String::new();
    second.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(!status.success());
    let expected = format!("is in use by another relay (pid {})", first.id());
    assert!(stderr.contains(&expected) && stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(!stderr.contains("Os {"), "a sentence, not a Debug print: {stderr}");
    assert!(marker.exists(), "the first relay's upload in flight was not touched");
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn logs_are_json_for_collectors_and_plain_text_without_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // SIGTERM at once, while the relay may still be starting: still a clean stop.
    let (mut relay, _, mut out) = start(&dir.path().join("json"), &["--log-format", "json"]);
    let _ = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status();
    assert!(wait_exit(&mut relay, Duration::from_secs(30)).success());
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let json_lines: Vec<serde_json::Value> =
        rest.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect();
    assert!(json_lines.iter().any(|v| v["fields"]["message"] == "shutting down" && v["level"] == "INFO"), "{rest}");

    let (mut relay, _, mut out) = start(&dir.path().join("text"), &[]);
    let _ = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status();
    assert!(wait_exit(&mut relay, Duration::from_secs(30)).success());
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(!rest.contains('\u{1b}'), "no colour codes when stdout is not a terminal: {rest:?}");
}

/// glibc's per-thread caches are kept small from the start (see
/// `relay::allocator`): the relay starts itself again, same pid, with
/// `GLIBC_TUNABLES` set. An operator's own value, even an empty one (their
/// way to keep glibc's defaults), is left as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_relay_runs_with_its_allocator_tunables_unless_the_operator_set_them() {
    let environ = |relay: &Child| std::fs::read(format!("/proc/{}/environ", relay.id())).expect("environ");
    let has = |env: &[u8], entry: &str| env.split(|b| *b == 0).any(|e| e == entry.as_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    let wanted = format!("GLIBC_TUNABLES={}", relay::allocator::TUNABLES);

    let (mut relay, _, _out) = start_with(&dir.path().join("a"), &[], |c| {
        c.env_remove("GLIBC_TUNABLES");
    });
    let env = environ(&relay);
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(has(&env, &wanted), "the serving process (the pid spawned) runs with {wanted}");

    let (mut relay, _, _out) = start_with(&dir.path().join("b"), &[], |c| {
        c.env("GLIBC_TUNABLES", "");
    });
    let env = environ(&relay);
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(has(&env, "GLIBC_TUNABLES="), "an operator's empty value is kept");
    assert!(!has(&env, &wanted));
}

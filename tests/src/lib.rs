//! Shared helpers for the workspace integration tests: a real relay on a
//! loopback port, real engines on temp dirs, polling with a deadline.

pub mod admin;
pub mod faulty;
pub mod peer;
pub mod pg;
pub mod tls;
pub mod tmpfs;

/// The admin token of the `test-relay` binary.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";

use engine::{Engine, EngineConfig, RelayConfig};
use relay::{Config, RunningRelay};
use std::path::Path;
use std::time::{Duration, Instant};

/// The folder holding automerge-repo's JavaScript client and Node server.
pub fn interop_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Installs automerge-repo's JavaScript packages (pinned by the committed
/// `package-lock.json`) into `tests/interop/node_modules` if they are not
/// there yet, so `cargo test` alone sets up the interop test. Needs `node`
/// and `npm` (`.ci/run` installs them on a machine without).
pub fn ensure_interop_deps() -> Result<std::path::PathBuf, String> {
    let dir = interop_dir();
    if dir.join("node_modules/@automerge/automerge-repo-storage-nodefs").exists() {
        return Ok(dir);
    }
    // `npm ci` trips over cbor-extract's platform-specific optional packages
    // on npm 11; `install --no-save` honours the lock file without editing it.
    let status = std::process::Command::new("npm")
        .current_dir(&dir)
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error"])
        .status()
        .map_err(|e| format!("cannot run npm (install Node.js and npm): {e}"))?;
    if status.success() { Ok(dir) } else { Err(format!("npm install in {} failed: {status}", dir.display())) }
}

/// An HTTP client for tests and benches. The project's TLS is rustls with
/// the ring provider, configured explicitly (`tls-config`), so reqwest has
/// no process-wide default provider to fall back on: every client is built
/// with a configuration.
pub fn http() -> reqwest::Client {
    let tls = tls_config::client_config(None).expect("the web's roots load");
    reqwest::Client::builder().tls_backend_preconfigured(tls).build().expect("http client")
}

/// `GET url` with [`http`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// Starts a relay on 127.0.0.1 with an OS-chosen port and the dev token key.
pub async fn start_relay(data_dir: &Path) -> RunningRelay {
    let config = Config::local(data_dir.to_path_buf(), "127.0.0.1:0".parse().expect("literal address"));
    relay::start(config).await.expect("relay starts")
}

/// Starts a relay on `listen` with the given limits.
pub async fn start_relay_with(
    data_dir: &Path,
    listen: std::net::SocketAddr,
    limits: relay::limits::Limits,
) -> RunningRelay {
    let mut config = Config::local(data_dir.to_path_buf(), listen);
    config.limits = limits;
    relay::start(config).await.expect("relay starts")
}

/// Starts the relay binary at `exe` (the `test-relay` bin of this crate, whose
/// path only test and bench targets know) on `data_dir` as a separate
/// process; returns it and its WebSocket URL (its first line of output).
pub fn spawn_relay_process(exe: &str, data_dir: &Path) -> (std::process::Child, String) {
    spawn_relay_process_with(exe, data_dir, &[])
}

/// [`spawn_relay_process`] with environment variables set for the relay.
pub fn spawn_relay_process_with(exe: &str, data_dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("relay process starts");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    (child, line.trim().to_owned())
}

/// A device token signed with the relay's development key.
pub fn token(user: &str, device: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    relay::config::dev_issuer().issue(user, device, exp).expect("valid ids")
}

pub fn open_engine(dir: &Path, user: &str, device: &str) -> Engine {
    Engine::open(EngineConfig { data_dir: dir.to_path_buf(), user_id: user.into(), device_id: device.into() })
        .expect("engine opens")
}

pub fn relay_config(url: &str, user: &str, device: &str) -> RelayConfig {
    let mut c = RelayConfig::new(url, token(user, device));
    c.initial_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(500);
    c
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Like [`eventually`], for checks that must await (an HTTP call).
pub async fn eventually_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// True when the engine is connected and has nothing unacknowledged.
pub fn settled(e: &Engine) -> bool {
    e.sync_status().map(|s| s.connected && s.pending_documents == 0).unwrap_or(false)
}

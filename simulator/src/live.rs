//! Live mode: a scenario replayed against the relay as a separate process
//! and real engines with their WebSocket drivers, over loopback, each
//! device behind its own TCP proxy that can cut, block and delay. What the
//! deterministic model abstracts (sockets, the tokio adapter, backoff,
//! fsyncs, a SIGKILLed process) is real here, so the model cannot hide a
//! fault of the real stack.
//!
//! Steps run in real time (`at` is milliseconds from the start). Steps
//! that need the model's control points (a crash inside a relay step,
//! failing relay writes, backups, duplicate delivery, full disks) are
//! reported as skipped.

use crate::scenario::Scenario;
use crate::world::Action;
use engine::{Engine, EngineConfig, NewReview, Rating, RelayConfig, SessionCounts};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reviews are stamped from here (2026-10-01T00:00Z minus five seconds).
const T0_MS: i64 = 1_790_812_800_000 - 5_000;

/// A TCP proxy in front of the relay for one device.
struct Proxy {
    addr: SocketAddr,
    online: Arc<AtomicBool>,
    /// Bumped to cut every connection open now.
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: Arc<Mutex<SocketAddr>>, latency: Duration) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let online = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (on, gen_) = (online.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !on.load(Ordering::SeqCst) {
                    continue; // offline: the connection is dropped at once
                }
                let target = upstream.lock().map(|a| *a).ok();
                let (on, gen_) = (on.clone(), gen_.clone());
                tokio::spawn(async move {
                    let Some(target) = target else { return };
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pump(client, server, latency, on, gen_).await;
                });
            }
        });
        Ok(Proxy { addr, online, generation, task })
    }

    fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
        if !online {
            self.cut();
        }
    }

    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies bytes both ways (after `latency`) until either side closes, the
/// proxy goes offline or its connections are cut.
async fn pump(
    client: TcpStream,
    server: TcpStream,
    latency: Duration,
    online: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
) {
    let born = generation.load(Ordering::SeqCst);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let alive = Arc::new(move || online.load(Ordering::SeqCst) && generation.load(Ordering::SeqCst) == born);
    let up = copy(cr, sw, latency, alive.clone());
    let down = copy(sr, cw, latency, alive);
    tokio::select! { _ = up => {}, _ = down => {} }
}

/// One direction of a proxied connection: read, wait `latency`, write,
/// while `alive` says the connection is neither cut nor offline.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
    alive: Arc<impl Fn() -> bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) if alive() => continue,
            Err(_) => return,
        };
        tokio::time::sleep(latency).await;
        if !alive() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The relay as a separate process.
struct RelayProcess {
    exe: PathBuf,
    data: PathBuf,
    child: Child,
}

impl RelayProcess {
    fn start(exe: &Path, data: &Path) -> Result<(RelayProcess, SocketAddr), String> {
        use std::io::BufRead;
        let mut child = Command::new(exe)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("RELAY_TOKEN_KEYS")
            .env_remove("RELAY_ADMIN_TOKENS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the relay {}: {e}", exe.display()))?;
        let Some(out) = child.stdout.take() else { return Err("relay stdout".into()) };
        let mut lines = std::io::BufReader::new(out).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split("relay listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("");
                        break addr.parse::<SocketAddr>().map_err(|e| format!("relay address `{addr}`: {e}"))?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("the relay exited before it listened".into());
                }
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok((RelayProcess { exe: exe.to_path_buf(), data: data.to_path_buf(), child }, addr))
    }

    /// SIGKILL, then start again on the same data directory.
    fn crash_and_restart(&mut self) -> Result<SocketAddr, String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (next, addr) = RelayProcess::start(&self.exe, &self.data)?;
        *self = next;
        Ok(addr)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct LiveDevice {
    user: usize,
    name: String,
    dir: PathBuf,
    engine: Option<Engine>,
    proxy: Proxy,
    skew_ms: i64,
}

/// What a live run found.
#[derive(Debug, Default)]
pub struct LiveReport {
    pub failures: Vec<String>,
    pub skipped: Vec<String>,
    pub seconds: f64,
}

fn token(user: &str, device: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    relay::config::dev_issuer().issue(user, device, now + 3600).unwrap_or_default()
}

fn sync_config(dev: &LiveDevice) -> RelayConfig {
    let mut c =
        RelayConfig::new(format!("ws://{}/sync", dev.proxy.addr), token(&format!("user{}", dev.user), &dev.name));
    c.initial_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(400);
    c
}

fn open(dev: &mut LiveDevice) {
    let config =
        EngineConfig { data_dir: dev.dir.clone(), user_id: format!("user{}", dev.user), device_id: dev.name.clone() };
    if let Ok(e) = Engine::open(config) {
        let _ = e.start_sync(sync_config(dev));
        dev.engine = Some(e);
    }
}

fn reviews(dev: &LiveDevice) -> BTreeSet<String> {
    dev.engine.as_ref().and_then(|e| e.review_ids().ok()).map(|v| v.into_iter().collect()).unwrap_or_default()
}

/// Runs `scenario` live against the relay binary at `relay_exe`.
pub async fn run(scenario: &Scenario, relay_exe: &Path) -> LiveReport {
    let started = Instant::now();
    let mut report = LiveReport::default();
    let Ok(root) = tempfile::tempdir() else {
        report.failures.push("no temporary directory".into());
        return report;
    };
    let (mut relay, addr) = match RelayProcess::start(relay_exe, &root.path().join("relay")) {
        Ok(r) => r,
        Err(e) => {
            report.failures.push(e);
            return report;
        }
    };
    let upstream = Arc::new(Mutex::new(addr));
    let latency = Duration::from_millis(scenario.latency_ms);
    let mut devices = Vec::new();
    for u in 0..scenario.users {
        for d in 0..scenario.devices_per_user {
            let proxy = match Proxy::start(upstream.clone(), latency).await {
                Ok(p) => p,
                Err(e) => {
                    report.failures.push(format!("proxy: {e}"));
                    return report;
                }
            };
            let name = format!("u{u}-d{d}");
            let mut dev = LiveDevice { user: u, dir: root.path().join(&name), name, engine: None, proxy, skew_ms: 0 };
            open(&mut dev);
            devices.push(dev);
        }
    }
    let index = |devices: &[LiveDevice], name: &str| devices.iter().position(|d| d.name == name);
    let mut acknowledged: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut destroyed: BTreeSet<String> = BTreeSet::new();
    let begin = Instant::now();
    for step in &scenario.step {
        let due = begin + Duration::from_millis(step.at);
        tokio::time::sleep_until(due.into()).await;
        let now_ms = begin.elapsed().as_millis() as i64;
        match &step.action {
            Action::Review { device, item, rating } => {
                let Some(d) = index(&devices, device) else { continue };
                let dev = &devices[d];
                let Some(e) = dev.engine.as_ref() else { continue };
                let rating = match rating.as_deref() {
                    Some("again") => Rating::Again,
                    Some("hard") => Rating::Hard,
                    Some("easy") => Rating::Easy,
                    _ => Rating::Good,
                };
                let review = NewReview {
                    item_id: item.clone(),
                    rating,
                    reviewed_at: T0_MS + now_ms + dev.skew_ms,
                    duration_ms: 1000,
                    session_id: None,
                };
                if let Ok(r) = e.record_review(review) {
                    acknowledged.entry(dev.user).or_default().insert(r.id);
                }
            }
            Action::StartSession { device } => {
                if let Some(e) = index(&devices, device).and_then(|d| devices[d].engine.as_ref()) {
                    let _ = e.start_session("review", T0_MS + now_ms);
                }
            }
            Action::EndSession { device, reviewed, correct } => {
                if let Some(e) = index(&devices, device).and_then(|d| devices[d].engine.as_ref()) {
                    let open = e.sessions(i64::MIN, i64::MAX).unwrap_or_default();
                    if let Some(s) = open.into_iter().rev().find(|s| s.ended_at.is_none()) {
                        let counts = SessionCounts { reviewed: *reviewed, correct: *correct, new_items: 0 };
                        let _ = e.end_session(&s.id, T0_MS + now_ms, counts, "done");
                    }
                }
            }
            Action::Offline { device } | Action::Online { device } => {
                if let Some(d) = index(&devices, device) {
                    devices[d].proxy.set_online(matches!(step.action, Action::Online { .. }));
                }
            }
            Action::Cut { device } => {
                if let Some(d) = index(&devices, device) {
                    devices[d].proxy.cut();
                }
            }
            Action::Crash { device } => {
                if let Some(d) = index(&devices, device)
                    && let Some(e) = devices[d].engine.take()
                {
                    e.stop_sync(); // the process is gone: no goodbye, the socket just closes
                }
            }
            Action::Restart { device } => {
                if let Some(d) = index(&devices, device)
                    && devices[d].engine.is_none()
                {
                    open(&mut devices[d]);
                }
            }
            Action::Wipe { device } => {
                let Some(d) = index(&devices, device) else { continue };
                let mine = reviews(&devices[d]);
                let others: BTreeSet<String> = devices
                    .iter()
                    .enumerate()
                    .filter(|(i, x)| *i != d && x.user == devices[d].user)
                    .flat_map(|(_, x)| reviews(x))
                    .collect();
                // Live, the relay's content is not read: what only this
                // device held may be gone (the relay may have it too).
                destroyed.extend(mine.difference(&others).cloned());
                if let Some(e) = devices[d].engine.take() {
                    e.stop_sync();
                }
                let _ = std::fs::remove_dir_all(&devices[d].dir);
                open(&mut devices[d]);
            }
            Action::Skew { device, hours } => {
                if let Some(d) = index(&devices, device) {
                    devices[d].skew_ms = hours * 3_600_000;
                }
            }
            Action::RelayCrash => match relay.crash_and_restart() {
                Ok(addr) => {
                    if let Ok(mut up) = upstream.lock() {
                        *up = addr;
                    }
                    for d in &devices {
                        d.proxy.cut();
                    }
                }
                Err(e) => report.failures.push(format!("relay restart: {e}")),
            },
            other => report.skipped.push(format!("{} ms: {other:?} (needs the model's control points)", step.at)),
        }
    }
    // Heal: every device online and running; wait until every user's
    // devices agree and nothing is pending, or the deadline.
    for dev in devices.iter_mut() {
        dev.proxy.set_online(true);
        if dev.engine.is_none() {
            open(dev);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let users: BTreeSet<usize> = devices.iter().map(|d| d.user).collect();
    loop {
        let settled = devices.iter().all(|d| {
            d.engine
                .as_ref()
                .and_then(|e| e.sync_status().ok())
                .is_some_and(|s| s.connected && s.pending_documents == 0)
        });
        let agree = users.iter().all(|u| {
            let mine: Vec<&LiveDevice> = devices.iter().filter(|d| d.user == *u).collect();
            mine.windows(2).all(|w| {
                reviews(w[0]) == reviews(w[1])
                    && w[0].engine.as_ref().and_then(|e| e.document_heads().ok())
                        == w[1].engine.as_ref().and_then(|e| e.document_heads().ok())
            })
        });
        if settled && agree {
            break;
        }
        if Instant::now() > deadline {
            report.failures.push("the devices did not converge within 60 s of healing".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for u in &users {
        let expected: BTreeSet<String> =
            acknowledged.get(u).map(|s| s.difference(&destroyed).cloned().collect()).unwrap_or_default();
        let mine: Vec<&LiveDevice> = devices.iter().filter(|d| d.user == *u).collect();
        for dev in &mine {
            let missing = expected.difference(&reviews(dev)).count();
            if missing > 0 {
                report.failures.push(format!("{} lacks {missing} review(s) the app was told were recorded", dev.name));
            }
        }
        for w in mine.windows(2) {
            let (a, b) = (w[0].engine.as_ref(), w[1].engine.as_ref());
            if a.and_then(|e| e.memory_states().ok()) != b.and_then(|e| e.memory_states().ok()) {
                report.failures.push(format!("{} and {} compute different memory states", w[0].name, w[1].name));
            }
            if a.and_then(|e| e.sessions(i64::MIN, i64::MAX).ok())
                != b.and_then(|e| e.sessions(i64::MIN, i64::MAX).ok())
            {
                report.failures.push(format!("{} and {} show different sessions", w[0].name, w[1].name));
            }
        }
    }
    for d in &devices {
        if let Some(e) = d.engine.as_ref() {
            e.stop_sync();
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

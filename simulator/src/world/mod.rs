//! The simulated world: devices running real engines (through the sans-IO
//! `SyncSession`), the relay's real per-connection core (`ConnCore`) on an
//! in-memory storage with a crash model, and a network in between, all
//! driven by one seeded scheduler in virtual time.
//!
//! Determinism: every choice comes from the run's `StdRng`; events are
//! ordered by (virtual time, sequence number); ids and actor ids come from
//! per-device seeded sources; nothing reads the OS clock to decide an order
//! (the relay core's `Instant` argument is a fixed base plus virtual time).

use crate::params::Params;
use crate::trace::Trace;
use engine::ids::IdSource;
use engine::{Engine, EngineConfig, NewReview, Rating, SessionCounts, SyncSession};
use protocol::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::conn::ConnCore;
use relay::hub::Hub;
use relay::limits::Limits;
use relay::storage::memory::MemBackup;
use relay::storage::{DocStorage, MemStorage};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reviews happen from five seconds before 2026-10-01T00:00Z on, plus skew:
/// runs cross a month boundary, so new monthly documents are created
/// mid-run (the case a relay restored from an older backup has never seen).
const T0_MS: i64 = 1_790_812_800_000 - 5_000;

/// Ids from a seeded stream, so a replay gives the same ids.
struct SeededIds(StdRng);

impl IdSource for SeededIds {
    fn next_id(&mut self) -> [u8; 16] {
        self.0.random()
    }
}

/// Where an armed relay crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    AfterStore,
    AfterAck,
}

/// What happens at a point of virtual time.
#[derive(Debug, Clone)]
enum Event {
    Op { device: usize },
    Script(Action),
    Disk { device: usize, full: bool },
    Split { devices: Vec<usize>, on: bool },
    Deliver { conn: u64, to_relay: bool, bytes: Arc<Vec<u8>> },
    Connect { device: usize },
    Offline { device: usize },
    Online { device: usize },
    DeviceCrash { device: usize },
    DeviceRestart { device: usize },
    Wipe { device: usize },
    RelayCrash,
    StorageFails { on: bool },
    Backup,
    Restore,
    Flush,
    Heal,
}

struct Device {
    user: usize,
    name: String,
    dir: PathBuf,
    engine: Option<Engine>,
    session: Option<SyncSession>,
    conn: Option<u64>,
    online: bool,
    skew_ms: i64,
    opens: u64,
    open_sessions: Vec<String>,
    /// Its disk is full: every write of the engine fails.
    disk_full: bool,
}

struct Relay {
    storage: Arc<MemStorage>,
    hub: Arc<Hub>,
    /// Open connections: id → (device, core).
    conns: BTreeMap<u64, (usize, ConnCore)>,
    backup: Option<MemBackup>,
    restores: u64,
}

pub struct World {
    pub params: Params,
    rng: StdRng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    devices: Vec<Device>,
    relay: Relay,
    next_conn: u64,
    /// Faults apply until the heal phase starts.
    healing: bool,
    base: Instant,
    _root: tempfile::TempDir,
    pub trace: Trace,
    pub coverage: Coverage,
    /// Review ids the app was told were recorded, per user.
    pub acknowledged_ops: BTreeMap<usize, BTreeSet<String>>,
    /// Of those, ids legitimately destroyed (only on a wiped device, or
    /// only in a relay that was restored from an older backup).
    pub destroyed: BTreeSet<String>,
    pub steps: u64,
    /// Reviews the app was told failed: (user, device, item, reviewed_at).
    pub failed_reviews: Vec<(usize, String, String, i64)>,
    armed_crash: Option<CrashPoint>,
    armed_duplicate: bool,
    /// What happened, as scenario steps (a failing run is shrunk from it).
    pub script: Vec<(u64, Action)>,
    /// Bytes put on the wire, in all.
    pub wire_bytes: u64,
    /// Latest delivery time per (connection, towards the relay): a link is
    /// FIFO like TCP; only the reorder fault breaks that on purpose.
    link_tail: BTreeMap<(u64, bool), u64>,
    /// The picture of the run, when asked for (`replay --svg`).
    pub timeline: Option<crate::svg::Timeline>,
    /// Clogged links: (device, towards the relay) → until when.
    clogged: BTreeMap<(usize, bool), u64>,
}

fn temp_root() -> std::io::Result<tempfile::TempDir> {
    // tmpfs when there is one: fsync costs nothing there, and the engine
    // still runs its real SQLite code path.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() { tempfile::Builder::new().prefix("sim-").tempdir_in(shm) } else { tempfile::tempdir() }
}

fn new_hub(storage: &Arc<MemStorage>) -> Arc<Hub> {
    let dyn_storage: Arc<dyn DocStorage> = storage.clone();
    Arc::new(Hub::new(dyn_storage, Limits::default(), "relay".into()))
}

mod actions;
mod app;
mod coverage;
mod faults;
mod network;

pub use actions::Action;
use actions::action_device;
pub use coverage::Coverage;

impl World {
    pub fn new(params: Params) -> std::io::Result<World> {
        let mut rng = StdRng::seed_from_u64(params.seed);
        let root = temp_root()?;
        let mut devices = Vec::new();
        for u in 0..params.users {
            for d in 0..params.devices_per_user {
                devices.push(Device {
                    user: u,
                    name: format!("u{u}-d{d}"),
                    dir: root.path().join(format!("u{u}-d{d}")),
                    engine: None,
                    session: None,
                    conn: None,
                    online: true,
                    skew_ms: 0,
                    opens: 0,
                    open_sessions: Vec::new(),
                    disk_full: false,
                });
            }
        }
        if params.clock_skew_hours != 0 && !devices.is_empty() {
            let d = rng.random_range(0..devices.len());
            devices[d].skew_ms = params.clock_skew_hours * 3_600_000;
        }
        let storage = Arc::new(MemStorage::new(format!("store-{:016x}", rng.random::<u64>())));
        if let crate::scenario::Plant::Relay(bug) = params.planted {
            let _ = storage.plant(bug);
        }
        let relay = Relay { hub: new_hub(&storage), storage, conns: BTreeMap::new(), backup: None, restores: 0 };
        let mut world = World {
            params,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            devices,
            relay,
            next_conn: 1,
            healing: false,
            base: Instant::now(),
            _root: root,
            trace: Trace::default(),
            coverage: Coverage::default(),
            acknowledged_ops: BTreeMap::new(),
            destroyed: BTreeSet::new(),
            steps: 0,
            failed_reviews: Vec::new(),
            armed_crash: None,
            armed_duplicate: false,
            script: Vec::new(),
            wire_bytes: 0,
            link_tail: BTreeMap::new(),
            timeline: None,
            clogged: BTreeMap::new(),
        };
        for d in 0..world.devices.len() {
            world.open_engine(d);
            world.at(0, Event::Connect { device: d });
        }
        Ok(world)
    }

    /// A random run: the seed's operations and faults.
    pub fn random(params: Params) -> std::io::Result<World> {
        let mut world = World::new(params)?;
        world.plan();
        Ok(world)
    }

    /// A scripted run: `steps` at their times, then the heal phase.
    pub fn scripted(params: Params, steps: &[(u64, Action)]) -> Result<World, String> {
        let mut world = World::new(params).map_err(|e| e.to_string())?;
        let mut end = 0;
        for (at, action) in steps {
            if let Some(name) = action_device(action)
                && world.device_index(name).is_none()
            {
                return Err(format!("step at {at} ms names device `{name}`, which the scenario does not have"));
            }
            world.at(*at, Event::Script(action.clone()));
            end = end.max(*at);
        }
        let mut t = 0;
        while t <= end {
            t += 500;
            world.at(t, Event::Flush);
        }
        world.at(end + 1_000, Event::Heal);
        Ok(world)
    }

    fn device_index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }

    fn at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.events.insert((time, self.seq), event);
    }

    fn random_device(&mut self) -> usize {
        self.rng.random_range(0..self.devices.len())
    }

    fn open_engine(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        dev.opens += 1;
        let seed = self.params.seed.wrapping_mul(1_000_003).wrapping_add((d as u64) << 20).wrapping_add(dev.opens);
        let config = EngineConfig {
            data_dir: dev.dir.clone(),
            user_id: format!("user{}", dev.user),
            device_id: dev.name.clone(),
        };
        match Engine::open_with_ids(config, Box::new(SeededIds(StdRng::seed_from_u64(seed)))) {
            Ok(e) => {
                if let crate::scenario::Plant::Engine(bug) = self.params.planted {
                    let _ = e.plant(bug);
                }
                if dev.disk_full {
                    let _ = e.refuse_writes(true);
                }
                dev.engine = Some(e);
            }
            Err(e) => self.trace.note(self.now, format!("{}: engine failed to open: {e}", dev.name)),
        }
    }

    /// Runs until nothing is left to happen, or `max_steps` events.
    /// Returns whether the world went quiet.
    pub fn run(&mut self, max_steps: u64) -> bool {
        while let Some((&(time, seq), _)) = self.events.iter().next() {
            if self.steps >= max_steps {
                return false;
            }
            let Some(event) = self.events.remove(&(time, seq)) else { break };
            self.now = time;
            self.steps += 1;
            self.step(event);
        }
        true
    }

    /// After convergence: every device reconnects once more. Returns the
    /// messages and bytes that took, and whether the world went quiet again.
    /// Up-to-date devices should exchange only the handshake.
    pub fn reconnect_all(&mut self, max_steps: u64) -> (u64, u64, bool) {
        // Time passes: the write-behind sync states are committed.
        let _ = self.relay.storage.flush();
        let (messages, bytes) = (self.coverage.messages, self.wire_bytes);
        for d in 0..self.devices.len() {
            self.drop_connection_of(d);
            if let Some(mut s) = self.devices[d].session.take() {
                s.close(None);
            }
            self.at(self.now + 1 + d as u64, Event::Connect { device: d });
        }
        let quiet = self.run(self.steps + max_steps);
        (self.coverage.messages - messages, self.wire_bytes - bytes, quiet)
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Op { device } => self.op(device),
            Event::Script(action) => self.script(action),
            Event::Disk { device, full } => self.disk(device, full),
            Event::Split { devices, on } => {
                if on {
                    self.coverage.splits += 1;
                }
                for device in devices {
                    self.step(if on { Event::Offline { device } } else { Event::Online { device } });
                }
            }
            Event::Deliver { conn, to_relay, bytes } => {
                if to_relay {
                    self.relay_receive(conn, &bytes);
                } else {
                    self.device_receive(conn, &bytes);
                }
            }
            Event::Connect { device } => self.connect(device),
            Event::Offline { device } => {
                self.log(Action::Offline { device: self.name(device) });
                self.trace.note(self.now, format!("{} offline", self.devices[device].name));
                self.coverage.partitions += 1;
                self.devices[device].online = false;
                self.disconnect_device(device, "network gone");
            }
            Event::Online { device } => {
                self.log(Action::Online { device: self.name(device) });
                self.devices[device].online = true;
                self.at(self.now + 1, Event::Connect { device });
            }
            Event::DeviceCrash { device } => {
                self.log(Action::Crash { device: self.name(device) });
                self.trace.note(self.now, format!("{} crashed", self.devices[device].name));
                self.coverage.device_crashes += 1;
                self.drop_connection_of(device);
                let dev = &mut self.devices[device];
                dev.session = None;
                dev.engine = None; // killed: no close, no goodbye
                dev.open_sessions.clear();
            }
            Event::DeviceRestart { device } => {
                self.log(Action::Restart { device: self.name(device) });
                if self.devices[device].engine.is_none() {
                    self.open_engine(device);
                    self.at(self.now + 1, Event::Connect { device });
                }
            }
            Event::Wipe { device } => self.wipe(device),
            Event::RelayCrash => {
                self.log(Action::RelayCrash);
                self.relay_crash();
            }
            Event::StorageFails { on } => {
                self.log(if on { Action::StorageFails } else { Action::StorageWorks });
                self.trace.note(self.now, format!("relay storage writes {}", if on { "fail" } else { "work" }));
                let _ = self.relay.storage.set_fail_writes(on && !self.healing);
            }
            Event::Backup => {
                self.log(Action::Backup);
                self.relay.backup = self.relay.storage.backup().ok();
                self.trace.note(self.now, "relay backed up".into());
            }
            Event::Restore => self.restore(),
            Event::Flush => {
                let _ = self.relay.storage.flush();
            }
            Event::Heal => self.heal(),
        }
    }

    fn log(&mut self, action: Action) {
        if let Some(t) = self.timeline.as_mut() {
            let lane = action_device(&action)
                .and_then(|name| self.devices.iter().position(|d| d.name == name))
                .map(|d| d + 1)
                .unwrap_or(0);
            let label = serde_json::to_string(&action).unwrap_or_default();
            if !matches!(action, Action::Review { .. } | Action::StartSession { .. } | Action::EndSession { .. }) {
                t.marks.push((lane, self.now, label));
            }
        }
        if !self.healing {
            self.script.push((self.now, action));
        }
    }

    fn name(&self, d: usize) -> String {
        self.devices[d].name.clone()
    }

    pub fn device_reviews(&self, d: usize) -> BTreeSet<String> {
        self.devices[d]
            .engine
            .as_ref()
            .and_then(|e| e.review_ids().ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default()
    }

    /// Review ids of `user` held by its devices other than `except`, and by the relay.
    fn known_elsewhere(&self, user: usize, except: Option<usize>) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self.relay_reviews().remove(&user).unwrap_or_default();
        for d in 0..self.devices.len() {
            if self.devices[d].user == user && Some(d) != except {
                ids.extend(self.device_reviews(d));
            }
        }
        ids
    }

    /// Review ids the relay's storage holds, per user.
    pub fn relay_reviews(&self) -> BTreeMap<usize, BTreeSet<String>> {
        let mut out: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (user, doc, _) in self.relay.storage.all_heads().unwrap_or_default() {
            let Some(u) = user.strip_prefix("user").and_then(|n| n.parse::<usize>().ok()) else { continue };
            let Ok(doc_id) = doc.parse() else { continue };
            let Ok(Some(stored)) = self.relay.storage.load(&user, &doc_id) else { continue };
            let mut am = match &stored.snapshot {
                Some(s) => automerge::Automerge::load(s).unwrap_or_default(),
                None => automerge::Automerge::new(),
            };
            for c in &stored.chunks {
                let _ = am.load_incremental(c);
            }
            let (reviews, _) = engine::progress_doc::read_all(&am);
            out.entry(u).or_default().extend(reviews.into_iter().map(|r| r.id));
        }
        out
    }

    pub fn devices_of(&self, user: usize) -> Vec<usize> {
        (0..self.devices.len()).filter(|&d| self.devices[d].user == user).collect()
    }

    pub fn device_name(&self, d: usize) -> &str {
        &self.devices[d].name
    }

    pub fn engine(&self, d: usize) -> Option<&Engine> {
        self.devices[d].engine.as_ref()
    }

    pub fn users(&self) -> usize {
        self.params.users
    }

    /// Starts recording the run's picture.
    pub fn record_timeline(&mut self) {
        let mut lanes = vec!["relay".to_owned()];
        lanes.extend(self.devices.iter().map(|d| d.name.clone()));
        self.timeline = Some(crate::svg::Timeline { lanes, ..Default::default() });
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn now(&self) -> u64 {
        self.now
    }
}

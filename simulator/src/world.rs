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

/// A scripted action: one step of a scenario file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Review {
        device: String,
        item: String,
        #[serde(default)]
        rating: Option<String>,
    },
    StartSession {
        device: String,
    },
    EndSession {
        device: String,
        #[serde(default)]
        reviewed: u32,
        #[serde(default)]
        correct: u32,
    },
    Offline {
        device: String,
    },
    Online {
        device: String,
    },
    Crash {
        device: String,
    },
    Restart {
        device: String,
    },
    Wipe {
        device: String,
    },
    /// The device's clock moves by `hours` (reviews are stamped with it).
    Skew {
        device: String,
        hours: i64,
    },
    RelayCrash,
    /// The relay dies in its next step that stores a change, before the
    /// acknowledgement leaves.
    RelayCrashAfterStore,
    /// ... after the acknowledgement left and before the change is forwarded.
    RelayCrashAfterAck,
    StorageFails,
    StorageWorks,
    Backup,
    Restore,
    /// The next message on the network is delivered twice.
    DuplicateNext,
    /// The device's connection breaks (messages in flight are lost).
    Cut {
        device: String,
    },
    /// The device's link is clogged for `ms`: towards the relay (`up`),
    /// towards the device (`down`), or both; frames wait, in order.
    Clog {
        device: String,
        ms: u64,
        #[serde(default = "yes")]
        up: bool,
        #[serde(default = "yes")]
        down: bool,
    },
    /// The device's disk is full (its writes fail) / has room again.
    DiskFull {
        device: String,
    },
    DiskOk {
        device: String,
    },
}

fn yes() -> bool {
    true
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

/// Counts of the rare paths a run went through (a sweep must see each).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Coverage {
    pub messages: u64,
    pub duplicates_delivered: u64,
    pub reordered: u64,
    pub cuts_mid_sync: u64,
    pub device_crashes: u64,
    pub wipes: u64,
    pub relay_crashes: u64,
    pub relay_crash_lost_pending: u64,
    pub storage_failures_hit: u64,
    /// The relay died after storing a change and before acknowledging it,
    /// or after acknowledging and before forwarding it to other devices.
    pub crash_after_store_before_ack: u64,
    pub crash_after_ack_before_forward: u64,
    /// Frames held back by a clogged link, and random splits.
    pub clogged_frames: u64,
    pub splits: u64,
    /// Device writes that failed (a full disk): the app was told so.
    pub device_writes_failed: u64,
    pub restores: u64,
    pub partitions: u64,
    pub reconnects: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.messages += o.messages;
        self.duplicates_delivered += o.duplicates_delivered;
        self.reordered += o.reordered;
        self.cuts_mid_sync += o.cuts_mid_sync;
        self.device_crashes += o.device_crashes;
        self.wipes += o.wipes;
        self.relay_crashes += o.relay_crashes;
        self.relay_crash_lost_pending += o.relay_crash_lost_pending;
        self.storage_failures_hit += o.storage_failures_hit;
        self.crash_after_store_before_ack += o.crash_after_store_before_ack;
        self.crash_after_ack_before_forward += o.crash_after_ack_before_forward;
        self.clogged_frames += o.clogged_frames;
        self.splits += o.splits;
        self.device_writes_failed += o.device_writes_failed;
        self.restores += o.restores;
        self.partitions += o.partitions;
        self.reconnects += o.reconnects;
    }

    /// The counters that are still zero.
    pub fn zeros(&self) -> Vec<&'static str> {
        let all = [
            ("messages", self.messages),
            ("duplicates_delivered", self.duplicates_delivered),
            ("reordered", self.reordered),
            ("cuts_mid_sync", self.cuts_mid_sync),
            ("device_crashes", self.device_crashes),
            ("wipes", self.wipes),
            ("relay_crashes", self.relay_crashes),
            ("relay_crash_lost_pending", self.relay_crash_lost_pending),
            ("storage_failures_hit", self.storage_failures_hit),
            ("crash_after_store_before_ack", self.crash_after_store_before_ack),
            ("crash_after_ack_before_forward", self.crash_after_ack_before_forward),
            ("clogged_frames", self.clogged_frames),
            ("splits", self.splits),
            ("device_writes_failed", self.device_writes_failed),
            ("restores", self.restores),
            ("partitions", self.partitions),
            ("reconnects", self.reconnects),
        ];
        all.into_iter().filter(|(_, n)| *n == 0).map(|(name, _)| name).collect()
    }
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

    /// Lays out the fault phase: operations and faults at random times.
    fn plan(&mut self) {
        let span = self.params.fault_phase_ms;
        for _ in 0..self.params.ops {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            self.at(t, Event::Op { device: d });
        }
        for _ in 0..self.params.partitions {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            let len = self.rng.random_range(500..span.max(501));
            self.at(t, Event::Offline { device: d });
            self.at((t + len).min(span), Event::Online { device: d });
        }
        for _ in 0..self.params.device_crashes {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            self.at(t, Event::DeviceCrash { device: d });
            let back = self.rng.random_range(100..3_000);
            self.at(t + back, Event::DeviceRestart { device: d });
        }
        for _ in 0..self.params.clogs {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            let ms = self.rng.random_range(200..5_000);
            let (up, down) = match self.rng.random_range(0..3) {
                0 => (true, false),
                1 => (false, true),
                _ => (true, true),
            };
            let device = self.name(d);
            self.at(t, Event::Script(Action::Clog { device, ms, up, down }));
        }
        for _ in 0..self.params.splits {
            // A random group of devices (at least one, not necessarily all)
            // loses the relay together, then comes back together.
            let t = self.rng.random_range(0..span);
            let len = self.rng.random_range(500..span.max(501));
            let group: Vec<usize> = (0..self.devices.len()).filter(|_| self.rng.random_bool(0.5)).collect();
            let group = if group.is_empty() { vec![self.random_device()] } else { group };
            self.at(t, Event::Split { devices: group.clone(), on: true });
            self.at((t + len).min(span), Event::Split { devices: group, on: false });
        }
        for _ in 0..self.params.disk_full_windows {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            let len = self.rng.random_range(200..span.max(201));
            self.at(t, Event::Disk { device: d, full: true });
            self.at((t + len).min(span), Event::Disk { device: d, full: false });
        }
        for _ in 0..self.params.wipes {
            let (t, d) = (self.rng.random_range(0..span), self.random_device());
            self.at(t, Event::Wipe { device: d });
        }
        for _ in 0..self.params.relay_crashes {
            let t = self.rng.random_range(0..span);
            self.at(t, Event::RelayCrash);
        }
        for _ in 0..self.params.storage_failures {
            let t = self.rng.random_range(0..span);
            let len = self.rng.random_range(200..5_000);
            self.at(t, Event::StorageFails { on: true });
            self.at((t + len).min(span), Event::StorageFails { on: false });
        }
        if self.params.restore_from_backup {
            let a = self.rng.random_range(0..span);
            let b = self.rng.random_range(a..=span);
            self.at(a, Event::Backup);
            self.at(b, Event::Restore);
        }
        let mut t = 0;
        while t < span {
            t += self.rng.random_range(50..1_000);
            self.at(t, Event::Flush);
        }
        self.at(span, Event::Heal);
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

    fn script(&mut self, action: Action) {
        let dev = |w: &World, name: &str| w.device_index(name);
        match action {
            Action::Review { device, item, rating } => {
                let Some(d) = dev(self, &device) else { return };
                let rating = match rating.as_deref() {
                    Some("again") => Rating::Again,
                    Some("hard") => Rating::Hard,
                    Some("easy") => Rating::Easy,
                    _ => Rating::Good,
                };
                self.review(d, item, rating);
            }
            Action::StartSession { device } => {
                if let Some(d) = dev(self, &device) {
                    self.start_session(d);
                }
            }
            Action::EndSession { device, reviewed, correct } => {
                if let Some(d) = dev(self, &device) {
                    self.end_session(d, SessionCounts { reviewed, correct, new_items: 0 });
                }
            }
            Action::Offline { device } => {
                if let Some(d) = dev(self, &device) {
                    self.step(Event::Offline { device: d });
                }
            }
            Action::Online { device } => {
                if let Some(d) = dev(self, &device) {
                    self.step(Event::Online { device: d });
                }
            }
            Action::Crash { device } => {
                if let Some(d) = dev(self, &device) {
                    self.step(Event::DeviceCrash { device: d });
                }
            }
            Action::Restart { device } => {
                if let Some(d) = dev(self, &device) {
                    self.step(Event::DeviceRestart { device: d });
                }
            }
            Action::Wipe { device } => {
                if let Some(d) = dev(self, &device) {
                    self.wipe(d);
                }
            }
            Action::Skew { device, hours } => {
                if let Some(d) = dev(self, &device) {
                    self.devices[d].skew_ms = hours * 3_600_000;
                    self.trace.note(self.now, format!("{device}'s clock is {hours} h off"));
                }
            }
            Action::RelayCrash => self.step(Event::RelayCrash),
            Action::RelayCrashAfterStore => self.armed_crash = Some(CrashPoint::AfterStore),
            Action::RelayCrashAfterAck => self.armed_crash = Some(CrashPoint::AfterAck),
            Action::StorageFails => self.step(Event::StorageFails { on: true }),
            Action::StorageWorks => self.step(Event::StorageFails { on: false }),
            Action::Backup => self.step(Event::Backup),
            Action::Restore => self.step(Event::Restore),
            Action::DuplicateNext => self.armed_duplicate = true,
            Action::DiskFull { device } => {
                if let Some(d) = dev(self, &device) {
                    self.disk(d, true);
                }
            }
            Action::Clog { device, ms, up, down } => {
                if let Some(d) = dev(self, &device) {
                    self.log(Action::Clog { device: device.clone(), ms, up, down });
                    self.trace.note(self.now, format!("{device}'s link clogged for {ms} ms (up {up}, down {down})"));
                    let until = self.now + ms;
                    for (dir, on) in [(true, up), (false, down)] {
                        if on {
                            self.clogged.insert((d, dir), until);
                        }
                    }
                }
            }
            Action::DiskOk { device } => {
                if let Some(d) = dev(self, &device) {
                    self.disk(d, false);
                }
            }
            Action::Cut { device } => {
                if let Some(d) = dev(self, &device)
                    && self.devices[d].conn.is_some()
                {
                    self.coverage.cuts_mid_sync += 1;
                    self.disconnect_device(d, "connection cut");
                }
            }
        }
    }

    /// A full disk on the device: every write of the engine fails (SQLite
    /// refuses it; the engine's failure path is the one a real ENOSPC takes,
    /// which `tests/tests/disk_full.rs` exercises on a real tmpfs).
    fn disk(&mut self, d: usize, full: bool) {
        let name = self.name(d);
        self.log(if full {
            Action::DiskFull { device: name.clone() }
        } else {
            Action::DiskOk { device: name.clone() }
        });
        self.trace.note(self.now, format!("{name}'s disk is {}", if full { "full" } else { "free again" }));
        self.devices[d].disk_full = full && !self.healing;
        if let Some(e) = self.devices[d].engine.as_ref() {
            let _ = e.refuse_writes(self.devices[d].disk_full);
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

    fn review(&mut self, d: usize, item: String, rating: Rating) {
        let rating_name = match rating {
            Rating::Again => "again",
            Rating::Hard => "hard",
            Rating::Good => "good",
            Rating::Easy => "easy",
        };
        self.log(Action::Review { device: self.name(d), item: item.clone(), rating: Some(rating_name.into()) });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        let (name, user) = (dev.name.clone(), dev.user);
        let review = NewReview {
            item_id: item.clone(),
            rating,
            reviewed_at: at,
            duration_ms: 1000,
            session_id: dev.open_sessions.first().cloned(),
        };
        match engine.record_review(review) {
            Ok(r) => {
                self.trace.note(self.now, format!("{name}: review {} of {item}", &r.id[..8]));
                self.acknowledged_ops.entry(user).or_default().insert(r.id);
            }
            Err(e) => {
                self.coverage.device_writes_failed += 1;
                self.trace.note(self.now, format!("{name}: review of {item} failed: {e}"));
                self.failed_reviews.push((user, name, item, at));
            }
        }
        self.push_local_changes(d);
    }

    fn start_session(&mut self, d: usize) {
        self.log(Action::StartSession { device: self.name(d) });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        match engine.start_session("review", at) {
            Ok(s) => dev.open_sessions.push(s.id),
            Err(e) => {
                let line = format!("{}: start_session failed: {e}", dev.name);
                self.trace.note(self.now, line);
            }
        }
        self.push_local_changes(d);
    }

    fn end_session(&mut self, d: usize, counts: SessionCounts) {
        self.log(Action::EndSession { device: self.name(d), reviewed: counts.reviewed, correct: counts.correct });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        // Its own open session first; else one it learned from another device.
        let id = if dev.open_sessions.is_empty() {
            let open = engine.sessions(i64::MIN, i64::MAX).unwrap_or_default();
            match open.into_iter().rev().find(|s| s.ended_at.is_none()) {
                Some(s) => s.id,
                None => return,
            }
        } else {
            dev.open_sessions.remove(0)
        };
        if let Err(e) = engine.end_session(&id, at, counts, "done") {
            let line = format!("{}: end_session failed: {e}", dev.name);
            self.trace.note(self.now, line);
        }
        self.push_local_changes(d);
    }

    /// A random operation of the app (the random runs' workload).
    fn op(&mut self, d: usize) {
        let roll = self.rng.random_range(0..10);
        let item = format!("item-{}", self.rng.random_range(0..self.params.items));
        let rating = match self.rng.random_range(0..4) {
            0 => Rating::Again,
            1 => Rating::Hard,
            2 => Rating::Good,
            _ => Rating::Easy,
        };
        let sessions = self.devices[d].open_sessions.len();
        match roll {
            0 if sessions < 2 => self.start_session(d),
            1 if sessions > 0 => self.end_session(d, SessionCounts { reviewed: 4, correct: 2, new_items: 1 }),
            _ => self.review(d, item, rating),
        }
    }

    fn push_local_changes(&mut self, d: usize) {
        let Some(conn) = self.devices[d].conn else { return };
        let Some(session) = self.devices[d].session.as_mut() else { return };
        match session.local_changes() {
            Ok(frames) => {
                let name = self.devices[d].name.clone();
                self.trace.note(self.now, format!("{name} offers {} frame(s) on conn {conn}", frames.len()));
                for f in frames {
                    self.send(conn, true, f);
                }
            }
            Err(e) => {
                let reason = format!("local changes: {e}");
                self.disconnect_device(d, &reason);
            }
        }
    }

    fn connect(&mut self, d: usize) {
        let dev = &self.devices[d];
        if !dev.online || dev.engine.is_none() || dev.conn.is_some() {
            return;
        }
        let user: Arc<str> = Arc::from(format!("user{}", dev.user).as_str());
        let registration = match self.relay.hub.register(&user) {
            Ok(r) => r,
            Err(e) => {
                self.trace.note(self.now, format!("{}: refused: {e}", dev.name));
                return;
            }
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let nonce: u32 = self.rng.random();
        let core = ConnCore::new(self.relay.hub.clone(), registration, dev.name.clone());
        self.relay.conns.insert(conn, (d, core));
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        let mut session = engine.sync_session(nonce);
        let join = session.open();
        dev.session = Some(session);
        dev.conn = Some(conn);
        self.coverage.reconnects += 1;
        self.trace.note(self.now, format!("{} connects (conn {conn})", self.devices[d].name));
        self.send(conn, true, join);
    }

    /// Puts a frame on the wire, with the network's faults.
    fn send(&mut self, conn: u64, to_relay: bool, bytes: Vec<u8>) {
        self.coverage.messages += 1;
        self.wire_bytes += bytes.len() as u64;
        let bytes = Arc::new(bytes);
        let mut delay = self.params.latency_ms + self.rng.random_range(0..=self.params.jitter_ms);
        // In order on its link, as TCP delivers (jitter delays, never overtakes).
        let tail = self.link_tail.get(&(conn, to_relay)).copied().unwrap_or(0);
        delay = delay.max(tail.saturating_sub(self.now));
        if !self.healing
            && let Some(&(d, _)) = self.relay.conns.get(&conn)
            && let Some(&until) = self.clogged.get(&(d, to_relay))
            && until > self.now + delay
        {
            self.coverage.clogged_frames += 1;
            delay = until - self.now;
        }
        let mut reordered = false;
        if std::mem::take(&mut self.armed_duplicate) {
            self.coverage.duplicates_delivered += 1;
            self.at(self.now + delay + 1, Event::Deliver { conn, to_relay, bytes: bytes.clone() });
        }
        if !self.healing {
            if self.rng.random_bool(self.params.cut_rate) {
                // TCP does not lose one message: the connection breaks instead.
                self.trace.note(self.now, format!("conn {conn} cut"));
                self.coverage.cuts_mid_sync += 1;
                if let Some(&(d, _)) = self.relay.conns.get(&conn) {
                    self.log(Action::Cut { device: self.name(d) });
                    self.disconnect_device(d, "connection cut");
                }
                return;
            }
            if self.rng.random_bool(self.params.reorder_rate) {
                self.coverage.reordered += 1;
                delay += self.rng.random_range(1..=500);
                reordered = true;
            }
            if self.rng.random_bool(self.params.duplicate_rate) {
                self.log(Action::DuplicateNext);
                self.coverage.duplicates_delivered += 1;
                let later = delay + self.rng.random_range(0..=200);
                self.at(self.now + later, Event::Deliver { conn, to_relay, bytes: bytes.clone() });
            }
        }
        if !reordered {
            self.link_tail.insert((conn, to_relay), self.now + delay);
        }
        if self.timeline.is_some() {
            let device = self.relay.conns.get(&conn).map(|(d, _)| *d + 1);
            if let (Some(t), Some(lane)) = (self.timeline.as_mut(), device) {
                let (from, to) = if to_relay { (lane, 0) } else { (0, lane) };
                t.messages.push((from, to, self.now, self.now + delay));
            }
        }
        self.at(self.now + delay, Event::Deliver { conn, to_relay, bytes });
    }

    fn relay_now(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn relay_receive(&mut self, conn: u64, bytes: &[u8]) {
        let now = self.relay_now();
        let appends_before = self.relay.storage.appends();
        let Some((d, core)) = self.relay.conns.get_mut(&conn) else {
            // The relay forgot this connection (it closed it, or crashed): the
            // device's socket is reset, as TCP would.
            if let Some(d) = self.devices.iter().position(|dev| dev.conn == Some(conn)) {
                self.disconnect_device(d, "connection reset");
            }
            return;
        };
        let d = *d;
        let result = match Message::decode(bytes) {
            Ok(msg) => core.handle(msg, now),
            Err(e) => Err(format!("malformed: {e}").into()),
        };
        self.trace.hash(self.now, "relay<", bytes);
        // The relay may die inside a step: after it stored a change and
        // before the acknowledgement left, or after that and before the
        // change was forwarded to the user's other devices.
        let stored = result.is_ok() && self.relay.storage.appends() > appends_before;
        let armed = if stored { self.armed_crash.take() } else { None };
        let random_crash = !self.healing && self.params.relay_crashes > 0 && self.rng.random_bool(0.01);
        let crash_mid_step = armed.is_some() || random_crash;
        let before_ack = match armed {
            Some(point) => point == CrashPoint::AfterStore,
            None => random_crash && stored && self.rng.random_bool(0.5),
        };
        match result {
            Ok(_) if crash_mid_step && stored && before_ack => {
                if armed.is_none() {
                    self.log(Action::RelayCrashAfterStore);
                }
                self.coverage.crash_after_store_before_ack += 1;
                self.relay_crash();
                return;
            }
            Ok(out) => {
                for m in out {
                    self.send(conn, false, m.encode());
                }
                if crash_mid_step && stored {
                    if armed.is_none() {
                        self.log(Action::RelayCrashAfterAck);
                    }
                    self.coverage.crash_after_ack_before_forward += 1;
                    self.relay_crash();
                    return;
                }
            }
            Err(reason) => {
                if reason.code == relay::conn::close_code::INTERNAL {
                    self.coverage.storage_failures_hit += 1;
                }
                self.trace.note(self.now, format!("relay closes conn {conn}: {}", reason.text));
                let frame = Message::Error { message: reason.text }.encode();
                // The error reaches the device (same connection), then it closes.
                self.send(conn, false, frame);
                self.relay.conns.remove(&conn);
                let _ = d;
            }
        }
        self.forward_changes();
    }

    /// Like the adapter's notification path: every connection whose user's
    /// documents changed offers them, in connection order.
    fn forward_changes(&mut self) {
        let now = self.relay_now();
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for (&conn, (_, core)) in self.relay.conns.iter_mut() {
            let _ = core.take_ephemeral();
            for doc in core.take_changed() {
                match core.push(doc, now) {
                    Ok(Some(m)) => out.push((conn, m.encode())),
                    Ok(None) => {}
                    Err(_) => failed.push(conn),
                }
            }
        }
        for (conn, bytes) in out {
            self.send(conn, false, bytes);
        }
        for conn in failed {
            if let Some((d, _)) = self.relay.conns.get(&conn).map(|(d, _)| (*d, ())) {
                self.disconnect_device(d, "relay storage failure");
            }
        }
    }

    fn device_receive(&mut self, conn: u64, bytes: &[u8]) {
        let Some(d) = self.devices.iter().position(|dev| dev.conn == Some(conn)) else { return };
        let ts = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        self.trace.hash(self.now, &format!("{}<", self.devices[d].name), bytes);
        let Some(session) = self.devices[d].session.as_mut() else { return };
        match session.receive(bytes, ts) {
            Ok(frames) => {
                // A frame for a connection the relay already closed goes nowhere.
                if self.relay.conns.contains_key(&conn) {
                    for f in frames {
                        self.send(conn, true, f);
                    }
                } else {
                    self.disconnect_device(d, "relay closed");
                }
            }
            Err(e) => {
                let reason = format!("{e}");
                self.disconnect_device(d, &reason);
            }
        }
    }

    /// Both ends learn the connection is gone; the device retries later.
    fn disconnect_device(&mut self, d: usize, reason: &str) {
        if self.devices[d].conn.is_some() {
            self.trace.note(self.now, format!("{} disconnected: {reason}", self.devices[d].name));
        }
        self.drop_connection_of(d);
        let dev = &mut self.devices[d];
        if let Some(mut s) = dev.session.take() {
            s.close(Some(reason.to_owned()));
        }
        if dev.online && dev.engine.is_some() {
            let backoff = self.rng.random_range(50..2_000);
            self.at(self.now + backoff, Event::Connect { device: d });
        }
    }

    fn drop_connection_of(&mut self, d: usize) {
        if let Some(conn) = self.devices[d].conn.take() {
            self.relay.conns.remove(&conn);
        }
    }

    fn wipe(&mut self, d: usize) {
        self.log(Action::Wipe { device: self.name(d) });
        self.coverage.wipes += 1;
        let user = self.devices[d].user;
        if self.devices[d].engine.is_none() {
            // Crashed: its data is still on disk until the wipe. Read it.
            self.open_engine(d);
        }
        // What exists only on this device is legitimately gone.
        let mine = self.device_reviews(d);
        let elsewhere = self.known_elsewhere(user, Some(d));
        for id in mine.difference(&elsewhere) {
            self.destroyed.insert(id.clone());
        }
        self.trace.note(self.now, format!("{} wiped and reinstalled", self.devices[d].name));
        self.drop_connection_of(d);
        let dev = &mut self.devices[d];
        dev.session = None;
        dev.engine = None;
        dev.open_sessions.clear();
        let _ = std::fs::remove_dir_all(&dev.dir);
        self.open_engine(d);
        self.at(self.now + 1, Event::Connect { device: d });
    }

    fn relay_crash(&mut self) {
        self.coverage.relay_crashes += 1;
        let lost = self.relay.storage.crash().unwrap_or(0);
        if lost > 0 {
            self.coverage.relay_crash_lost_pending += 1;
        }
        self.trace.note(self.now, format!("relay crashed ({lost} pending writes lost)"));
        let connected: Vec<usize> = self.relay.conns.values().map(|(d, _)| *d).collect();
        self.relay.conns.clear();
        self.relay.hub = new_hub(&self.relay.storage);
        for d in connected {
            self.disconnect_device(d, "relay crashed");
        }
    }

    fn restore(&mut self) {
        self.log(Action::Restore);
        let Some(backup) = self.relay.backup.clone() else { return };
        self.coverage.restores += 1;
        self.relay.restores += 1;
        let before = self.relay_reviews();
        let id = format!("store-restored-{}", self.relay.restores);
        let _ = self.relay.storage.restore(&backup, id);
        let after = self.relay_reviews();
        for (user, ids) in before {
            let devices = self.known_elsewhere(user, None);
            let kept = after.get(&user).cloned().unwrap_or_default();
            for id in ids.difference(&kept) {
                if !devices.contains(id) {
                    self.destroyed.insert(id.clone());
                }
            }
        }
        self.trace.note(self.now, "relay restored from the backup".into());
        let connected: Vec<usize> = self.relay.conns.values().map(|(d, _)| *d).collect();
        self.relay.conns.clear();
        self.relay.hub = new_hub(&self.relay.storage);
        for d in connected {
            self.disconnect_device(d, "relay restarted after a restore");
        }
    }

    /// The heal phase: a perfect network from now on; every device online,
    /// running and freshly connected.
    fn heal(&mut self) {
        self.healing = true;
        if let Some(t) = self.timeline.as_mut() {
            t.heal_at = Some(self.now);
        }
        let _ = self.relay.storage.set_fail_writes(false);
        self.trace.note(self.now, "heal: perfect network from here".into());
        for d in 0..self.devices.len() {
            self.devices[d].online = true;
            if self.devices[d].disk_full {
                self.disk(d, false);
            }
            if self.devices[d].engine.is_none() {
                self.open_engine(d);
            }
            self.drop_connection_of(d);
            if let Some(mut s) = self.devices[d].session.take() {
                s.close(None);
            }
            self.at(self.now + 1 + d as u64, Event::Connect { device: d });
        }
        // Drop every planned fault still ahead.
        let now = self.now;
        self.events.retain(|&(t, _), e| {
            t <= now || matches!(e, Event::Connect { .. } | Event::Deliver { .. } | Event::Op { .. })
        });
    }

    // ---- observations for the checks ----

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

/// The device a scripted action names, if any.
fn action_device(action: &Action) -> Option<&str> {
    match action {
        Action::Review { device, .. }
        | Action::Cut { device }
        | Action::StartSession { device }
        | Action::EndSession { device, .. }
        | Action::Offline { device }
        | Action::Online { device }
        | Action::Crash { device }
        | Action::Restart { device }
        | Action::Wipe { device }
        | Action::Skew { device, .. }
        | Action::DiskFull { device }
        | Action::Clog { device, .. }
        | Action::DiskOk { device } => Some(device),
        _ => None,
    }
}

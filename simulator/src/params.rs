//! A run's parameters, drawn from its seed: how many users and devices,
//! how much work, and which faults at which rates (a "swarm": each seed
//! gets its own mix, so rare combinations come up across a sweep).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub seed: u64,
    pub users: usize,
    pub devices_per_user: usize,
    /// App operations (reviews, sessions) during the fault phase.
    pub ops: usize,
    /// Length of the fault phase, virtual milliseconds.
    pub fault_phase_ms: u64,
    /// One-way latency: base and random extra, milliseconds.
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Per message: the connection breaks and the message is lost.
    pub cut_rate: f64,
    /// Per message: delivered twice.
    pub duplicate_rate: f64,
    /// Per message: held back by a random delay (arrives after later ones).
    pub reorder_rate: f64,
    /// Devices cut off for a while (partitions), device crashes, wipes.
    pub partitions: usize,
    pub device_crashes: usize,
    pub wipes: usize,
    /// Windows in which one device's disk is full.
    pub disk_full_windows: usize,
    /// Windows in which a link is clogged (one way or both): frames wait
    /// until the window ends, in order, as a stalled TCP connection does.
    pub clogs: usize,
    /// Random splits: a random group of devices loses the relay together.
    pub splits: usize,
    /// Relay crashes (losing its write-behind state), windows of failing
    /// storage writes, and a restore from an earlier backup.
    pub relay_crashes: usize,
    pub storage_failures: usize,
    pub restore_from_backup: bool,
    /// A device whose clock is off by this many hours (0: none).
    pub clock_skew_hours: i64,
    /// Items reviewed: few, so devices review the same item concurrently.
    pub items: usize,
    /// A bug planted on purpose (never drawn; set by `--plant`).
    #[serde(skip)]
    pub planted: crate::scenario::Plant,
}

impl Params {
    pub fn draw(seed: u64) -> Params {
        let mut r = StdRng::seed_from_u64(seed ^ 0x0005_eed0_f9a4_a3e7);
        let on = |r: &mut StdRng| r.random_bool(0.5);
        let cut_rate = if on(&mut r) { r.random_range(0.0..0.05) } else { 0.0 };
        let duplicate_rate = if on(&mut r) { r.random_range(0.0..0.08) } else { 0.0 };
        let reorder_rate = if on(&mut r) { r.random_range(0.0..0.08) } else { 0.0 };
        Params {
            seed,
            users: r.random_range(1..=2),
            devices_per_user: r.random_range(2..=3),
            ops: r.random_range(5..=30),
            fault_phase_ms: r.random_range(5_000..=60_000),
            latency_ms: r.random_range(1..=40),
            jitter_ms: r.random_range(0..=120),
            cut_rate,
            duplicate_rate,
            reorder_rate,
            partitions: if on(&mut r) { r.random_range(1..=3) } else { 0 },
            device_crashes: if on(&mut r) { r.random_range(1..=2) } else { 0 },
            wipes: if r.random_bool(0.25) { 1 } else { 0 },
            disk_full_windows: if r.random_bool(0.3) { r.random_range(1..=2) } else { 0 },
            clogs: if r.random_bool(0.4) { r.random_range(1..=3) } else { 0 },
            splits: if r.random_bool(0.25) { 1 } else { 0 },
            relay_crashes: if on(&mut r) { r.random_range(1..=2) } else { 0 },
            storage_failures: if r.random_bool(0.3) { 1 } else { 0 },
            restore_from_backup: r.random_bool(0.2),
            clock_skew_hours: if r.random_bool(0.2) { r.random_range(-30..=30) } else { 0 },
            items: r.random_range(2..=8),
            planted: Default::default(),
        }
    }

    /// One line a person reads at the top of a report.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} user(s) x {} devices, {} ops over {} s; latency {}+{} ms; cut {:.1} %, dup {:.1} %, reorder {:.1} %; \
             {} partition(s), {} split(s), {} clogged link(s), {} device crash(es), {} wipe(s), {} full disk(s), {} relay crash(es), {} storage failure window(s), restore: {}, clock skew {} h",
            self.seed,
            self.users,
            self.devices_per_user,
            self.ops,
            self.fault_phase_ms / 1000,
            self.latency_ms,
            self.jitter_ms,
            self.cut_rate * 100.0,
            self.duplicate_rate * 100.0,
            self.reorder_rate * 100.0,
            self.partitions,
            self.splits,
            self.clogs,
            self.device_crashes,
            self.wipes,
            self.disk_full_windows,
            self.relay_crashes,
            self.storage_failures,
            if self.restore_from_backup { "yes" } else { "no" },
            self.clock_skew_hours,
        )
    }
}

//! The faults: the fault phase's plan, full disks, wipes, relay crashes and restores, and the heal phase.

use super::*;

impl World {
    /// Lays out the fault phase: operations and faults at random times.
    pub(super) fn plan(&mut self) {
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

    /// A full disk on the device: every write of the engine fails (SQLite
    /// refuses it; the engine's failure path is the one a real ENOSPC takes,
    /// which `tests/tests/disk_full.rs` exercises on a real tmpfs).
    pub(super) fn disk(&mut self, d: usize, full: bool) {
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

    pub(super) fn wipe(&mut self, d: usize) {
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

    pub(super) fn relay_crash(&mut self) {
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

    pub(super) fn restore(&mut self) {
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
    pub(super) fn heal(&mut self) {
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
}

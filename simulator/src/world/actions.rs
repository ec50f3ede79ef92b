//! Scenario steps and how the world carries them out.

use super::*;

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

/// The device a scripted action names, if any.
pub(super) fn action_device(action: &Action) -> Option<&str> {
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

impl World {
    pub(super) fn script(&mut self, action: Action) {
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
}

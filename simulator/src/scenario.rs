//! Scenario files: a timeline QA writes in TOML, without Rust.
//!
//! ```toml
//! name = "the same item reviewed on two offline devices"
//! devices_per_user = 2
//! [[step]]
//! at = 0
//! action = "offline"
//! device = "u0-d0"
//! [[step]]
//! at = 100
//! action = "review"
//! device = "u0-d0"
//! item = "apple"
//! [expect]
//! reviews_per_device = 2
//! ```
//!
//! Devices are named `u<user>-d<n>`. After the last step the network heals
//! and every invariant is checked, plus the scenario's own expectations.

use crate::params::Params;
use crate::world::{Action, World};
use crate::{MAX_STEPS, RunReport, check};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds ids and jitter; the timeline itself is fixed.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "one")]
    pub users: usize,
    #[serde(default = "two")]
    pub devices_per_user: usize,
    #[serde(default = "twenty")]
    pub latency_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// A bug planted in the relay's storage (`ack-before-durable`,
    /// `drop-change`): shrunk reproductions of planted-bug sweeps carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plant: Option<String>,
    #[serde(default)]
    pub step: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn twenty() -> u64 {
    20
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Step {
    /// Virtual milliseconds from the start.
    pub at: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// What the scenario promises besides the invariants.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Reviews every device of user 0 holds at the end.
    pub reviews_per_device: Option<usize>,
    /// Sessions every device of user 0 holds at the end.
    pub sessions_per_device: Option<usize>,
    /// Items with a memory state on every device of user 0.
    pub items: Option<usize>,
    /// Writes the app was told failed (a full disk), at least.
    pub failed_writes_at_least: Option<usize>,
}

/// A bug planted on purpose, in the relay's storage or in the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plant {
    #[default]
    None,
    Relay(relay::storage::memory::PlantedBug),
    Engine(engine::ids::PlantedBug),
}

/// Every plant, by the name the CLI and scenario files use.
pub const PLANTS: [(&str, Plant); 4] = [
    ("ack-before-durable", Plant::Relay(relay::storage::memory::PlantedBug::AckBeforeDurable)),
    ("drop-change", Plant::Relay(relay::storage::memory::PlantedBug::DropEveryNthAppend(7))),
    ("keep-failed-write", Plant::Engine(engine::ids::PlantedBug::KeepFailedWrite)),
    ("ignore-relay-identity", Plant::Engine(engine::ids::PlantedBug::IgnoreRelayIdentity)),
];

/// The name of a planted bug, for a scenario file.
pub fn plant_name(plant: Plant) -> Option<&'static str> {
    PLANTS.iter().find(|(_, p)| *p == plant).map(|(n, _)| *n)
}

/// The planted bug a name stands for.
pub fn planted_bug(name: Option<&str>) -> Result<Plant, String> {
    match name {
        None => Ok(Plant::None),
        Some(n) => PLANTS.iter().find(|(name, _)| *name == n).map(|(_, p)| *p).ok_or_else(|| {
            let names: Vec<&str> = PLANTS.iter().map(|(n, _)| *n).collect();
            format!("unknown planted bug `{n}` ({})", names.join(", "))
        }),
    }
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn load(path: &std::path::Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The timeline a random run went through, as a scenario.
    pub fn from_run(params: &Params, script: &[(u64, Action)], plant: Option<&str>) -> Scenario {
        Scenario {
            name: format!("reproduction of seed {}", params.seed),
            description: params.summary(),
            seed: params.seed,
            users: params.users,
            devices_per_user: params.devices_per_user,
            latency_ms: params.latency_ms,
            jitter_ms: params.jitter_ms,
            plant: plant.map(str::to_owned),
            step: script.iter().map(|(at, action)| Step { at: *at, action: action.clone() }).collect(),
            expect: Expect::default(),
        }
    }

    fn params(&self) -> Params {
        let mut p = Params::draw(self.seed);
        p.planted = planted_bug(self.plant.as_deref()).unwrap_or_default();
        p.users = self.users;
        p.devices_per_user = self.devices_per_user;
        p.latency_ms = self.latency_ms;
        p.jitter_ms = self.jitter_ms;
        // A scenario's faults are its steps: nothing random on top.
        p.cut_rate = 0.0;
        p.duplicate_rate = 0.0;
        p.reorder_rate = 0.0;
        p.relay_crashes = 0;
        p.clock_skew_hours = 0;
        p.clogs = 0;
        p.splits = 0;
        p
    }

    /// Runs the timeline, heals, checks invariants and expectations.
    pub fn run(&self) -> RunReport {
        let params = self.params();
        let steps: Vec<(u64, Action)> = self.step.iter().map(|s| (s.at, s.action.clone())).collect();
        let mut world = match World::scripted(params.clone(), &steps) {
            Ok(w) => w,
            Err(e) => {
                return RunReport {
                    seed: self.seed,
                    params,
                    steps: 0,
                    virtual_ms: 0,
                    trace_hash: String::new(),
                    failures: vec![e],
                    coverage: Default::default(),
                    tail: Vec::new(),
                    script: Vec::new(),
                };
            }
        };
        let quiet = world.run(MAX_STEPS);
        let mut failures = Vec::new();
        if !quiet {
            failures.push(format!("the network did not go quiet within {MAX_STEPS} events after healing"));
        } else {
            failures.extend(check::invariants(&world));
            failures.extend(self.expectations(&world));
            if failures.is_empty() {
                failures.extend(check::reconnect_cost(&mut world));
            }
        }
        RunReport {
            seed: self.seed,
            steps: world.steps,
            virtual_ms: world.now(),
            trace_hash: world.trace.digest(),
            failures,
            coverage: world.coverage.clone(),
            tail: world.trace.tail(usize::MAX),
            script: std::mem::take(&mut world.script),
            params,
        }
    }

    fn expectations(&self, w: &World) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(n) = self.expect.failed_writes_at_least
            && w.failed_reviews.len() < n
        {
            failures.push(format!("{} write(s) failed; the scenario expects at least {n}", w.failed_reviews.len()));
        }
        for d in w.devices_of(0) {
            let Some(engine) = w.engine(d) else { continue };
            let name = w.device_name(d);
            if let Some(n) = self.expect.reviews_per_device {
                let got = w.device_reviews(d).len();
                if got != n {
                    failures.push(format!("{name} holds {got} review(s); the scenario expects {n}"));
                }
            }
            if let Some(n) = self.expect.sessions_per_device {
                let got = engine.sessions(i64::MIN, i64::MAX).map(|s| s.len()).unwrap_or(0);
                if got != n {
                    failures.push(format!("{name} holds {got} session(s); the scenario expects {n}"));
                }
            }
            if let Some(n) = self.expect.items {
                let got = engine.memory_states().map(|s| s.len()).unwrap_or(0);
                if got != n {
                    failures.push(format!("{name} has memory states for {got} item(s); the scenario expects {n}"));
                }
            }
        }
        failures
    }
}

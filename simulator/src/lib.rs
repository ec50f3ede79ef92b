//! The multi-device simulator QA runs: real engines and the relay's real
//! connection core, a seeded network that cuts, delays, duplicates and
//! reorders, devices that go offline, crash and get wiped, a relay that
//! crashes, fails writes and is restored from a backup; then a heal phase
//! on a perfect network, after which every invariant is checked.
//!
//! `run_seed(seed)` is the whole run; the same seed and build give the same
//! run, event for event (`RunReport::trace_hash`).

pub mod check;
pub mod live;
pub mod params;
pub mod scenario;
pub mod shrink;
pub mod svg;
pub mod trace;
pub mod world;

use serde::Serialize;

/// Events a run may take, in all, before it is declared stuck (a sync loop
/// or a device that never converges).
pub const MAX_STEPS: u64 = 20_000;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub params: params::Params,
    pub steps: u64,
    pub virtual_ms: u64,
    pub trace_hash: String,
    pub failures: Vec<String>,
    pub coverage: world::Coverage,
    /// The last lines of the trace, for a failure.
    pub tail: Vec<String>,
    /// What happened, as scenario steps (see [`reproduce`]).
    #[serde(skip)]
    pub script: Vec<(u64, world::Action)>,
}

/// A failing (or any) random run, written as a scenario file's content.
pub fn reproduce(report: &RunReport) -> scenario::Scenario {
    scenario::Scenario::from_run(&report.params, &report.script, scenario::plant_name(report.params.planted))
}

/// Shrinks a failing random run to a small scenario that still fails.
pub fn shrink_run(report: &RunReport, budget: usize) -> scenario::Scenario {
    shrink::shrink(reproduce(report), budget, |s| !s.run().passed())
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The command that reruns this seed.
    pub fn rerun(&self) -> String {
        format!("cargo run -p simulator -- replay --seed {}", self.seed)
    }
}

/// Runs one seed: fault phase, heal phase, checks.
pub fn run_seed(seed: u64) -> RunReport {
    run_seed_with(seed, 40)
}

/// [`run_seed`], keeping the last `tail` trace lines in the report.
pub fn run_seed_with(seed: u64, tail: usize) -> RunReport {
    run_params(params::Params::draw(seed), tail)
}

/// Runs a seed and draws it: the report and an SVG timeline.
pub fn run_seed_svg(seed: u64) -> (RunReport, String) {
    let params = params::Params::draw(seed);
    let mut world = match world::World::random(params.clone()) {
        Ok(w) => w,
        Err(e) => return (run_params(params, 0), format!("<!-- could not set up the run: {e} -->")),
    };
    world.record_timeline();
    let _ = world.run(MAX_STEPS);
    let picture = world.timeline.as_ref().map(|t| t.render(&params.summary())).unwrap_or_default();
    (run_params(params, 40), picture)
}

/// Runs a seed with a bug planted (in the relay's storage or the engines).
pub fn run_planted(seed: u64, bug: scenario::Plant) -> RunReport {
    let mut params = params::Params::draw(seed);
    params.planted = bug;
    run_params(params, 40)
}

fn run_params(params: params::Params, tail: usize) -> RunReport {
    let seed = params.seed;
    let mut world = match world::World::random(params.clone()) {
        Ok(w) => w,
        Err(e) => {
            return RunReport {
                seed,
                params,
                steps: 0,
                virtual_ms: 0,
                trace_hash: String::new(),
                failures: vec![format!("could not set up the run: {e}")],
                coverage: world::Coverage::default(),
                tail: Vec::new(),
                script: Vec::new(),
            };
        }
    };
    let quiet = world.run(MAX_STEPS);
    let mut failures = Vec::new();
    if !quiet {
        failures.push(format!(
            "the network did not go quiet within {MAX_STEPS} events (a sync loop, or a device that never converges)"
        ));
    } else {
        failures.extend(check::invariants(&world));
        if failures.is_empty() {
            failures.extend(check::reconnect_cost(&mut world));
        }
    }
    RunReport {
        seed,
        steps: world.steps,
        virtual_ms: world.now(),
        trace_hash: world.trace.digest(),
        failures,
        coverage: world.coverage.clone(),
        tail: world.trace.tail(tail),
        script: std::mem::take(&mut world.script),
        params,
    }
}

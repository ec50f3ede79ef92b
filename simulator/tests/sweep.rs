//! The simulator's own proof: runs are reproducible, a sweep with faults
//! passes and goes through every rare path, and planted bugs are caught.

use simulator::scenario::PLANTS;
use simulator::world::Coverage;
use simulator::{run_planted, run_seed};

/// Seeds in CI's sweep (the CLI runs thousands: `simulator fuzz --seeds 10000`).
const SWEEP: u64 = 500;

#[test]
fn the_same_seed_gives_the_same_run_event_for_event() {
    for seed in [3, 42, 371] {
        let (a, b) = (run_seed(seed), run_seed(seed));
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} is not reproducible");
        assert_eq!(a.steps, b.steps);
        assert!(a.steps > 0);
    }
    assert_ne!(run_seed(1).trace_hash, run_seed(2).trace_hash, "different seeds, different runs");
}

#[test]
fn a_sweep_with_faults_passes_and_covers_every_rare_path() {
    let mut coverage = Coverage::default();
    let mut failed = Vec::new();
    for seed in 0..SWEEP {
        let r = run_seed(seed);
        coverage.add(&r.coverage);
        if !r.passed() {
            failed.push(format!("seed {seed}: {} (rerun: {})", r.failures.join("; "), r.rerun()));
        }
    }
    assert!(failed.is_empty(), "{} of {SWEEP} seeds failed:\n{}", failed.len(), failed.join("\n"));
    assert!(coverage.zeros().is_empty(), "never exercised in {SWEEP} seeds: {:?}", coverage.zeros());
}

/// Each planted bug (two in the relay's storage, two in the engine) is caught by a sweep, and the failure shrinks to a
/// scenario file of at most a dozen steps that still fails when run again
/// from its TOML text.
#[test]
fn planted_bugs_are_caught_and_shrunk_to_a_dozen_steps() {
    for (name, bug) in PLANTS {
        // The first failure whose timeline, replayed as a scenario, fails too
        // (a scenario replays the steps, not the random run's exact jitter).
        let report = (0..150)
            .map(|seed| run_planted(seed, bug))
            .find(|r| !r.passed() && !simulator::reproduce(r).run().passed())
            .unwrap_or_else(|| panic!("{name} went unnoticed (or did not reproduce) in 150 seeds"));
        let small = simulator::shrink_run(&report, 400);
        assert!(small.step.len() <= 12, "{name}: shrunk only to {} steps:\n{}", small.step.len(), small.to_toml());
        let again = simulator::scenario::Scenario::parse(&small.to_toml()).expect("the file parses");
        assert!(!again.run().passed(), "{name}: the shrunk scenario file still fails:\n{}", small.to_toml());
        eprintln!("{name}: caught by seed {}, shrunk to {} steps", report.seed, small.step.len());
    }
}

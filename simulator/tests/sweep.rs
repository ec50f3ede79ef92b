//! The simulator's own proof: runs are reproducible, a sweep with faults
//! passes and goes through every rare path, and planted bugs are caught.

use relay::storage::memory::PlantedBug;
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

/// Each planted bug is caught by a sweep, and the failure shrinks to a
/// scenario file of at most a dozen steps that still fails when run again
/// from its TOML text.
#[test]
fn planted_bugs_are_caught_and_shrunk_to_a_dozen_steps() {
    for bug in [PlantedBug::AckBeforeDurable, PlantedBug::DropEveryNthAppend(7)] {
        let failing: Vec<_> = (0..60).map(|seed| run_planted(seed, bug)).filter(|r| !r.passed()).collect();
        assert!(!failing.is_empty(), "{bug:?} went unnoticed by 60 seeds");
        // A failure whose timeline, replayed as a scenario, fails too (the
        // scenario replays the steps, not the random run's exact jitter).
        let report = failing
            .iter()
            .find(|r| !simulator::reproduce(r).run().passed())
            .unwrap_or_else(|| panic!("{bug:?}: no failure reproduced as a scenario"));
        let small = simulator::shrink_run(report, 400);
        assert!(small.step.len() <= 12, "{bug:?}: shrunk only to {} steps:\n{}", small.step.len(), small.to_toml());
        let again = simulator::scenario::Scenario::parse(&small.to_toml()).expect("the file parses");
        assert!(!again.run().passed(), "{bug:?}: the shrunk scenario file still fails:\n{}", small.to_toml());
    }
}

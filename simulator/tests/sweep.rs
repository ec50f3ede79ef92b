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

#[test]
fn planted_bugs_are_caught() {
    for bug in [PlantedBug::AckBeforeDurable, PlantedBug::DropEveryNthAppend(7)] {
        let caught = (0..60).find(|&seed| !run_planted(seed, bug).passed());
        assert!(caught.is_some(), "{bug:?} went unnoticed by 60 seeds");
    }
}

//! Every scenario QA ships passes, and a scenario file with a mistake is
//! refused with a message that names it.

use simulator::scenario::Scenario;
use std::path::Path;

#[test]
fn every_shipped_scenario_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "one scenario for each case of the issue");
    for file in files {
        let scenario = Scenario::load(&file).expect("parses");
        let r = scenario.run();
        assert!(r.passed(), "{}: {}\n{}", file.display(), r.failures.join("\n"), r.tail.join("\n"));
        assert!(r.steps > 10, "{} did something", file.display());
    }
}

#[test]
fn a_scenario_with_a_mistake_says_which() {
    let bad = "name = \"x\"\n[[step]]\nat = 1\naction = \"explode\"\ndevice = \"u0-d0\"\n";
    let err = Scenario::parse(bad).expect_err("unknown action");
    assert!(err.contains("explode"), "{err}");
    let unknown_device = "name = \"x\"\n[[step]]\nat = 1\naction = \"wipe\"\ndevice = \"u9-d9\"\n";
    let r = Scenario::parse(unknown_device).expect("parses").run();
    assert!(r.failures.iter().any(|f| f.contains("u9-d9")), "{:?}", r.failures);
}

#[test]
fn a_scenario_round_trips_through_toml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/two-device-conflict.toml");
    let s = Scenario::load(&dir).expect("parses");
    let again = Scenario::parse(&s.to_toml()).expect("what we write, we read");
    assert_eq!(again.step.len(), s.step.len());
    assert_eq!(again.run().trace_hash, s.run().trace_hash, "the same timeline, the same run");
}

#[test]
fn a_run_draws_as_an_svg_timeline() {
    let (report, svg) = simulator::run_seed_svg(7);
    assert!(report.passed());
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for lane in ["relay", "u0-d0", "u1-d2"] {
        assert!(svg.contains(&format!(">{lane}</text>")), "lane {lane} missing");
    }
    assert!(svg.contains("<line") && svg.contains("converged at"), "messages and convergence points are drawn");
}

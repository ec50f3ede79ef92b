//! Live mode: a scenario against the relay as a separate process (SIGKILLed
//! and restarted), real engines with their WebSocket drivers, and a TCP
//! fault proxy per device, over loopback in real time.

use simulator::scenario::Scenario;
use std::path::Path;

const STORM: &str = r#"
name = "a storm, live"
devices_per_user = 3
latency_ms = 5

[[step]]
at = 50
action = "review"
device = "u0-d0"
item = "apple"

[[step]]
at = 100
action = "offline"
device = "u0-d1"

[[step]]
at = 150
action = "review"
device = "u0-d1"
item = "apple"
rating = "again"

[[step]]
at = 200
action = "relay_crash"

[[step]]
at = 250
action = "review"
device = "u0-d2"
item = "pear"

[[step]]
at = 300
action = "cut"
device = "u0-d0"

[[step]]
at = 320
action = "review"
device = "u0-d0"
item = "plum"

[[step]]
at = 400
action = "crash"
device = "u0-d2"

[[step]]
at = 500
action = "online"
device = "u0-d1"

[[step]]
at = 600
action = "restart"
device = "u0-d2"

[[step]]
at = 900
action = "wipe"
device = "u0-d0"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_replays_live_against_the_relay_process() {
    let relay = Path::new(env!("CARGO_BIN_EXE_sim-relay"));
    let scenario = Scenario::parse(STORM).expect("parses");
    let report = simulator::live::run(&scenario, relay).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.skipped.is_empty(), "every step of this scenario runs live: {:?}", report.skipped);

    // A shipped scenario too; steps that need the model's control points are named as skipped.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/relay-restored-from-backup.toml");
    let report = simulator::live::run(&Scenario::load(&file).expect("parses"), relay).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.skipped.len(), 2, "backup and restore are model-only: {:?}", report.skipped);
}

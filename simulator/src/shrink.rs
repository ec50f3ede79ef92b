//! Shrinking a failing run to a scenario a person can read.
//!
//! A failing random run is first written as the scenario of everything that
//! happened in it (`World::script`); then steps are dropped in halves,
//! quarters, ... down to single steps, keeping each removal after which the
//! scenario still fails; then fewer devices, no jitter and a short latency
//! are tried. Every candidate is a full run, so the budget bounds the time.

use crate::scenario::Scenario;

/// The smallest failing scenario found within `budget` runs. `fails` says
/// whether a candidate still fails (in the same way, if the caller cares).
pub fn shrink(mut current: Scenario, budget: usize, fails: impl Fn(&Scenario) -> bool) -> Scenario {
    let mut runs = 0;
    let mut chunk = (current.step.len() / 2).max(1);
    loop {
        let mut start = 0;
        while start < current.step.len() && runs < budget {
            let mut candidate = current.clone();
            let end = (start + chunk).min(candidate.step.len());
            candidate.step.drain(start..end);
            runs += 1;
            if fails(&candidate) {
                current = candidate; // keep the removal; the next chunk moved here
            } else {
                start += chunk;
            }
        }
        if chunk == 1 || runs >= budget {
            break;
        }
        chunk /= 2;
    }
    // Simpler worlds: fewer devices, a plain network.
    let simplifications: [fn(&mut Scenario) -> bool; 3] = [
        |s| {
            let fewer = s.devices_per_user.saturating_sub(1).max(2);
            let named_above = s.step.iter().any(|st| {
                serde_json::to_value(&st.action).ok().and_then(|v| v["device"].as_str().map(str::to_owned)).is_some_and(
                    |d| d.rsplit('d').next().and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n >= fewer),
                )
            });
            if fewer < s.devices_per_user && !named_above {
                s.devices_per_user = fewer;
                true
            } else {
                false
            }
        },
        |s| std::mem::replace(&mut s.jitter_ms, 0) != 0,
        |s| std::mem::replace(&mut s.latency_ms, 5) != 5,
    ];
    for simplify in simplifications {
        if runs >= budget {
            break;
        }
        let mut candidate = current.clone();
        if simplify(&mut candidate) {
            runs += 1;
            if fails(&candidate) {
                current = candidate;
            }
        }
    }
    current.name = format!("{} (shrunk to {} steps)", current.name, current.step.len());
    current
}

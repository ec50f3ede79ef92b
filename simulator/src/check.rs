//! The invariants, each failing with a sentence a person can read.

use crate::world::World;
use std::collections::BTreeSet;

/// Checks every invariant on a healed, quiet world.
pub fn invariants(w: &World) -> Vec<String> {
    let mut failures = Vec::new();
    let relay = w.relay_reviews();
    for user in 0..w.users() {
        let devices = w.devices_of(user);
        let mut reference: Option<(usize, BTreeSet<String>)> = None;
        for &d in &devices {
            if w.engine(d).is_none() {
                failures.push(format!("{} is not running after the heal phase", w.device_name(d)));
                continue;
            }
            let ids = w.device_reviews(d);
            // Nothing the app was told succeeded is lost (unless destroyed
            // with the only copy: a wipe before upload, an older backup).
            let expected: BTreeSet<String> = w
                .acknowledged_ops
                .get(&user)
                .map(|s| s.difference(&w.destroyed).cloned().collect())
                .unwrap_or_default();
            let missing: Vec<&String> = expected.difference(&ids).collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "{} lacks {} review(s) the app was told were recorded, e.g. {}",
                    w.device_name(d),
                    missing.len(),
                    missing[0]
                ));
            }
            match &reference {
                None => reference = Some((d, ids)),
                Some((r, ref_ids)) => {
                    if *ref_ids != ids {
                        failures.push(format!(
                            "{} and {} hold different reviews ({} vs {})",
                            w.device_name(*r),
                            w.device_name(d),
                            ref_ids.len(),
                            ids.len()
                        ));
                    }
                    compare(w, *r, d, &mut failures);
                }
            }
        }
        if let Some((r, _)) = &reference
            && let Some(engine) = w.engine(*r)
        {
            fresh_replay_matches(w, *r, engine, &mut failures);
        }
        if let Some((r, ids)) = &reference {
            let on_relay = relay.get(&user).cloned().unwrap_or_default();
            if &on_relay != ids {
                failures.push(format!(
                    "the relay holds {} review(s) of user{user}, {} holds {}",
                    on_relay.len(),
                    w.device_name(*r),
                    ids.len()
                ));
            }
        }
    }
    // Nothing the app was told failed exists anywhere.
    for (user, device, item, at) in &w.failed_reviews {
        for d in w.devices_of(*user) {
            let Some(engine) = w.engine(d) else { continue };
            let held = engine.reviews_of(item).unwrap_or_default();
            if held.iter().any(|r| &r.device_id == device && r.reviewed_at == *at) {
                failures
                    .push(format!("{} holds the review of {item} that {device} was told had failed", w.device_name(d)));
            }
        }
    }
    // No device holds a review written by another user's device.
    for d in 0..w.users() * w.params.devices_per_user {
        let Some(engine) = w.engine(d) else { continue };
        let user = d / w.params.devices_per_user;
        let mine: BTreeSet<String> = w.devices_of(user).iter().map(|&x| w.device_name(x).to_owned()).collect();
        if let Ok(sessions) = engine.sessions(i64::MIN, i64::MAX) {
            for s in sessions {
                if !mine.contains(&s.device_id) {
                    failures.push(format!(
                        "{} holds a session of {}, another user's device",
                        w.device_name(d),
                        s.device_id
                    ));
                }
            }
        }
    }
    failures
}

/// Two devices of one user: same documents, memory states and sessions.
fn compare(w: &World, a: usize, b: usize, failures: &mut Vec<String>) {
    let (Some(ea), Some(eb)) = (w.engine(a), w.engine(b)) else { return };
    let (na, nb) = (w.device_name(a), w.device_name(b));
    if ea.document_heads().ok() != eb.document_heads().ok() {
        failures.push(format!("{na} and {nb} did not converge: their document heads differ"));
    }
    if ea.memory_states().ok() != eb.memory_states().ok() {
        failures.push(format!("{na} and {nb} compute different memory states from their reviews"));
    }
    if ea.sessions(i64::MIN, i64::MAX).ok() != eb.sessions(i64::MIN, i64::MAX).ok() {
        failures.push(format!("{na} and {nb} show different sessions"));
    }
}

/// Memory states maintained incrementally, under every interleaving the run
/// produced, equal a from-scratch replay of the merged reviews on a new
/// device that receives the documents at once.
fn fresh_replay_matches(w: &World, r: usize, engine: &engine::Engine, failures: &mut Vec<String>) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let config = engine::EngineConfig {
        data_dir: dir.path().to_path_buf(),
        user_id: format!("user{}", r / w.params.devices_per_user),
        device_id: "fresh-replay".into(),
    };
    let Ok(fresh) = engine::Engine::open(config) else { return };
    let Ok(docs) = engine.export_documents() else { return };
    if let Err(e) = fresh.import_documents(&docs) {
        failures.push(format!("{}'s documents do not import into a fresh device: {e}", w.device_name(r)));
        return;
    }
    if fresh.memory_states().ok() != engine.memory_states().ok() {
        failures.push(format!("{}'s memory states differ from a fresh replay of the same reviews", w.device_name(r)));
    }
}

/// Bounded cost: once everything agrees, a reconnect of every device is only
/// the handshake (a join and a peer answer each, at most a few hundred bytes),
/// whatever happened before. A sync state that never settles, or a relay that
/// offers documents a device already has, shows here.
pub fn reconnect_cost(w: &mut World) -> Vec<String> {
    let devices = w.device_count() as u64;
    let (messages, bytes, quiet) = w.reconnect_all(5_000);
    let mut failures = Vec::new();
    if !quiet {
        failures.push("after convergence, a reconnect of every device did not go quiet".to_owned());
    } else if messages > 2 * devices || bytes > 512 * devices {
        failures.push(format!(
            "after convergence, reconnecting {devices} up-to-date devices took {messages} messages and {bytes} bytes (at most {} and {} expected)",
            2 * devices,
            512 * devices
        ));
    }
    failures
}

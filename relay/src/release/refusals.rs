//! Refused admin requests, counted per source and written as one audit
//! entry per source and interval.
//!
//! A request without a valid admin token proves nothing about who sent it,
//! so writing (and fsyncing) an audit row for each would let anyone fill the
//! disk or stall the registry. Refusals are counted in memory, per source
//! address, and [`RefusalLog::take`] turns the counts into entries that the
//! relay's flush task appends every interval (and at shutdown). Memory is
//! bounded: past `MAX_SOURCES` distinct sources, the rest count under one
//! `other` row.

use release::dto::AuditEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Distinct sources tracked between two flushes.
const MAX_SOURCES: usize = 4096;
/// Distinct actions named per source in an entry.
const MAX_ACTIONS: usize = 16;

#[derive(Default)]
struct Count {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    actions: BTreeSet<String>,
}

#[derive(Default)]
pub struct RefusalLog {
    counts: Mutex<BTreeMap<String, Count>>,
}

impl RefusalLog {
    /// Counts one refused request from `source`.
    pub fn note(&self, source: &str, status: u16, action: &str) {
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let key = if counts.contains_key(source) || counts.len() < MAX_SOURCES { source } else { "other" };
        let count = counts.entry(key.to_owned()).or_default();
        count.total += 1;
        *count.by_status.entry(status).or_default() += 1;
        if count.actions.len() < MAX_ACTIONS {
            count.actions.insert(action.to_owned());
        }
    }

    /// The counts since the last call, as audit entries (one per source).
    pub fn take(&self, now_ms: i64) -> Vec<AuditEntry> {
        let counts = match self.counts.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        counts
            .into_iter()
            .map(|(source, c)| {
                let statuses: Vec<String> = c.by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                let actions: Vec<String> = c.actions.into_iter().collect();
                AuditEntry {
                    id: 0,
                    at: now_ms,
                    actor: "unauthenticated".into(),
                    action: "admin.refused".into(),
                    target: source,
                    outcome: "refused".into(),
                    detail: format!(
                        "{} requests refused since the last entry ({}); actions: {}",
                        c.total,
                        statuses.join(", "),
                        actions.join(", ")
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_aggregate_per_source_and_are_bounded() {
        let log = RefusalLog::default();
        for _ in 0..1000 {
            log.note("10.0.0.1", 403, "release.create");
        }
        log.note("10.0.0.1", 401, "audit.read");
        for i in 0..(MAX_SOURCES + 50) {
            log.note(&format!("src-{i}"), 401, "release.list");
        }
        let entries = log.take(1);
        assert_eq!(entries.len(), MAX_SOURCES + 1, "one row per source, the overflow in `other`");
        let first = entries.iter().find(|e| e.target == "10.0.0.1").unwrap();
        assert!(first.detail.starts_with("1001 requests refused"), "{}", first.detail);
        assert!(first.detail.contains("401: 1, 403: 1000") && first.detail.contains("audit.read, release.create"));
        assert!(entries.iter().any(|e| e.target == "other"));
        assert!(log.take(2).is_empty(), "counts reset after each flush");
    }
}

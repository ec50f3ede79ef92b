//! Prometheus counters and gauges, rendered in the text exposition format.
//! Plain atomics: the hot path pays one relaxed add per event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub auth_failures: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub changes_stored: AtomicU64,
    pub docs_loaded: AtomicU64,
    pub docs_evicted: AtomicU64,
    pub docs_unavailable: AtomicU64,
    pub storage_errors: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn render(&self, docs_resident: usize) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, u64); 15] = [
            ("relay_connections_open", "gauge", "WebSocket connections open now", self.connections_open.load(Relaxed)),
            (
                "relay_connections_total",
                "counter",
                "WebSocket connections accepted",
                self.connections_total.load(Relaxed),
            ),
            (
                "relay_auth_failures_total",
                "counter",
                "Upgrades refused for a missing or bad token",
                self.auth_failures.load(Relaxed),
            ),
            (
                "relay_connections_refused_limit_total",
                "counter",
                "Upgrades refused by a connection limit",
                self.connections_refused_limit.load(Relaxed),
            ),
            (
                "relay_protocol_errors_total",
                "counter",
                "Connections closed for a protocol error",
                self.protocol_errors.load(Relaxed),
            ),
            ("relay_messages_in_total", "counter", "Protocol messages received", self.messages_in.load(Relaxed)),
            ("relay_messages_out_total", "counter", "Protocol messages sent", self.messages_out.load(Relaxed)),
            ("relay_bytes_in_total", "counter", "Protocol bytes received", self.bytes_in.load(Relaxed)),
            ("relay_bytes_out_total", "counter", "Protocol bytes sent", self.bytes_out.load(Relaxed)),
            (
                "relay_changes_stored_total",
                "counter",
                "Document chunks durably stored",
                self.changes_stored.load(Relaxed),
            ),
            ("relay_docs_loaded_total", "counter", "Documents loaded from storage", self.docs_loaded.load(Relaxed)),
            (
                "relay_docs_evicted_total",
                "counter",
                "Idle documents dropped from memory",
                self.docs_evicted.load(Relaxed),
            ),
            ("relay_docs_unavailable_total", "counter", "doc-unavailable answers", self.docs_unavailable.load(Relaxed)),
            (
                "relay_storage_errors_total",
                "counter",
                "Storage operations that failed",
                self.storage_errors.load(Relaxed),
            ),
            ("relay_docs_resident", "gauge", "Documents loaded in memory now", docs_resident as u64),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

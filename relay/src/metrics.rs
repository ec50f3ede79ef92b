//! Prometheus counters and gauges, rendered in the text exposition format.
//! Plain atomics: the hot path pays one relaxed add per event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A Prometheus histogram with fixed buckets, lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Seconds: from a fast in-memory merge to a slow fsync under load.
const LATENCY_BOUNDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: LATENCY_BOUNDS,
            counts: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", count.load(Relaxed));
        }
        let total = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Time to apply one incoming sync message: merge, durable store, reply.
    pub sync_apply_seconds: Histogram,
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
    /// Whole documents sent to a peer that had none, from the stored bytes.
    pub whole_docs_from_storage: AtomicU64,
    /// Answers to whole offers taken without loading the document.
    pub acks_without_doc: AtomicU64,
    /// Messages and pushes handled on the connection's own task (no
    /// blocking thread: nothing on their way could wait on storage).
    pub handled_inline: AtomicU64,
    /// Times the idle sweeper gave memory back (page caches, allocator).
    pub memory_releases: AtomicU64,
    pub docs_evicted: AtomicU64,
    /// Document loads that waited for a turn (`max_concurrent_doc_loads`).
    pub doc_load_waits: AtomicU64,
    /// Loaded documents brought up to date with other relays' chunks.
    pub catch_ups: AtomicU64,
    /// Announcements of other relays' changes received (shared storage).
    pub feed_events: AtomicU64,
    pub docs_unavailable: AtomicU64,
    pub storage_errors: AtomicU64,
    /// Presence messages dropped by a full queue (per receiver).
    pub ephemeral_dropped: AtomicU64,
    /// Connections closed because a frame could not be written in time.
    pub slow_consumers_closed: AtomicU64,
    /// Connections closed because their token expired.
    pub tokens_expired_closed: AtomicU64,
    /// Signed manifests answered (`latest` and a release's manifest).
    pub manifests_served: AtomicU64,
    /// Artifact requests answered with bytes (200 or 206).
    pub artifact_requests: AtomicU64,
    /// Of those, answered with a range (206).
    pub range_requests: AtomicU64,
    /// Bytes of artifact responses, as answered (a client that goes away early counts in full).
    pub artifact_bytes: AtomicU64,
    /// Artifact responses still streaming.
    pub artifact_streams: AtomicU64,
    /// Uploads that ended without a stored artifact (refused, too large, interrupted).
    pub upload_failures: AtomicU64,
    /// Admin requests refused for a missing or wrong admin token.
    pub admin_refusals: AtomicU64,
}

/// Counts one artifact stream as open for as long as it lives.
pub struct StreamGuard(std::sync::Arc<crate::hub::Hub>);

impl StreamGuard {
    pub fn new(hub: std::sync::Arc<crate::hub::Hub>) -> StreamGuard {
        hub.metrics.artifact_streams.fetch_add(1, Relaxed);
        StreamGuard(hub)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let _ = self.0.metrics.artifact_streams.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

impl Metrics {
    pub fn artifact_streams_open(&self) -> u64 {
        self.artifact_streams.load(Relaxed)
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// `connections_open` and `docs_resident` are read from the hub, which
    /// owns those numbers, so there is one source for each.
    pub fn render(&self, connections_open: u64, docs_resident: usize, (loading, loads_peak): (u64, u64)) -> String {
        let mut out = String::new();
        let rows: Vec<(&str, &str, &str, u64)> = vec![
            ("relay_connections_open", "gauge", "WebSocket connections open now", connections_open),
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
                "relay_whole_docs_from_storage_total",
                "counter",
                "Whole documents sent to a peer that had none, as stored (not saved again)",
                self.whole_docs_from_storage.load(Relaxed),
            ),
            (
                "relay_acks_without_doc_total",
                "counter",
                "A new install's acknowledgements of whole offers, taken without loading the document",
                self.acks_without_doc.load(Relaxed),
            ),
            (
                "relay_handled_inline_total",
                "counter",
                "Acknowledgements and pushes handled on the connection's task, without a blocking thread",
                self.handled_inline.load(Relaxed),
            ),
            (
                "relay_memory_releases_total",
                "counter",
                "Times the idle sweeper gave freed memory back (SQLite page caches, then the allocator)",
                self.memory_releases.load(Relaxed),
            ),
            (
                "relay_docs_evicted_total",
                "counter",
                "Idle documents dropped from memory",
                self.docs_evicted.load(Relaxed),
            ),
            (
                "relay_doc_load_waits_total",
                "counter",
                "Document loads that waited for a turn (the cap on concurrent loads)",
                self.doc_load_waits.load(Relaxed),
            ),
            (
                "relay_catch_ups_total",
                "counter",
                "Loaded documents brought up to date with chunks other relays stored",
                self.catch_ups.load(Relaxed),
            ),
            (
                "relay_feed_events_total",
                "counter",
                "Announcements of other relays' changes received from the shared database",
                self.feed_events.load(Relaxed),
            ),
            ("relay_docs_unavailable_total", "counter", "doc-unavailable answers", self.docs_unavailable.load(Relaxed)),
            (
                "relay_storage_errors_total",
                "counter",
                "Storage operations that failed",
                self.storage_errors.load(Relaxed),
            ),
            ("relay_docs_resident", "gauge", "Documents loaded in memory now", docs_resident as u64),
            ("relay_doc_loads_in_progress", "gauge", "Documents being loaded from storage now", loading),
            (
                "relay_doc_loads_peak",
                "gauge",
                "The most documents loaded from storage at once since start (bounded by the load cap)",
                loads_peak,
            ),
            (
                "relay_ephemeral_dropped_total",
                "counter",
                "Presence messages dropped for a receiver whose queue was full",
                self.ephemeral_dropped.load(Relaxed),
            ),
            (
                "relay_slow_consumers_closed_total",
                "counter",
                "Connections closed because a frame could not be written within the send timeout",
                self.slow_consumers_closed.load(Relaxed),
            ),
            (
                "relay_tokens_expired_closed_total",
                "counter",
                "Connections closed when their device token expired",
                self.tokens_expired_closed.load(Relaxed),
            ),
            (
                "relay_manifests_served_total",
                "counter",
                "Signed manifests answered (latest and by release)",
                self.manifests_served.load(Relaxed),
            ),
            (
                "relay_artifact_requests_total",
                "counter",
                "Artifact requests answered with bytes (200 or 206)",
                self.artifact_requests.load(Relaxed),
            ),
            (
                "relay_artifact_range_requests_total",
                "counter",
                "Artifact requests answered with a range (206)",
                self.range_requests.load(Relaxed),
            ),
            (
                "relay_artifact_bytes_total",
                "counter",
                "Bytes of artifact responses as answered",
                self.artifact_bytes.load(Relaxed),
            ),
            ("relay_artifact_streams_open", "gauge", "Artifact responses streaming now", self.artifact_streams_open()),
            (
                "relay_upload_failures_total",
                "counter",
                "Artifact uploads that stored nothing (refused, too large, interrupted)",
                self.upload_failures.load(Relaxed),
            ),
            (
                "relay_admin_refusals_total",
                "counter",
                "Admin requests refused for a missing or wrong admin token",
                self.admin_refusals.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        self.sync_apply_seconds.render(
            &mut out,
            "relay_sync_apply_seconds",
            "Time to apply an incoming sync message, store it durably and build the reply",
        );
        out
    }
}

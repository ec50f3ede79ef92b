//! Limits that keep one peer from taking the relay down for everyone.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message accepted; a larger one closes that connection.
    pub max_message_bytes: usize,
    /// Documents one user may own.
    pub max_docs_per_user: u64,
    /// Simultaneous connections of one user (all devices together).
    pub max_connections_per_user: usize,
    /// Simultaneous connections in all.
    pub max_connections: usize,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// How often the relay pings; keeps NATs open and proves liveness.
    pub ping_interval: Duration,
    /// A loaded document untouched for this long is dropped from memory.
    pub doc_idle_eviction: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 8 * 1024 * 1024,
            max_docs_per_user: 10_000,
            max_connections_per_user: 32,
            max_connections: 20_000,
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            doc_idle_eviction: Duration::from_secs(30),
        }
    }
}

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
    /// A frame that cannot be written to a peer within this long closes that
    /// connection: a peer that stops reading is a slow consumer, not a reason
    /// to hold memory. Kept below `idle_timeout`.
    pub send_timeout: Duration,
    /// Bytes of frames being written to one user's connections at once.
    pub max_outbound_bytes_per_user: usize,
    /// Bytes of frames being written to all connections at once.
    pub max_outbound_bytes: usize,
    /// Bytes of presence (ephemeral) messages queued for one connection;
    /// the oldest are dropped past it (one message is always accepted).
    pub max_ephemeral_queue_bytes: usize,
    /// Bytes of presence messages queued for all connections together;
    /// past it new ones are dropped (presence data is lossy by contract).
    pub max_ephemeral_bytes: usize,
    /// Bytes waiting for the storage writer (appends, write-behind sync states).
    pub max_storage_queue_bytes: usize,
    /// Longest token lifetime accepted (expiry minus now, at connect).
    pub max_token_lifetime: Duration,
    /// Memory the loaded documents may take, estimated from their stored
    /// size (see `hub::MEMORY_PER_STORED_BYTE`). Past it the least recently
    /// used documents nobody is working on are dropped (and reloaded from
    /// storage when next needed), idle or not.
    pub max_resident_doc_bytes: usize,
    /// Bytes of whole offers (a month's stored chunks sent to a new install)
    /// one connection keeps in flight, plus the one that crosses the line.
    /// They hold no document, only frames; a deep window lets the device
    /// decode the next months while it writes the last ones.
    pub max_whole_offer_bytes_per_connection: usize,
    /// Bytes of whole offers in flight on all connections together: a crowd
    /// of new installs arriving at once waits for frames to drain instead of
    /// growing the relay (past it, each connection keeps one offer in flight).
    pub max_whole_offer_bytes: usize,
    /// Documents being loaded from storage at once; more wait their turn.
    /// A reconnect storm (a relay died and its devices arrive at another)
    /// then costs latency, not memory: each load holds the stored bytes and
    /// the document being built from them.
    pub max_concurrent_doc_loads: usize,
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
            send_timeout: Duration::from_secs(15),
            max_outbound_bytes_per_user: 24 * 1024 * 1024,
            max_outbound_bytes: 96 * 1024 * 1024,
            max_ephemeral_queue_bytes: 1024 * 1024,
            max_ephemeral_bytes: 32 * 1024 * 1024,
            max_storage_queue_bytes: 64 * 1024 * 1024,
            max_token_lifetime: Duration::from_secs(31 * 24 * 3600),
            max_resident_doc_bytes: 16 * 1024 * 1024,
            max_whole_offer_bytes_per_connection: 8 * 1024 * 1024,
            max_whole_offer_bytes: 64 * 1024 * 1024,
            max_concurrent_doc_loads: 8,
        }
    }
}

//! The relay: an axum server that syncs each user's Automerge documents
//! between their devices (automerge-repo protocol v1 over WebSocket),
//! stores them durably, and (later issues) serves the release registry.
//!
//! Map: [`server`] (routes, accept), [`auth`] (tokens at the upgrade),
//! [`session`] (sans-IO protocol state per connection), [`ws`] (the
//! connection task), [`hub`] (loaded documents, connected peers),
//! [`storage`] (durable documents behind a trait), [`limits`], [`metrics`],
//! [`allocator`] (glibc's allocator, tuned for bursts).

pub mod allocator;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod config;
pub mod conn;
pub mod data_dir;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod pg;
pub mod server;
pub mod session;
pub mod storage;
mod stored_chunk;
pub mod tls_listener;
pub mod ws;

pub use config::Config;
pub use error::RelayError;
pub use server::{RunningRelay, start};
pub mod openapi;
pub mod release;

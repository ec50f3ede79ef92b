//! Background sync with the relay: a sans-IO [`client::SyncClient`] and the
//! tokio WebSocket [`driver`] that feeds it.

pub mod client;
pub mod driver;
pub mod session;

//! The progress engine an app embeds.
//!
//! A user's study sessions and reviews live in Automerge documents (one per
//! month, see [`progress_doc`]) persisted in SQLite on the device; FSRS
//! memory states are derived from the merged reviews and materialized so
//! queries stay fast at any history size; a background task syncs with the
//! relay over WebSocket when a network exists. The app sees only the typed
//! API of [`Engine`]; no Automerge type leaks.

pub mod bootstrap;
mod change_events;
mod decode;
mod engine;
pub mod error;
pub mod ids;
mod memory;
pub mod model;
/// How progress is laid out in Automerge documents. Public for tools (the
/// bench builds histories with it, interop tests read it); apps use [`Engine`].
#[doc(hidden)]
pub mod progress_doc;
mod replica;
mod store;
mod sync;
mod views;

pub use engine::{Engine, EngineConfig};
pub use error::{EngineError, Result};
pub use model::*;
pub use sync::client::ProtocolError;
pub use sync::driver::{Credentials, RelayConfig, TokenProvider};
pub use sync::session::{SyncFailure, SyncSession};

//! The sync protocol shared by the engine, the relay and the simulator.
//!
//! This crate is pure: it encodes and decodes bytes, it never touches a socket,
//! a file or a clock (time is always an argument). Four concerns live here:
//!
//! * [`wire`] — automerge-repo's network protocol v1 messages, CBOR-encoded
//!   exactly as `@automerge/automerge-repo` writes them, so the JavaScript
//!   client and our Rust peers interoperate.
//! * [`doc_id`] — automerge-repo document ids (16 bytes, bs58check text).
//! * [`token`] — the signed device token a peer presents at the WebSocket
//!   upgrade, naming the user and the device.
//! * [`whole_doc`] — answering a peer that has none of a document with the
//!   bytes already stored (automerge's own message, no second `save`), and
//!   offering it whole to a peer that takes it.
//! * [`heads`] — document heads in the one byte form both sides store.
//! * [`automerge_sync`] — automerge's two sync calls, without work whose
//!   outcome is known (answering a level peer; walking the whole history
//!   for every received message).

pub mod automerge_sync;
pub mod compaction;
pub mod doc_id;
pub mod heads;
pub mod token;
pub mod whole_doc;
pub mod wire;

pub use doc_id::DocumentId;
pub use token::{DeviceClaims, TokenError, TokenIssuer, TokenVerifier};
pub use wire::{DecodeError, Message, PROTOCOL_VERSION, PeerMetadata};

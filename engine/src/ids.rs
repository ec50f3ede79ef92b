//! Where the engine's fresh ids come from: review and session ids, the
//! Automerge actor id of each open, and the data directory's storage id.
//!
//! Apps use [`RandomIds`] (OS randomness). The simulator gives each device a
//! seeded source, so the same seed replays the same run, id for id.

/// A source of 16-byte ids.
pub trait IdSource: Send {
    fn next_id(&mut self) -> [u8; 16];
}

/// Ids from the operating system's randomness.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_id(&mut self) -> [u8; 16] {
        *uuid::Uuid::new_v4().as_bytes()
    }
}

/// A UUID (version 4 bits set) from 16 id bytes, as the engine writes ids.
pub(crate) fn uuid_text(bytes: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Bugs the simulator can plant in an engine (feature `simulation`), to
/// show that its invariants catch each. The code paths they switch exist in
/// every build; only the setter is feature-gated, so an app cannot turn one on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// A write whose persist failed stays in the in-memory document (the bug
    /// fixed in issue #13): it would sync although the app was told it failed.
    KeepFailedWrite,
    /// The device ignores a new relay storage identity and keeps trusting
    /// sync states that describe a relay restored from an older backup.
    IgnoreRelayIdentity,
}

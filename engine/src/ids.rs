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

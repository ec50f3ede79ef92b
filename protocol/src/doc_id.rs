//! Document ids as automerge-repo writes them.
//!
//! automerge-repo identifies a document by 16 random bytes (a UUID) and
//! writes it as bs58check text (base58 with a 4-byte SHA-256d checksum), e.g.
//! in the URL `automerge:4NMNnkMhL8jXrdJ9jamS58PAVdXu`. The checksum means a
//! mistyped id is refused instead of silently naming another document.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// An automerge-repo document id: 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a document id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentIdError {
    #[error("document id is not valid bs58check text")]
    NotBs58Check,
    #[error("document id must be 16 bytes, got {0}")]
    WrongLength(usize),
}

impl DocumentId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A deterministic id: the first 16 bytes of SHA-256 over `parts`
    /// joined by a zero byte. Every device of a user derives the same id for
    /// the same (user, partition) without talking to anyone; the relay keeps
    /// each user's documents in their own namespace, so knowing another
    /// user's id gives no access to it.
    pub fn derive(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                hasher.update([0u8]);
            }
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // Mark it as a UUID v8 (custom) so tools that parse ids as UUIDs accept it.
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(bytes)
    }

    /// A fresh random id, from 16 bytes of caller-supplied randomness (this
    /// crate does not read the OS random source).
    pub fn from_random(mut bytes: [u8; 16]) -> Self {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(bytes)
    }

    /// The `automerge:` URL automerge-repo uses for this document.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        memo::with_text(self, |text| f.write_str(text))
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl FromStr for DocumentId {
    type Err = DocumentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("automerge:").unwrap_or(s);
        memo::parse(s, |s| {
            let bytes = bs58::decode(s).with_check(None).into_vec().map_err(|_| DocumentIdError::NotBs58Check)?;
            Self::try_from(bytes.as_slice())
        })
    }
}

/// The text of recently written and read ids, per thread.
///
/// A relay writes and reads the same few ids in every message of a
/// connection: 3.5 bs58check encodings and 2 decodings per synced edit
/// under the pair load (each a base-58 conversion and a double SHA-256),
/// 11 % of its instructions counted with callgrind (`instructions` section
/// of the sync bench). A small direct-mapped table per thread answers a
/// repeat from memory; a miss computes as before and replaces the slot.
/// Bounded: 64 entries of an id and its text (at most 28 bytes, inline),
/// each way, per thread: under 6 KiB, none of it on the heap. Only ids
/// that parsed are kept, so a bad text is refused every time.
mod memo {
    use super::{DocumentId, DocumentIdError};
    use std::cell::RefCell;

    const SLOTS: usize = 64;

    /// Longest bs58check text of 16 bytes (20 with the checksum: 160 bits
    /// at 5.86 bits a character).
    const TEXT_MAX: usize = 28;

    /// An id's text, kept inline: the tables hold no heap memory, so they
    /// pin no allocator pages once a burst of work is over.
    #[derive(Clone, Copy)]
    struct Text {
        len: u8,
        bytes: [u8; TEXT_MAX],
    }

    impl Text {
        fn of(id: &DocumentId) -> Option<Text> {
            let mut bytes = [0u8; TEXT_MAX];
            let len = bs58::encode(&id.0).with_check().onto(&mut bytes[..]).ok()?;
            Some(Text { len: len as u8, bytes })
        }

        fn from_str(text: &str) -> Option<Text> {
            let mut bytes = [0u8; TEXT_MAX];
            bytes.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
            Some(Text { len: text.len() as u8, bytes })
        }

        fn as_str(&self) -> &str {
            std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
        }
    }

    type Slots<K, V> = RefCell<[Option<(K, V)>; SLOTS]>;

    thread_local! {
        static TEXT: Slots<DocumentId, Text> = const { RefCell::new([None; SLOTS]) };
        static PARSED: Slots<Text, DocumentId> = const { RefCell::new([None; SLOTS]) };
    }

    fn encode(id: &DocumentId) -> String {
        bs58::encode(&id.0).with_check().into_string()
    }

    /// Calls `f` with the bs58check text of `id`.
    pub(super) fn with_text<R>(id: &DocumentId, f: impl FnOnce(&str) -> R) -> R {
        // Ids are random or SHA-256 output: any byte spreads them evenly.
        let slot = id.0[0] as usize % SLOTS;
        let cached = TEXT.with(|t| {
            let mut slots = t.try_borrow_mut().ok()?;
            match slots[slot] {
                Some((cached, text)) if cached == *id => Some(text),
                _ => {
                    let text = Text::of(id)?;
                    slots[slot] = Some((*id, text));
                    Some(text)
                }
            }
        });
        match cached {
            Some(text) => f(text.as_str()),
            None => f(&encode(id)),
        }
    }

    /// The id `text` names: from memory if parsed on this thread lately,
    /// else by `parse`, remembered if it succeeds.
    pub(super) fn parse(
        text: &str,
        parse: impl FnOnce(&str) -> Result<DocumentId, DocumentIdError>,
    ) -> Result<DocumentId, DocumentIdError> {
        // Longer than any id's text: parsed (and refused) every time.
        let Some(key) = Text::from_str(text) else { return parse(text) };
        // FNV-1a: the first characters of base-58 text are not spread evenly.
        let hash = text.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        let slot = hash as usize % SLOTS;
        let hit = PARSED.with(|p| match p.try_borrow().ok()?[slot] {
            Some((cached, id)) if cached.as_str() == text => Some(id),
            _ => None,
        });
        if let Some(id) = hit {
            return Ok(id);
        }
        let id = parse(text)?;
        PARSED.with(|p| {
            if let Ok(mut slots) = p.try_borrow_mut() {
                slots[slot] = Some((key, id));
            }
        });
        Ok(id)
    }
}

impl TryFrom<&[u8]> for DocumentId {
    type Error = DocumentIdError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let array: [u8; 16] = bytes.try_into().map_err(|_| DocumentIdError::WrongLength(bytes.len()))?;
        Ok(Self(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_checksum_catches_typos() {
        let id = DocumentId::derive(&["user-1", "reviews", "2026-11"]);
        let text = id.to_string();
        assert_eq!(text.parse::<DocumentId>(), Ok(id));
        assert_eq!(id.url().parse::<DocumentId>(), Ok(id));
        // Change one character: the checksum must refuse it.
        let mut chars: Vec<char> = text.chars().collect();
        chars[3] = if chars[3] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert!(typo.parse::<DocumentId>().is_err());
    }

    #[test]
    fn derive_is_stable_and_separates_parts() {
        assert_eq!(DocumentId::derive(&["a", "b"]), DocumentId::derive(&["a", "b"]));
        assert_ne!(DocumentId::derive(&["a", "b"]), DocumentId::derive(&["ab"]));
        assert_ne!(DocumentId::derive(&["u1", "x"]), DocumentId::derive(&["u2", "x"]));
    }

    #[test]
    fn remembered_texts_are_the_ids_own_and_a_bad_text_is_refused_every_time() {
        // More ids than the memory has slots, each written and read twice
        // (the second time from memory when its slot was not taken since).
        let ids: Vec<DocumentId> = (0..200).map(|i| DocumentId::derive(&[&i.to_string()])).collect();
        for _ in 0..2 {
            for id in &ids {
                let text = id.to_string();
                assert_eq!(text, bs58::encode(id.as_bytes()).with_check().into_string());
                assert_eq!(text.parse::<DocumentId>(), Ok(*id));
            }
        }
        let mut typo = ids[0].to_string();
        typo.replace_range(0..1, if typo.starts_with('a') { "b" } else { "a" });
        for _ in 0..2 {
            assert_eq!(typo.parse::<DocumentId>(), Err(DocumentIdError::NotBs58Check));
        }
    }

    #[test]
    fn wrong_length_is_refused() {
        let text = bs58::encode(&[1u8; 15]).with_check().into_string();
        assert_eq!(text.parse::<DocumentId>(), Err(DocumentIdError::WrongLength(15)));
    }
}

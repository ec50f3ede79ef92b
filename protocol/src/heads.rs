//! Document heads as both sides store them: the sorted 32-byte hashes,
//! concatenated. One form, so the engine's and the relay's records (and a
//! saved document's header, see [`crate::whole_doc::saved_heads`]) compare
//! byte for byte.

use automerge::ChangeHash;

/// `heads`, sorted, as one byte string.
pub fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    sorted.iter().flat_map(|h| h.0).collect()
}

/// The hashes of [`encode_heads`]' form; `None` if `encoded` is not whole
/// hashes (a damaged record).
pub fn decode_heads(encoded: &[u8]) -> Option<Vec<ChangeHash>> {
    if !encoded.len().is_multiple_of(32) {
        return None;
    }
    encoded.chunks_exact(32).map(|h| Some(ChangeHash(h.try_into().ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_sorted_and_a_damaged_record_does_not_read() {
        let (a, b) = (ChangeHash([2; 32]), ChangeHash([1; 32]));
        let encoded = encode_heads(&[a, b]);
        assert_eq!(encoded.len(), 64);
        assert_eq!(decode_heads(&encoded), Some(vec![b, a]));
        assert_eq!(decode_heads(&[]), Some(vec![]));
        assert_eq!(decode_heads(&encoded[..40]), None);
    }
}

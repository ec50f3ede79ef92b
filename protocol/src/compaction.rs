//! When a stored document's appended chunks are folded into a new snapshot.
//!
//! Compaction `save`s the whole document, at a cost in proportion to its
//! size (a month of 6,500 reviews: ~13 ms, most of it deflate). After a
//! fixed number of chunks, a heavy month paid that every 64 reviews: a
//! fifth of the relay's CPU per warm review (`perf`, the sync bench's
//! `SYNC_BENCH_PERF_WARM`). Scaled with the document, the saving costs
//! each chunk about the same whatever the month's size, and the chunks
//! kept stay a bounded share of the stored bytes (a review's chunk is a few
//! hundred bytes: at one chunk per KiB of document they stay under about
//! half of it), so loading the document stays close to loading its
//! snapshot. The relay and the engine share the rule.

/// The fewest chunks that make a compaction due, for small documents.
pub const MIN_CHUNKS: u64 = 64;

/// One more chunk allowed per this many bytes of the stored document.
pub const BYTES_PER_CHUNK: u64 = 1024;

/// How many chunks appended since the last snapshot make a compaction due,
/// for a document of `stored_bytes` (its snapshot, or snapshot and chunks).
pub fn chunks_before_compaction(stored_bytes: u64) -> u64 {
    MIN_CHUNKS.max(stored_bytes / BYTES_PER_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_documents_compact_after_the_minimum_and_large_ones_in_proportion() {
        assert_eq!(chunks_before_compaction(0), MIN_CHUNKS);
        assert_eq!(chunks_before_compaction(64 * 1024), MIN_CHUNKS);
        // A month of 6,500 reviews (~250 KB stored): four times fewer saves.
        assert_eq!(chunks_before_compaction(250_000), 244);
        assert_eq!(chunks_before_compaction(u64::MAX), u64::MAX / BYTES_PER_CHUNK);
    }
}

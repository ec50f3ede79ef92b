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

/// A UUID (version 4 bits set) from 16 id bytes, as the engine writes
/// session ids.
pub(crate) fn uuid_text(bytes: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// 2020-01-01T00:00:00Z in seconds: where a review id's clock starts.
const REVIEW_ID_EPOCH_S: i64 = 1_577_836_800;
/// The largest value of a review id's 40-bit clock field.
const REVIEW_ID_CLOCK_MAX: i64 = (1 << 40) - 1;

/// A review's id: a UUID (version 8) whose text sorts before every earlier
/// review's, so that the newest review is the first key of its month.
///
/// Why: automerge applies a change to a map by walking the map's keys in
/// order from the first up to where the change lands (`BatchApply` →
/// `walk_map` in automerge 0.12). With random ids a review lands on average
/// halfway through its month, and every device and the relay walk half of
/// up to 6,500 reviews for each one they receive: that walk was 42 % of
/// the relay's CPU for a review into a heavy month. Keyed newest first, the
/// walk stops at once.
///
/// Layout: one zero byte (so these ids also sort before nearly every
/// random version-4 id a month already holds: only those starting with
/// `00` come first), 40 bits of descending seconds since 2020 (clamped: a
/// review before 2020 or after the year 36,000 still gets an id, only its
/// place is approximate), then the source's bytes for uniqueness (74
/// random bits once the version and variant are set). Reviews in the same
/// second order by those bytes. Readers accept any id; older reviews keep
/// their version-4 ids.
pub fn review_id(reviewed_at: crate::TimestampMs, bytes: [u8; 16]) -> String {
    let seconds = reviewed_at.div_euclid(1000) - REVIEW_ID_EPOCH_S;
    let clock = (REVIEW_ID_CLOCK_MAX - seconds.clamp(0, REVIEW_ID_CLOCK_MAX)) as u64;
    let mut b = bytes;
    b[0] = 0;
    b[1..6].copy_from_slice(&clock.to_be_bytes()[3..8]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    /// Later reviews sort first, across the clock's whole range and at its
    /// clamped ends, whatever the random bytes; each id is a version-8 UUID.
    #[test]
    fn a_later_review_id_sorts_before_an_earlier_one() {
        let times = [
            i64::MIN,
            -DAY_MS,
            0,
            REVIEW_ID_EPOCH_S * 1000,
            REVIEW_ID_EPOCH_S * 1000 + 999,
            REVIEW_ID_EPOCH_S * 1000 + 1000,
            1_764_288_000_000,
            1_764_288_000_000 + DAY_MS,
            (REVIEW_ID_EPOCH_S + REVIEW_ID_CLOCK_MAX) * 1000,
            i64::MAX,
        ];
        let ids: Vec<String> = times.iter().map(|t| review_id(*t, [0xff; 16])).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 8, "{id}");
            assert!(id.starts_with("00"), "{id}");
        }
        for (pair, t) in ids.windows(2).zip(times.windows(2)) {
            let (earlier_s, later_s) = (t[0].div_euclid(1000), t[1].div_euclid(1000));
            let clamped = |s: i64| (s - REVIEW_ID_EPOCH_S).clamp(0, REVIEW_ID_CLOCK_MAX);
            if clamped(earlier_s) == clamped(later_s) {
                continue; // the same second of the clock: the random bytes decide
            }
            // The later review's id, even with the largest bytes, sorts
            // before the earlier one's with the smallest.
            assert!(review_id(t[1], [0xff; 16]) < review_id(t[0], [0; 16]), "{} then {}", pair[0], pair[1]);
        }
    }

    /// A month already holding random (version-4) ids: a new review's id
    /// sorts before every one of them that does not itself start with `00`.
    #[test]
    fn a_new_review_id_sorts_before_random_ids() {
        let new = review_id(1_764_288_000_000, [0xab; 16]);
        for first in 0x01..=0xffu8 {
            let mut bytes = [0u8; 16];
            bytes[0] = first;
            assert!(new < uuid_text(bytes), "{new} against {}", uuid_text(bytes));
        }
    }
}

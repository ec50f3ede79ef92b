//! A heavy user's five years: ~400,000 reviews in monthly documents, one
//! Automerge change per review, built directly (an app would take five years).

use automerge::{ActorId, Automerge};
use engine::progress_doc;
use engine::{Rating, Review, Session, SessionCounts};
use std::collections::BTreeMap;

pub const DAY: i64 = 86_400_000;
/// 2021-11-25: five years before the bench's "now".
pub const START: i64 = 1_637_798_400_000;

pub struct History {
    pub docs: Vec<(String, Vec<u8>)>,
    pub reviews: usize,
    pub end: i64,
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn random_bytes(rng: &mut Rng) -> [u8; 16] {
    let hi = rng.next();
    let lo = rng.next();
    ((hi as u128) << 64 | lo as u128).to_be_bytes()
}

pub fn uuid_from(rng: &mut Rng) -> String {
    let mut bytes = random_bytes(rng);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The history, read from a cache file under `target/` when an earlier run
/// built the same one (building takes most of a minute; it is deterministic,
/// so the cached bytes are exactly what `build` would return). Returns
/// whether it came from the cache.
pub fn cached(user: &str, device: &str, reviews: usize, items: usize, days: i64) -> (History, bool) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    // v2: reviews as one JSON string each (the document format changed).
    // v3: review ids as the engine makes them, newest first in a month.
    let path = dir.join(format!("sync-bench-history-v3-{user}-{device}-{reviews}-{items}-{days}.bin"));
    if let Some(h) = std::fs::read(&path).ok().and_then(|b| decode(&b)) {
        return (h, true);
    }
    let h = build(user, device, reviews, items, days);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, encode(&h)).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    (h, false)
}

fn encode(h: &History) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((h.reviews as u64).to_le_bytes());
    out.extend(h.end.to_le_bytes());
    out.extend((h.docs.len() as u64).to_le_bytes());
    for (id, bytes) in &h.docs {
        out.extend((id.len() as u64).to_le_bytes());
        out.extend(id.as_bytes());
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend(bytes);
    }
    out
}

fn decode(mut b: &[u8]) -> Option<History> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    fn u64_of(b: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
    }
    let reviews = u64_of(&mut b)? as usize;
    let end = u64_of(&mut b)? as i64;
    let n = u64_of(&mut b)?;
    let mut docs = Vec::new();
    for _ in 0..n {
        let len = u64_of(&mut b)? as usize;
        let id = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
        let len = u64_of(&mut b)? as usize;
        docs.push((id, take(&mut b, len)?.to_vec()));
    }
    b.is_empty().then_some(History { docs, reviews, end })
}

pub fn build(user: &str, device: &str, reviews: usize, items: usize, days: i64) -> History {
    let mut rng = Rng(42);
    let per_day = (reviews as i64 / days).max(1);
    let mut docs: BTreeMap<String, Automerge> = BTreeMap::new();
    let actor = ActorId::from(device.as_bytes());
    let mut written = 0usize;
    let mut day = 0i64;
    while written < reviews {
        let day_start = START + day * DAY + 8 * 3_600_000;
        let partition = progress_doc::partition_of(day_start);
        let doc = docs.entry(partition).or_insert_with(|| Automerge::new().with_actor(actor.clone()));
        let session = Session {
            id: uuid_from(&mut rng),
            started_at: day_start,
            ended_at: Some(day_start + per_day * 8_000),
            device_id: device.into(),
            mode: "review".into(),
            counts: SessionCounts { reviewed: per_day as u32, correct: per_day as u32 * 9 / 10, new_items: 5 },
            notes: String::new(),
        };
        let _ = doc.transact(|tx| progress_doc::put_session(tx, &session));
        for i in 0..per_day {
            if written >= reviews {
                break;
            }
            let reviewed_at = day_start + i * 8_000;
            let r = Review {
                // As the engine makes them (`Engine::record_review`).
                id: engine::ids::review_id(reviewed_at, random_bytes(&mut rng)),
                item_id: format!("item-{}", rng.next() % items as u64),
                rating: Rating::from_u8((rng.next() % 10).saturating_sub(5).clamp(1, 4) as u8).unwrap_or(Rating::Good),
                reviewed_at,
                duration_ms: 2000 + (rng.next() % 6000) as u32,
                device_id: device.into(),
                session_id: Some(session.id.clone()),
            };
            let _ = doc.transact(|tx| progress_doc::put_review(tx, &r));
            written += 1;
        }
        day += 1;
    }
    let end = START + day * DAY;
    let docs = docs
        .into_iter()
        .map(|(partition, doc)| (progress_doc::doc_id(user, &partition).to_string(), doc.save()))
        .collect();
    History { docs, reviews: written, end }
}

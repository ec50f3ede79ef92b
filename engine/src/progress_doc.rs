//! How sessions and reviews are laid out in Automerge documents.
//!
//! A user's progress is split into one document per calendar month (UTC) of
//! the event's time: a heavy user's five years is 60 documents of a few
//! thousand reviews each, so no single document grows without bound, and a
//! device only loads the month it writes to or syncs.
//!
//! Each document's root is a flat map: `r/<review id>` → the review as one
//! JSON string, `s/<session id>` → session map. A review is never edited,
//! so it is one immutable value: one operation where a map of fields was
//! seven, which made loading a month 2.4x and reading it 9x cheaper
//! (`tests/benches/sync/review_format.rs`; reviews written as maps before
//! are still read). Keys are unique ids, so two devices that
//! create entries concurrently never create the same key, and Automerge's
//! per-key last-writer-wins never hides one device's entry behind another's.
//! (Nested containers created concurrently under one key would conflict;
//! that is why there is no `reviews` sub-map.)
//!
//! Document ids are derived from (user, month), so every device of a user
//! names the month's document the same way without coordination.

use crate::model::{Rating, Review, Session, SessionCounts, TimestampMs};
use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use protocol::DocumentId;
use std::collections::BTreeSet;

const REVIEW_PREFIX: &str = "r/";
const SESSION_PREFIX: &str = "s/";

/// The document id of `user_id`'s progress for `partition` ("YYYY-MM").
pub fn doc_id(user_id: &str, partition: &str) -> DocumentId {
    DocumentId::derive(&["progress/v1", user_id, partition])
}

/// The partition ("YYYY-MM", UTC) an event at `ts` belongs to.
pub fn partition_of(ts: TimestampMs) -> String {
    let days = ts.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(days);
    format!("{y:04}-{m:02}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn review_key(id: &str) -> String {
    format!("{REVIEW_PREFIX}{id}")
}

pub fn session_key(id: &str) -> String {
    format!("{SESSION_PREFIX}{id}")
}

/// A review as stored in a document: one JSON string (`r/<id>` →
/// `{"item":…,"rating":1..4,"at":ms,"duration_ms":…,"device":…,"session":…}`).
/// JSON so that any automerge peer (JavaScript included) reads it with what
/// it has; unknown fields are ignored, so fields can be added.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReviewEntry<'a> {
    #[serde(borrow)]
    item: std::borrow::Cow<'a, str>,
    rating: i64,
    at: i64,
    #[serde(default)]
    duration_ms: i64,
    #[serde(default, borrow)]
    device: std::borrow::Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    session: Option<std::borrow::Cow<'a, str>>,
}

/// The JSON text a review is stored as.
fn review_json(r: &Review) -> String {
    let entry = ReviewEntry {
        item: r.item_id.as_str().into(),
        rating: r.rating as i64,
        at: r.reviewed_at,
        duration_ms: i64::from(r.duration_ms),
        device: r.device_id.as_str().into(),
        session: r.session_id.as_deref().map(Into::into),
    };
    // Serializing strings and integers cannot fail.
    serde_json::to_string(&entry).unwrap_or_default()
}

/// The review stored as `json`; `None` if it does not parse (a peer can
/// write anything, so nothing here may panic).
fn review_from_json(id: &str, json: &str) -> Option<Review> {
    let e: ReviewEntry<'_> = serde_json::from_str(json).ok()?;
    Some(Review {
        id: id.to_string(),
        item_id: e.item.into_owned(),
        rating: Rating::from_u8(u8::try_from(e.rating).ok()?)?,
        reviewed_at: e.at,
        duration_ms: u32::try_from(e.duration_ms).unwrap_or(0),
        device_id: e.device.into_owned(),
        session_id: e.session.map(std::borrow::Cow::into_owned),
    })
}

/// Writes a new review. Reviews are immutable once written.
pub fn put_review<T: Transactable>(tx: &mut T, r: &Review) -> Result<(), automerge::AutomergeError> {
    tx.put(ROOT, review_key(&r.id), review_json(r))?;
    Ok(())
}

/// Writes a whole session object (on start) or its changed fields (on end).
pub fn put_session<T: Transactable>(tx: &mut T, s: &Session) -> Result<(), automerge::AutomergeError> {
    let key = session_key(&s.id);
    let obj = match tx.get(ROOT, key.as_str())? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => tx.put_object(ROOT, key.as_str(), ObjType::Map)?,
    };
    tx.put(&obj, "started_at", ScalarValue::Timestamp(s.started_at))?;
    match s.ended_at {
        Some(t) => tx.put(&obj, "ended_at", ScalarValue::Timestamp(t))?,
        None => tx.put(&obj, "ended_at", ScalarValue::Null)?,
    }
    tx.put(&obj, "device", s.device_id.as_str())?;
    tx.put(&obj, "mode", s.mode.as_str())?;
    tx.put(&obj, "reviewed", i64::from(s.counts.reviewed))?;
    tx.put(&obj, "correct", i64::from(s.counts.correct))?;
    tx.put(&obj, "new_items", i64::from(s.counts.new_items))?;
    tx.put(&obj, "notes", s.notes.as_str())?;
    Ok(())
}

/// One field of an entry, as read in a single pass over the entry's map.
/// Strings borrow from the document: only the ones a caller keeps are copied
/// (a bootstrap reads 400,000 reviews of seven fields each).
enum Field<'a> {
    Str(std::borrow::Cow<'a, str>),
    Int(i64),
    /// A text object (what JavaScript automerge 3 writes for plain strings).
    Text(ObjId),
    Other,
}

/// All fields of one entry object, read with one `map_range` pass (much
/// cheaper on a large document than one `get` per field).
struct Fields<'a>(Vec<(std::borrow::Cow<'a, str>, Field<'a>)>);

impl<'a> Fields<'a> {
    fn read(doc: &'a Automerge, obj: &ObjId) -> Fields<'a> {
        let mut out = Vec::with_capacity(8);
        for item in doc.map_range(obj, ..) {
            let field = match item.value {
                automerge::ValueRef::Scalar(s) => match s {
                    automerge::ScalarValueRef::Str(t) => Field::Str(t),
                    automerge::ScalarValueRef::Int(i) | automerge::ScalarValueRef::Timestamp(i) => Field::Int(i),
                    automerge::ScalarValueRef::Uint(u) => i64::try_from(u).map_or(Field::Other, Field::Int),
                    automerge::ScalarValueRef::F64(f) if f.is_finite() => Field::Int(f as i64),
                    _ => Field::Other,
                },
                automerge::ValueRef::Object(ObjType::Text) => Field::Text(item.id()),
                automerge::ValueRef::Object(_) => Field::Other,
            };
            out.push((item.key, field));
        }
        Fields(out)
    }

    fn get(&self, key: &str) -> Option<&Field<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn str(&self, doc: &Automerge, key: &str) -> Option<String> {
        match self.get(key)? {
            Field::Str(s) => Some(s.to_string()),
            Field::Text(id) => doc.text(id).ok(),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Field::Int(i) => Some(*i),
            _ => None,
        }
    }
}

fn object_at(doc: &Automerge, key: &str) -> Option<ObjId> {
    match doc.get(ROOT, key).ok()?? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

/// A review written as a map of fields (how reviews were written before they
/// became one JSON string).
fn review_from_map(doc: &Automerge, id: &str, obj: &ObjId) -> Option<Review> {
    let f = Fields::read(doc, obj);
    let rating = Rating::from_u8(u8::try_from(f.int("rating")?).ok()?)?;
    Some(Review {
        id: id.to_string(),
        item_id: f.str(doc, "item")?,
        rating,
        reviewed_at: f.int("at")?,
        duration_ms: u32::try_from(f.int("duration_ms").unwrap_or(0)).unwrap_or(0),
        device_id: f.str(doc, "device").unwrap_or_default(),
        session_id: f.str(doc, "session"),
    })
}

fn session_from(doc: &Automerge, id: &str, obj: &ObjId) -> Option<Session> {
    let f = Fields::read(doc, obj);
    let count = |k: &str| u32::try_from(f.int(k).unwrap_or(0)).unwrap_or(0);
    Some(Session {
        id: id.to_string(),
        started_at: f.int("started_at")?,
        ended_at: f.int("ended_at"),
        device_id: f.str(doc, "device").unwrap_or_default(),
        mode: f.str(doc, "mode").unwrap_or_default(),
        counts: SessionCounts { reviewed: count("reviewed"), correct: count("correct"), new_items: count("new_items") },
        notes: f.str(doc, "notes").unwrap_or_default(),
    })
}

/// Reads the review stored under `key`; `None` if absent or malformed (a
/// peer can write anything into a document, so nothing here may panic).
pub fn read_review(doc: &Automerge, key: &str) -> Option<Review> {
    let id = key.strip_prefix(REVIEW_PREFIX)?;
    match doc.get(ROOT, key).ok()?? {
        (Value::Scalar(s), _) => review_from_json(id, s.as_str()?),
        (Value::Object(ObjType::Text), obj) => review_from_json(id, &doc.text(&obj).ok()?),
        (Value::Object(ObjType::Map), obj) => review_from_map(doc, id, &obj),
        (Value::Object(_), _) => None,
    }
}

pub fn read_session(doc: &Automerge, key: &str) -> Option<Session> {
    let id = key.strip_prefix(SESSION_PREFIX)?;
    session_from(doc, id, &object_at(doc, key)?)
}

/// Every well-formed review and session of a document, in one pass over
/// its root (used when a document arrives whole).
pub fn read_all(doc: &Automerge) -> (Vec<Review>, Vec<Session>) {
    let (mut reviews, mut sessions) = (Vec::new(), Vec::new());
    for item in doc.map_range(ROOT, ..) {
        if let Some(id) = item.key.strip_prefix(REVIEW_PREFIX) {
            let review = match &item.value {
                automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(json)) => review_from_json(id, json),
                automerge::ValueRef::Object(ObjType::Text) => {
                    doc.text(item.id()).ok().and_then(|json| review_from_json(id, &json))
                }
                automerge::ValueRef::Object(ObjType::Map) => review_from_map(doc, id, &item.id()),
                _ => None,
            };
            reviews.extend(review);
        } else if let Some(id) = item.key.strip_prefix(SESSION_PREFIX)
            && matches!(item.value, automerge::ValueRef::Object(ObjType::Map))
        {
            sessions.extend(session_from(doc, id, &item.id()));
        }
    }
    (reviews, sessions)
}

/// What changed between two versions of a document, by root key.
#[derive(Debug, Default)]
pub struct Touched {
    pub reviews: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
}

impl Touched {
    pub fn review(id: &str) -> Touched {
        Touched { reviews: BTreeSet::from([review_key(id)]), sessions: BTreeSet::new() }
    }

    pub fn session(id: &str) -> Touched {
        Touched { reviews: BTreeSet::new(), sessions: BTreeSet::from([session_key(id)]) }
    }
}

/// The changes in `bytes` (what a sync message carries: change chunks one
/// after another), if it is only change chunks and each parses; `None` for
/// a whole document or anything else (the caller then diffs instead).
pub fn parse_changes(bytes: &[u8]) -> Option<Vec<automerge::Change>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    const CHANGE: u8 = 1;
    const COMPRESSED_CHANGE: u8 = 2;
    let mut changes = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (magic, after) = rest.split_at_checked(4)?;
        if magic != MAGIC {
            return None;
        }
        let (&chunk_type, mut after) = after.get(4..)?.split_first()?;
        if chunk_type != CHANGE && chunk_type != COMPRESSED_CHANGE {
            return None;
        }
        // The data length, unsigned LEB128.
        let (mut len, mut shift) = (0u64, 0u32);
        loop {
            let (&byte, tail) = after.split_first()?;
            after = tail;
            len |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        let header = rest.len() - after.len();
        let end = header.checked_add(usize::try_from(len).ok()?)?;
        let chunk = rest.get(..end)?;
        changes.push(automerge::Change::try_from(chunk).ok()?);
        rest = &rest[end..];
    }
    Some(changes)
}

/// Whether applying `changes` to `doc` applies exactly them: every
/// dependency is in `doc` or among them, and `doc` holds no queued change
/// waiting for a dependency (which they could release, unseen by
/// [`touched_by`]).
pub fn applies_exactly(doc: &Automerge, changes: &[automerge::Change]) -> bool {
    let hashes: std::collections::HashSet<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
    let external: Vec<ChangeHash> =
        changes.iter().flat_map(|c| c.deps().iter().copied()).filter(|d| !hashes.contains(d)).collect();
    doc.get_missing_deps(&external).is_empty()
}

/// Root keys whose entries `changes` (now applied to `doc`) wrote. Costs
/// what the changes hold, where [`touched_since`] costs the whole document
/// (tens of milliseconds for a heavy month: the bulk of a review's delivery).
pub fn touched_by(doc: &Automerge, changes: &[automerge::Change]) -> Touched {
    use automerge::legacy::{Key, ObjectId};
    let mut touched = Touched::default();
    // Objects by id with the root key they sit under: those made by these
    // changes, and those already looked up (a session's end writes eight
    // fields of one object: one lookup).
    let mut root_keys: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for change in changes {
        let expanded = change.decode();
        for (i, op) in expanded.operations.iter().enumerate() {
            let root_key = match (&op.obj, &op.key) {
                (ObjectId::Root, Key::Map(k)) => Some(k.to_string()),
                (ObjectId::Root, _) => None,
                (ObjectId::Id(id), _) => {
                    let id = id.to_string();
                    root_keys.entry(id).or_insert_with_key(|id| root_key_of(doc, id)).clone()
                }
            };
            let Some(key) = root_key else { continue };
            if matches!(op.action, automerge::legacy::OpType::Make(_)) {
                let counter = expanded.start_op.get() + i as u64;
                root_keys.insert(format!("{counter}@{}", expanded.actor_id), Some(key.clone()));
            }
            if key.starts_with(REVIEW_PREFIX) {
                touched.reviews.insert(key);
            } else if key.starts_with(SESSION_PREFIX) {
                touched.sessions.insert(key);
            }
        }
    }
    touched
}

/// The root key an object (by its id text) sits under, if it still does.
fn root_key_of(doc: &Automerge, obj: &str) -> Option<String> {
    let (id, _) = doc.import(obj).ok()?;
    match doc.parents(&id).ok()?.last()?.prop {
        automerge::Prop::Map(k) => Some(k),
        automerge::Prop::Seq(_) => None,
    }
}

/// Root keys whose entries changed from `before` to the current heads.
pub fn touched_since(doc: &Automerge, before: &[ChangeHash]) -> Touched {
    let after = doc.get_heads();
    let mut touched = Touched::default();
    for patch in doc.diff(before, &after) {
        let key = match (patch.path.first(), &patch.action) {
            (Some((_, automerge::Prop::Map(k))), _) => k.clone(),
            (None, automerge::PatchAction::PutMap { key, .. }) => key.clone(),
            _ => continue,
        };
        if key.starts_with(REVIEW_PREFIX) {
            touched.reviews.insert(key);
        } else if key.starts_with(SESSION_PREFIX) {
            touched.sessions.insert(key);
        }
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::CommitOptions;

    /// A review is written as one JSON string (one operation), and reviews
    /// written as maps of fields are still read, alone and in a whole pass.
    #[test]
    fn reviews_are_one_json_value_and_the_map_form_still_reads() {
        let review = Review {
            id: "r1".into(),
            item_id: "item \"quoted\" é".into(),
            rating: Rating::Hard,
            reviewed_at: 1_790_000_000_000,
            duration_ms: 1234,
            device_id: "phone".into(),
            session_id: Some("s1".into()),
        };
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        put_review(&mut tx, &review).unwrap();
        let old = tx.put_object(ROOT, "r/r0", ObjType::Map).unwrap();
        tx.put(&old, "item", "old").unwrap();
        tx.put(&old, "rating", 4i64).unwrap();
        tx.put(&old, "at", ScalarValue::Timestamp(5)).unwrap();
        tx.put(&old, "device", "tablet").unwrap();
        tx.commit();
        let change = doc.get_last_local_change().unwrap();
        assert_eq!(change.len(), 1 + 5, "the new review is one operation; the old form was one per field and one");

        assert_eq!(read_review(&doc, "r/r1"), Some(review.clone()));
        let old = read_review(&doc, "r/r0").unwrap();
        assert_eq!((old.item_id.as_str(), old.rating, old.reviewed_at), ("old", Rating::Easy, 5));
        let (mut all, _) = read_all(&doc);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all, vec![old, review]);
        // JavaScript reads it with JSON.parse.
        let Some((Value::Scalar(s), _)) = doc.get(ROOT, "r/r1").unwrap() else { panic!("a scalar") };
        let json: serde_json::Value = serde_json::from_str(s.as_str().unwrap()).unwrap();
        assert_eq!(json["rating"], 2);
        assert_eq!(json["session"], "s1");
    }

    #[test]
    fn partitions_are_utc_months() {
        assert_eq!(partition_of(0), "1970-01");
        // 2026-11-30T23:59:59.999Z and one millisecond later.
        assert_eq!(partition_of(1_796_083_199_999), "2026-11");
        assert_eq!(partition_of(1_796_083_200_000), "2026-12");
        assert_eq!(partition_of(951_782_400_000), "2000-02"); // 2000-02-29 (leap day)
        assert_eq!(partition_of(-1), "1969-12");
    }

    #[test]
    fn what_changes_touch_is_read_from_them_as_a_diff_would_find_it() {
        let session = |id: &str, ended: Option<i64>| Session {
            id: id.into(),
            started_at: 1000,
            ended_at: ended,
            device_id: "a".into(),
            mode: "learn".into(),
            counts: SessionCounts::default(),
            notes: String::new(),
        };
        let review = |id: &str| Review {
            id: id.into(),
            item_id: "item".into(),
            rating: Rating::Good,
            reviewed_at: 1000,
            duration_ms: 5,
            device_id: "b".into(),
            session_id: Some("s1".into()),
        };
        let mut a = Automerge::new();
        a.transact::<_, _, automerge::AutomergeError>(|tx| put_session(tx, &session("s1", None))).unwrap();
        a.transact::<_, _, automerge::AutomergeError>(|tx| put_review(tx, &review("r0"))).unwrap();
        let mut b = a.fork();
        // Another device: two reviews, one session ended (fields of an
        // object made earlier), one new session.
        b.transact::<_, _, automerge::AutomergeError>(|tx| put_review(tx, &review("r1"))).unwrap();
        b.transact::<_, _, automerge::AutomergeError>(|tx| put_session(tx, &session("s1", Some(2000)))).unwrap();
        b.transact::<_, _, automerge::AutomergeError>(|tx| {
            put_review(tx, &review("r2"))?;
            put_session(tx, &session("s2", None))
        })
        .unwrap();
        let before = a.get_heads();
        // What a sync message carries: the change chunks, one after another.
        let bytes: Vec<u8> = b.get_changes(&before).iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        let changes = parse_changes(&bytes).expect("change chunks parse");
        assert_eq!(changes.len(), 3);
        assert!(applies_exactly(&a, &changes));
        a.load_incremental(&bytes).unwrap();
        let by_changes = touched_by(&a, &changes);
        let by_diff = touched_since(&a, &before);
        assert_eq!(by_changes.reviews, by_diff.reviews);
        assert_eq!(by_changes.sessions, by_diff.sessions);
        assert_eq!(by_changes.reviews.len(), 2);
        assert_eq!(by_changes.sessions.len(), 2);

        // A whole document is not change chunks; a change whose dependency
        // is missing does not apply exactly.
        assert!(parse_changes(&b.save()).is_none());
        assert!(parse_changes(&bytes[..bytes.len() - 1]).is_none());
        let fresh = Automerge::new();
        assert!(!applies_exactly(&fresh, &changes));
    }

    #[test]
    fn review_round_trips_and_concurrent_entries_both_survive() {
        let r = |id: &str, device: &str| Review {
            id: id.into(),
            item_id: "item".into(),
            rating: Rating::Good,
            reviewed_at: 1000,
            duration_ms: 5,
            device_id: device.into(),
            session_id: None,
        };
        let mut a = Automerge::new();
        let mut b = Automerge::new();
        a.transact_with::<_, _, automerge::AutomergeError, _>(
            |_| CommitOptions::default(),
            |tx| put_review(tx, &r("1", "a")),
        )
        .unwrap();
        b.transact_with::<_, _, automerge::AutomergeError, _>(
            |_| CommitOptions::default(),
            |tx| put_review(tx, &r("2", "b")),
        )
        .unwrap();
        let before = a.get_heads();
        a.merge(&mut b).unwrap();
        assert_eq!(read_review(&a, &review_key("1")), Some(r("1", "a")));
        assert_eq!(read_review(&a, &review_key("2")), Some(r("2", "b")));
        let touched = touched_since(&a, &before);
        assert_eq!(touched.reviews.into_iter().collect::<Vec<_>>(), vec![review_key("2")]);
    }
}

//! The engine's API on a real database file: validation, persistence across
//! reopen, and documents with entries a buggy or hostile peer wrote.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT, ReadDoc};
use engine::{Engine, EngineConfig, EngineError, NewReview, Rating, SessionCounts, progress_doc};

fn open(dir: &std::path::Path) -> Engine {
    Engine::open(EngineConfig { data_dir: dir.to_path_buf(), user_id: "u".into(), device_id: "phone".into() }).unwrap()
}

fn review(item: &str, at: i64) -> NewReview {
    NewReview { item_id: item.into(), rating: Rating::Good, reviewed_at: at, duration_ms: 1000, session_id: None }
}

const T0: i64 = 1_790_000_000_000;

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    assert!(matches!(e.record_review(review("", T0)), Err(EngineError::InvalidInput(_))));
    assert!(matches!(e.record_review(review("a\u{0}b", T0)), Err(EngineError::InvalidInput(_))));
    assert!(matches!(e.record_review(review(&"x".repeat(300), T0)), Err(EngineError::InvalidInput(_))));
    assert!(matches!(e.end_session("nope", T0, SessionCounts::default(), ""), Err(EngineError::UnknownSession(_))));
    let s = e.start_session("learn", T0).unwrap();
    assert!(matches!(e.end_session(&s.id, T0 - 1, SessionCounts::default(), ""), Err(EngineError::InvalidInput(_))));
    assert!(matches!(
        e.end_session(&s.id, T0 + 1, SessionCounts::default(), &"n".repeat(5000)),
        Err(EngineError::InvalidInput(_))
    ));
    assert_eq!(e.review_count().unwrap(), 0);
    assert_eq!(e.sessions(0, i64::MAX).unwrap()[0].ended_at, None);
    assert!(matches!(
        Engine::open(EngineConfig { data_dir: dir.path().join("x"), user_id: "".into(), device_id: "d".into() }),
        Err(EngineError::InvalidInput(_))
    ));
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (states, sessions, heads) = {
        let e = open(dir.path());
        let s = e.start_session("learn", T0).unwrap();
        for i in 0..300 {
            // 300 writes: past the threshold where compaction runs inline (no
            // sync running), so snapshot + chunks are both exercised.
            e.record_review(review(&format!("item-{}", i % 7), T0 + i * 1_800_000)).unwrap();
        }
        e.end_session(&s.id, T0 + 10, SessionCounts { reviewed: 300, correct: 140, new_items: 7 }, "good").unwrap();
        (e.memory_states().unwrap(), e.sessions(0, i64::MAX).unwrap(), e.document_heads().unwrap())
    };
    let e = open(dir.path());
    assert_eq!(e.memory_states().unwrap(), states);
    assert_eq!(e.sessions(0, i64::MAX).unwrap(), sessions);
    assert_eq!(e.document_heads().unwrap(), heads);
    assert_eq!(e.review_count().unwrap(), 300);
    assert_eq!(e.sync_status().unwrap().pending_documents, 1, "never synced: still pending");
    let due = e.due_items(i64::MAX, 3).unwrap();
    assert_eq!(due.len(), 3);
    assert!(due.windows(2).all(|w| w[0].due_at <= w[1].due_at), "most overdue first");
}

#[test]
fn malformed_entries_from_a_peer_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(ROOT, "r/scalar", "not a map").unwrap();
    let no_item = tx.put_object(ROOT, "r/no-item", ObjType::Map).unwrap();
    tx.put(&no_item, "rating", 3i64).unwrap();
    let bad_rating = tx.put_object(ROOT, "r/bad-rating", ObjType::Map).unwrap();
    tx.put(&bad_rating, "item", "x").unwrap();
    tx.put(&bad_rating, "rating", 9i64).unwrap();
    tx.put(&bad_rating, "at", T0).unwrap();
    let good = tx.put_object(ROOT, "r/good", ObjType::Map).unwrap();
    tx.put(&good, "item", "x").unwrap();
    tx.put(&good, "rating", 4i64).unwrap();
    tx.put(&good, "at", automerge::ScalarValue::Timestamp(T0)).unwrap();
    let text_item = tx.put_object(ROOT, "r/text-item", ObjType::Map).unwrap();
    let text = tx.put_object(&text_item, "item", ObjType::Text).unwrap();
    tx.splice_text(&text, 0, 0, "y").unwrap();
    tx.put(&text_item, "rating", 3i64).unwrap();
    tx.put(&text_item, "at", T0).unwrap();
    // Reviews as JSON strings (how they are written now), and as a text
    // object holding the JSON (what a JavaScript peer writing a string makes).
    tx.put(ROOT, "r/json", format!(r#"{{"item":"z","rating":2,"at":{T0},"future_field":[1]}}"#)).unwrap();
    tx.put(ROOT, "r/json-bad-rating", format!(r#"{{"item":"z","rating":9,"at":{T0}}}"#)).unwrap();
    tx.put(ROOT, "r/json-no-at", r#"{"item":"z","rating":2}"#).unwrap();
    let json_text = tx.put_object(ROOT, "r/json-text", ObjType::Text).unwrap();
    tx.splice_text(&json_text, 0, 0, &format!(r#"{{"item":"w","rating":1,"at":{T0}}}"#)).unwrap();
    tx.put(ROOT, "s/garbage", 17i64).unwrap();
    tx.put(ROOT, "unrelated", true).unwrap();
    tx.commit();
    let id = progress_doc::doc_id("u", "2026-09").to_string();
    e.import_documents(&[(id, doc.save())]).unwrap();
    assert_eq!(e.review_count().unwrap(), 4, "the good maps (one with a text item) and the good JSON reviews");
    for item in ["x", "y", "z", "w"] {
        assert!(e.memory_state(item).unwrap().is_some(), "{item}");
    }
    assert!(e.sessions(0, i64::MAX).unwrap().is_empty());
    assert!(matches!(e.import_documents(&[("not-an-id".into(), vec![1, 2, 3])]), Err(EngineError::InvalidInput(_))));
    let garbage =
        e.import_documents(&[(progress_doc::doc_id("u", "2026-10").to_string(), vec![0x85, 0x6f, 0x4a, 0x83, 1])]);
    assert!(matches!(garbage, Err(EngineError::Document { .. })), "{garbage:?}");
    assert_eq!(e.review_count().unwrap(), 4);
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let conn = rusqlite::Connection::open(dir.path().join("progress.sqlite3")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Engine::open(EngineConfig { data_dir: dir.path().into(), user_id: "u".into(), device_id: "d".into() });
    assert!(matches!(err, Err(EngineError::SchemaTooNew { found: 99, .. })));
}

#[test]
fn a_sync_session_is_driven_by_frames_alone() {
    use protocol::Message;
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.record_review(review("apple", T0)).unwrap();
    let mut session = e.sync_session(7);
    let join = Message::decode(&session.open()).unwrap();
    let Message::Join { sender_id, supported_protocol_versions, .. } = join else { panic!("{join:?}") };
    assert_eq!(supported_protocol_versions, vec!["1".to_string()]);
    // Before the handshake, local changes are not offered.
    assert!(session.local_changes().unwrap().is_empty());
    let peer = Message::Peer {
        sender_id: "relay".into(),
        target_id: sender_id,
        selected_protocol_version: "1".into(),
        metadata: None,
    };
    let frames = session.receive(&peer.encode(), T0).unwrap();
    assert_eq!(frames.len(), 1, "the one dirty document is offered");
    assert!(matches!(Message::decode(&frames[0]).unwrap(), Message::Sync { .. }));
    assert!(e.sync_status().unwrap().connected);
    // A frame that is not a message ends the session with a typed error.
    assert!(matches!(session.receive(&[0xff, 0x00], T0), Err(engine::SyncFailure::Decode(_))));
    session.close(Some("test".into()));
    let status = e.sync_status().unwrap();
    assert!(!status.connected);
    assert_eq!(status.traffic.messages_sent, 2);
    assert_eq!(status.traffic.messages_received, 2);
}

#[test]
fn a_second_engine_on_one_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().expect("tmp");
    let first = open(dir.path());
    first.record_review(review("w", 1)).expect("review");
    // In this process (a second `open`) as in another one: the lock is per open file.
    match Engine::open(EngineConfig { data_dir: dir.path().into(), user_id: "u".into(), device_id: "d2".into() }) {
        Err(EngineError::InUse(d)) => assert!(d.contains(&dir.path().display().to_string()), "{d}"),
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    first.close().expect("closes");
    assert!(matches!(first.review_count(), Err(EngineError::Closed)));
    let second = open(dir.path());
    assert_eq!(second.review_count().expect("count"), 1);
    drop(second);
    // Dropping (not closing) lets go as well.
    let third = open(dir.path());
    assert_eq!(third.review_count().expect("count"), 1);
}

/// Each new review is the first key of its month's document (automerge
/// applies a change to a map by walking its keys from the first: see
/// `engine::ids::review_id`), also in a month that already holds reviews
/// with random ids, as months written before this scheme do.
#[test]
fn the_newest_review_is_the_first_key_of_its_month() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    // A month as an older build wrote it: 200 reviews with random ids.
    let mut old = Automerge::new();
    for i in 0..200 {
        let r = engine::Review {
            id: uuid::Uuid::new_v4().to_string(),
            item_id: format!("old-{i}"),
            rating: Rating::Good,
            reviewed_at: T0 + i,
            duration_ms: 1000,
            device_id: "old-phone".into(),
            session_id: None,
        };
        old.transact::<_, _, automerge::AutomergeError>(|tx| progress_doc::put_review(tx, &r)).unwrap();
    }
    let month = progress_doc::doc_id("u", &progress_doc::partition_of(T0)).to_string();
    e.import_documents(&[(month.clone(), old.save())]).unwrap();
    let mut recorded = Vec::new();
    for i in 0..20 {
        let newest = e.record_review(review("new", T0 + 60_000 * (i + 1))).unwrap();
        let key = progress_doc::review_key(&newest.id);
        recorded.push(key.clone());
        let docs = e.export_documents().unwrap();
        let bytes = &docs.iter().find(|(id, _)| *id == month).unwrap().1;
        let doc = Automerge::load(bytes).unwrap();
        let before: Vec<String> = doc.keys(ROOT).take_while(|k| *k != key).collect();
        // Only random ids that happen to start with "00" (1 in 256) may
        // come before it; never a review recorded earlier.
        assert!(
            before.iter().all(|k| k.starts_with("r/00") && !recorded.contains(k)),
            "review {i} lands after {before:?}"
        );
    }
}

/// A heavy month gathers chunks in proportion to its snapshot's size before
/// it is compacted (`protocol::compaction`), with no sync running (inline,
/// at four times the threshold): the month that arrived whole is compacted
/// into a snapshot after 4 x 64 chunks, and the next 345 reviews then wait, where
/// any month used to be compacted every 4 x 64.
#[test]
fn a_heavy_month_is_compacted_after_chunks_in_proportion_to_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let mut month = Automerge::new();
    month
        .transact::<_, _, automerge::AutomergeError>(|tx| {
            for i in 0..6500u32 {
                let r = engine::Review {
                    id: uuid::Uuid::new_v4().to_string(),
                    item_id: format!("item-{}", i % 3000),
                    rating: Rating::Good,
                    reviewed_at: T0 + i64::from(i),
                    duration_ms: 1000 + i,
                    device_id: "old-phone".into(),
                    session_id: None,
                };
                progress_doc::put_review(tx, &r)?;
            }
            Ok(())
        })
        .unwrap();
    let id = progress_doc::doc_id("u", &progress_doc::partition_of(T0)).to_string();
    e.import_documents(&[(id.clone(), month.save())]).unwrap();
    for i in 0..600 {
        e.record_review(review("new", T0 + 60_000 * (i + 1))).unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("progress.sqlite3")).unwrap();
    let chunks: i64 =
        conn.query_row("SELECT count(*) FROM doc_changes WHERE doc_id = ?1", [&id], |r| r.get(0)).unwrap();
    let snapshot: i64 =
        conn.query_row("SELECT length(snapshot) FROM doc_snapshots WHERE doc_id = ?1", [&id], |r| r.get(0)).unwrap();
    // Heavy enough that four times its threshold is past the 345.
    assert!(snapshot > 345 / 4 * 1024, "the month is heavy: a snapshot of {snapshot} bytes");
    // The month as it arrived is the first of the 4 x 64 chunks.
    assert_eq!(chunks, 600 - (4 * 64 - 1), "compacted once, when the month was still chunks ({snapshot} bytes since)");
    assert_eq!(e.review_count().unwrap(), 7100);
}

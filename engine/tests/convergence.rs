//! proptest: any interleaving of operations and merges across three
//! replicas converges to the same sessions and memory states, and the
//! incrementally maintained memory states equal a from-scratch replay.

use engine::{Engine, EngineConfig, NewReview, Rating, SessionCounts};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Review { replica: usize, item: u8, rating: u8, hour: i64 },
    StartSession { replica: usize, hour: i64 },
    EndSession { replica: usize, reviewed: u32 },
    Merge { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..4u8, 1..=4u8, 0..(24 * 70i64))
            .prop_map(|(replica, item, rating, hour)| Op::Review { replica, item, rating, hour }),
        1 => (0..3usize, 0..(24 * 70i64)).prop_map(|(replica, hour)| Op::StartSession { replica, hour }),
        1 => (0..3usize, 0..50u32).prop_map(|(replica, reviewed)| Op::EndSession { replica, reviewed }),
        2 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Merge { from, to }),
    ]
}

const T0: i64 = 1_780_000_000_000;

fn open(dir: &std::path::Path, name: &str) -> Engine {
    Engine::open(EngineConfig { data_dir: dir.join(name), user_id: "u".into(), device_id: name.into() }).unwrap()
}

fn merge(from: &Engine, to: &Engine) {
    to.import_documents(&from.export_documents().unwrap()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<Engine> = (0..3).map(|i| open(dir.path(), &format!("d{i}"))).collect();
        let mut open_sessions: Vec<Vec<String>> = vec![Vec::new(); 3];
        for op in ops {
            match op {
                Op::Review { replica, item, rating, hour } => {
                    replicas[replica].record_review(NewReview {
                        item_id: format!("item-{item}"),
                        rating: Rating::from_u8(rating).unwrap(),
                        reviewed_at: T0 + hour * 3_600_000,
                        duration_ms: 1000,
                        session_id: None,
                    }).unwrap();
                }
                Op::StartSession { replica, hour } => {
                    let s = replicas[replica].start_session("learn", T0 + hour * 3_600_000).unwrap();
                    open_sessions[replica].push(s.id);
                }
                Op::EndSession { replica, reviewed } => {
                    if let Some(id) = open_sessions[replica].pop() {
                        let counts = SessionCounts { reviewed, correct: reviewed / 2, new_items: 1 };
                        replicas[replica].end_session(&id, T0 + 24 * 71 * 3_600_000, counts, "done").unwrap();
                    }
                }
                Op::Merge { from, to } => if from != to { merge(&replicas[from], &replicas[to]) },
            }
        }
        for _ in 0..2 {
            for (a, b) in [(0, 1), (1, 2), (2, 0)] {
                merge(&replicas[a], &replicas[b]);
            }
        }
        let states = replicas[0].memory_states().unwrap();
        let sessions = replicas[0].sessions(0, i64::MAX).unwrap();
        for r in &replicas[1..] {
            prop_assert_eq!(r.document_heads().unwrap(), replicas[0].document_heads().unwrap());
            prop_assert_eq!(&r.memory_states().unwrap(), &states);
            prop_assert_eq!(&r.sessions(0, i64::MAX).unwrap(), &sessions);
        }
        // A fresh replica that receives everything at once replays from scratch.
        let fresh = open(dir.path(), "fresh");
        merge(&replicas[0], &fresh);
        prop_assert_eq!(&fresh.memory_states().unwrap(), &states);
    }
}

//! Sizing the change events the app receives.

/// Ids listed by one change event at most, in bytes: with the engine's
/// channel of 256 events, a slow subscriber holds at most ~16 MiB.
pub(crate) const EVENT_BYTES: usize = 64 * 1024;

/// `ids` in runs of at most `max` bytes each (one id over `max` is a run
/// of its own); none for no ids.
pub(crate) fn split_by_bytes(ids: Vec<String>, max: usize) -> Vec<Vec<String>> {
    let mut runs: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for id in ids {
        match runs.last_mut() {
            Some(run) if size + id.len() <= max => {
                size += id.len();
                run.push(id);
            }
            _ => {
                size = id.len();
                runs.push(vec![id]);
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_events_list_a_bounded_number_of_bytes_and_every_id() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("item-{i:08}")).collect();
        let runs = split_by_bytes(ids.clone(), EVENT_BYTES);
        assert!(runs.len() > 1, "20,000 ids of 13 bytes fill more than one event");
        assert!(runs.iter().all(|r| !r.is_empty() && r.iter().map(String::len).sum::<usize>() <= EVENT_BYTES));
        assert_eq!(runs.concat(), ids);
        assert!(split_by_bytes(Vec::new(), EVENT_BYTES).is_empty());
        assert_eq!(split_by_bytes(vec!["x".repeat(10)], 4), vec![vec!["x".repeat(10)]]);
    }
}

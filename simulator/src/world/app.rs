//! What the apps do: reviews and study sessions, random or scripted.

use super::*;

impl World {
    pub(super) fn review(&mut self, d: usize, item: String, rating: Rating) {
        let rating_name = match rating {
            Rating::Again => "again",
            Rating::Hard => "hard",
            Rating::Good => "good",
            Rating::Easy => "easy",
        };
        self.log(Action::Review { device: self.name(d), item: item.clone(), rating: Some(rating_name.into()) });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        let (name, user) = (dev.name.clone(), dev.user);
        let review = NewReview {
            item_id: item.clone(),
            rating,
            reviewed_at: at,
            duration_ms: 1000,
            session_id: dev.open_sessions.first().cloned(),
        };
        match engine.record_review(review) {
            Ok(r) => {
                self.trace.note(self.now, format!("{name}: review {} of {item}", &r.id[..8]));
                self.acknowledged_ops.entry(user).or_default().insert(r.id);
            }
            Err(e) => {
                self.coverage.device_writes_failed += 1;
                self.trace.note(self.now, format!("{name}: review of {item} failed: {e}"));
                self.failed_reviews.push((user, name, item, at));
            }
        }
        self.push_local_changes(d);
    }

    pub(super) fn start_session(&mut self, d: usize) {
        self.log(Action::StartSession { device: self.name(d) });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        match engine.start_session("review", at) {
            Ok(s) => dev.open_sessions.push(s.id),
            Err(e) => {
                let line = format!("{}: start_session failed: {e}", dev.name);
                self.trace.note(self.now, line);
            }
        }
        self.push_local_changes(d);
    }

    pub(super) fn end_session(&mut self, d: usize, counts: SessionCounts) {
        self.log(Action::EndSession { device: self.name(d), reviewed: counts.reviewed, correct: counts.correct });
        let at = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        // Its own open session first; else one it learned from another device.
        let id = if dev.open_sessions.is_empty() {
            let open = engine.sessions(i64::MIN, i64::MAX).unwrap_or_default();
            match open.into_iter().rev().find(|s| s.ended_at.is_none()) {
                Some(s) => s.id,
                None => return,
            }
        } else {
            dev.open_sessions.remove(0)
        };
        if let Err(e) = engine.end_session(&id, at, counts, "done") {
            let line = format!("{}: end_session failed: {e}", dev.name);
            self.trace.note(self.now, line);
        }
        self.push_local_changes(d);
    }

    /// A random operation of the app (the random runs' workload).
    pub(super) fn op(&mut self, d: usize) {
        let roll = self.rng.random_range(0..10);
        let item = format!("item-{}", self.rng.random_range(0..self.params.items));
        let rating = match self.rng.random_range(0..4) {
            0 => Rating::Again,
            1 => Rating::Hard,
            2 => Rating::Good,
            _ => Rating::Easy,
        };
        let sessions = self.devices[d].open_sessions.len();
        match roll {
            0 if sessions < 2 => self.start_session(d),
            1 if sessions > 0 => self.end_session(d, SessionCounts { reviewed: 4, correct: 2, new_items: 1 }),
            _ => self.review(d, item, rating),
        }
    }
}

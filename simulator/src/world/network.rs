//! The network: connections, frames on FIFO links with the drawn faults, the relay core fed what arrives, and devices fed what the relay answers.

use super::*;

impl World {
    pub(super) fn connect(&mut self, d: usize) {
        let dev = &self.devices[d];
        if !dev.online || dev.engine.is_none() || dev.conn.is_some() {
            return;
        }
        // A reconnect takes longer than a group commit (backoff, handshake):
        // the sync states the relay queued for writing are committed before
        // this connection reads them, as SQLite's writer has them by then.
        let _ = self.relay.storage.flush();
        let user: Arc<str> = Arc::from(format!("user{}", dev.user).as_str());
        let registration = match self.relay.hub.register(&user) {
            Ok(r) => r,
            Err(e) => {
                self.trace.note(self.now, format!("{}: refused: {e}", dev.name));
                return;
            }
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let nonce: u32 = self.rng.random();
        let core = ConnCore::new(self.relay.hub.clone(), registration, dev.name.clone());
        self.relay.conns.insert(conn, (d, core));
        let dev = &mut self.devices[d];
        let Some(engine) = dev.engine.as_ref() else { return };
        let mut session = engine.sync_session(nonce);
        let join = session.open();
        dev.session = Some(session);
        dev.conn = Some(conn);
        self.coverage.reconnects += 1;
        self.trace.note(self.now, format!("{} connects (conn {conn})", self.devices[d].name));
        self.send(conn, true, join);
    }

    /// Puts a frame on the wire, with the network's faults.
    pub(super) fn send(&mut self, conn: u64, to_relay: bool, bytes: Vec<u8>) {
        self.coverage.messages += 1;
        self.wire_bytes += bytes.len() as u64;
        let bytes = Arc::new(bytes);
        let mut delay = self.params.latency_ms + self.rng.random_range(0..=self.params.jitter_ms);
        // In order on its link, as TCP delivers (jitter delays, never overtakes).
        let tail = self.link_tail.get(&(conn, to_relay)).copied().unwrap_or(0);
        delay = delay.max(tail.saturating_sub(self.now));
        if !self.healing
            && let Some(&(d, _)) = self.relay.conns.get(&conn)
            && let Some(&until) = self.clogged.get(&(d, to_relay))
            && until > self.now + delay
        {
            self.coverage.clogged_frames += 1;
            delay = until - self.now;
        }
        let mut reordered = false;
        if std::mem::take(&mut self.armed_duplicate) {
            self.coverage.duplicates_delivered += 1;
            self.at(self.now + delay + 1, Event::Deliver { conn, to_relay, bytes: bytes.clone() });
        }
        if !self.healing {
            if self.rng.random_bool(self.params.cut_rate) {
                // TCP does not lose one message: the connection breaks instead.
                self.trace.note(self.now, format!("conn {conn} cut"));
                self.coverage.cuts_mid_sync += 1;
                if let Some(&(d, _)) = self.relay.conns.get(&conn) {
                    self.log(Action::Cut { device: self.name(d) });
                    self.disconnect_device(d, "connection cut");
                }
                return;
            }
            if self.rng.random_bool(self.params.reorder_rate) {
                self.coverage.reordered += 1;
                delay += self.rng.random_range(1..=500);
                reordered = true;
            }
            if self.rng.random_bool(self.params.duplicate_rate) {
                self.log(Action::DuplicateNext);
                self.coverage.duplicates_delivered += 1;
                let later = delay + self.rng.random_range(0..=200);
                self.at(self.now + later, Event::Deliver { conn, to_relay, bytes: bytes.clone() });
            }
        }
        if !reordered {
            self.link_tail.insert((conn, to_relay), self.now + delay);
        }
        if self.timeline.is_some() {
            let device = self.relay.conns.get(&conn).map(|(d, _)| *d + 1);
            if let (Some(t), Some(lane)) = (self.timeline.as_mut(), device) {
                let (from, to) = if to_relay { (lane, 0) } else { (0, lane) };
                t.messages.push((from, to, self.now, self.now + delay));
            }
        }
        self.at(self.now + delay, Event::Deliver { conn, to_relay, bytes });
    }

    pub(super) fn relay_now(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    pub(super) fn relay_receive(&mut self, conn: u64, bytes: &[u8]) {
        let now = self.relay_now();
        let appends_before = self.relay.storage.appends();
        let Some((d, core)) = self.relay.conns.get_mut(&conn) else {
            // The relay forgot this connection (it closed it, or crashed): the
            // device's socket is reset, as TCP would.
            if let Some(d) = self.devices.iter().position(|dev| dev.conn == Some(conn)) {
                self.disconnect_device(d, "connection reset");
            }
            return;
        };
        let d = *d;
        let result = match Message::decode(bytes) {
            // As the adapter does: on the connection's task if nothing on
            // the way can wait on storage, else as a blocking call.
            Ok(msg) => match core.handle_inline(msg, now) {
                relay::conn::Inline::Done(result) => result,
                relay::conn::Inline::Blocking(msg) => core.handle(msg, now),
                // The simulator's storage writes at once: the append's
                // ticket is answered when it is returned.
                relay::conn::Inline::Storing(change) => core.store_and_finish(change, now),
            },
            Err(e) => Err(format!("malformed: {e}").into()),
        };
        self.trace.hash(self.now, "relay<", bytes);
        // The relay may die inside a step: after it stored a change and
        // before the acknowledgement left, or after that and before the
        // change was forwarded to the user's other devices.
        let stored = result.is_ok() && self.relay.storage.appends() > appends_before;
        let armed = if stored { self.armed_crash.take() } else { None };
        let random_crash = !self.healing && self.params.relay_crashes > 0 && self.rng.random_bool(0.01);
        let crash_mid_step = armed.is_some() || random_crash;
        let before_ack = match armed {
            Some(point) => point == CrashPoint::AfterStore,
            None => random_crash && stored && self.rng.random_bool(0.5),
        };
        match result {
            Ok(_) if crash_mid_step && stored && before_ack => {
                if armed.is_none() {
                    self.log(Action::RelayCrashAfterStore);
                }
                self.coverage.crash_after_store_before_ack += 1;
                self.relay_crash();
                return;
            }
            Ok(out) => {
                for m in out {
                    self.send(conn, false, m.encode());
                }
                // As the adapter does once the replies are out.
                if let Some((_, core)) = self.relay.conns.get_mut(&conn) {
                    core.maintain();
                }
                if crash_mid_step && stored {
                    if armed.is_none() {
                        self.log(Action::RelayCrashAfterAck);
                    }
                    self.coverage.crash_after_ack_before_forward += 1;
                    self.relay_crash();
                    return;
                }
            }
            Err(reason) => {
                if reason.code == relay::conn::close_code::INTERNAL {
                    self.coverage.storage_failures_hit += 1;
                }
                self.trace.note(self.now, format!("relay closes conn {conn}: {}", reason.text));
                let frame = Message::Error { message: reason.text }.encode();
                // The error reaches the device (same connection), then it closes.
                self.send(conn, false, frame);
                self.relay.conns.remove(&conn);
                let _ = d;
            }
        }
        self.forward_changes();
    }

    /// Like the adapter's notification path: every connection whose user's
    /// documents changed offers them, in connection order.
    pub(super) fn forward_changes(&mut self) {
        let now = self.relay_now();
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for (&conn, (_, core)) in self.relay.conns.iter_mut() {
            let _ = core.take_ephemeral();
            for doc in core.take_changed() {
                let pushed = match core.push_inline(doc, now) {
                    Some(pushed) => pushed,
                    None => core.push(doc, now),
                };
                match pushed {
                    Ok(Some(m)) => out.push((conn, m.encode())),
                    Ok(None) => {}
                    Err(_) => failed.push(conn),
                }
            }
        }
        for (conn, bytes) in out {
            self.send(conn, false, bytes);
        }
        for conn in failed {
            if let Some((d, _)) = self.relay.conns.get(&conn).map(|(d, _)| (*d, ())) {
                self.disconnect_device(d, "relay storage failure");
            }
        }
    }

    pub(super) fn device_receive(&mut self, conn: u64, bytes: &[u8]) {
        let Some(d) = self.devices.iter().position(|dev| dev.conn == Some(conn)) else { return };
        let ts = T0_MS + self.now as i64 + self.devices[d].skew_ms;
        self.trace.hash(self.now, &format!("{}<", self.devices[d].name), bytes);
        let Some(session) = self.devices[d].session.as_mut() else { return };
        match session.receive(bytes, ts) {
            Ok(frames) => {
                // A frame for a connection the relay already closed goes nowhere.
                if self.relay.conns.contains_key(&conn) {
                    for f in frames {
                        self.send(conn, true, f);
                    }
                } else {
                    self.disconnect_device(d, "relay closed");
                }
            }
            Err(e) => {
                let reason = format!("{e}");
                self.disconnect_device(d, &reason);
            }
        }
    }

    /// Both ends learn the connection is gone; the device retries later.
    pub(super) fn disconnect_device(&mut self, d: usize, reason: &str) {
        if self.devices[d].conn.is_some() {
            self.trace.note(self.now, format!("{} disconnected: {reason}", self.devices[d].name));
        }
        self.drop_connection_of(d);
        let dev = &mut self.devices[d];
        if let Some(mut s) = dev.session.take() {
            s.close(Some(reason.to_owned()));
        }
        if dev.online && dev.engine.is_some() {
            let backoff = self.rng.random_range(50..2_000);
            self.at(self.now + backoff, Event::Connect { device: d });
        }
    }

    pub(super) fn drop_connection_of(&mut self, d: usize) {
        if let Some(conn) = self.devices[d].conn.take() {
            self.relay.conns.remove(&conn);
        }
    }

    pub(super) fn push_local_changes(&mut self, d: usize) {
        let Some(conn) = self.devices[d].conn else { return };
        let Some(session) = self.devices[d].session.as_mut() else { return };
        match session.local_changes() {
            Ok(frames) => {
                let name = self.devices[d].name.clone();
                self.trace.note(self.now, format!("{name} offers {} frame(s) on conn {conn}", frames.len()));
                for f in frames {
                    self.send(conn, true, f);
                }
            }
            Err(e) => {
                let reason = format!("local changes: {e}");
                self.disconnect_device(d, &reason);
            }
        }
    }
}

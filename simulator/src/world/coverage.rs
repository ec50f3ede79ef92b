//! Counts of the rare paths a run went through.

/// Counts of the rare paths a run went through (a sweep must see each).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Coverage {
    pub messages: u64,
    pub duplicates_delivered: u64,
    pub reordered: u64,
    pub cuts_mid_sync: u64,
    pub device_crashes: u64,
    pub wipes: u64,
    pub relay_crashes: u64,
    pub relay_crash_lost_pending: u64,
    pub storage_failures_hit: u64,
    /// The relay died after storing a change and before acknowledging it,
    /// or after acknowledging and before forwarding it to other devices.
    pub crash_after_store_before_ack: u64,
    pub crash_after_ack_before_forward: u64,
    /// Frames held back by a clogged link, and random splits.
    pub clogged_frames: u64,
    pub splits: u64,
    /// Device writes that failed (a full disk): the app was told so.
    pub device_writes_failed: u64,
    pub restores: u64,
    pub partitions: u64,
    pub reconnects: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.messages += o.messages;
        self.duplicates_delivered += o.duplicates_delivered;
        self.reordered += o.reordered;
        self.cuts_mid_sync += o.cuts_mid_sync;
        self.device_crashes += o.device_crashes;
        self.wipes += o.wipes;
        self.relay_crashes += o.relay_crashes;
        self.relay_crash_lost_pending += o.relay_crash_lost_pending;
        self.storage_failures_hit += o.storage_failures_hit;
        self.crash_after_store_before_ack += o.crash_after_store_before_ack;
        self.crash_after_ack_before_forward += o.crash_after_ack_before_forward;
        self.clogged_frames += o.clogged_frames;
        self.splits += o.splits;
        self.device_writes_failed += o.device_writes_failed;
        self.restores += o.restores;
        self.partitions += o.partitions;
        self.reconnects += o.reconnects;
    }

    /// The counters that are still zero.
    pub fn zeros(&self) -> Vec<&'static str> {
        let all = [
            ("messages", self.messages),
            ("duplicates_delivered", self.duplicates_delivered),
            ("reordered", self.reordered),
            ("cuts_mid_sync", self.cuts_mid_sync),
            ("device_crashes", self.device_crashes),
            ("wipes", self.wipes),
            ("relay_crashes", self.relay_crashes),
            ("relay_crash_lost_pending", self.relay_crash_lost_pending),
            ("storage_failures_hit", self.storage_failures_hit),
            ("crash_after_store_before_ack", self.crash_after_store_before_ack),
            ("crash_after_ack_before_forward", self.crash_after_ack_before_forward),
            ("clogged_frames", self.clogged_frames),
            ("splits", self.splits),
            ("device_writes_failed", self.device_writes_failed),
            ("restores", self.restores),
            ("partitions", self.partitions),
            ("reconnects", self.reconnects),
        ];
        all.into_iter().filter(|(_, n)| *n == 0).map(|(name, _)| name).collect()
    }
}

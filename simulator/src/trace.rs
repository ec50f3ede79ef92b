//! A run's trace: every event hashed in order (two runs of one seed must
//! give the same hash), and the readable lines of the last events, for a
//! failure report.

use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// Lines kept for a report.
const KEEP: usize = 400;

#[derive(Default)]
pub struct Trace {
    hasher: Sha256,
    lines: VecDeque<String>,
    pub events: u64,
}

impl Trace {
    /// A readable event.
    pub fn note(&mut self, now: u64, line: String) {
        let line = format!("{:>8} ms  {line}", now);
        self.hasher.update(line.as_bytes());
        self.hasher.update([b'\n']);
        self.events += 1;
        if self.lines.len() == KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// A message delivered: hashed whole, noted by size.
    pub fn hash(&mut self, now: u64, label: &str, bytes: &[u8]) {
        self.hasher.update(now.to_le_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update(bytes);
        self.events += 1;
    }

    pub fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n)).cloned().collect()
    }
}

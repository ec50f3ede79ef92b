//! Staged rollout: which devices are offered a release.
//!
//! A device's bucket is a stable hash of (install id, release id) in
//! 0..10_000. A release at p % is offered to buckets below p × 100, so
//! raising p only adds devices: one that was offered the release keeps it.
//! Hashing the release id in means each release samples different devices.

use sha2::{Digest, Sha256};

/// Number of buckets: 0.01 % resolution.
pub const BUCKETS: u32 = 10_000;

pub fn bucket(install_id: &str, release_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(install_id.as_bytes());
    h.update([0u8]);
    h.update(release_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// Whether a device is inside a rollout of `percent` (0..=100).
pub fn offered(install_id: Option<&str>, release_id: &str, percent: u8) -> bool {
    match (percent, install_id) {
        (p, _) if p >= 100 => true,
        (0, _) => false,
        // A device that does not say who it is only gets complete releases.
        (_, None) => false,
        (p, Some(id)) => bucket(id, release_id) < u32::from(p) * (BUCKETS / 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_is_about_ten_percent_and_raising_never_removes() {
        let ids: Vec<String> = (0..1000).map(|i| format!("install-{i}")).collect();
        let at = |p| ids.iter().filter(|id| offered(Some(id), "rel-1", p)).count();
        let ten = at(10);
        assert!((50..=150).contains(&ten), "10 % offered to {ten} of 1000");
        for id in &ids {
            if offered(Some(id), "rel-1", 10) {
                assert!(offered(Some(id), "rel-1", 50), "{id} lost the release when raising to 50 %");
            }
        }
        assert_eq!(at(0), 0);
        assert_eq!(at(100), 1000);
        assert!(!offered(None, "rel-1", 50));
    }
}

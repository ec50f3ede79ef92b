//! The dataset release domain shared by the relay and the engine.
//!
//! Pure code: models, DTOs, manifest format, validation rules, checksums and
//! signatures, with no I/O. Filled in by the release-registry issue; for now
//! it holds the version type both sides already agree on.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A `major.minor.patch` version, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return Err(format!("`{s}` is not major.minor.patch"));
        };
        let num = |p: &str| p.parse::<u32>().map_err(|_| format!("`{s}` is not major.minor.patch"));
        Ok(Version { major: num(major)?, minor: num(minor)?, patch: num(patch)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let a: Version = "1.9.0".parse().unwrap();
        let b: Version = "1.10.0".parse().unwrap();
        assert!(a < b);
        assert!("1.2".parse::<Version>().is_err());
        assert!("1.x.3".parse::<Version>().is_err());
    }
}

//! The dataset release domain shared by the relay and the engine.
//!
//! Pure code, no I/O: models and their state machine ([`model`]), request
//! and response bodies ([`dto`]), the validation rule engine ([`rules`]),
//! the signed manifest format ([`manifest`]), staged rollout buckets
//! ([`rollout`]), names ([`names`]), checksums ([`checksum`]) and versions.

pub mod checksum;
pub mod dto;
pub mod manifest;
pub mod model;
pub mod names;
pub mod rollout;
pub mod rules;
pub mod version;

pub use manifest::{Manifest, ManifestArtifact, ManifestError, ManifestSigner, SignedManifest, TrustedKeys};
pub use model::{Artifact, ArtifactSource, Release, ReleaseState};
pub use rules::{Finding, Severity, ValidationReport};
pub use version::Version;

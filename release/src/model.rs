//! What a dataset release is, and the states it moves through.
//!
//! ```text
//! draft ──validate ok──▶ validated ──publish──▶ published ──deprecate──▶ deprecated
//!   ▲                        │            (rolling out 1..99 % / complete 100 %)
//!   └──── attach/edit ───────┘
//! ```
//! A published release is immutable: no attach, no edit. Deprecation keeps
//! its manifest resolvable (devices learn it is deprecated, and why).

use crate::version::Version;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Milliseconds since the Unix epoch (UTC).
pub type TimestampMs = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    Draft,
    Validated,
    Published,
    Deprecated,
}

impl ReleaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Draft => "draft",
            ReleaseState::Validated => "validated",
            ReleaseState::Published => "published",
            ReleaseState::Deprecated => "deprecated",
        }
    }

    pub fn parse(s: &str) -> Option<ReleaseState> {
        match s {
            "draft" => Some(ReleaseState::Draft),
            "validated" => Some(ReleaseState::Validated),
            "published" => Some(ReleaseState::Published),
            "deprecated" => Some(ReleaseState::Deprecated),
            _ => None,
        }
    }

    /// Content (artifacts, version, notes) may change only before publishing.
    pub fn is_editable(self) -> bool {
        matches!(self, ReleaseState::Draft | ReleaseState::Validated)
    }
}

/// Where an artifact's bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArtifactSource {
    /// Uploaded to and served by the relay.
    Uploaded,
    /// Hosted elsewhere (e.g. a CDN); the relay only vouches for hash and size.
    External { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    pub source: ArtifactSource,
    pub created_at: TimestampMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub id: String,
    pub dataset: String,
    pub channel: String,
    #[schema(value_type = String, example = "1.4.0")]
    pub version: Version,
    pub notes: String,
    /// Devices whose app is older than this are never offered the release.
    #[schema(value_type = String, example = "2.3.0")]
    pub min_app_version: String,
    pub state: ReleaseState,
    /// Share of devices offered the release, 0..=100 (meaningful once published).
    pub rollout_percent: u8,
    /// Devices on the channel may not keep a version below a mandatory release.
    pub mandatory: bool,
    pub deprecated_reason: Option<String>,
    pub created_at: TimestampMs,
    pub published_at: Option<TimestampMs>,
    pub artifacts: Vec<Artifact>,
}

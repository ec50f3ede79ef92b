//! Request and response bodies of the release API, shared by the relay
//! (which serves them), the admin CLI and the engine (which call it).

use crate::model::{Release, TimestampMs};
use crate::rules::Finding;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    #[schema(example = "vocab-en")]
    pub dataset: String,
    #[schema(example = "stable")]
    pub channel: String,
    #[schema(example = "1.4.0")]
    pub version: String,
    #[serde(default)]
    pub notes: String,
    #[schema(example = "2.3.0")]
    pub min_app_version: String,
}

/// Edits a draft; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRelease {
    pub version: Option<String>,
    pub notes: Option<String>,
    pub min_app_version: Option<String>,
}

/// Attaches an artifact hosted elsewhere, by declared hash and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachExternal {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Share of devices offered the release at first, 0..=100 (default 100).
    pub rollout_percent: Option<u8>,
    /// Devices on the channel may not keep an older version (default false).
    pub mandatory: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// 0 pauses, 100 completes.
    pub percent: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprecateRequest {
    pub reason: String,
}

/// Per-dataset settings the validation rules use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub required_artifacts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    pub releases: Vec<Release>,
}

/// One admin action, allowed or refused. The log is append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: TimestampMs,
    /// The admin token's name, or `unauthenticated`.
    pub actor: String,
    /// e.g. `release.create`, `release.publish`.
    pub action: String,
    /// e.g. a release id, `vocab-en/stable`.
    pub target: String,
    /// `ok`, `refused` or `error`.
    pub outcome: String,
    /// Why it was refused, or what changed.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only entries about this target (a release id also matches its artifacts).
    pub target: Option<String>,
    /// Entries with an id below this (for paging back).
    pub before: Option<i64>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Query of an artifact upload: `dry_run=true` runs every check an upload
/// of `size` bytes would meet (token, release editable, name, size limit)
/// and answers without a body being sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
pub struct UploadCheck {
    #[serde(default)]
    pub dry_run: bool,
    /// The size the upload will have, in bytes.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
pub struct ListQuery {
    pub dataset: Option<String>,
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
pub struct LatestQuery {
    /// The app's version; releases needing a newer app are never offered.
    pub app_version: Option<String>,
    /// The device's stable install id, for staged rollouts.
    pub install_id: Option<String>,
}

/// Every error response: a stable code, a message, and where relevant the
/// offending field or the validation findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<Finding>>,
}

//! The release lifecycle: what each admin action does, which public
//! answers a device gets. HTTP-free: routes map requests to these calls
//! and errors to statuses.

use super::artifacts::{ArtifactStore, UploadError};
use super::repository::{NewRelease, ReleaseRepository};
use crate::error::RelayError;
use futures_util::Stream;
use release::dto::{AttachExternal, CreateRelease, DatasetConfig, PublishRequest, UpdateRelease};
use release::manifest::{MANIFEST_FORMAT, Manifest, ManifestArtifact, ManifestSigner, SignedManifest};
use release::model::{Artifact, ArtifactSource, Release, ReleaseState, TimestampMs};
use release::rules::{Rule, SizeLimits, StoredBytes, ValidationInput, ValidationReport, validate};
use release::version::Version;
use release::{checksum, names, rollout};
use std::path::PathBuf;
use std::sync::Arc;

const MAX_NOTES: usize = 10_000;
const MAX_REASON: usize = 1_000;
const MAX_URL: usize = 2_048;

/// What a manifest is signed as: the channel's answer to `latest`, or the
/// manifest of a release named by id.
enum Role {
    Latest { downgrade_allowed: bool },
    Named,
}

/// The 413 answer, in units an operator reads.
fn too_large(limit: u64) -> RelayError {
    RelayError::PayloadTooLarge(format!(
        "artifacts are limited to {} ({limit} bytes); the relay's --max-artifact-bytes sets the limit",
        release::names::human_bytes(limit)
    ))
}

pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub struct ReleaseService {
    pub repo: Arc<dyn ReleaseRepository>,
    pub store: Arc<dyn ArtifactStore>,
    pub signer: ManifestSigner,
    pub rules: Vec<Rule>,
    pub limits: SizeLimits,
    /// How long a signed manifest may be accepted by a device.
    pub manifest_ttl_ms: i64,
}

/// Where a download's bytes are.
pub enum Download {
    File { path: PathBuf, artifact: Artifact },
    Redirect { url: String },
}

fn parse_version(field: &str, text: &str) -> Result<Version, RelayError> {
    text.parse().map_err(|e: release::version::VersionError| RelayError::invalid(field, e.to_string()))
}

fn check_id(field: &'static str, id: &str) -> Result<(), RelayError> {
    names::check_id(field, id).map_err(|e| RelayError::invalid(field, e.to_string()))
}

fn check_notes(notes: &str) -> Result<(), RelayError> {
    if notes.len() > MAX_NOTES {
        return Err(RelayError::invalid("notes", format!("notes are longer than {MAX_NOTES} bytes")));
    }
    Ok(())
}

pub fn artifact_path(release_id: &str, name: &str) -> String {
    format!("/v1/releases/{}/artifacts/{}", names::encode_path_segment(release_id), names::encode_path_segment(name))
}

impl ReleaseService {
    pub fn create(&self, req: CreateRelease) -> Result<Release, RelayError> {
        check_id("dataset", &req.dataset)?;
        check_id("channel", &req.channel)?;
        let version = parse_version("version", &req.version)?;
        parse_version("min_app_version", &req.min_app_version)?;
        check_notes(&req.notes)?;
        let id = uuid::Uuid::new_v4().to_string();
        Ok(self.repo.create(NewRelease {
            id: &id,
            dataset: &req.dataset,
            channel: &req.channel,
            version,
            notes: &req.notes,
            min_app_version: &req.min_app_version,
            now: now_ms(),
        })?)
    }

    pub fn update(&self, id: &str, req: UpdateRelease) -> Result<Release, RelayError> {
        let version = req.version.as_deref().map(|v| parse_version("version", v)).transpose()?;
        if let Some(v) = &req.min_app_version {
            parse_version("min_app_version", v)?;
        }
        if let Some(n) = &req.notes {
            check_notes(n)?;
        }
        Ok(self.repo.update(id, version, req.notes.as_deref(), req.min_app_version.as_deref())?)
    }

    fn editable(&self, id: &str) -> Result<Release, RelayError> {
        let release = self.repo.get(id)?.release;
        if !release.state.is_editable() {
            return Err(RelayError::conflict(format!(
                "the release is {} and can no longer change",
                release.state.as_str()
            )));
        }
        Ok(release)
    }

    /// Whether an upload of `name` (of `declared_len` bytes) to release `id`
    /// would be accepted now, without sending it: the admin CLI asks first,
    /// so a refusal is read as the relay's answer, not as a broken pipe
    /// halfway through a large body.
    pub fn check_upload(&self, id: &str, name: &str, declared_len: Option<u64>) -> Result<Release, RelayError> {
        names::check_artifact_name(name).map_err(|e| RelayError::invalid("name", e.to_string()))?;
        let release = self.editable(id)?;
        if release.artifacts.iter().any(|a| a.name == name) {
            return Err(RelayError::conflict(format!("the release already has an artifact named `{name}`")));
        }
        let limit = self.limits.max_artifact_bytes;
        if declared_len.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        Ok(release)
    }

    /// Streams an upload to disk (hashing as it goes) and records it.
    pub async fn attach_upload<S, E>(
        &self,
        id: &str,
        name: &str,
        declared_len: Option<u64>,
        body: S,
    ) -> Result<Release, RelayError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.check_upload(id, name, declared_len)?;
        let limit = self.limits.max_artifact_bytes;
        let staged = self.store.stage(super::artifacts::body(body), limit).await.map_err(|e| match e {
            UploadError::TooLarge { limit } => too_large(limit),
            UploadError::Interrupted(m) => RelayError::BadRequest(format!("upload interrupted: {m}")),
            UploadError::Io(e) => RelayError::Io(e),
        })?;
        let artifact = Artifact {
            name: name.to_owned(),
            size: staged.size,
            sha256: staged.sha256,
            source: ArtifactSource::Uploaded,
            created_at: now_ms(),
        };
        // A refused row leaves the file to the sweep: its bytes may be
        // another release's too (the store keeps content once).
        Ok(self.repo.add_artifact(id, &artifact, Some(&staged.file_key))?)
    }

    pub fn attach_external(&self, id: &str, req: AttachExternal) -> Result<Release, RelayError> {
        names::check_artifact_name(&req.name).map_err(|e| RelayError::invalid("name", e.to_string()))?;
        if req.url.len() > MAX_URL || !(req.url.starts_with("https://") || req.url.starts_with("http://")) {
            return Err(RelayError::invalid("url", "url must be an http(s) URL of at most 2048 bytes"));
        }
        if !checksum::is_sha256_hex(&req.sha256) {
            return Err(RelayError::invalid("sha256", "sha256 must be 64 hex digits"));
        }
        if req.size > self.limits.max_artifact_bytes {
            return Err(RelayError::PayloadTooLarge(format!(
                "artifacts are limited to {} bytes",
                self.limits.max_artifact_bytes
            )));
        }
        self.editable(id)?;
        let artifact = Artifact {
            name: req.name,
            size: req.size,
            sha256: req.sha256.to_ascii_lowercase(),
            source: ArtifactSource::External { url: req.url },
            created_at: now_ms(),
        };
        Ok(self.repo.add_artifact(id, &artifact, None)?)
    }

    pub async fn remove_artifact(&self, id: &str, name: &str) -> Result<Release, RelayError> {
        // The file stays for the sweep (another release may hold the same bytes).
        self.repo.remove_artifact(id, name)?;
        Ok(self.repo.get(id)?.release)
    }

    /// Runs every rule on the release's current content.
    async fn check(&self, id: &str) -> Result<(ValidationReport, i64, Release), RelayError> {
        let current = self.repo.get(id)?;
        let release = current.release;
        let published = self.repo.published_versions(&release.dataset, &release.channel, &release.id)?;
        let config = self.repo.dataset_config(&release.dataset)?;
        let mut stored = Vec::new();
        for file in self.repo.stored_files(id)? {
            let (sha256, size) = match self.store.rehash(&file.file_key).await {
                Some((h, n)) => (Some(h), n),
                None => (None, 0),
            };
            stored.push(StoredBytes { name: file.artifact.name, sha256, size });
        }
        let input = ValidationInput {
            release: &release,
            published_versions: &published,
            stored: &stored,
            limits: self.limits,
            required_artifacts: &config.required_artifacts,
        };
        let report = validate(&self.rules, &input);
        Ok((report, current.revision, release))
    }

    /// Validates; a valid draft becomes `validated`.
    pub async fn validate(&self, id: &str) -> Result<ValidationReport, RelayError> {
        let (report, revision, release) = self.check(id).await?;
        if report.valid && release.state.is_editable() {
            self.repo.mark_validated(id, revision)?;
        }
        Ok(report)
    }

    /// Publishes only if validation passes on the current content.
    pub async fn publish(&self, id: &str, req: PublishRequest) -> Result<Release, RelayError> {
        let rollout = req.rollout_percent.unwrap_or(100);
        if rollout > 100 {
            return Err(RelayError::invalid("rollout_percent", "rollout_percent must be 0..=100"));
        }
        let (report, revision, release) = self.check(id).await?;
        if !release.state.is_editable() {
            return Err(RelayError::conflict(format!("the release is already {}", release.state.as_str())));
        }
        if !report.valid {
            return Err(RelayError::Conflict {
                message: "the release does not pass validation".into(),
                findings: Some(report.findings),
            });
        }
        Ok(self.repo.publish(id, revision, rollout, req.mandatory.unwrap_or(false), now_ms())?)
    }

    pub fn set_rollout(&self, id: &str, percent: u8) -> Result<Release, RelayError> {
        if percent > 100 {
            return Err(RelayError::invalid("percent", "percent must be 0..=100"));
        }
        Ok(self.repo.set_rollout(id, percent)?)
    }

    pub fn deprecate(&self, id: &str, reason: &str) -> Result<Release, RelayError> {
        if reason.trim().is_empty() || reason.len() > MAX_REASON {
            return Err(RelayError::invalid("reason", format!("reason must be 1..={MAX_REASON} bytes")));
        }
        Ok(self.repo.deprecate(id, reason)?)
    }

    pub fn set_dataset_config(&self, dataset: &str, config: &DatasetConfig) -> Result<(), RelayError> {
        check_id("dataset", dataset)?;
        for name in &config.required_artifacts {
            names::check_artifact_name(name).map_err(|e| RelayError::invalid("required_artifacts", e.to_string()))?;
        }
        Ok(self.repo.set_dataset_config(dataset, config)?)
    }

    /// Live releases of a channel this device may get, newest first.
    fn offered(
        &self,
        dataset: &str,
        channel: &str,
        app_version: Option<Version>,
        install_id: Option<&str>,
    ) -> Result<Vec<Release>, RelayError> {
        Ok(self
            .repo
            .live_releases(dataset, channel)?
            .into_iter()
            .filter(|r| match (app_version, r.min_app_version.parse::<Version>()) {
                (Some(app), Ok(min)) => min <= app,
                (None, _) => true,
                (Some(_), Err(_)) => false,
            })
            .filter(|r| rollout::offered(install_id, &r.id, r.rollout_percent))
            .collect())
    }

    /// The newest release this device is offered on a channel, as a signed manifest.
    pub fn latest(
        &self,
        dataset: &str,
        channel: &str,
        app_version: Option<&str>,
        install_id: Option<&str>,
    ) -> Result<SignedManifest, RelayError> {
        check_id("dataset", dataset)?;
        check_id("channel", channel)?;
        let app = app_version.map(|v| parse_version("app_version", v)).transpose()?;
        let offered = self.offered(dataset, channel, app, install_id)?;
        let Some(chosen) = offered.first() else {
            return Err(RelayError::NotFound(format!("no release of {dataset}/{channel} is offered to this device")));
        };
        // Rolled back: a release newer than the one offered was deprecated.
        let rolled_back = self
            .repo
            .list(Some(dataset), Some(channel))?
            .iter()
            .any(|r| r.state == ReleaseState::Deprecated && r.version > chosen.version);
        self.sign(chosen, &offered, Role::Latest { downgrade_allowed: rolled_back })
    }

    /// A release's signed manifest (published or deprecated releases only).
    pub fn manifest(
        &self,
        id: &str,
        app_version: Option<&str>,
        install_id: Option<&str>,
    ) -> Result<SignedManifest, RelayError> {
        let release = self.repo.get(id)?.release;
        if release.state.is_editable() {
            return Err(RelayError::NotFound(format!("no release or artifact `{id}`")));
        }
        let app = app_version.map(|v| parse_version("app_version", v)).transpose()?;
        let offered = self.offered(&release.dataset, &release.channel, app, install_id)?;
        self.sign(&release, &offered, Role::Named)
    }

    fn sign(&self, release: &Release, offered: &[Release], role: Role) -> Result<SignedManifest, RelayError> {
        let floor = offered.iter().filter(|r| r.mandatory).map(|r| r.version).max();
        let now = now_ms();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            release_id: release.id.clone(),
            dataset: release.dataset.clone(),
            channel: release.channel.clone(),
            version: release.version,
            notes: release.notes.clone(),
            min_app_version: parse_version("min_app_version", &release.min_app_version)
                .map_err(|e| RelayError::Internal(e.to_string()))?,
            mandatory: release.mandatory,
            channel_min_version: floor,
            deprecated: match release.state {
                ReleaseState::Deprecated => Some(release.deprecated_reason.clone().unwrap_or_default()),
                _ => None,
            },
            sequence: self.repo.channel_sequence(&release.dataset, &release.channel)?,
            issued_at: now,
            expires_at: now.saturating_add(self.manifest_ttl_ms),
            artifacts: release
                .artifacts
                .iter()
                .map(|a| ManifestArtifact {
                    name: a.name.clone(),
                    size: a.size,
                    sha256: a.sha256.clone(),
                    url: match &a.source {
                        ArtifactSource::Uploaded => artifact_path(&release.id, &a.name),
                        ArtifactSource::External { url } => url.clone(),
                    },
                })
                .collect(),
            latest: matches!(role, Role::Latest { .. }),
            downgrade_allowed: matches!(role, Role::Latest { downgrade_allowed: true }),
        };
        Ok(self.signer.sign(&manifest))
    }

    /// Where to get a public artifact's bytes.
    pub fn download(&self, id: &str, name: &str) -> Result<Download, RelayError> {
        let release = self.repo.get(id)?.release;
        let not_found = || RelayError::NotFound(format!("no release or artifact `{id}/{name}`"));
        if release.state.is_editable() {
            return Err(not_found());
        }
        let artifact = release.artifacts.iter().find(|a| a.name == name).ok_or_else(not_found)?;
        match &artifact.source {
            ArtifactSource::External { url } => Ok(Download::Redirect { url: url.clone() }),
            ArtifactSource::Uploaded => {
                let file = self.repo.stored_file(id, name)?.ok_or_else(not_found)?;
                Ok(Download::File { path: self.store.path(&file.file_key), artifact: file.artifact })
            }
        }
    }
}

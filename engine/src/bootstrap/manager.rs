//! Release bootstrap on the device (D-011, D-015, D-016, D-017).
//!
//! [`ReleaseManager::open`] answers which release to use immediately and
//! offline: the active downloaded release, or the one embedded in the app.
//! [`ReleaseManager::check_for_update`] (only when remote bootstrap is on)
//! fetches the signed manifest, refuses a rolled-back, expired or badly
//! signed one, downloads what it lacks, verifies it and activates it
//! atomically. [`ReleaseManager::report_launch`] closes the loop: after too
//! many failed launches, or when the active release is deprecated upstream,
//! the manager goes back to the previous known-good release (or the
//! embedded one) and never picks the bad release again. Nothing here ever
//! touches the active release before a replacement is fully verified.

use super::activation::{ActivationError, ActivePointer, PointerArtifact, ReleaseDir};
use super::download::{DownloadError, DownloadRequest, Progress, RetryPolicy, download};
use super::registry::{Registry, RegistryError};
use release::manifest::{ManifestError, SignedManifest, TrustedKeys};
use release::{Manifest, Version};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::watch;

/// Remote bootstrap is on by default, except in builds with the `dev-build`
/// feature (developers work against the embedded release).
pub const REMOTE_BOOTSTRAP_DEFAULT: bool = !cfg!(feature = "dev-build");

/// A release shipped inside the app: its files in `dir`, described by `pointer`.
#[derive(Debug, Clone)]
pub struct EmbeddedRelease {
    pub dir: PathBuf,
    pub pointer: ActivePointer,
}

#[derive(Clone)]
pub struct BootstrapConfig {
    pub dataset: String,
    pub channel: String,
    pub app_version: Version,
    /// Stable per installation; staged rollouts bucket on it.
    pub install_id: String,
    /// e.g. `http://127.0.0.1:8080`
    pub relay_url: String,
    pub trusted_keys: TrustedKeys,
    pub embedded: Option<EmbeddedRelease>,
    pub remote_bootstrap: bool,
    /// Failed launches of a new release before going back.
    pub max_failed_launches: u32,
    pub retry: RetryPolicy,
    /// A CA (PEM) to trust for `https://` besides the web's roots, e.g. an
    /// operator's private CA. Manifests are signed and artifacts hashed
    /// either way; TLS keeps what a device downloads private.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Tests only: stop the activation at this step, as if the app were killed.
    #[doc(hidden)]
    pub crash_point: Option<super::activation::CrashPoint>,
}

/// The release the app should open now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRelease {
    pub release_id: String,
    pub version: String,
    pub embedded: bool,
    /// (artifact name, path) of every file.
    pub files: Vec<(String, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Remote bootstrap is off (dev build or app setting).
    Disabled,
    UpToDate,
    /// A new release was downloaded, verified and activated; report its launch.
    Activated {
        release_id: String,
        version: String,
    },
    /// The newest offered release was rolled back here before; it is not picked again.
    SkippedBad {
        release_id: String,
    },
    /// The active release was deprecated upstream; the previous one is active again.
    RolledBack {
        from: String,
        to: String,
    },
    /// `latest` named a release older than the active one without the
    /// signed manifest allowing a downgrade: refused, nothing changed.
    RefusedDowngrade {
        release_id: String,
        version: String,
        active_version: String,
    },
}

/// What the last accepted manifest says about the active version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandatoryStatus {
    pub minimum: Option<Version>,
    pub active_is_below: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the relay cannot be reached: {0}")]
    Offline(String),
    #[error("no release is offered on this channel")]
    NothingOffered,
    #[error("manifest refused: {0}")]
    Manifest(#[from] ManifestError),
    #[error("download failed: {0}")]
    Download(#[from] DownloadError),
    #[error("activation failed: {0}")]
    Activation(#[from] ActivationError),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("the relay answered HTTP {0}")]
    Http(u16),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("`latest` answered with the manifest of release {0}, not signed as a latest answer")]
    NotLatest(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("state lock poisoned")]
    Poisoned,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn pointer_of(m: &Manifest) -> ActivePointer {
    ActivePointer {
        release_id: m.release_id.clone(),
        dataset: m.dataset.clone(),
        channel: m.channel.clone(),
        version: m.version.to_string(),
        artifacts: m
            .artifacts
            .iter()
            .map(|a| PointerArtifact { name: a.name.clone(), sha256: a.sha256.clone(), size: a.size })
            .collect(),
    }
}

pub struct ReleaseManager {
    config: BootstrapConfig,
    dir: ReleaseDir,
    registry: Mutex<Registry>,
    http: reqwest::Client,
    /// The channel's mandatory minimum from the last accepted manifest.
    mandatory_minimum: Mutex<Option<Version>>,
}

impl ReleaseManager {
    /// Opens the device's release state under `data_dir`. Never touches the network.
    pub fn open(data_dir: &Path, config: BootstrapConfig) -> Result<ReleaseManager, BootstrapError> {
        let root = data_dir.join("releases");
        let dir = ReleaseDir::open(&root)?;
        let registry = Registry::open(&root.join("releases.sqlite3"))?;
        // The pointer file is the truth about what is active; the registry follows it.
        let mut channel = registry.channel(&config.dataset, &config.channel)?;
        let pointed = dir.active().map(|p| p.release_id);
        if channel.active != pointed {
            channel.active = pointed;
            registry.set_channel(&config.dataset, &config.channel, &channel)?;
        }
        let tls = tls_config::client_config(config.extra_ca_pem.as_deref())
            .map_err(|e| BootstrapError::Tls(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| BootstrapError::Tls(e.to_string()))?;
        Ok(ReleaseManager { config, dir, registry: Mutex::new(registry), http, mandatory_minimum: Mutex::new(None) })
    }

    fn registry(&self) -> Result<std::sync::MutexGuard<'_, Registry>, BootstrapError> {
        self.registry.lock().map_err(|_| BootstrapError::Poisoned)
    }

    /// The release to open now: the active downloaded one, else the embedded one.
    pub fn active(&self) -> Option<ActiveRelease> {
        if let Some(p) = self.dir.active() {
            return Some(ActiveRelease {
                files: p
                    .artifacts
                    .iter()
                    .map(|a| (a.name.clone(), self.dir.artifact_path(&p.release_id, &a.name)))
                    .collect(),
                release_id: p.release_id,
                version: p.version,
                embedded: false,
            });
        }
        self.config.embedded.as_ref().map(|e| ActiveRelease {
            release_id: e.pointer.release_id.clone(),
            version: e.pointer.version.clone(),
            embedded: true,
            files: e.pointer.artifacts.iter().map(|a| (a.name.clone(), e.dir.join(&a.name))).collect(),
        })
    }

    /// Whether the active release is below the channel's mandatory minimum
    /// (as of the last accepted manifest): the app should tell the user, or
    /// block features, until an update succeeds.
    pub fn mandatory_status(&self) -> MandatoryStatus {
        let minimum = self.mandatory_minimum.lock().map(|m| *m).unwrap_or(None);
        let active = self.active().and_then(|a| a.version.parse::<Version>().ok());
        let active_is_below = match (minimum, active) {
            (Some(min), Some(v)) => v < min,
            (Some(_), None) => true,
            (None, _) => false,
        };
        MandatoryStatus { minimum, active_is_below }
    }

    async fn fetch(&self, path: &str) -> Result<SignedManifest, BootstrapError> {
        let url = format!("{}{path}", self.config.relay_url.trim_end_matches('/'));
        let response = self
            .http
            .get(url)
            .query(&[
                ("app_version", self.config.app_version.to_string()),
                ("install_id", self.config.install_id.clone()),
            ])
            .send()
            .await
            .map_err(|e| BootstrapError::Offline(e.to_string()))?;
        match response.status().as_u16() {
            200 => response.json().await.map_err(|e| BootstrapError::Offline(e.to_string())),
            404 => Err(BootstrapError::NothingOffered),
            s => Err(BootstrapError::Http(s)),
        }
    }

    /// Verifies a manifest and, if it is fresh, records its sequence.
    fn accept(&self, signed: &SignedManifest) -> Result<Manifest, BootstrapError> {
        let registry = self.registry()?;
        let mut channel = registry.channel(&self.config.dataset, &self.config.channel)?;
        let manifest = self.config.trusted_keys.accept(signed, channel.accepted_sequence, now_ms())?;
        if manifest.dataset != self.config.dataset || manifest.channel != self.config.channel {
            return Err(ManifestError::Malformed("the manifest is for another dataset or channel".into()).into());
        }
        channel.accepted_sequence = Some(manifest.sequence.max(channel.accepted_sequence.unwrap_or(0)));
        registry.set_channel(&self.config.dataset, &self.config.channel, &channel)?;
        Ok(manifest)
    }

    fn update_mandatory(&self, manifest: &Manifest) {
        if let Ok(mut m) = self.mandatory_minimum.lock() {
            *m = manifest.channel_min_version;
        }
    }

    /// Checks for a newer release and installs it. Errors never touch the active release.
    pub async fn check_for_update(
        &self,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<UpdateOutcome, BootstrapError> {
        if !self.config.remote_bootstrap {
            return Ok(UpdateOutcome::Disabled);
        }
        // Is the release we run deprecated upstream?
        if let Some(active) = self.dir.active()
            && let Ok(signed) = self.fetch(&format!("/v1/releases/{}/manifest", active.release_id)).await
        {
            let manifest = self.accept(&signed)?;
            if manifest.deprecated.is_some() {
                let to = self.roll_back(&active.release_id)?;
                return Ok(UpdateOutcome::RolledBack { from: active.release_id, to });
            }
        }
        let signed = self
            .fetch(&format!("/v1/datasets/{}/channels/{}/latest", self.config.dataset, self.config.channel))
            .await?;
        let manifest = self.accept(&signed)?;
        if !manifest.latest {
            return Err(BootstrapError::NotLatest(manifest.release_id));
        }
        self.update_mandatory(&manifest);
        let active = self.active();
        if active.as_ref().is_some_and(|a| a.release_id == manifest.release_id) {
            return Ok(UpdateOutcome::UpToDate);
        }
        // Never move back unless the operator said so in the signed manifest.
        if let Some(active) = &active
            && let Ok(active_version) = active.version.parse::<Version>()
            && manifest.version < active_version
            && !manifest.downgrade_allowed
        {
            tracing::warn!(offered = %manifest.version, active = %active_version, "refusing a downgrade the manifest does not allow");
            return Ok(UpdateOutcome::RefusedDowngrade {
                release_id: manifest.release_id,
                version: manifest.version.to_string(),
                active_version: active_version.to_string(),
            });
        }
        let manifest_json = serde_json::to_string(&manifest).map_err(std::io::Error::other)?;
        let known = self.registry()?.remember(&manifest, &manifest_json, now_ms())?;
        if known.state == "bad" {
            return Ok(UpdateOutcome::SkippedBad { release_id: manifest.release_id });
        }
        self.install(&manifest, progress, cancel).await?;
        Ok(UpdateOutcome::Activated { release_id: manifest.release_id, version: manifest.version.to_string() })
    }

    async fn install(
        &self,
        manifest: &Manifest,
        progress: &(dyn Fn(Progress) + Send + Sync),
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), BootstrapError> {
        let id = &manifest.release_id;
        self.registry()?.set_release_state(id, "downloading", now_ms())?;
        let total: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
        let mut before = 0u64;
        for a in &manifest.artifacts {
            let dest = self.dir.artifact_path(id, &a.name);
            let pointer = ActivePointer {
                artifacts: vec![PointerArtifact { name: a.name.clone(), sha256: a.sha256.clone(), size: a.size }],
                ..pointer_of(manifest)
            };
            if self.dir.verify(&pointer).is_ok() {
                // Verified earlier (an interrupted update): never downloaded again.
                self.registry()?.set_artifact_state(id, &a.name, "verified")?;
                before += a.size;
                continue;
            }
            let url = if a.url.starts_with("http://") || a.url.starts_with("https://") {
                a.url.clone()
            } else {
                format!("{}{}", self.config.relay_url.trim_end_matches('/'), a.url)
            };
            let req = DownloadRequest { url, dest, sha256: a.sha256.clone(), size: a.size };
            self.registry()?.set_artifact_state(id, &a.name, "downloading")?;
            let offset = before;
            let report = |p: Progress| progress(Progress { done: offset + p.done, total });
            if let Err(e) = download(&self.http, &req, self.config.retry, &report, cancel).await {
                let registry = self.registry()?;
                registry.set_artifact_state(id, &a.name, "failed")?;
                registry.set_release_state(id, "failed", now_ms())?;
                return Err(e.into());
            }
            self.registry()?.set_artifact_state(id, &a.name, "verified")?;
            before += a.size;
        }
        self.registry()?.set_release_state(id, "verified", now_ms())?;
        let previous = self.dir.active().map(|p| p.release_id);
        self.dir.activate(&pointer_of(manifest), self.config.crash_point)?;
        let registry = self.registry()?;
        let mut channel = registry.channel(&self.config.dataset, &self.config.channel)?;
        // The release we leave becomes the fallback only if it ever launched fine.
        if let Some(prev) = &previous {
            let confirmed = registry.release(prev)?.is_some_and(|r| r.launch_confirmed);
            if confirmed {
                channel.previous_good = Some(prev.clone());
            }
            registry.set_release_state(prev, "superseded", now_ms())?;
        }
        channel.active = Some(id.clone());
        registry.set_channel(&self.config.dataset, &self.config.channel, &channel)?;
        registry.set_release_state(id, "active", now_ms())?;
        drop(registry);
        self.collect_garbage()?;
        Ok(())
    }

    /// Removes stored releases other than the active and previous known-good.
    fn collect_garbage(&self) -> Result<(), BootstrapError> {
        let channel = self.registry()?.channel(&self.config.dataset, &self.config.channel)?;
        let keep: Vec<&str> =
            [channel.active.as_deref(), channel.previous_good.as_deref()].into_iter().flatten().collect();
        self.dir.collect_garbage(&keep)?;
        Ok(())
    }

    /// Goes back from `bad` to the previous known-good release, or the
    /// embedded one, and marks `bad` so it is never picked again.
    fn roll_back(&self, bad: &str) -> Result<String, BootstrapError> {
        let registry = self.registry()?;
        registry.set_release_state(bad, "bad", now_ms())?;
        let mut channel = registry.channel(&self.config.dataset, &self.config.channel)?;
        let target = channel.previous_good.clone().and_then(|id| {
            let manifest: Manifest = serde_json::from_str(&registry.release(&id).ok()??.manifest).ok()?;
            Some(pointer_of(&manifest))
        });
        let to = match target {
            Some(pointer) if self.dir.activate(&pointer, None).is_ok() => pointer.release_id,
            _ => {
                // Back to the embedded release: no pointer means "embedded".
                self.dir.deactivate()?;
                self.config.embedded.as_ref().map(|e| e.pointer.release_id.clone()).unwrap_or_default()
            }
        };
        channel.active = self.dir.active().map(|p| p.release_id);
        channel.previous_good = None;
        registry.set_channel(&self.config.dataset, &self.config.channel, &channel)?;
        if let Some(active) = &channel.active {
            registry.set_release_state(active, "active", now_ms())?;
        }
        Ok(to)
    }

    /// The app gives up on the active downloaded release (it found it
    /// unusable on its own): goes back as after too many failed launches,
    /// and never picks it again. Returns the release now active (empty for
    /// none), or `None` when the embedded release is already what runs.
    pub fn roll_back_active(&self) -> Result<Option<String>, BootstrapError> {
        let Some(active) = self.dir.active() else { return Ok(None) };
        self.roll_back(&active.release_id).map(Some)
    }

    /// The app says whether the active release launched fine. After
    /// `max_failed_launches` failures it is rolled back; returns the release
    /// now active if that happened.
    pub fn report_launch(&self, ok: bool) -> Result<Option<String>, BootstrapError> {
        let Some(active) = self.dir.active() else { return Ok(None) };
        let failures = self.registry()?.record_launch(&active.release_id, ok)?;
        if !ok && failures >= self.config.max_failed_launches {
            return self.roll_back(&active.release_id).map(Some);
        }
        Ok(None)
    }
}

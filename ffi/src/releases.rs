//! `ReleaseUpdater`: the dataset release an app opens, and its updates.
//!
//! The app asks [`ReleaseUpdater::active`] at launch (offline, at once),
//! opens those files, and reports how the launch went. In the background
//! it calls [`ReleaseUpdater::check_for_update`], which downloads a newer
//! release resumably, verifies it and activates it atomically; the new
//! files are used from the next launch. Nothing here touches the active
//! release before its replacement is complete and verified.

use crate::{ProgressError, guard, runtime};
use engine::bootstrap::download::{DownloadError, Progress, RetryPolicy};
use engine::bootstrap::manager::{self, BootstrapError, ReleaseManager};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// One file of an embedded release, as the app ships it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReleaseFileInfo {
    pub name: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
}

/// The release inside the app package: used until a download replaces it,
/// and gone back to when nothing better is left.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EmbeddedRelease {
    /// Directory holding the files (unpacked from the app's assets).
    pub dir: String,
    pub release_id: String,
    pub version: String,
    pub files: Vec<ReleaseFileInfo>,
}

/// Which dataset this app follows and whom it trusts.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReleaseOptions {
    /// A directory the app owns; releases live under `releases/` in it.
    pub data_dir: String,
    pub dataset: String,
    pub channel: String,
    /// This app's version (`MAJOR.MINOR.PATCH`), for `min_app_version`.
    pub app_version: String,
    /// Stable per installation: staged rollouts bucket on it.
    pub install_id: String,
    /// The relay's base URL, `https://host` (`http://` only to loopback).
    pub relay_url: String,
    /// Manifest signing keys to trust, each `KEY_ID=BASE64_PUBLIC_KEY`
    /// (as `relay keygen` prints them).
    pub trusted_keys: Vec<String>,
    pub embedded: Option<EmbeddedRelease>,
    /// Failed launches of a new release before going back.
    pub max_failed_launches: u32,
    /// A CA certificate (PEM) to trust besides the system's web roots.
    pub extra_ca_pem: Option<String>,
}

/// A file of the release to open.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReleaseFile {
    pub name: String,
    pub path: String,
}

/// The release the app should open now.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ActiveRelease {
    pub release_id: String,
    pub version: String,
    /// The one shipped inside the app.
    pub embedded: bool,
    pub files: Vec<ReleaseFile>,
}

/// What a check for an update did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum UpdateOutcome {
    /// Remote updates are off in this build.
    Disabled,
    UpToDate,
    /// Downloaded, verified and active: open it at the next launch and report it.
    Activated {
        release_id: String,
        version: String,
    },
    /// The newest offered release failed here before; it is not picked again.
    SkippedBad {
        release_id: String,
    },
    /// The active release was withdrawn upstream; the previous one is active again.
    RolledBack {
        from: String,
        to: String,
    },
    /// The relay offered an older release without the signed manifest allowing it.
    RefusedDowngrade {
        release_id: String,
        version: String,
        active_version: String,
    },
}

impl From<manager::UpdateOutcome> for UpdateOutcome {
    fn from(o: manager::UpdateOutcome) -> UpdateOutcome {
        use manager::UpdateOutcome as O;
        match o {
            O::Disabled => UpdateOutcome::Disabled,
            O::UpToDate => UpdateOutcome::UpToDate,
            O::Activated { release_id, version } => UpdateOutcome::Activated { release_id, version },
            O::SkippedBad { release_id } => UpdateOutcome::SkippedBad { release_id },
            O::RolledBack { from, to } => UpdateOutcome::RolledBack { from, to },
            O::RefusedDowngrade { release_id, version, active_version } => {
                UpdateOutcome::RefusedDowngrade { release_id, version, active_version }
            }
        }
    }
}

impl From<BootstrapError> for ProgressError {
    fn from(e: BootstrapError) -> ProgressError {
        match e {
            BootstrapError::Download(DownloadError::Cancelled) => ProgressError::Cancelled,
            BootstrapError::Download(DownloadError::DiskFull) => ProgressError::DiskFull,
            e @ (BootstrapError::Offline(_) | BootstrapError::Http(_) | BootstrapError::Download(_)) => {
                ProgressError::Network { reason: e.to_string() }
            }
            BootstrapError::NothingOffered => ProgressError::NothingOffered,
            e @ (BootstrapError::Manifest(_) | BootstrapError::NotLatest(_)) => {
                ProgressError::ManifestRefused { reason: e.to_string() }
            }
            BootstrapError::Tls(reason) => ProgressError::InvalidInput { reason },
            e @ (BootstrapError::Activation(_) | BootstrapError::Registry(_) | BootstrapError::Io(_)) => {
                ProgressError::Storage { reason: e.to_string() }
            }
            BootstrapError::Poisoned => ProgressError::Internal { reason: "release state lock poisoned".into() },
        }
    }
}

/// Told how a download goes. Called on a background thread, at most about
/// once per percent: keep it short (post to the UI thread).
#[uniffi::export(with_foreign)]
pub trait UpdateListener: Send + Sync {
    fn on_progress(&self, done_bytes: u64, total_bytes: u64);
}

/// Cancels a [`ReleaseUpdater::check_for_update`] in flight. What was
/// downloaded stays on disk, and the next check resumes from it.
#[derive(uniffi::Object)]
pub struct CancelHandle {
    /// Whether it was cancelled, and the checks it cancels.
    state: Mutex<(bool, Vec<Weak<watch::Sender<bool>>>)>,
}

#[uniffi::export]
impl CancelHandle {
    #[uniffi::constructor]
    pub fn new() -> Result<Arc<CancelHandle>, ProgressError> {
        guard(|| Ok(Arc::new(CancelHandle { state: Mutex::new((false, Vec::new())) })))
    }

    /// Idempotent; a check started with a cancelled handle stops at once.
    pub fn cancel(&self) -> Result<(), ProgressError> {
        guard(|| {
            let mut state = self
                .state
                .lock()
                .map_err(|_| ProgressError::Internal { reason: "cancel handle lock poisoned".into() })?;
            state.0 = true;
            for check in state.1.drain(..).filter_map(|w| w.upgrade()) {
                check.send_replace(true);
            }
            Ok(())
        })
    }
}

impl CancelHandle {
    /// Makes `check` see this handle's cancel (at once if already cancelled).
    fn register(&self, check: &Arc<watch::Sender<bool>>) {
        if let Ok(mut state) = self.state.lock() {
            if state.0 {
                check.send_replace(true);
            } else {
                state.1.retain(|w| w.strong_count() > 0);
                state.1.push(Arc::downgrade(check));
            }
        }
    }
}

/// Cancels the check when dropped: a cancelled Kotlin coroutine (or Swift
/// task) drops the call's future, and the download must stop with it.
struct CancelOnDrop(Arc<watch::Sender<bool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The app's releases of one dataset and channel.
#[derive(uniffi::Object)]
pub struct ReleaseUpdater {
    manager: Arc<ReleaseManager>,
    /// One update at a time: two would download the same files.
    updating: Arc<tokio::sync::Mutex<()>>,
}

fn parse_keys(keys: &[String]) -> Result<release::manifest::TrustedKeys, ProgressError> {
    use base64::Engine;
    let mut trusted = release::manifest::TrustedKeys::new();
    for entry in keys {
        let bad = |why: &str| ProgressError::InvalidInput { reason: format!("trusted key `{entry}`: {why}") };
        let (kid, b64) = entry.split_once('=').ok_or_else(|| bad("expected KEY_ID=BASE64"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| bad("not base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad("not a 32-byte Ed25519 public key"))?;
        trusted.trust(kid.trim(), key).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(trusted)
}

fn embedded_release(e: EmbeddedRelease, dataset: &str, channel: &str) -> manager::EmbeddedRelease {
    use engine::bootstrap::activation::{ActivePointer, PointerArtifact};
    manager::EmbeddedRelease {
        dir: e.dir.into(),
        pointer: ActivePointer {
            release_id: e.release_id,
            dataset: dataset.into(),
            channel: channel.into(),
            version: e.version,
            artifacts: e
                .files
                .into_iter()
                .map(|f| PointerArtifact { name: f.name, sha256: f.sha256, size: f.size })
                .collect(),
        },
    }
}

#[uniffi::export]
impl ReleaseUpdater {
    /// Opens the device's release state. Never touches the network.
    #[uniffi::constructor]
    pub fn open(options: ReleaseOptions) -> Result<Arc<ReleaseUpdater>, ProgressError> {
        guard(|| {
            let app_version = options.app_version.parse().map_err(|e: release::version::VersionError| {
                ProgressError::InvalidInput { reason: format!("app_version: {}", e.0) }
            })?;
            let config = manager::BootstrapConfig {
                embedded: options.embedded.map(|e| embedded_release(e, &options.dataset, &options.channel)),
                dataset: options.dataset,
                channel: options.channel,
                app_version,
                install_id: options.install_id,
                relay_url: options.relay_url,
                trusted_keys: parse_keys(&options.trusted_keys)?,
                remote_bootstrap: manager::REMOTE_BOOTSTRAP_DEFAULT,
                max_failed_launches: options.max_failed_launches.max(1),
                retry: RetryPolicy {
                    max_attempts: 6,
                    initial_backoff: Duration::from_millis(500),
                    max_backoff: Duration::from_secs(60),
                },
                extra_ca_pem: options.extra_ca_pem.map(String::into_bytes),
                crash_point: None,
            };
            // reqwest's client is built inside the runtime it will run on.
            let _entered = runtime::get()?.enter();
            let manager = ReleaseManager::open(std::path::Path::new(&options.data_dir), config)?;
            Ok(Arc::new(ReleaseUpdater { manager: Arc::new(manager), updating: Arc::new(tokio::sync::Mutex::new(())) }))
        })
    }

    /// The release to open now: the active download, else the embedded one;
    /// `null` only when there is neither.
    pub fn active(&self) -> Result<Option<ActiveRelease>, ProgressError> {
        guard(|| {
            Ok(self.manager.active().map(|a| ActiveRelease {
                release_id: a.release_id,
                version: a.version,
                embedded: a.embedded,
                files: a
                    .files
                    .into_iter()
                    .map(|(name, path)| ReleaseFile { name, path: path.display().to_string() })
                    .collect(),
            }))
        })
    }

    /// Checks for a newer release and installs it (suspends; never blocks
    /// the caller's thread). Cancel with `cancel`, or by cancelling the
    /// coroutine or task; a later check resumes the download.
    pub async fn check_for_update(
        &self,
        listener: Arc<dyn UpdateListener>,
        cancel: Arc<CancelHandle>,
    ) -> Result<UpdateOutcome, ProgressError> {
        // Held by the task, not by this future: a check whose caller went
        // away (a cancelled coroutine) keeps it until its download has
        // really stopped, so the next check never writes beside it.
        let one_at_a_time = self.updating.clone().lock_owned().await;
        let manager = self.manager.clone();
        // The download reads this flag at every chunk; the handle and the
        // drop of this future set it directly.
        let cancel_flag = Arc::new(watch::channel(false).0);
        cancel.register(&cancel_flag);
        let mut cancelled = cancel_flag.subscribe();
        let _on_drop = CancelOnDrop(cancel_flag);
        let listener_percent = AtomicU64::new(u64::MAX);
        let task = runtime::get()?.spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let progress = move |p: Progress| {
                let percent = p.done.saturating_mul(100).checked_div(p.total).unwrap_or(100);
                if listener_percent.swap(percent, Ordering::Relaxed) != percent || p.done == p.total {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_progress(p.done, p.total)
                    }));
                }
            };
            manager.check_for_update(&progress, &mut cancelled).await
        });
        match task.await {
            Ok(result) => Ok(result?.into()),
            Err(e) => Err(ProgressError::Internal { reason: format!("the update failed: {e}") }),
        }
    }

    /// The app says whether the active release launched fine. After too
    /// many failures it goes back; returns the release now active then.
    pub fn report_launch(&self, ok: bool) -> Result<Option<String>, ProgressError> {
        guard(|| Ok(self.manager.report_launch(ok)?))
    }

    /// Gives up on the active downloaded release at once (the app found it
    /// unusable): goes back to the previous good one or the embedded one,
    /// and never picks it again. Returns the release now active, or `null`
    /// when the embedded release already runs.
    pub fn roll_back(&self) -> Result<Option<String>, ProgressError> {
        guard(|| Ok(self.manager.roll_back_active()?))
    }
}

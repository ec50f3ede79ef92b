//! The engine's own tokio runtime: apps bring none, and no call blocks the
//! caller's thread on the network. One for the process, never dropped (a
//! runtime dropped from one of its own threads panics, and the last
//! reference to an engine may go away anywhere, a listener included).

use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime, started on first use with two workers (sync is I/O bound;
/// phones have cores to spare for the app).
pub(crate) fn get() -> Result<&'static Runtime, crate::ProgressError> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("progress-engine")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| crate::ProgressError::Internal { reason: format!("cannot start the engine's runtime: {e}") })
}

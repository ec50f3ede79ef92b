//! The progress engine as Android and iOS apps see it.
//!
//! UniFFI exports (procedural macros, no UDL) from which `ffi/generate.sh`
//! generates the Kotlin and Swift sources in library mode. This crate only
//! translates: every decision stays in `engine`. Its rules:
//!
//! - every export is fallible and answers a [`ProgressError`] the app can
//!   switch on; a panic inside the engine becomes
//!   [`ProgressError::Internal`], never an abort ([`guard`]);
//! - no call waits on the network: local calls answer from the device
//!   database, sync runs on the engine's own tokio runtime ([`runtime`]);
//! - every object is `Send + Sync`: calls from any thread are safe.

mod engine;
mod error;
mod events;
mod logging;
mod releases;
mod runtime;
mod types;

pub use engine::ProgressEngine;
pub use error::ProgressError;
pub use events::{ChangeListener, EngineEvent, Subscription};
pub use logging::{LogLevel, LogListener, clear_log_listener, set_log_listener};
pub use releases::{
    ActiveRelease, CancelHandle, EmbeddedRelease, ReleaseFile, ReleaseFileInfo, ReleaseOptions, ReleaseUpdater,
    UpdateListener, UpdateOutcome,
};
pub use types::*;

uniffi::setup_scaffolding!();

/// Runs `f`, turning a panic into [`ProgressError::Internal`]: a bug in the
/// engine must surface as an error the app can report, not kill the app.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, ProgressError>) -> Result<T, ProgressError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "engine panicked; reported to the app as an error");
            Err(ProgressError::Internal { reason: format!("the engine failed: {what}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let result: Result<(), ProgressError> = guard(|| panic!("boom"));
        match result {
            Err(ProgressError::Internal { reason }) => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("expected Internal, got {other:?}"),
        }
    }

    #[test]
    fn a_negative_or_huge_duration_is_refused() {
        for duration_ms in [-1, i64::from(u32::MAX) + 1] {
            let review = NewReview {
                item_id: "w".into(),
                rating: Rating::Good,
                reviewed_at_ms: 1,
                duration_ms,
                session_id: None,
            };
            let result = ::engine::NewReview::try_from(review);
            assert!(matches!(result, Err(ProgressError::InvalidInput { .. })), "{duration_ms}: {result:?}");
        }
    }

    #[test]
    fn a_closed_engine_answers_closed_and_the_database_opens_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options =
            EngineOptions { data_dir: dir.path().display().to_string(), user_id: "u".into(), device_id: "d".into() };
        let engine = ProgressEngine::open(options.clone()).expect("opens");
        engine.shutdown().expect("shuts");
        assert!(matches!(engine.review_count(), Err(ProgressError::Closed)));
        assert!(matches!(engine.shutdown(), Err(ProgressError::Closed)));
        drop(engine);
        let again = ProgressEngine::open(options).expect("opens again");
        assert_eq!(again.review_count().expect("count"), 0);
    }
}

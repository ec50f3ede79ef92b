//! `ProgressEngine`: the engine's API for apps, one method per call.

use crate::events::{self, ChangeListener, Subscription};
use crate::types::*;
use crate::{ProgressError, guard, runtime};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A user's progress on this device. Open one per user and data directory;
/// every method is safe from any thread and none waits on the network.
#[derive(uniffi::Object)]
pub struct ProgressEngine {
    engine: engine::Engine,
    /// Listeners to stop when the engine closes.
    subscriptions: Mutex<Vec<Weak<Subscription>>>,
}

/// Adapts the app's provider to the engine's.
struct AppTokens(Arc<dyn TokenProvider>);

impl engine::TokenProvider for AppTokens {
    fn token(&self) -> Result<String, String> {
        self.0.token().map_err(|e| e.to_string())
    }
}

#[uniffi::export]
impl ProgressEngine {
    /// Opens (or creates) the device database under `options.data_dir`.
    /// Fast at any history size: nothing is replayed or loaded eagerly.
    #[uniffi::constructor]
    pub fn open(options: EngineOptions) -> Result<Arc<ProgressEngine>, ProgressError> {
        guard(|| {
            let engine = engine::Engine::open(engine::EngineConfig {
                data_dir: options.data_dir.into(),
                user_id: options.user_id,
                device_id: options.device_id,
            })?;
            Ok(Arc::new(ProgressEngine { engine, subscriptions: Mutex::new(Vec::new()) }))
        })
    }

    /// Stops sync and listeners, waits for database work in flight, and
    /// shuts the database (file locks released). Call it when the app goes
    /// to the background on iOS. Later calls throw `Closed`, this one too.
    /// (Named `shutdown`, not `close`: Kotlin's `close()` is
    /// `AutoCloseable`'s, which releases this object and, with the last
    /// reference, shuts the engine the same way.)
    pub fn shutdown(&self) -> Result<(), ProgressError> {
        guard(|| {
            let subscriptions = self.subscriptions.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
            for s in subscriptions.iter().filter_map(Weak::upgrade) {
                s.cancel()?;
            }
            Ok(self.engine.close()?)
        })
    }

    /// Starts a study session.
    pub fn start_session(&self, mode: String, started_at_ms: i64) -> Result<Session, ProgressError> {
        guard(|| Ok(self.engine.start_session(&mode, started_at_ms)?.into()))
    }

    /// Ends a session with its tallies and notes.
    pub fn end_session(
        &self,
        session_id: String,
        ended_at_ms: i64,
        counts: SessionCounts,
        notes: String,
    ) -> Result<Session, ProgressError> {
        guard(|| Ok(self.engine.end_session(&session_id, ended_at_ms, counts.into(), &notes)?.into()))
    }

    /// Records a review; durable when this returns, synced when a network exists.
    pub fn record_review(&self, review: NewReview) -> Result<Review, ProgressError> {
        guard(|| Ok(self.engine.record_review(review.try_into()?)?.into()))
    }

    /// An item's memory state; `null` for an item never reviewed.
    pub fn memory_state(&self, item_id: String) -> Result<Option<MemoryState>, ProgressError> {
        guard(|| Ok(self.engine.memory_state(&item_id)?.map(Into::into)))
    }

    /// Up to `limit` items due at `now_ms`, most overdue first.
    pub fn due_items(&self, now_ms: i64, limit: u32) -> Result<Vec<MemoryState>, ProgressError> {
        guard(|| Ok(self.engine.due_items(now_ms, limit)?.into_iter().map(Into::into).collect()))
    }

    /// Sessions started in `[from_ms, to_ms)`.
    pub fn sessions(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Session>, ProgressError> {
        guard(|| Ok(self.engine.sessions(from_ms, to_ms)?.into_iter().map(Into::into).collect()))
    }

    /// Every review of an item, in replay order.
    pub fn reviews_of(&self, item_id: String) -> Result<Vec<Review>, ProgressError> {
        guard(|| Ok(self.engine.reviews_of(&item_id)?.into_iter().map(Into::into).collect()))
    }

    /// How many reviews this device knows of, from every device.
    pub fn review_count(&self) -> Result<u64, ProgressError> {
        guard(|| Ok(self.engine.review_count()?))
    }

    /// Where sync stands.
    pub fn sync_status(&self) -> Result<SyncStatus, ProgressError> {
        guard(|| Ok(self.engine.sync_status()?.into()))
    }

    /// Starts background sync with the relay (replacing a running one);
    /// returns at once. `tokens` is asked for a token before every
    /// connection attempt.
    pub fn start_sync(&self, options: SyncOptions, tokens: Arc<dyn TokenProvider>) -> Result<(), ProgressError> {
        guard(|| {
            if options.initial_backoff_ms == 0 || options.max_backoff_ms < options.initial_backoff_ms {
                return Err(ProgressError::InvalidInput {
                    reason: "backoff must be at least 1 ms and max_backoff_ms at least initial_backoff_ms".into(),
                });
            }
            let mut config = engine::RelayConfig::with_credentials(
                options.url,
                engine::Credentials::Provider(Arc::new(AppTokens(tokens))),
            );
            config.initial_backoff = Duration::from_millis(options.initial_backoff_ms);
            config.max_backoff = Duration::from_millis(options.max_backoff_ms);
            config.extra_ca_pem = options.extra_ca_pem.map(String::into_bytes);
            config.check().map_err(|reason| ProgressError::InvalidInput { reason })?;
            let _entered = runtime::get()?.enter();
            Ok(self.engine.start_sync(config)?)
        })
    }

    /// Stops background sync (the app goes offline or to the background).
    /// Local calls keep working.
    pub fn stop_sync(&self) -> Result<(), ProgressError> {
        guard(|| {
            self.engine.stop_sync();
            Ok(())
        })
    }

    /// Calls `listener` for every change, in order, on a background thread,
    /// until the subscription is cancelled or the engine closes.
    pub fn subscribe(&self, listener: Arc<dyn ChangeListener>) -> Result<Arc<Subscription>, ProgressError> {
        guard(|| {
            if self.engine.is_closed() {
                return Err(ProgressError::Closed);
            }
            let subscription = events::subscribe(runtime::get()?, self.engine.subscribe(), listener);
            if let Ok(mut all) = self.subscriptions.lock() {
                all.retain(|w| w.strong_count() > 0);
                all.push(Arc::downgrade(&subscription));
            }
            Ok(subscription)
        })
    }
}

/// The last reference gone (Kotlin's `close()`, Swift's deinit): shut the
/// engine as [`ProgressEngine::shutdown`] does.
impl Drop for ProgressEngine {
    fn drop(&mut self) {
        // `shutdown` runs inside `guard`, so a panic cannot escape a drop.
        let _ = self.shutdown();
    }
}

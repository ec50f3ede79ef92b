//! Change events for the app: a listener it implements, called in order on
//! a background thread. Kotlin wraps it as a `Flow`, Swift as an
//! `AsyncSequence` (hand-written layers next to the generated sources).

use crate::{ProgressError, SyncStatus, guard};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// What changed.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum EngineEvent {
    /// Reviews arrived from another device; these items' memory states changed.
    ItemsChanged { item_ids: Vec<String> },
    /// Sessions were created or changed on another device.
    SessionsChanged { session_ids: Vec<String> },
    /// Sync status changed.
    SyncChanged { status: SyncStatus },
    /// The listener fell this many events behind and they were dropped
    /// (it blocked for too long): re-read what the screen shows.
    Missed { count: u64 },
}

impl From<engine::ChangeEvent> for EngineEvent {
    fn from(e: engine::ChangeEvent) -> EngineEvent {
        match e {
            engine::ChangeEvent::ItemsChanged { item_ids } => EngineEvent::ItemsChanged { item_ids },
            engine::ChangeEvent::SessionsChanged { session_ids } => EngineEvent::SessionsChanged { session_ids },
            engine::ChangeEvent::Sync(status) => EngineEvent::SyncChanged { status: status.into() },
        }
    }
}

/// Implemented by the app. Called once per event, in order, never two at
/// once for one listener, on a background thread.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    fn on_event(&self, event: EngineEvent);
}

/// A listener's registration. Events stop after [`Subscription::cancel`],
/// or when the engine closes.
#[derive(uniffi::Object)]
pub struct Subscription {
    stop: Mutex<Option<watch::Sender<bool>>>,
}

#[uniffi::export]
impl Subscription {
    /// Stops the events (idempotent).
    pub fn cancel(&self) -> Result<(), ProgressError> {
        guard(|| {
            if let Ok(mut stop) = self.stop.lock()
                && let Some(tx) = stop.take()
            {
                let _ = tx.send(true);
            }
            Ok(())
        })
    }
}

/// Forwards `events` to `listener` until cancelled or the engine's sender
/// is gone. Each call runs on a blocking thread (the app's code may block)
/// and is awaited before the next, so the order holds.
pub(crate) fn subscribe(
    runtime: &tokio::runtime::Runtime,
    mut events: broadcast::Receiver<engine::ChangeEvent>,
    listener: Arc<dyn ChangeListener>,
) -> Arc<Subscription> {
    let (tx, mut stop) = watch::channel(false);
    runtime.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.changed() => return,
                e = events.recv() => match e {
                    Ok(e) => EngineEvent::from(e),
                    Err(broadcast::error::RecvError::Lagged(n)) => EngineEvent::Missed { count: n },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let listener = listener.clone();
            let delivered = tokio::task::spawn_blocking(move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener.on_event(event)))
            })
            .await;
            if !matches!(delivered, Ok(Ok(()))) {
                tracing::warn!("a change listener failed; its events stop");
                return;
            }
        }
    });
    Arc::new(Subscription { stop: Mutex::new(Some(tx)) })
}

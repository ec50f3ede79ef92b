//! The logging bridge: the engine's `tracing` output delivered to a
//! listener the app implements (which forwards it to logcat or os_log).
//!
//! Events are queued (at most [`QUEUE`] lines of at most [`MAX_LINE`]
//! bytes) and delivered in order by one thread of their own, so a slow
//! listener never stalls the engine, and a listener that calls back into
//! the engine cannot deadlock it. Lines beyond the queue are dropped and
//! counted; the next delivered line reports how many.

use crate::{ProgressError, guard};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

const QUEUE: usize = 1024;
const MAX_LINE: usize = 4096;

/// How severe a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn rank(self) -> u8 {
        match self {
            LogLevel::Error => 1,
            LogLevel::Warn => 2,
            LogLevel::Info => 3,
            LogLevel::Debug => 4,
            LogLevel::Trace => 5,
        }
    }

    fn of(level: &tracing::Level) -> LogLevel {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// Implemented by the app. Called in order on the bridge's own thread.
#[uniffi::export(with_foreign)]
pub trait LogListener: Send + Sync {
    /// `target` is the Rust module (`engine::sync::driver`); `message`
    /// holds the event's text and its fields as `key=value`.
    fn on_log(&self, level: LogLevel, target: String, message: String);
}

struct Line {
    level: LogLevel,
    target: String,
    message: String,
}

struct Bridge {
    /// 0 = off, else the most verbose [`LogLevel::rank`] delivered.
    max_rank: AtomicU8,
    dropped: AtomicU64,
    queue: Mutex<Option<SyncSender<Line>>>,
}

/// The bridge, installed once as the process's subscriber; the error says
/// why it could not be (another subscriber was there first), every time.
static BRIDGE: OnceLock<Result<Arc<Bridge>, String>> = OnceLock::new();

struct BridgeLayer(Arc<Bridge>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if self.0.len() >= MAX_LINE {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{}{value:?}", if self.0.is_empty() { "" } else { " " });
        } else {
            let _ = write!(self.0, "{}{}={value:?}", if self.0.is_empty() { "" } else { " " }, field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BridgeLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        LogLevel::of(metadata.level()).rank() <= self.0.max_rank.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let Ok(queue) = self.0.queue.lock() else { return };
        let Some(queue) = queue.as_ref() else { return };
        let mut text = Text(String::new());
        event.record(&mut text);
        let mut message = text.0;
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let dropped = self.0.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            message = format!("({dropped} log lines dropped before this one) {message}");
        }
        let line =
            Line { level: LogLevel::of(event.metadata().level()), target: event.metadata().target().into(), message };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(line) {
            self.0.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
        }
    }
}

/// Installs the bridge as the process's `tracing` subscriber (once).
fn bridge() -> Result<&'static Arc<Bridge>, ProgressError> {
    BRIDGE
        .get_or_init(|| {
            let bridge =
                Arc::new(Bridge { max_rank: AtomicU8::new(0), dropped: AtomicU64::new(0), queue: Mutex::new(None) });
            let subscriber = tracing_subscriber::registry().with(BridgeLayer(bridge.clone()));
            tracing::subscriber::set_global_default(subscriber)
                .map_err(|_| "another tracing subscriber is already installed in this process".to_string())?;
            Ok(bridge)
        })
        .as_ref()
        .map_err(|reason| ProgressError::Internal { reason: reason.clone() })
}

/// Sends the engine's log lines at `level` and more severe to `listener`
/// (replacing any earlier one). Call it once, early (Application.onCreate,
/// or the app delegate).
#[uniffi::export]
pub fn set_log_listener(listener: Arc<dyn LogListener>, level: LogLevel) -> Result<(), ProgressError> {
    guard(|| {
        let bridge = bridge()?;
        let (tx, rx) = sync_channel::<Line>(QUEUE);
        std::thread::Builder::new()
            .name("progress-engine-log".into())
            .spawn(move || {
                // Ends when the sender is replaced or removed.
                for line in rx {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_log(line.level, line.target, line.message)
                    }));
                }
            })
            .map_err(|e| ProgressError::Internal { reason: format!("cannot start the log thread: {e}") })?;
        if let Ok(mut queue) = bridge.queue.lock() {
            *queue = Some(tx);
        }
        bridge.max_rank.store(level.rank(), Ordering::Relaxed);
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}

/// Stops delivering log lines.
#[uniffi::export]
pub fn clear_log_listener() -> Result<(), ProgressError> {
    guard(|| {
        if let Some(Ok(bridge)) = BRIDGE.get() {
            bridge.max_rank.store(0, Ordering::Relaxed);
            if let Ok(mut queue) = bridge.queue.lock() {
                *queue = None;
            }
            tracing::callsite::rebuild_interest_cache();
        }
        Ok(())
    })
}

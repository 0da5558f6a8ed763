//! Logging through `tracing`: lifecycle events at `info`, one access-log line per request on the
//! `pier::access` target, text or JSON lines, written by a background thread so a slow terminal
//! or disk never blocks a worker.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Keep the returned guard alive: dropping it flushes the log.
/// `RUST_LOG`, when set, replaces the configured filter.
pub fn init(settings: &LogSettings) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let access = if settings.access { "info" } else { "off" };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},pier::access={access}", settings.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

//! Shipping instances' output to their apps' log streams, off the instances' path: lines go
//! into a bounded queue that one task empties into Redis in batches. When the queue is full or
//! Redis is unreachable, lines are dropped and counted, never waited for: an app is never
//! blocked by its logging.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pier_model::platform::LogLine;
use pier_store::{now_ms, Store};
use tokio::sync::mpsc;

/// Lines waiting to be written, at most (about 16 MiB of typical lines).
const QUEUE: usize = 20_000;
/// Lines written per Redis round trip, at most.
const BATCH: usize = 500;

/// The runner's end of the queue.
pub struct LogShipper {
    tx: mpsc::Sender<(String, LogLine)>,
    dropped: Arc<AtomicU64>,
}

impl LogShipper {
    /// Starts the task that writes queued lines to `store`.
    pub fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, LogLine)>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = store.append_logs(&batch).await {
                    lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::debug!(error = %e, lines = batch.len(), "log lines dropped: Redis unreachable");
                }
                batch.clear();
            }
        });
        LogShipper { tx, dropped }
    }

    /// Queues one line of `app`'s instance `process`; drops it (counted) when the queue is full.
    pub fn push(&self, app: &str, process: &str, line: String) {
        let l = LogLine {
            id: String::new(),
            at_ms: now_ms(),
            source: "app".into(),
            process: process.to_string(),
            line,
        };
        if self.tx.try_send((app.to_string(), l)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped since the runner started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

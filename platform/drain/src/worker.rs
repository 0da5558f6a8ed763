//! One drain's delivery loop, a task of its own, so a slow or dead endpoint holds up no other
//! drain. It reads batches of the app's stream after the drain's cursor, delivers them, then
//! moves the cursor and writes the drain's status in one fenced write. A failed batch leaves
//! the cursor where it was and is tried again after a backoff (0.5 s doubling up to the
//! maximum). Lines the stream's cap removed before they were delivered are counted in
//! `dropped`.

use std::sync::Arc;
use std::time::Duration;

use pier_model::drain::{DrainRecord, DrainUrl};
use pier_store::{now_ms, Store, StoreError};
use tokio::sync::watch;

use crate::connect::Connector;
use crate::sink::Sink;

/// Most lines per batch.
pub const BATCH: usize = 500;
/// First wait after a failed batch; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often an idle drain looks at its stream without being woken.
const POLL: Duration = Duration::from_secs(2);
/// Between two tries of a write to Redis that failed.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// What a drain's task needs.
pub struct Worker {
    pub store: Store,
    /// The drainers' fencing token this drainer holds.
    pub token: u64,
    pub rec: DrainRecord,
    pub url: DrainUrl,
    pub connector: Arc<Connector>,
    /// Bumped when the app's stream has new lines.
    pub wake: watch::Receiver<u64>,
    /// Set (or dropped) to stop the task between batches.
    pub stop: watch::Receiver<bool>,
    pub max_backoff: Duration,
}

/// Why a write of progress ended the task.
enum Persisted {
    Written,
    /// The drain was removed, another drainer leads, or the task is stopping.
    End,
}

impl Worker {
    /// Delivers until the drain is removed, the drainer loses its lease, or `stop`.
    pub async fn run(mut self) {
        let app = self.rec.app.clone();
        let id = self.rec.id.clone();
        let mut cursor = match self.start_cursor().await {
            Some(c) => c,
            None => return,
        };
        let mut sink = Sink::new(self.url.clone(), &id);
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        tracing::debug!(app, id, to = %self.url.redacted(), cursor, "drain started");
        loop {
            if self.stopping() {
                return;
            }
            let batch = match self.store.stream_batch(&app, &cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(app, id, error = %e, "drain: cannot read the log stream");
                    if self.pause(REDIS_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let mut changed = false;
            let removed = batch.removed();
            if removed > self.rec.offset {
                let lost = removed - self.rec.offset;
                self.rec.dropped += lost;
                self.rec.offset = removed;
                changed = true;
                tracing::warn!(
                    app,
                    id,
                    lost,
                    "drain: lines removed by the log stream's cap before they were delivered"
                );
            } else if self.rec.offset > batch.added {
                // The stream was made anew (deleted, or Redis lost it): count from it.
                self.rec.offset = removed;
                changed = true;
            }
            if batch.lines.is_empty() {
                if changed && matches!(self.persist(None).await, Persisted::End) {
                    return;
                }
                if self.idle().await {
                    return;
                }
                continue;
            }
            match sink.send(&self.connector, &app, &batch.lines).await {
                Ok(()) => {
                    let n = batch.lines.len() as u64;
                    if let Some(last) = batch.lines.last() {
                        cursor.clone_from(&last.id);
                    }
                    self.rec.delivered += n;
                    self.rec.offset += n;
                    if failing {
                        tracing::info!(app, id, to = %self.url.redacted(), "drain delivering again");
                        failing = false;
                    }
                    backoff = FIRST_BACKOFF;
                    if matches!(self.persist(Some(&cursor)).await, Persisted::End) {
                        return;
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if !failing {
                        tracing::warn!(app, id, to = %self.url.redacted(), error = %text, "drain failing: the batch will be sent again");
                    }
                    failing = true;
                    self.rec.last_error = Some(text);
                    self.rec.last_error_at_ms = Some(now_ms());
                    if matches!(self.persist(None).await, Persisted::End) {
                        return;
                    }
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// The drain's cursor (the end of the stream if it has none, which only a record made by
    /// hand lacks); `None` when stopping.
    async fn start_cursor(&mut self) -> Option<String> {
        loop {
            let found = match self.store.drain_cursor(&self.rec.app, &self.rec.id).await {
                Ok(Some(c)) => Ok(c),
                Ok(None) => self
                    .store
                    .stream_batch(&self.rec.app, "0-0", 0)
                    .await
                    .map(|b| b.last_id),
                Err(e) => Err(e),
            };
            match found {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::debug!(app = %self.rec.app, id = %self.rec.id, error = %e, "drain: cannot read its cursor");
                    if self.pause(REDIS_RETRY).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Writes the drain's status (and its cursor, when given) until it is written.
    async fn persist(&mut self, cursor: Option<&str>) -> Persisted {
        loop {
            match self
                .store
                .drain_progress(self.token, &self.rec, cursor)
                .await
            {
                Ok(true) => return Persisted::Written,
                Ok(false) => {
                    tracing::info!(app = %self.rec.app, id = %self.rec.id, "drain removed: stopping");
                    return Persisted::End;
                }
                Err(StoreError::Fenced(_)) => {
                    tracing::info!(app = %self.rec.app, id = %self.rec.id, "another drainer leads: stopping");
                    return Persisted::End;
                }
                Err(e) => {
                    tracing::debug!(app = %self.rec.app, id = %self.rec.id, error = %e, "drain: cannot write its progress");
                    if self.pause(REDIS_RETRY).await {
                        return Persisted::End;
                    }
                }
            }
        }
    }

    /// Stop is set, or its sender is gone.
    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Waits `d`; `true` if the task is to stop.
    async fn pause(&mut self, d: Duration) -> bool {
        let stop = &mut self.stop;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(d) => {}
        }
        self.stopping()
    }

    /// Waits for new lines (or [`POLL`]); `true` if the task is to stop.
    async fn idle(&mut self) -> bool {
        let (stop, wake) = (&mut self.stop, &mut self.wake);
        let woken = async {
            if wake.changed().await.is_err() {
                // No one wakes this drain any more: the poll alone.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = woken => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        self.stopping()
    }
}

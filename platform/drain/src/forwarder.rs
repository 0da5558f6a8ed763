//! The leading drainer's work: a task per drain ([`crate::worker`]) and the wake-up reader
//! ([`crate::notify`]), brought in line with the drains in Redis at each rescan (every few
//! seconds): new drains start, removed ones stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pier_model::drain::DrainUrl;
use pier_store::{Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connect::Connector;
use crate::notify::{self, Wakers};
use crate::worker::Worker;

/// How long stopping waits for drains to finish their batch before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running task and its stop signal.
struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// The drains this drainer forwards while it holds fencing token `token`.
pub struct Forwarder {
    store: Store,
    token: u64,
    connector: Arc<Connector>,
    max_backoff: Duration,
    wakers: Wakers,
    notifier: Task,
    /// (app, drain id) → its task.
    tasks: BTreeMap<(String, String), Task>,
}

impl Forwarder {
    pub fn start(
        store: Store,
        token: u64,
        connector: Arc<Connector>,
        max_backoff: Duration,
    ) -> Self {
        let wakers = Wakers::default();
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(notify::run(store.clone(), wakers.clone(), rx));
        Forwarder {
            store,
            token,
            connector,
            max_backoff,
            wakers,
            notifier: Task { stop, handle },
            tasks: BTreeMap::new(),
        }
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    /// Reads the drains and starts and stops tasks to match.
    pub async fn rescan(&mut self) -> Result<(), StoreError> {
        let apps = self.store.drained_apps().await?;
        let mut wanted = BTreeMap::new();
        for app in &apps {
            for rec in self.store.drains(app).await? {
                wanted.insert((rec.app.clone(), rec.id.clone()), rec);
            }
        }
        self.tasks.retain(|key, task| {
            let keep = wanted.contains_key(key) && !task.handle.is_finished();
            if !keep {
                let _ = task.stop.send(true);
            }
            keep
        });
        self.wakers.retain(&apps);
        for (key, rec) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let url = match DrainUrl::parse(&rec.url) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(app = %rec.app, id = %rec.id, error = %e, "drain skipped: its URL does not parse");
                    continue;
                }
            };
            let (stop, rx) = watch::channel(false);
            let worker = Worker {
                store: self.store.clone(),
                token: self.token,
                wake: self.wakers.subscribe(&rec.app),
                rec,
                url,
                connector: self.connector.clone(),
                stop: rx,
                max_backoff: self.max_backoff,
            };
            let handle = tokio::spawn(worker.run());
            self.tasks.insert(key, Task { stop, handle });
        }
        Ok(())
    }

    /// Drains forwarded now.
    pub fn forwarding(&self) -> usize {
        self.tasks.len()
    }

    /// Stops every task: each finishes the batch it is sending (at most [`STOP_GRACE`]).
    pub async fn stop(self) {
        let mut all: Vec<Task> = self.tasks.into_values().collect();
        all.push(self.notifier);
        for t in &all {
            let _ = t.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for t in all {
            let abort = t.handle.abort_handle();
            if tokio::time::timeout_at(deadline, t.handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

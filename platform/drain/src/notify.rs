//! Wakes drains when their app's stream has new lines: one task blocks on `XREAD` over every
//! drained app's stream at once (up to a second at a time, on a connection of its own) and
//! bumps the woken apps' counters. Drains also look at their stream every few seconds on
//! their own, so a wake-up missed (Redis gone for a moment) only delays lines.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pier_store::Store;
use tokio::sync::watch;

/// Longest one blocking read waits.
const BLOCK: Duration = Duration::from_secs(1);

/// Each drained app's wake-up counter; drains of the app subscribe to it.
#[derive(Clone, Default)]
pub struct Wakers(Arc<Mutex<BTreeMap<String, watch::Sender<u64>>>>);

impl Wakers {
    /// A receiver of `app`'s wake-ups (the app is watched from now on).
    pub fn subscribe(&self, app: &str) -> watch::Receiver<u64> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(app.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Watches only `apps` from now on.
    pub fn retain(&self, apps: &[String]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|a, _| apps.contains(a));
    }

    fn apps(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.keys().cloned().collect()
    }

    fn wake(&self, app: &str) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(app) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Runs until `stop` is set or dropped.
pub async fn run(store: Store, wakers: Wakers, mut stop: watch::Receiver<bool>) {
    let mut after: BTreeMap<String, String> = BTreeMap::new();
    let mut reader = None;
    loop {
        if *stop.borrow() || stop.has_changed().is_err() {
            return;
        }
        let apps = wakers.apps();
        after.retain(|a, _| apps.contains(a));
        for app in &apps {
            if !after.contains_key(app) {
                // From the stream's newest line: what is older, the drains read by themselves.
                if let Ok(b) = store.stream_batch(app, "0-0", 0).await {
                    after.insert(app.clone(), b.last_id);
                }
            }
        }
        if reader.is_none() {
            reader = store.log_reader().await.ok();
        }
        let Some(r) = reader.as_mut() else {
            pause(&mut stop, BLOCK).await;
            continue;
        };
        let wanted: Vec<(String, String)> =
            after.iter().map(|(a, i)| (a.clone(), i.clone())).collect();
        let woken = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            w = store.wait_for_logs(r, &wanted, BLOCK) => w,
        };
        match woken {
            Ok(woken) => {
                for (app, newest) in woken {
                    wakers.wake(&app);
                    after.insert(app, newest);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "drain wake-ups: read failed; connecting again");
                reader = None;
                pause(&mut stop, BLOCK).await;
            }
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = tokio::time::sleep(d) => {}
    }
}

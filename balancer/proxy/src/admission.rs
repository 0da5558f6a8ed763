//! Stage `pipeline`, phase `upstream_peer`: the per-app limit on requests in flight, which
//! keeps one app's flood or stalled backend from taking the balancer from the others.
//!
//! Each app may have `max_in_flight` requests proxied at once across the process (the routes
//! file's or the registry's per-app value, else `[limits] app_max_in_flight`). A request past
//! the limit waits in the app's queue (`[limits] app_queue` places, first come first served)
//! for at most `app_queue_timeout`; when the queue is full, or the wait runs out, it is answered
//! `503` with `X-Pier-Error: app-overloaded` and `Retry-After: 1`, its body unread, never having
//! reached a backend. The counts live with the app's counters ([`pier_routes::app::Gate`]), so
//! a route table rebuilt by a reload keeps them.

use std::sync::Arc;

use pier_routes::app::AppCounters;
use pier_routes::App;

use crate::config::Limits;
use crate::error::ProxyError;

/// A slot taken: given back (and a waiter woken) when dropped.
pub struct Permit(Option<Arc<AppCounters>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.gate.leave();
        }
    }
}

/// A place in the queue, left when dropped.
struct Waiting<'a>(&'a AppCounters);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.gate.stop_waiting();
    }
}

/// The app's limit: its own, else the balancer's (0 = none).
pub fn limit_of(app: &App, limits: &Limits) -> u32 {
    app.settings
        .max_in_flight
        .unwrap_or(limits.app_max_in_flight)
}

/// Takes one of `app`'s slots, waiting in its queue (at most `app_queue_timeout`) when they
/// are all taken.
pub async fn admit(app: &App, limits: &Limits) -> Result<Permit, ProxyError> {
    let limit = limit_of(app, limits);
    if limit == 0 {
        return Ok(Permit(None));
    }
    let counters = app.counters();
    let gate = &counters.gate;
    // Nobody waiting: a newcomer does not overtake the queue.
    if gate.waiting() == 0 && gate.try_enter(limit) {
        return Ok(Permit(Some(counters)));
    }
    if !gate.start_waiting(limits.app_queue) {
        return Err(ProxyError::AppOverloaded);
    }
    // Leaves the queue however the wait ends (a client gone mid-wait drops this future).
    let waiting = Waiting(&counters);
    let deadline = tokio::time::Instant::now() + limits.app_queue_timeout;
    let admitted = loop {
        let freed = gate.freed();
        let mut freed = std::pin::pin!(freed);
        // Registered before the check: a slot given back in between still wakes this one.
        freed.as_mut().enable();
        if gate.try_enter(limit) {
            break true;
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            break false;
        }
    };
    drop(waiting);
    if admitted {
        Ok(Permit(Some(counters)))
    } else {
        Err(ProxyError::AppOverloaded)
    }
}

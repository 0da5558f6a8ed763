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
//!
//! The common case, a free slot, is a synchronous step ([`enter`]); only a request that must
//! wait builds the waiting future ([`Queued::wait`]).

use std::sync::Arc;

use pier_routes::app::AppCounters;
use pier_routes::App;

use crate::config::Limits;
use crate::error::ProxyError;
use crate::overload::FairShare;

/// A slot taken: given back (and a waiter woken) when dropped. It counts towards the
/// balancer's view of each app's share ([`FairShare`]).
pub struct Permit<'a>(Option<(Arc<AppCounters>, &'a FairShare)>);

impl Permit<'_> {
    fn taken<'a>(counters: Arc<AppCounters>, before: u32, fair: &'a FairShare) -> Permit<'a> {
        fair.entered(before == 0);
        Permit(Some((counters, fair)))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some((c, fair)) = &self.0 {
            let before = c.gate.leave();
            fair.left(before == 1);
        }
    }
}

/// A request that found every slot of its app taken.
pub struct Queued {
    counters: Arc<AppCounters>,
    limit: u32,
}

/// The app's limit: its own, else the balancer's (0 = none); an adaptive limit under it
/// where the app uses one.
pub fn limit_of(app: &App, limits: &Limits) -> u32 {
    let max = ceiling(app, limits);
    if is_adaptive(app, limits) {
        app.counters().adaptive.limit(max)
    } else {
        max
    }
}

/// The app's fixed limit: its own `max_in_flight`, else the balancer's (0 = none).
fn ceiling(app: &App, limits: &Limits) -> u32 {
    app.settings
        .max_in_flight
        .unwrap_or(limits.app_max_in_flight)
}

/// Whether `app`'s limit follows its backends' latency.
#[inline]
pub fn is_adaptive(app: &App, limits: &Limits) -> bool {
    app.settings.adaptive_limit.unwrap_or(limits.app_adaptive)
}

/// Counts a proxied request's time to first byte towards `app`'s adaptive limit (the caller
/// checked [`is_adaptive`]), the request having ended at `end`.
pub fn sample(
    app: &App,
    limits: &Limits,
    first_byte: std::time::Duration,
    end: std::time::Instant,
) {
    let now_ms = crate::util::wall_ms(end);
    let c = app.counters();
    let max = ceiling(app, limits);
    let us = u64::try_from(first_byte.as_micros()).unwrap_or(u64::MAX);
    c.adaptive.record(us, c.gate.in_flight(), now_ms, max);
}

/// Takes one of `app`'s slots if one is free and nobody waits for one (a newcomer does not
/// overtake the queue); else the request must queue.
pub fn enter<'a>(app: &App, limits: &Limits, fair: &'a FairShare) -> Result<Permit<'a>, Queued> {
    let limit = limit_of(app, limits);
    if limit == 0 {
        return Ok(Permit(None));
    }
    let counters = app.counters();
    let gate = &counters.gate;
    let taken = if gate.waiting() == 0 {
        gate.try_enter(limit)
    } else {
        None
    };
    if let Some(before) = taken {
        Ok(Permit::taken(Arc::clone(counters), before, fair))
    } else {
        Err(Queued {
            counters: Arc::clone(counters),
            limit,
        })
    }
}

impl Queued {
    /// Waits in the app's queue (at most `app_queue_timeout`) for a slot given back.
    pub async fn wait<'a>(
        self,
        limits: &Limits,
        fair: &'a FairShare,
    ) -> Result<Permit<'a>, ProxyError> {
        let gate = &self.counters.gate;
        if !gate.start_waiting(limits.app_queue) {
            return Err(ProxyError::AppOverloaded);
        }
        // Leaves the queue however the wait ends (a client gone mid-wait drops this future).
        let waiting = Waiting(&self.counters);
        let deadline = tokio::time::Instant::now() + limits.app_queue_timeout;
        let admitted = loop {
            let freed = gate.freed();
            let mut freed = std::pin::pin!(freed);
            // Registered before the check: a slot given back in between still wakes this one.
            freed.as_mut().enable();
            if let Some(before) = gate.try_enter(self.limit) {
                break Some(before);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break None;
            }
        };
        drop(waiting);
        match admitted {
            Some(before) => Ok(Permit::taken(self.counters, before, fair)),
            None => Err(ProxyError::AppOverloaded),
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

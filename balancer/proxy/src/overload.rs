//! Stage `pipeline`: fairness across apps when the balancer itself is saturated.
//!
//! The per-app limit keeps one app from holding every socket, but not from taking every CPU
//! cycle: an app flooded with requests its fast backends answer at once never reaches its limit,
//! and its requests fill the worker's run queue; other apps' requests then wait behind them.
//! When that happens, the requests of the apps taking more than an equal share are shed, until
//! the worker keeps up again; the others' are never shed.
//!
//! - Saturation: each worker runs a probe that sleeps [`PROBE`] and measures how late it wakes
//!   up (a worker whose run queue is long wakes its timers late). Its smoothed lateness past
//!   `[limits] overload_lag` means saturated.
//! - The shed ratio: while saturated it grows by 5 % a probe (to 95 % at most); once not, it
//!   falls by 2.5 % a probe. A feedback loop: it settles where the worker keeps up.
//! - Who is shed: an app with over one and a half times the average requests in flight of the
//!   apps with any (its share of the balancer's work is well above an equal one). Requests of such an app
//!   are answered `503` with `X-Pier-Error: overloaded` and `Retry-After: 1`, that ratio of
//!   them (spread evenly), before any backend is chosen. An app at or under its equal share, as
//!   a quiet app beside a flooded one is, is served as usual.
//!
//! Requests count while they hold a slot of their app's limit ([`crate::admission`]): an app
//! without a limit (`max_in_flight = 0`) is neither counted nor shed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::Worker;

/// How long the probe sleeps between measurements.
pub const PROBE: Duration = Duration::from_millis(10);

/// The requests in flight of every app (that has a limit), and how many apps have any: what
/// an equal share is measured against.
#[derive(Debug, Default)]
pub struct FairShare {
    in_flight: AtomicU32,
    active: AtomicU32,
}

impl FairShare {
    /// A request took a slot of its app (`first`: the app had none in flight).
    pub fn entered(&self, first: bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if first {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request gave its slot back (`last`: its app has none in flight now).
    pub fn left(&self, last: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if last {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether an app with `in_flight` requests in flight holds over one and a half times an
    /// equal share (there must be another app to share with; the margin keeps a quiet app's
    /// brief burst, at a moment the flooded one has few in flight, from counting).
    pub fn is_heavy(&self, in_flight: u32) -> bool {
        let active = self.active.load(Ordering::Relaxed);
        let total = self.in_flight.load(Ordering::Relaxed);
        active >= 2 && 2 * u64::from(in_flight) * u64::from(active) > 3 * u64::from(total)
    }
}

/// One worker's saturation: its smoothed lateness and the share of heavy apps' requests shed.
#[derive(Debug, Default)]
pub struct Overload {
    lag_us: AtomicU32,
    /// Per mille of heavy apps' requests shed (0: not shedding).
    shed_permille: AtomicU32,
    /// Error diffusion: adds the ratio for each heavy request, sheds on each thousand.
    spread: AtomicU32,
}

/// The most of a heavy app's requests ever shed (per mille): some still get through.
const MAX_SHED: u32 = 950;
const SHED_UP: u32 = 50;
const SHED_DOWN: u32 = 25;

impl Overload {
    /// Whether this worker sheds now (one load: the common answer is no).
    #[inline]
    pub fn shedding(&self) -> bool {
        self.shed_permille.load(Ordering::Relaxed) != 0
    }

    /// Whether to shed this request of a heavy app: the ratio of them, spread evenly.
    pub fn shed_this(&self) -> bool {
        let p = self.shed_permille.load(Ordering::Relaxed);
        let before = self.spread.fetch_add(p, Ordering::Relaxed);
        if before + p >= 1000 {
            self.spread.fetch_sub(1000, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// The smoothed lateness of the worker's timers.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(u64::from(self.lag_us.load(Ordering::Relaxed)))
    }

    /// The shed ratio, per mille.
    pub fn shed_permille(&self) -> u32 {
        self.shed_permille.load(Ordering::Relaxed)
    }

    /// Counts one probe that woke `lag` late against `threshold`.
    pub fn tick(&self, lag: Duration, threshold: Duration) {
        let sample = u32::try_from(lag.as_micros()).unwrap_or(u32::MAX);
        let old = self.lag_us.load(Ordering::Relaxed);
        // A quarter of the way each probe: smooth, yet saturation shows within a few probes.
        let lag_us = (u64::from(old) * 3 + u64::from(sample)) / 4;
        let lag_us = u32::try_from(lag_us).unwrap_or(u32::MAX);
        self.lag_us.store(lag_us, Ordering::Relaxed);
        let shed = self.shed_permille.load(Ordering::Relaxed);
        let next = if Duration::from_micros(u64::from(lag_us)) >= threshold {
            (shed + SHED_UP).min(MAX_SHED)
        } else {
            shed.saturating_sub(SHED_DOWN)
        };
        self.shed_permille.store(next, Ordering::Relaxed);
    }
}

/// The probe of worker `w`: runs until its runtime stops (with `[limits] overload_lag` off, not
/// at all).
pub async fn probe(w: Arc<Worker>) {
    let threshold = w.shared.config.limits.overload_lag;
    if threshold.is_zero() {
        return;
    }
    let gauge = w
        .shared
        .metrics
        .worker_lag
        .with_label_values(&[&w.id.to_string()]);
    loop {
        let before = Instant::now();
        tokio::time::sleep(PROBE).await;
        let lag = before.elapsed().saturating_sub(PROBE);
        w.overload.tick(lag, threshold);
        gauge.set(w.overload.lag().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_over_an_equal_share_is_heavy() {
        let f = FairShare::default();
        // App a: 8 in flight; app b: 1 (a holds 8 of 9: over 1.5 times the equal 4.5).
        f.entered(true);
        for _ in 0..7 {
            f.entered(false);
        }
        assert!(!f.is_heavy(8), "alone, nobody is heavy");
        f.entered(true);
        assert!(f.is_heavy(8));
        assert!(!f.is_heavy(1));
        // Two apps at 6 and 3 of 9: the first is over the equal 4.5, not by the margin.
        assert!(!f.is_heavy(6));
        // b leaves: a is alone again.
        f.left(true);
        assert!(!f.is_heavy(8));
    }

    #[test]
    fn shedding_follows_the_lag_and_spreads_evenly() {
        let o = Overload::default();
        let threshold = Duration::from_millis(20);
        assert!(!o.shedding());
        for _ in 0..40 {
            o.tick(Duration::from_millis(100), threshold);
        }
        assert_eq!(o.shed_permille(), MAX_SHED);
        let shed = (0..1000).filter(|_| o.shed_this()).count();
        assert!((940..=960).contains(&shed), "{shed}");
        // The worker keeps up again: shedding stops.
        for _ in 0..80 {
            o.tick(Duration::ZERO, threshold);
        }
        assert!(!o.shedding());
        assert!(!o.shed_this());
    }
}

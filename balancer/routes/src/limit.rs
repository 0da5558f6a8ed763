//! The adaptive limit on an app's requests in flight: instead of a fixed number, a limit that
//! follows the latency of the app's backends, so that a backend that slows down is given fewer
//! requests at once (the rest wait in the app's short queue or are refused) rather than a
//! longer and longer line of requests it cannot serve.
//!
//! The controller is a gradient limiter, the one of Netflix's concurrency-limits (`Gradient2`)
//! and, in spirit, Envoy's adaptive concurrency filter. Requests' times to first byte are
//! averaged over windows of [`WINDOW_MS`] (and at least [`MIN_SAMPLES`] requests). Each window's
//! average (the short-term latency) is compared with a slow moving average of the past windows
//! (the long-term latency):
//!
//! - `gradient = clamp(TOLERANCE × long / short, 0.5, 1)`: 1 while latency stays within 1.5×
//!   of its usual, down to 0.5 as it rises;
//! - `new = limit × gradient + √limit` (the headroom that lets the limit grow);
//! - the limit moves a fifth of the way towards `new`, between [`MIN_LIMIT`] and the app's
//!   ceiling (its `max_in_flight`);
//! - a limit the app does not use (fewer than half of it in flight) does not grow;
//! - when the short term falls well under the long term (a backend recovered), the long term
//!   catches up faster, so the limit grows back.
//!
//! The state is a handful of atomics next to the app's counters (carried across table
//! rebuilds); a request adds its sample with two additions, and the request that ends a window
//! computes the next limit.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Length of a sampling window, at least.
pub const WINDOW_MS: u64 = 100;
/// Samples a window needs before it counts.
pub const MIN_SAMPLES: u32 = 10;
/// The lowest the limit goes.
pub const MIN_LIMIT: u32 = 4;
/// Where the limit starts (or the ceiling when lower).
pub const INITIAL_LIMIT: u32 = 20;
/// The ceiling of an app whose `max_in_flight` is 0 (no fixed limit).
pub const NO_CEILING: u32 = 10_000;
/// How far latency may rise over its long-term average before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// The share of the way the limit moves towards each window's new value.
const SMOOTHING: f64 = 0.2;
/// The long-term average's memory, in windows.
const LONG_WINDOWS: f64 = 600.0;
/// Windows over which the long-term average is a plain mean at first.
const WARMUP_WINDOWS: u64 = 10;

/// One app's adaptive limit.
#[derive(Debug, Default)]
pub struct Adaptive {
    /// The limit now, as `f64` bits (fractions kept, so that small steps add up; 0: not
    /// started).
    limit: AtomicU64,
    /// The window being sampled: when it began (ms since the Unix epoch), the sum of its
    /// samples (µs), their number, and the most requests seen in flight.
    window_from_ms: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU32,
    peak_in_flight: AtomicU32,
    /// The long-term latency (µs, as `f64` bits) and the windows it has seen.
    long_us: AtomicU64,
    windows: AtomicU64,
    /// Held by the request that closes a window while it computes the next limit.
    closing: AtomicBool,
}

impl Adaptive {
    /// The limit now, under `ceiling` (the app's `max_in_flight`, 0 for [`NO_CEILING`]).
    pub fn limit(&self, ceiling: u32) -> u32 {
        let ceiling = effective_ceiling(ceiling);
        match self.limit.load(Ordering::Relaxed) {
            0 => INITIAL_LIMIT.min(ceiling),
            bits => (f64::from_bits(bits).round() as u32).min(ceiling),
        }
    }

    /// The limit with its fraction.
    fn exact(&self, ceiling: u32) -> f64 {
        match self.limit.load(Ordering::Relaxed) {
            0 => f64::from(INITIAL_LIMIT.min(effective_ceiling(ceiling))),
            bits => f64::from_bits(bits).min(f64::from(effective_ceiling(ceiling))),
        }
    }

    /// The limit if it has started (for the admin's view).
    pub fn current(&self) -> Option<u32> {
        match self.limit.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits).round() as u32),
        }
    }

    /// Counts one request's time to first byte (`sample_us`) with `in_flight` requests of the
    /// app in flight, at `now_ms`; closes the window when it is due.
    pub fn record(&self, sample_us: u64, in_flight: u32, now_ms: u64, ceiling: u32) {
        self.sum_us.fetch_add(sample_us, Ordering::Relaxed);
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        let from = self.window_from_ms.load(Ordering::Relaxed);
        if from == 0 {
            // The first sample starts the first window.
            let _ = self.window_from_ms.compare_exchange(
                0,
                now_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return;
        }
        if n < MIN_SAMPLES || now_ms < from.saturating_add(WINDOW_MS) {
            return;
        }
        if self
            .closing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let sum = self.sum_us.swap(0, Ordering::Relaxed);
        let count = self.count.swap(0, Ordering::Relaxed);
        let peak = self.peak_in_flight.swap(0, Ordering::Relaxed);
        self.window_from_ms.store(now_ms, Ordering::Relaxed);
        if count > 0 {
            let short = sum as f64 / f64::from(count);
            self.close_window(short.max(1.0), peak, ceiling);
        }
        self.closing.store(false, Ordering::Release);
    }

    /// The next limit from a window's average latency `short` (µs) and its peak in flight.
    fn close_window(&self, short: f64, peak: u32, ceiling: u32) {
        let windows = self.windows.fetch_add(1, Ordering::Relaxed) + 1;
        let long = match f64::from_bits(self.long_us.load(Ordering::Relaxed)) {
            l if l > 0.0 && windows > 1 => {
                let weight = if windows <= WARMUP_WINDOWS {
                    1.0 / windows as f64
                } else {
                    1.0 / LONG_WINDOWS
                };
                let mut l = l + (short - l) * weight;
                // Recovered: the long term catches up with a latency well under it.
                if l / short > 2.0 {
                    l *= 0.95;
                }
                l
            }
            _ => short,
        };
        self.long_us.store(long.to_bits(), Ordering::Relaxed);
        let limit = self.exact(ceiling);
        let gradient = (TOLERANCE * long / short).clamp(0.5, 1.0);
        let mut next = limit * gradient + limit.sqrt();
        // A limit the app does not come near is not evidence it can take more.
        if f64::from(peak) < limit / 2.0 {
            next = next.min(limit);
        }
        let next = limit * (1.0 - SMOOTHING) + next * SMOOTHING;
        let ceiling = f64::from(effective_ceiling(ceiling));
        let next = next.clamp(f64::from(MIN_LIMIT).min(ceiling), ceiling);
        self.limit.store(next.to_bits(), Ordering::Relaxed);
    }
}

fn effective_ceiling(ceiling: u32) -> u32 {
    if ceiling == 0 {
        NO_CEILING
    } else {
        ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `windows` windows of `latency_us` samples with `in_flight` requests in flight;
    /// returns the limit after them.
    fn run(a: &Adaptive, from_ms: &mut u64, windows: u32, latency_us: u64, busy: bool) -> u32 {
        for _ in 0..windows {
            for _ in 0..MIN_SAMPLES {
                let in_flight = if busy { a.limit(1000) } else { 1 };
                a.record(latency_us, in_flight, *from_ms, 1000);
            }
            *from_ms += WINDOW_MS;
        }
        // One sample more closes the last window.
        a.record(
            latency_us,
            if busy { a.limit(1000) } else { 1 },
            *from_ms,
            1000,
        );
        a.limit(1000)
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_shrinks_when_it_rises() {
        let a = Adaptive::default();
        let mut t = 1_000_000;
        assert_eq!(a.limit(1000), INITIAL_LIMIT);
        let grown = run(&a, &mut t, 100, 2_000, true);
        assert!(grown > 60, "{grown}");
        // Latency ten times as high: the limit falls fast.
        let shrunk = run(&a, &mut t, 20, 20_000, true);
        assert!(shrunk < grown / 4, "{grown} -> {shrunk}");
        // Latency back to normal: it grows back.
        let back = run(&a, &mut t, 100, 2_000, true);
        assert!(back > shrunk * 3, "{shrunk} -> {back}");
    }

    #[test]
    fn an_unused_limit_does_not_grow_and_the_bounds_hold() {
        let a = Adaptive::default();
        let mut t = 1_000_000;
        assert_eq!(run(&a, &mut t, 50, 2_000, false), INITIAL_LIMIT);
        // Never under the minimum, never over the ceiling.
        let low = run(&a, &mut t, 40, 2_000_000, true);
        assert!((MIN_LIMIT..=5).contains(&low), "{low}");
        // A latency that lasts becomes the usual one: the limit creeps back up.
        let later = run(&a, &mut t, 600, 2_000_000, true);
        assert!(later > low, "{low} {later}");
        let b = Adaptive::default();
        assert_eq!(b.limit(10), 10);
        let mut t = 1_000_000;
        for _ in 0..100 {
            for _ in 0..MIN_SAMPLES {
                b.record(1_000, 10, t, 10);
            }
            t += WINDOW_MS;
        }
        assert_eq!(b.limit(10), 10);
    }
}

//! The open model's arrival schedule: request `k` of a thread is due at
//! `origin + k × interval`, whether or not the server has answered the previous ones. That
//! fixed schedule is what makes the latency honest (coordinated omission corrected): a request
//! that had to wait for a free connection is measured from when it was due, not from when
//! it could finally be sent.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How early a request may go out. Tokio's timers tick once per millisecond, so waiting for
/// the exact due time would add up to a millisecond of generator-made delay to every request;
/// sending up to this much early keeps the average rate exact and the latency start honest
/// (an early request is measured from when it was really sent).
pub const SEND_SLACK: Duration = Duration::from_millis(2);

/// One thread's share of the total rate. Not shared between threads: each worker thread owns
/// one and its connections claim due times from it in turn.
#[derive(Debug)]
pub struct Schedule {
    origin: Instant,
    interval_ns: f64,
    measure_start: Instant,
    end: Instant,
    next: Cell<u64>,
    sent_measured: Cell<u64>,
}

impl Schedule {
    /// `rate` is this thread's requests per second; `origin` its first due time.
    pub fn new(origin: Instant, rate: f64, measure_start: Instant, end: Instant) -> Schedule {
        Schedule {
            origin,
            interval_ns: 1e9 / rate,
            measure_start,
            end,
            next: Cell::new(0),
            sent_measured: Cell::new(0),
        }
    }

    fn due(&self, k: u64) -> Instant {
        self.origin + Duration::from_nanos((k as f64 * self.interval_ns) as u64)
    }

    /// Claims the next due time, or `None` once the schedule reaches the end of the run.
    #[inline]
    pub fn claim(&self) -> Option<Instant> {
        let k = self.next.get();
        let t = self.due(k);
        if t >= self.end {
            return None;
        }
        self.next.set(k + 1);
        Some(t)
    }

    /// Notes that a claimed request was actually written.
    #[inline]
    pub fn mark_sent(&self, due: Instant) {
        if due >= self.measure_start {
            self.sent_measured.set(self.sent_measured.get() + 1);
        }
    }

    /// Requests that were due inside the measured window but never sent because every
    /// connection was busy (or broken): the backlog the server left behind.
    pub fn unsent(&self) -> u64 {
        let span = |t: Instant| t.saturating_duration_since(self.origin).as_nanos() as f64;
        // Number of k with due(k) < t is ceil(span / interval).
        let due_before = |t: Instant| {
            if t <= self.origin {
                0
            } else {
                (span(t) / self.interval_ns).ceil() as u64
            }
        };
        let due_measured = due_before(self.end).saturating_sub(due_before(self.measure_start));
        due_measured.saturating_sub(self.sent_measured.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_bounded() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0, t0, t0 + Duration::from_millis(10));
        let mut times = Vec::new();
        while let Some(t) = s.claim() {
            times.push(t);
        }
        assert_eq!(times.len(), 10);
        assert_eq!(times[3] - times[2], Duration::from_millis(1));
        assert_eq!(s.unsent(), 10);
        for t in &times[..4] {
            s.mark_sent(*t);
        }
        assert_eq!(s.unsent(), 6);
    }
}

//! Failed token attempts, limited per client address: a client that keeps sending unknown or
//! malformed tokens gets `429` with `Retry-After` for the rest of the window, whatever it sends,
//! so guessing tokens online is slow. Memory is bounded: past [`MAX_TRACKED`] addresses the
//! lapsed windows are swept, and if none lapsed the oldest entries make way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default failures allowed per client address and window (`pier api --auth-failures`).
pub const DEFAULT_FAILURES: u32 = 30;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most.
const MAX_TRACKED: usize = 100_000;

/// Failed attempts per client address.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// `max` failures per [`WINDOW`] (0: no limit).
    pub fn new(max: u32) -> Self {
        Self::with_window(max, WINDOW)
    }

    pub fn with_window(max: u32, window: Duration) -> Self {
        FailureLimiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(seconds to wait)` while `ip` is over its limit.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        if self.max == 0 {
            return None;
        }
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, n) = seen.get(&ip)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*n >= self.max).then(|| left.as_secs().max(1))
    }

    /// Counts one failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            let window = self.window;
            seen.retain(|_, (start, _)| start.elapsed() < window);
            if seen.len() >= MAX_TRACKED {
                let mut by_age: Vec<(IpAddr, Instant)> =
                    seen.iter().map(|(ip, (s, _))| (*ip, *s)).collect();
                by_age.sort_by_key(|(_, s)| *s);
                for (old, _) in by_age.into_iter().take(MAX_TRACKED / 10) {
                    seen.remove(&old);
                }
            }
        }
        let entry = seen.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let l = FailureLimiter::with_window(3, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..2 {
            l.failed(a);
        }
        assert_eq!(l.blocked(a), None);
        l.failed(a);
        assert_eq!(l.blocked(a), Some(1));
        assert_eq!(l.blocked(b), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.blocked(a), None);
        l.failed(a);
        assert_eq!(l.blocked(a), None);
        assert_eq!(FailureLimiter::new(0).blocked(a), None);
    }
}

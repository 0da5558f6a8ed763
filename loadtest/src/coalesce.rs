//! Wake-up coalescing for busy worker threads.
//!
//! Why: when a generator thread is idle between answers it sleeps in `epoll_wait`, and every
//! answer the server sends must then wake it — a cross-CPU wake-up that the *server* pays for
//! in its send path. A generator that is quick and therefore often asleep makes the server
//! it measures slower (measured here: nginx served ~10% fewer requests per CPU-second to an
//! eager generator than to wrk, which is slower per request and so rarely sleeps).
//!
//! So, when a thread handled several reads since it last went to sleep (it is under load), it
//! waits a few microseconds before sleeping, letting answers pile up without waking anyone;
//! the next `epoll_wait` then returns them as one batch. When it handled fewer (light load,
//! e.g. a low `-R` rate) it sleeps at once, so latency is measured as precisely as possible.
//! The wait bounds the delay it adds to any measured latency.

use std::cell::Cell;
use std::time::Duration;

/// Default wait before sleeping under load, in the closed model.
pub const DEFAULT: Duration = Duration::from_micros(20);

/// The default for a load model: on for the closed model (throughput), off for the open
/// model, where latency is the point and the batching would move it (measured at 50k req/s
/// on nginx: p50 275 → 330 µs, p99 about 1.1 → 0.9 ms).
pub fn default_for(model: crate::config::LoadModel) -> Duration {
    match model {
        crate::config::LoadModel::Closed => DEFAULT,
        crate::config::LoadModel::Open { .. } => Duration::ZERO,
    }
}

/// Reads since the last park at which the thread counts as busy.
const BUSY_READS: u32 = 4;

thread_local! {
    static READS: Cell<u32> = const { Cell::new(0) };
}

/// Called by the HTTP/1.1 loop after each successful read.
#[inline]
pub fn note_read() {
    READS.with(|r| r.set(r.get().saturating_add(1)));
}

/// Runs on the worker thread right before its runtime parks.
pub fn before_park(wait: Duration) {
    let reads = READS.with(|r| r.replace(0));
    if reads >= BUSY_READS {
        std::thread::sleep(wait);
    }
}

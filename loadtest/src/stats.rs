//! What a run measures. Each worker thread owns one [`Recorder`] (no atomics or locks on the
//! request path); once a second it hands the second's numbers to the collector as a
//! [`SecondSnapshot`], and at the end its totals are merged into the report.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds up to one hour.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// The run-wide histogram: microsecond resolution up to an hour, 3 significant digits, a
/// fixed ~200 KiB whatever the request count.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant bounds are valid")
}

/// The per-second histogram: 2 significant digits are plenty for a time series and keep
/// each second's snapshot small.
pub fn second_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("constant bounds are valid")
}

#[inline]
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Why a request failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect or TLS/h2 handshake failed (counted per attempt).
    Connect,
    /// The connection broke or closed before the response was complete.
    Read,
    /// The request could not be written.
    Write,
    /// No complete response within the timeout.
    Timeout,
    /// The response could not be parsed (or the h2 stream was reset).
    Protocol,
}

/// Failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub protocol: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.protocol
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
    }

    fn bump(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Read => self.read += 1,
            ErrorKind::Write => self.write += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Protocol => self.protocol += 1,
        }
    }
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
    pub other: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.s1xx + self.s2xx + self.s3xx + self.s4xx + self.s5xx + self.other
    }

    /// Responses that are not 2xx or 3xx (wrk's "Non-2xx or 3xx responses").
    pub fn bad(&self) -> u64 {
        self.total() - self.s2xx - self.s3xx
    }

    pub fn add(&mut self, o: &StatusCounts) {
        self.s1xx += o.s1xx;
        self.s2xx += o.s2xx;
        self.s3xx += o.s3xx;
        self.s4xx += o.s4xx;
        self.s5xx += o.s5xx;
        self.other += o.other;
    }

    #[inline]
    fn bump(&mut self, status: u16) {
        match status {
            100..=199 => self.s1xx += 1,
            200..=299 => self.s2xx += 1,
            300..=399 => self.s3xx += 1,
            400..=499 => self.s4xx += 1,
            500..=599 => self.s5xx += 1,
            _ => self.other += 1,
        }
    }
}

/// Per-host outcome counts (index = position in the host list).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostCounts {
    pub responses: u64,
    pub errors: u64,
    /// Responses whose routing header did not carry the expected value.
    pub mismatched: u64,
}

/// Adds `more` to `into`, host by host.
pub fn add_hosts(into: &mut Vec<HostCounts>, more: &[HostCounts]) {
    if into.len() < more.len() {
        into.resize(more.len(), HostCounts::default());
    }
    for (a, b) in into.iter_mut().zip(more) {
        a.responses += b.responses;
        a.errors += b.errors;
        a.mismatched += b.mismatched;
    }
}

/// One thread's numbers for one second of the measured window.
#[derive(Debug, Clone)]
pub struct SecondSnapshot {
    pub second: u64,
    pub responses: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency: Histogram<u32>,
    pub status: StatusCounts,
    pub error_kinds: ErrorCounts,
    /// This second's counts per host (empty unless the run counts them: the live view).
    pub hosts: Vec<HostCounts>,
}

impl SecondSnapshot {
    fn new(second: u64, hosts: usize) -> SecondSnapshot {
        SecondSnapshot {
            second,
            responses: 0,
            errors: 0,
            bytes: 0,
            latency: second_histogram(),
            status: StatusCounts::default(),
            error_kinds: ErrorCounts::default(),
            hosts: vec![HostCounts::default(); hosts],
        }
    }
}

/// One worker thread's measurements.
#[derive(Debug)]
pub struct Recorder {
    measure_start: Instant,
    open_model: bool,
    /// Open model: from the scheduled start. Closed model: from the send (the same thing).
    pub latency: Histogram<u64>,
    /// From the moment the request was written (open model only; equals `latency` when closed).
    pub service: Histogram<u64>,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reconnects: u64,
    /// Requests sent again because the server refused them unprocessed (HTTP/1.1 requests
    /// pipelined behind `Connection: close`, h2 streams refused or cut by a graceful GOAWAY).
    pub retried: u64,
    pub mismatched: u64,
    /// Requests that started during warm-up and are therefore not counted anywhere else.
    pub warmup_requests: u64,
    pub per_host: Vec<HostCounts>,
    current: SecondSnapshot,
    /// Hosts counted second by second (0: none).
    live_hosts: usize,
}

impl Recorder {
    /// A recorder for `hosts` hosts; `live_hosts` of them (all or none) are also counted
    /// second by second.
    pub fn new(
        measure_start: Instant,
        open_model: bool,
        hosts: usize,
        live_hosts: bool,
    ) -> Recorder {
        let live_hosts = if live_hosts { hosts } else { 0 };
        Recorder {
            measure_start,
            open_model,
            latency: latency_histogram(),
            service: latency_histogram(),
            status: StatusCounts::default(),
            errors: ErrorCounts::default(),
            bytes_read: 0,
            bytes_written: 0,
            reconnects: 0,
            retried: 0,
            mismatched: 0,
            warmup_requests: 0,
            per_host: vec![HostCounts::default(); hosts],
            current: SecondSnapshot::new(0, live_hosts),
            live_hosts,
        }
    }

    /// A complete response. `due` places the request in warm-up or the measured window (its
    /// scheduled time in the open model, its send in the closed one); latency runs from
    /// `start` (the due time, or the send if that came earlier) and service time from `sent`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn response(
        &mut self,
        now: Instant,
        due: Instant,
        start: Instant,
        sent: Instant,
        status: u16,
        host: usize,
        matched: Option<bool>,
    ) {
        if due < self.measure_start {
            self.warmup_requests += 1;
            return;
        }
        let lat = micros(now.saturating_duration_since(start));
        self.latency.saturating_record(lat);
        if self.open_model {
            self.service
                .saturating_record(micros(now.saturating_duration_since(sent)));
        }
        self.status.bump(status);
        self.current.status.bump(status);
        self.current.responses += 1;
        if !(200..400).contains(&status) {
            self.current.errors += 1;
        }
        self.current.latency.saturating_record(lat);
        let mismatch = matched == Some(false);
        if mismatch {
            self.mismatched += 1;
        }
        if let Some(h) = self.per_host.get_mut(host) {
            h.responses += 1;
            h.mismatched += u64::from(mismatch);
        }
        if let Some(h) = self.current.hosts.get_mut(host) {
            h.responses += 1;
            h.mismatched += u64::from(mismatch);
        }
    }

    /// A request (or connection attempt) that failed without a response; `due` as above.
    pub fn error(&mut self, due: Instant, kind: ErrorKind, host: Option<usize>) {
        if due < self.measure_start {
            return;
        }
        self.errors.bump(kind);
        self.current.error_kinds.bump(kind);
        self.current.errors += 1;
        if let Some(h) = host.and_then(|h| self.per_host.get_mut(h)) {
            h.errors += 1;
        }
        if let Some(h) = host.and_then(|h| self.current.hosts.get_mut(h)) {
            h.errors += 1;
        }
    }

    #[inline]
    pub fn bytes_read(&mut self, now: Instant, n: usize) {
        if now >= self.measure_start {
            self.bytes_read += n as u64;
            self.current.bytes += n as u64;
        }
    }

    #[inline]
    pub fn bytes_written(&mut self, now: Instant, n: usize) {
        if now >= self.measure_start {
            self.bytes_written += n as u64;
        }
    }

    pub fn reconnect(&mut self, now: Instant) {
        if now >= self.measure_start {
            self.reconnects += 1;
        }
    }

    /// Hands over the current second's numbers and starts second `next`.
    pub fn take_second(&mut self, next: u64) -> SecondSnapshot {
        std::mem::replace(
            &mut self.current,
            SecondSnapshot::new(next, self.live_hosts),
        )
    }
}

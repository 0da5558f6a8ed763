//! The merged result of a run and its renderings: [`human`] (wrk-like summary), [`json`]
//! (versioned schema), [`csv`] (per-second series) and [`html`] (one self-contained page).

pub mod csv;
pub mod hdr;
pub mod html;
pub mod human;
pub mod json;
pub mod load;
pub mod merge;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{HostMode, LoadModel, Protocol};
use crate::stats::{ErrorCounts, HostCounts, StatusCounts};

/// Percentiles printed and exported (100 is the maximum).
pub const PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// Per-host outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub host: String,
    pub responses: u64,
    pub errors: u64,
    pub mismatched: u64,
}

/// One second of the measured window, all threads merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondRow {
    /// Seconds since the end of warm-up.
    pub second: u64,
    /// How much of this second was inside the run (the last one may be partial).
    pub span: f64,
    pub responses: u64,
    pub errors: u64,
    pub bytes: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// This second's latencies (what the percentiles above are read from; kept so rows of
    /// several threads or generators merge exactly). Written to JSON as `latency_hdr`.
    #[serde(skip)]
    pub latency: Histogram<u32>,
    /// This second's responses by status class, and failures by kind (for the live view).
    #[serde(skip)]
    pub status: StatusCounts,
    #[serde(skip)]
    pub error_kinds: ErrorCounts,
    /// This second's counts per host, when the run counted them (the live view).
    #[serde(skip)]
    pub hosts: Vec<HostCounts>,
}

impl SecondRow {
    /// A row of `responses`, `errors` and `bytes` whose percentiles are read from `latency`.
    pub fn new(
        second: u64,
        span: f64,
        (responses, errors, bytes): (u64, u64, u64),
        latency: Histogram<u32>,
    ) -> SecondRow {
        let mut row = SecondRow {
            second,
            span,
            responses,
            errors,
            bytes,
            p50_us: 0,
            p90_us: 0,
            p99_us: 0,
            max_us: 0,
            latency,
            status: StatusCounts::default(),
            error_kinds: ErrorCounts::default(),
            hosts: Vec::new(),
        };
        row.read_percentiles();
        row
    }

    /// Adds `other` (the same second, from another thread or generator) to this row.
    pub fn absorb(&mut self, other: &SecondRow) {
        self.responses += other.responses;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.span = self.span.max(other.span);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.status.add(&other.status);
        self.error_kinds.add(&other.error_kinds);
        crate::stats::add_hosts(&mut self.hosts, &other.hosts);
        self.read_percentiles();
    }

    fn read_percentiles(&mut self) {
        let q = |v: f64| self.latency.value_at_quantile(v);
        (self.p50_us, self.p90_us, self.p99_us) = (q(0.5), q(0.9), q(0.99));
        self.max_us = self.latency.max();
    }

    pub fn rps(&self) -> f64 {
        if self.span > 0.0 {
            self.responses as f64 / self.span
        } else {
            0.0
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub connect_addr: String,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub model: LoadModel,
    pub protocol: Protocol,
    pub host_mode: HostMode,
    pub expect_header: Option<String>,
    pub timeout: Option<Duration>,
    /// Open model: from each request's due time (coordinated omission corrected).
    /// Closed model: from the send.
    pub latency: Histogram<u64>,
    /// From the moment each request was written (uncorrected service time).
    pub service: Histogram<u64>,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reconnects: u64,
    /// Requests sent again after the server refused them unprocessed.
    pub retried: u64,
    pub mismatched: u64,
    pub warmup_requests: u64,
    pub in_flight_at_end: u64,
    /// Open model: due in the measured window but never sent.
    pub unsent: u64,
    pub first_connect_error: Option<String>,
    pub per_host: Vec<HostRow>,
    pub series: Vec<SecondRow>,
    /// The reports this one was merged from (`pier-load merge`), empty for a run.
    pub merged_from: Vec<String>,
}

impl Report {
    /// Complete responses (any status).
    pub fn responses(&self) -> u64 {
        self.status.total()
    }

    pub fn rps(&self) -> f64 {
        self.responses() as f64 / self.duration.as_secs_f64()
    }

    /// Failed requests: transport errors, timeouts and responses other than 2xx/3xx.
    pub fn failed(&self) -> u64 {
        self.errors.total() + self.status.bad()
    }

    /// Requests that finished one way or another (the denominator of error ratios).
    pub fn finished(&self) -> u64 {
        self.responses() + self.errors.total()
    }

    /// `failed / finished`, 0 when nothing finished.
    pub fn ratio(&self, count: u64) -> f64 {
        let n = self.finished();
        if n == 0 {
            0.0
        } else {
            count as f64 / n as f64
        }
    }

    pub fn rate(&self) -> Option<f64> {
        match self.model {
            LoadModel::Open { rate } => Some(rate),
            LoadModel::Closed => None,
        }
    }

    pub fn model_name(&self) -> &'static str {
        match self.model {
            LoadModel::Open { .. } => "open",
            LoadModel::Closed => "closed",
        }
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Http1 { .. } => "http/1.1",
            Protocol::Http2 { .. } => "h2",
        }
    }

    /// Latency at percentile `p` (0-100) of `hist`, in microseconds.
    pub fn at(hist: &Histogram<u64>, p: f64) -> u64 {
        if p >= 100.0 {
            hist.max()
        } else {
            hist.value_at_percentile(p)
        }
    }
}

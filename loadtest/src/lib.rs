//! `pier-load`: a wrk-style HTTP load generator that is honest about latency.
//!
//! What this crate owns: generating HTTP/1.1 (optionally pipelined) and h2 load, over plain
//! TCP or TLS, against one address with many hostnames; measuring it (HdrHistogram latency,
//! corrected for coordinated omission in the open model, plus uncorrected service time;
//! honest error classes; per-host and per-second counts); and reporting it (terminal summary,
//! JSON, CSV, HTML, CI thresholds, scenario comparisons).
//!
//! What it does not own: anything of the balancer. It depends on no other crate of the pier
//! workspace, so it shares no code, and no bugs, with what it measures.
//!
//! Modules, in the order a run flows through them:
//! - [`cli`] and [`scenario`]: flags or a TOML file → [`config::RunConfig`].
//! - [`hosts`], [`target`]: host lists and patterns; the URL and pre-built request bytes.
//! - [`engine`]: worker threads (one current-thread runtime each), connections, collector;
//!   [`coalesce`]: how a busy thread batches its wake-ups.
//! - [`h1`] (parser + connection loop), [`h2conn`], [`transport`], [`tls`]: the wire.
//! - [`schedule`]: the open model's arrival schedule.
//! - [`stats`]: per-thread recording; [`report`]: merged results and their renderings.
//! - [`threshold`]: `--fail-if`; [`units`]: durations and sizes as people write them.
//! - [`live`]: `--tui`, the full-screen live view.

pub mod cli;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod h1;
pub mod h2conn;
pub mod hosts;
pub mod live;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod threshold;
pub mod tls;
pub mod transport;
pub mod units;

pub use config::{HostMode, LoadModel, Protocol, RunConfig};
pub use engine::{run, RunError};
pub use report::Report;

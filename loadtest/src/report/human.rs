//! The terminal summary, laid out like wrk's so existing habits (and scripts that grep
//! `Requests/sec:`) keep working, with the extra counts wrk leaves out.

use std::io::{self, Write};

use hdrhistogram::Histogram;

use super::{Report, PERCENTILES};
use crate::config::Protocol;
use crate::units::{fmt_bytes, fmt_count, fmt_micros};

/// Mean, standard deviation, max and the share of values within one deviation of the mean.
fn spread(hist: &Histogram<u64>) -> (f64, f64, f64, f64) {
    let (mean, sd) = (hist.mean(), hist.stdev());
    let total = hist.len();
    let within: u64 = hist
        .iter_recorded()
        .filter(|v| (v.value_iterated_to() as f64 - mean).abs() <= sd)
        .map(|v| v.count_at_value())
        .sum();
    let pct = if total == 0 {
        0.0
    } else {
        within as f64 * 100.0 / total as f64
    };
    (mean, sd, hist.max() as f64, pct)
}

pub fn write(r: &Report, detail: bool, out: &mut dyn Write) -> io::Result<()> {
    let secs = r.duration.as_secs_f64();
    writeln!(
        out,
        "Running {} test @ {}",
        crate::units::fmt_micros(secs * 1e6),
        r.url
    )?;
    let proto = match r.protocol {
        Protocol::Http1 { pipeline: 1 } => "HTTP/1.1".to_string(),
        Protocol::Http1 { pipeline } => format!("HTTP/1.1, pipeline {pipeline}"),
        Protocol::Http2 { max_streams } => format!("h2, {max_streams} streams/connection"),
    };
    let model = match r.rate() {
        Some(rate) => format!("open model at {rate} req/s"),
        None => "closed model".to_string(),
    };
    writeln!(
        out,
        "  {} threads and {} connections, {model}, {proto}",
        r.threads, r.connections
    )?;
    if !r.merged_from.is_empty() {
        writeln!(
            out,
            "  merged from {} reports: {}",
            r.merged_from.len(),
            r.merged_from.join(", ")
        )?;
    }
    if !r.warmup.is_zero() {
        writeln!(
            out,
            "  warm-up {} excluded ({} requests)",
            fmt_micros(r.warmup.as_secs_f64() * 1e6),
            r.warmup_requests
        )?;
    }
    writeln!(out, "  Thread Stats   Avg      Stdev     Max   +/- Stdev")?;
    let (mean, sd, max, pct) = spread(&r.latency);
    writeln!(
        out,
        "    Latency   {:>8}  {:>8}  {:>8}  {:>6.2}%",
        fmt_micros(mean),
        fmt_micros(sd),
        fmt_micros(max),
        pct
    )?;
    let per_thread: Vec<f64> = r
        .series
        .iter()
        .filter(|s| s.span >= 0.5)
        .map(|s| s.rps() / r.threads as f64)
        .collect();
    if !per_thread.is_empty() {
        let n = per_thread.len() as f64;
        let m = per_thread.iter().sum::<f64>() / n;
        let sd = (per_thread.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
        let mx = per_thread.iter().copied().fold(0.0, f64::max);
        let within = per_thread.iter().filter(|v| (*v - m).abs() <= sd).count() as f64;
        writeln!(
            out,
            "    Req/Sec   {:>8}  {:>8}  {:>8}  {:>6.2}%",
            fmt_count(m),
            fmt_count(sd),
            fmt_count(mx),
            within * 100.0 / n
        )?;
    }
    if detail {
        let label = if r.rate().is_some() {
            "  Latency Distribution (corrected: from each request's scheduled start)"
        } else {
            "  Latency Distribution"
        };
        writeln!(out, "{label}")?;
        for p in PERCENTILES {
            writeln!(
                out,
                "  {:>8}%  {:>9}",
                trim_pct(p),
                fmt_micros(Report::at(&r.latency, p) as f64)
            )?;
        }
        if r.rate().is_some() {
            writeln!(
                out,
                "  Service Time Distribution (uncorrected: from the actual send)"
            )?;
            for p in PERCENTILES {
                writeln!(
                    out,
                    "  {:>8}%  {:>9}",
                    trim_pct(p),
                    fmt_micros(Report::at(&r.service, p) as f64)
                )?;
            }
        }
    } else if r.rate().is_some() {
        writeln!(
            out,
            "  p99 corrected {} / uncorrected service time {}",
            fmt_micros(Report::at(&r.latency, 99.0) as f64),
            fmt_micros(Report::at(&r.service, 99.0) as f64)
        )?;
    }
    writeln!(
        out,
        "  {} requests in {:.2}s, {} read",
        r.responses(),
        secs,
        fmt_bytes(r.bytes_read as f64)
    )?;
    let e = &r.errors;
    if e.total() > 0 {
        writeln!(
            out,
            "  Socket errors: connect {}, read {}, write {}, timeout {}, protocol {}",
            e.connect, e.read, e.write, e.timeout, e.protocol
        )?;
        if let Some(first) = &r.first_connect_error {
            writeln!(out, "  First connect error: {first}")?;
        }
    }
    let s = &r.status;
    if s.bad() > 0 {
        writeln!(out, "  Non-2xx or 3xx responses: {}", s.bad())?;
    }
    writeln!(
        out,
        "  Status: 2xx {}, 3xx {}, 4xx {}, 5xx {}{}",
        s.s2xx,
        s.s3xx,
        s.s4xx,
        s.s5xx,
        if s.s1xx + s.other > 0 {
            format!(", other {}", s.s1xx + s.other)
        } else {
            String::new()
        }
    )?;
    write!(out, "  In flight at end: {}", r.in_flight_at_end)?;
    if r.rate().is_some() {
        write!(out, ", due but never sent: {}", r.unsent)?;
    }
    write!(out, ", reconnects: {}", r.reconnects)?;
    if r.retried > 0 {
        write!(out, ", retried (refused unprocessed): {}", r.retried)?;
    }
    writeln!(out)?;
    if r.per_host.len() > 1 {
        let counts: Vec<u64> = r.per_host.iter().map(|h| h.responses).collect();
        let min = counts.iter().min().copied().unwrap_or(0);
        let max = counts.iter().max().copied().unwrap_or(0);
        let unreached = counts.iter().filter(|c| **c == 0).count();
        writeln!(
            out,
            "  Hosts: {} ({}), responses per host min {min} avg {:.1} max {max}, never answered {unreached}",
            r.per_host.len(),
            match r.host_mode {
                crate::config::HostMode::Rotate => "rotate",
                crate::config::HostMode::Pin => "pin",
            },
            r.responses() as f64 / r.per_host.len() as f64,
        )?;
    }
    if let Some(h) = &r.expect_header {
        writeln!(out, "  Routing check ({h}): {} mismatched", r.mismatched)?;
    }
    writeln!(out, "Requests/sec: {:>10.2}", r.rps())?;
    writeln!(
        out,
        "Transfer/sec: {:>10}",
        fmt_bytes(r.bytes_read as f64 / secs)
    )?;
    Ok(())
}

fn trim_pct(p: f64) -> String {
    let s = format!("{p:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

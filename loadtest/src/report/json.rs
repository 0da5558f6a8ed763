//! `--json FILE`: the whole report as one JSON object. The `schema` field names the version;
//! fields are only ever added within a version (see docs/loadtest.md).

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::{hdr, Report, SecondRow, PERCENTILES};
use crate::config::Protocol;

/// The schema identifier written into every report.
pub const SCHEMA: &str = "pier-load/v1";

fn distribution(h: &Histogram<u64>) -> Value {
    let mut pct = Map::new();
    for p in PERCENTILES {
        let key = if p >= 100.0 {
            "100".to_string()
        } else {
            let s = format!("{p:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        };
        pct.insert(key, json!(Report::at(h, p)));
    }
    json!({
        "count": h.len(),
        "min": if h.is_empty() { 0 } else { h.min() },
        "mean": h.mean(),
        "stdev": h.stdev(),
        "max": h.max(),
        "percentiles": pct,
    })
}

/// Above this many hosts the per-host list is left out of the JSON (it would dominate the
/// file); the summary is always there.
pub const PER_HOST_LIMIT: usize = 100_000;

fn host_summary(r: &Report) -> Value {
    let counts = r.per_host.iter().map(|h| h.responses);
    json!({
        "hosts": r.per_host.len(),
        "min_responses": counts.clone().min().unwrap_or(0),
        "max_responses": counts.clone().max().unwrap_or(0),
        "never_answered": counts.filter(|c| *c == 0).count(),
        "listed": r.per_host.len() <= PER_HOST_LIMIT,
    })
}

pub fn to_value(r: &Report) -> Value {
    let (pipeline, streams) = match r.protocol {
        Protocol::Http1 { pipeline } => (json!(pipeline), Value::Null),
        Protocol::Http2 { max_streams } => (Value::Null, json!(max_streams)),
    };
    json!({
        "schema": SCHEMA,
        "config": {
            "url": r.url,
            "connect_addr": r.connect_addr,
            "threads": r.threads,
            "connections": r.connections,
            "duration_s": r.duration.as_secs_f64(),
            "warmup_s": r.warmup.as_secs_f64(),
            "model": r.model_name(),
            "rate": r.rate(),
            "protocol": r.protocol_name(),
            "pipeline": pipeline,
            "max_streams": streams,
            "hosts": r.per_host.len(),
            "host_mode": r.host_mode,
            "timeout_s": r.timeout.map(|t| t.as_secs_f64()),
            "expect_header": r.expect_header,
        },
        "requests": {
            "responses": r.responses(),
            "rps": r.rps(),
            "bytes_read": r.bytes_read,
            "bytes_written": r.bytes_written,
            "in_flight_at_end": r.in_flight_at_end,
            "unsent": r.unsent,
            "warmup_excluded": r.warmup_requests,
            "reconnects": r.reconnects,
            "retried": r.retried,
        },
        "status": r.status,
        "errors": {
            "connect": r.errors.connect,
            "read": r.errors.read,
            "write": r.errors.write,
            "timeout": r.errors.timeout,
            "protocol": r.errors.protocol,
            "failed_total": r.failed(),
            "failed_ratio": r.ratio(r.failed()),
            "first_connect_error": r.first_connect_error,
        },
        "latency_us": {
            "corrected": distribution(&r.latency),
            "service": distribution(&r.service),
        },
        "routing": {
            "header": r.expect_header,
            "mismatched": r.mismatched,
        },
        "per_host_summary": host_summary(r),
        "per_host": if r.per_host.len() <= PER_HOST_LIMIT { json!(r.per_host) } else { json!([]) },
        "series": r.series.iter().map(series_row).collect::<Vec<_>>(),
        "histograms": {
            "encoding": hdr::ENCODING,
            "corrected": hdr::encode(&r.latency),
            "service": hdr::encode(&r.service),
        },
        "merged_from": r.merged_from,
    })
}

/// A row of the series, with its second's histogram (`latency_hdr`) for merging.
fn series_row(row: &SecondRow) -> Value {
    let mut v = json!(row);
    if let Some(o) = v.as_object_mut() {
        o.insert("latency_hdr".into(), json!(hdr::encode(&row.latency)));
    }
    v
}

pub fn to_string(r: &Report) -> String {
    // Serialising a Value built from plain numbers and strings cannot fail.
    serde_json::to_string_pretty(&to_value(r)).unwrap_or_default()
}

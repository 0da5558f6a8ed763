//! Reading a `--json` report back (for `pier-load merge`). Only reports that carry their
//! histograms (`histograms`, and `latency_hdr` in each row of the series) can be read: without
//! them percentiles could only be averaged, which is wrong.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{hdr, json::SCHEMA, HostRow, Report, SecondRow};
use crate::config::{HostMode, LoadModel, Protocol};
use crate::stats::{ErrorCounts, StatusCounts};

/// Why a file is not a report that can be merged; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

fn at<'a>(v: &'a Value, path: &str) -> Result<&'a Value, LoadError> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .ok_or_else(|| LoadError(format!("field {path} is missing")))
}

fn num(v: &Value, path: &str) -> Result<u64, LoadError> {
    at(v, path)?
        .as_u64()
        .ok_or_else(|| LoadError(format!("field {path} is not a whole number")))
}

fn float(v: &Value, path: &str) -> Result<f64, LoadError> {
    at(v, path)?
        .as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .ok_or_else(|| LoadError(format!("field {path} is not a number")))
}

fn text(v: &Value, path: &str) -> Result<String, LoadError> {
    at(v, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| LoadError(format!("field {path} is not a string")))
}

fn opt_text(v: &Value, path: &str) -> Option<String> {
    at(v, path).ok().and_then(Value::as_str).map(str::to_string)
}

fn typed<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T, LoadError> {
    serde_json::from_value(at(v, path)?.clone())
        .map_err(|e| LoadError(format!("field {path}: {e}")))
}

fn histogram<T: hdrhistogram::Counter>(v: &Value, path: &str) -> Result<Histogram<T>, LoadError> {
    let encoded = at(v, path)?
        .as_str()
        .ok_or_else(|| LoadError(format!("field {path} is not a string")))?;
    hdr::decode(encoded).map_err(|e| LoadError(format!("field {path}: {e}")))
}

/// The report `v` holds (as [`super::json::to_value`] wrote it).
pub fn from_value(v: &Value) -> Result<Report, LoadError> {
    let schema = text(v, "schema")?;
    if schema != SCHEMA {
        return Err(LoadError(format!(
            "schema {schema:?} is not {SCHEMA:?}: not a pier-load run report"
        )));
    }
    if v.get("histograms").is_none() {
        return Err(LoadError(
            "it has no histograms: it was written by a pier-load older than `merge`; run it \
             again with this version"
                .into(),
        ));
    }
    let encoding = text(v, "histograms.encoding")?;
    if encoding != hdr::ENCODING {
        return Err(LoadError(format!(
            "histograms.encoding {encoding:?} is not {:?}",
            hdr::ENCODING
        )));
    }
    let model = match text(v, "config.model")?.as_str() {
        "open" => LoadModel::Open {
            rate: float(v, "config.rate")?,
        },
        "closed" => LoadModel::Closed,
        other => return Err(LoadError(format!("config.model {other:?} is unknown"))),
    };
    let protocol = match text(v, "config.protocol")?.as_str() {
        "http/1.1" => Protocol::Http1 {
            pipeline: usize::try_from(num(v, "config.pipeline")?).unwrap_or(usize::MAX),
        },
        "h2" => Protocol::Http2 {
            max_streams: usize::try_from(num(v, "config.max_streams")?).unwrap_or(usize::MAX),
        },
        other => return Err(LoadError(format!("config.protocol {other:?} is unknown"))),
    };
    let size = |path: &str| num(v, path).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let secs = |path: &str| {
        float(v, path).and_then(|s| {
            Duration::try_from_secs_f64(s).map_err(|e| LoadError(format!("field {path}: {e}")))
        })
    };
    let rows = at(v, "series")?
        .as_array()
        .ok_or_else(|| LoadError("field series is not a list".into()))?;
    let mut series = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let path = |k: &str| format!("series.{i}.{k}");
        let field = |k: &str| {
            row.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| LoadError(format!("field {} is not a whole number", path(k))))
        };
        let span = row
            .get("span")
            .and_then(Value::as_f64)
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| LoadError(format!("field {} is not within 0 and 1", path("span"))))?;
        let latency =
            histogram(row, "latency_hdr").map_err(|e| LoadError(format!("series.{i}: {e}")))?;
        series.push(SecondRow::new(
            field("second")?,
            span,
            (field("responses")?, field("errors")?, field("bytes")?),
            latency,
        ));
    }
    let errors = ErrorCounts {
        connect: num(v, "errors.connect")?,
        read: num(v, "errors.read")?,
        write: num(v, "errors.write")?,
        timeout: num(v, "errors.timeout")?,
        protocol: num(v, "errors.protocol")?,
    };
    Ok(Report {
        url: text(v, "config.url")?,
        connect_addr: text(v, "config.connect_addr")?,
        threads: size("config.threads")?,
        connections: size("config.connections")?,
        duration: secs("config.duration_s")?,
        warmup: secs("config.warmup_s")?,
        model,
        protocol,
        host_mode: typed::<HostMode>(v, "config.host_mode")?,
        expect_header: opt_text(v, "config.expect_header"),
        timeout: match at(v, "config.timeout_s")? {
            Value::Null => None,
            _ => Some(secs("config.timeout_s")?),
        },
        latency: histogram(v, "histograms.corrected")?,
        service: histogram(v, "histograms.service")?,
        status: typed::<StatusCounts>(v, "status")?,
        errors,
        bytes_read: num(v, "requests.bytes_read")?,
        bytes_written: num(v, "requests.bytes_written")?,
        reconnects: num(v, "requests.reconnects")?,
        retried: num(v, "requests.retried")?,
        mismatched: num(v, "routing.mismatched")?,
        warmup_requests: num(v, "requests.warmup_excluded")?,
        in_flight_at_end: num(v, "requests.in_flight_at_end")?,
        unsent: num(v, "requests.unsent")?,
        first_connect_error: opt_text(v, "errors.first_connect_error"),
        per_host: typed::<Vec<HostRow>>(v, "per_host")?,
        series,
        merged_from: v
            .get("merged_from")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default(),
    })
}

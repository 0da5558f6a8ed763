//! Parsing and printing of durations, sizes and rates as people type them
//! (`10s`, `1.5m`, `250us`, `20ms`) and as wrk prints them (`415.32us`, `1.20MB`).

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: expected a number with a unit such as 500ms, 10s, 2m or 1h")]
pub struct DurationError {
    pub input: String,
}

/// Parses `10s`, `1.5m`, `250ms`, `100us`, `2h`; a bare number means seconds (as in wrk).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration given in microseconds the way wrk does: `415.32us`, `1.20ms`, `2.00s`.
pub fn fmt_micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else if us < 60_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else {
        format!("{:.2}m", us / 60_000_000.0)
    }
}

/// Formats a byte count with binary units: `512.00B`, `1.20KB`, `3.45MB`.
pub fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", UNITS[i])
}

/// Formats a count with metric suffixes: `950.00`, `1.18k`, `2.50M`.
pub fn fmt_count(n: f64) -> String {
    if n < 1000.0 {
        format!("{n:.2}")
    } else if n < 1_000_000.0 {
        format!("{:.2}k", n / 1000.0)
    } else {
        format!("{:.2}M", n / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_like_wrk() {
        assert_eq!(fmt_micros(415.321), "415.32us");
        assert_eq!(fmt_micros(1200.0), "1.20ms");
        assert_eq!(fmt_micros(2_000_000.0), "2.00s");
        assert_eq!(fmt_bytes(2048.0), "2.00KB");
        assert_eq!(fmt_count(1180.0), "1.18k");
    }
}

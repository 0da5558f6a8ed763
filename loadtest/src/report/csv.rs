//! `--csv FILE`: the per-second time series, one row per second of the measured window.

use std::fmt::Write;

use super::Report;

pub const HEADER: &str = "second,span_s,responses,rps,errors,bytes,p50_us,p90_us,p99_us,max_us";

pub fn to_string(r: &Report) -> String {
    let mut out = String::with_capacity(64 * (r.series.len() + 1));
    out.push_str(HEADER);
    out.push('\n');
    for s in &r.series {
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "{},{:.3},{},{:.1},{},{},{},{},{},{}",
            s.second,
            s.span,
            s.responses,
            s.rps(),
            s.errors,
            s.bytes,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.max_us
        );
    }
    out
}

//! `--fail-if` thresholds for CI: `p99>20ms`, `errors>0.1%`, `rps<1000`, `timeouts>0`.
//! Any threshold that holds makes the run exit with code 3.

use crate::report::Report;
use crate::units::{fmt_micros, parse_duration};

/// What a threshold looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// Corrected latency percentile (`p50`, `p99.9`, ...), microseconds.
    Percentile(f64),
    Max,
    Mean,
    /// Responses per second over the measured window.
    Rps,
    /// Failed requests: transport errors, timeouts, non-2xx/3xx responses.
    Errors,
    Timeouts,
    Status4xx,
    Status5xx,
    /// Routing-check mismatches.
    Mismatched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

/// The right-hand side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Microseconds (latency metrics).
    Micros(f64),
    /// A plain number: a count, or req/s for `rps`.
    Number(f64),
    /// A fraction of finished requests (`0.1%` is 0.001).
    Ratio(f64),
}

/// One parsed `--fail-if` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    pub limit: Limit,
}

/// A threshold expression that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --fail-if {text:?}: {reason}")]
pub struct ThresholdError {
    pub text: String,
    pub reason: &'static str,
}

impl std::str::FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Threshold, ThresholdError> {
        let bad = |reason| ThresholdError {
            text: text.to_string(),
            reason,
        };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (pos, op, len) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
            .iter()
            .find_map(|(s, op)| compact.find(s).map(|p| (p, *op, s.len())))
            .ok_or_else(|| bad("expected METRIC>VALUE, METRIC<VALUE, >= or <="))?;
        let name = compact[..pos].to_ascii_lowercase();
        let value = &compact[pos + len..];
        let metric = match name.as_str() {
            "max" => Metric::Max,
            "mean" | "avg" => Metric::Mean,
            "rps" => Metric::Rps,
            "errors" => Metric::Errors,
            "timeouts" => Metric::Timeouts,
            "4xx" => Metric::Status4xx,
            "5xx" => Metric::Status5xx,
            "mismatched" => Metric::Mismatched,
            n => match n.strip_prefix('p').map(str::parse::<f64>) {
                Some(Ok(p)) if (0.0..=100.0).contains(&p) => Metric::Percentile(p),
                _ => return Err(bad(
                    "unknown metric (pNN, max, mean, rps, errors, timeouts, 4xx, 5xx, mismatched)",
                )),
            },
        };
        let limit = match metric {
            Metric::Percentile(_) | Metric::Max | Metric::Mean => Limit::Micros(
                Some(value)
                    .filter(|v| v.ends_with(|c: char| c.is_ascii_alphabetic()))
                    .ok_or_else(|| bad("latency limits need a unit, e.g. 20ms"))
                    .and_then(|v| {
                        parse_duration(v).map_err(|_| bad("latency limits need a unit, e.g. 20ms"))
                    })?
                    .as_secs_f64()
                    * 1e6,
            ),
            Metric::Rps => Limit::Number(value.parse().map_err(|_| bad("rps needs a number"))?),
            _ => match value.strip_suffix('%') {
                Some(p) => Limit::Ratio(
                    p.parse::<f64>()
                        .map_err(|_| bad("expected a count or a percentage"))?
                        / 100.0,
                ),
                None => Limit::Number(
                    value
                        .parse()
                        .map_err(|_| bad("expected a count or a percentage"))?,
                ),
            },
        };
        Ok(Threshold {
            text: text.to_string(),
            metric,
            op,
            limit,
        })
    }
}

impl Threshold {
    /// The measured value, in the unit of the limit.
    fn measured(&self, r: &Report) -> f64 {
        let count = |n: u64| match self.limit {
            Limit::Ratio(_) => r.ratio(n),
            _ => n as f64,
        };
        match self.metric {
            Metric::Percentile(p) => Report::at(&r.latency, p) as f64,
            Metric::Max => r.latency.max() as f64,
            Metric::Mean => r.latency.mean(),
            Metric::Rps => r.rps(),
            Metric::Errors => count(r.failed()),
            Metric::Timeouts => count(r.errors.timeout),
            Metric::Status4xx => count(r.status.s4xx),
            Metric::Status5xx => count(r.status.s5xx),
            Metric::Mismatched => count(r.mismatched),
        }
    }

    /// `Some(explanation)` when the threshold is crossed (the run should fail).
    pub fn violated(&self, r: &Report) -> Option<String> {
        let v = self.measured(r);
        let limit = match self.limit {
            Limit::Micros(x) | Limit::Number(x) | Limit::Ratio(x) => x,
        };
        let hit = match self.op {
            Op::Gt => v > limit,
            Op::Ge => v >= limit,
            Op::Lt => v < limit,
            Op::Le => v <= limit,
        };
        let shown = match self.limit {
            Limit::Micros(_) => fmt_micros(v),
            Limit::Ratio(_) => format!("{:.4}%", v * 100.0),
            Limit::Number(_) => format!("{v:.2}"),
        };
        hit.then(|| format!("threshold crossed: {} (measured {shown})", self.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_expressions() {
        let t: Threshold = "p99>20ms".parse().unwrap();
        assert_eq!(t.metric, Metric::Percentile(99.0));
        assert_eq!(t.op, Op::Gt);
        assert_eq!(t.limit, Limit::Micros(20_000.0));
        let t: Threshold = "errors > 0.1%".parse().unwrap();
        assert_eq!(t.metric, Metric::Errors);
        assert!(matches!(t.limit, Limit::Ratio(x) if (x - 0.001).abs() < 1e-12));
        let t: Threshold = "rps<=1000".parse().unwrap();
        assert_eq!(
            (t.metric, t.op, t.limit),
            (Metric::Rps, Op::Le, Limit::Number(1000.0))
        );
        let t: Threshold = "p99.9>=1s".parse().unwrap();
        assert_eq!(t.metric, Metric::Percentile(99.9));
        assert!("p99>20".parse::<Threshold>().is_err());
        assert!("latency>1ms".parse::<Threshold>().is_err());
        assert!("p99".parse::<Threshold>().is_err());
        assert!("p101>1ms".parse::<Threshold>().is_err());
    }
}

//! `--html FILE`: one self-contained page (inline SVG, no scripts, no external resources)
//! with throughput and latency over time, the percentile spectrum, and the summary numbers.

use std::fmt::Write;

use super::{Report, PERCENTILES};
use crate::units::{fmt_bytes, fmt_micros};

const W: f64 = 880.0;
const H: f64 = 300.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

struct Line<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// How values map onto an axis.
#[derive(Clone, Copy)]
enum Scale {
    Linear {
        max: f64,
    },
    /// Latency in microseconds, log10 between two decades.
    LogMicros {
        lo: f64,
        hi: f64,
    },
    /// Percentile "nines": x = -log10(1 - p/100), 0 (p0) to 5 (p99.999).
    Nines,
}

impl Scale {
    fn frac(self, v: f64) -> f64 {
        match self {
            Scale::Linear { max } => {
                if max > 0.0 {
                    v / max
                } else {
                    0.0
                }
            }
            Scale::LogMicros { lo, hi } => (v.max(1.0).log10() - lo) / (hi - lo),
            Scale::Nines => v / 5.0,
        }
        .clamp(0.0, 1.0)
    }

    fn ticks(self) -> Vec<(f64, String)> {
        match self {
            Scale::Linear { max } => {
                if max <= 0.0 {
                    return vec![(0.0, "0".into())];
                }
                let raw = max / 5.0;
                let mag = 10f64.powf(raw.log10().floor());
                let step = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .map(|m| m * mag)
                    .find(|s| *s >= raw)
                    .unwrap_or(mag * 10.0);
                let mut t = Vec::new();
                let mut v = 0.0;
                while v <= max * 1.0001 {
                    t.push((v, short(v)));
                    v += step;
                }
                t
            }
            Scale::LogMicros { lo, hi } => (lo as i32..=hi as i32)
                .map(|d| {
                    let us = 10f64.powi(d);
                    (us, fmt_micros(us).replace(".00", ""))
                })
                .collect(),
            Scale::Nines => ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
                .iter()
                .enumerate()
                .map(|(i, l)| (i as f64, l.to_string()))
                .collect(),
        }
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn chart(title: &str, x_label: &str, x: Scale, y: Scale, lines: &[Line<'_>]) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |v: f64| LEFT + x.frac(v) * pw;
    let py = |v: f64| TOP + (1.0 - y.frac(v)) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="20" font-size="15" font-weight="bold">{t}</text>"##,
        t = esc(title)
    );
    for (v, label) in y.ticks() {
        let yy = py(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            esc(&label)
        );
    }
    for (v, label) in x.ticks() {
        let xx = px(v);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            esc(&label)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
        LEFT + pw / 2.0,
        H - 8.0,
        esc(x_label)
    );
    for (i, line) in lines.iter().enumerate() {
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
            .collect();
        if pts.len() == 1 {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"##,
                px(line.points[0].0),
                py(line.points[0].1),
                line.color
            );
        } else if !pts.is_empty() {
            let _ = write!(
                s,
                r##"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"##,
                line.color,
                pts.join(" ")
            );
        }
        let ly = TOP + 14.0 + i as f64 * 18.0;
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"##,
            LEFT + pw + 12.0,
            ly - 4.0,
            line.color,
            LEFT + pw + 32.0,
            ly + 1.0,
            esc(line.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// The decades that cover `lo..=hi` microseconds.
fn log_range(lo: u64, hi: u64) -> Scale {
    let lo = (lo.max(1) as f64).log10().floor();
    let hi = (hi.max(1) as f64).log10().ceil().max(lo + 1.0);
    Scale::LogMicros { lo, hi }
}

pub fn to_string(r: &Report) -> String {
    let series = &r.series;
    let x_max = (r.duration.as_secs_f64()).max(1.0);
    let x = Scale::Linear { max: x_max };
    let at = |s: &super::SecondRow| s.second as f64 + s.span / 2.0;

    let rps = Line {
        name: "responses/s",
        color: "#1f77b4",
        points: series.iter().map(|s| (at(s), s.rps())).collect(),
    };
    let errs = Line {
        name: "failed/s",
        color: "#d62728",
        points: series
            .iter()
            .map(|s| {
                (
                    at(s),
                    if s.span > 0.0 {
                        s.errors as f64 / s.span
                    } else {
                        0.0
                    },
                )
            })
            .collect(),
    };
    let y_max = series
        .iter()
        .map(|s| s.rps().max(s.errors as f64 / s.span.max(1e-9)))
        .fold(1.0, f64::max)
        * 1.1;
    let throughput = chart(
        "Throughput over time",
        "seconds since end of warm-up",
        x,
        Scale::Linear { max: y_max },
        &[rps, errs],
    );

    let lat_lo = series
        .iter()
        .map(|s| s.p50_us)
        .filter(|v| *v > 0)
        .min()
        .unwrap_or(1);
    let lat_hi = series.iter().map(|s| s.max_us).max().unwrap_or(1);
    let pick = |name, color, f: fn(&super::SecondRow) -> u64| Line {
        name,
        color,
        points: series
            .iter()
            .filter(|s| s.responses > 0)
            .map(|s| (at(s), f(s) as f64))
            .collect(),
    };
    let latency_time = chart(
        if r.rate().is_some() {
            "Latency over time (corrected)"
        } else {
            "Latency over time"
        },
        "seconds since end of warm-up",
        x,
        log_range(lat_lo, lat_hi),
        &[
            pick("p50", "#2ca02c", |s| s.p50_us),
            pick("p90", "#1f77b4", |s| s.p90_us),
            pick("p99", "#ff7f0e", |s| s.p99_us),
            pick("max", "#d62728", |s| s.max_us),
        ],
    );

    let spectrum = |h: &hdrhistogram::Histogram<u64>| -> Vec<(f64, f64)> {
        if h.is_empty() {
            return Vec::new();
        }
        (0..=100)
            .map(|i| {
                let nines = i as f64 * 0.05;
                let p = 100.0 * (1.0 - 10f64.powf(-nines));
                (nines, h.value_at_percentile(p) as f64)
            })
            .collect()
    };
    let mut lines = vec![Line {
        name: if r.rate().is_some() {
            "corrected"
        } else {
            "latency"
        },
        color: "#d62728",
        points: spectrum(&r.latency),
    }];
    if r.rate().is_some() {
        lines.push(Line {
            name: "service time",
            color: "#1f77b4",
            points: spectrum(&r.service),
        });
    }
    let lo = r.latency.min().min(r.service.min());
    let hi = r.latency.max().max(r.service.max());
    let percentiles = chart(
        "Latency by percentile",
        "percentile",
        Scale::Nines,
        log_range(lo, hi),
        &lines,
    );

    let mut rows = String::new();
    for p in PERCENTILES {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            if p >= 100.0 {
                "max".to_string()
            } else {
                format!("p{p}")
            },
            fmt_micros(Report::at(&r.latency, p) as f64),
            fmt_micros(Report::at(&r.service, p) as f64)
        );
    }
    let e = &r.errors;
    let s = &r.status;
    let rate = r.rate().map_or("closed model".to_string(), |v| {
        format!("open model, {v} req/s")
    });
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pier-load: {url}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:940px}}
h1{{font-size:20px}} table{{border-collapse:collapse;margin:8px 0 18px}}
td,th{{border:1px solid #ccc;padding:3px 10px;text-align:right;font-size:13px}}
th{{background:#f4f4f4}} .facts td:first-child{{text-align:left}} svg{{display:block;margin:10px 0}}
</style></head><body>
<h1>pier-load report</h1>
<p><b>{url}</b> &mdash; {threads} threads, {conns} connections, {rate}, {proto}, {dur:.1}s measured
(warm-up {warm:.1}s excluded), {hosts} host(s).</p>
<table class="facts">
<tr><td>responses</td><td>{resp}</td></tr>
<tr><td>requests/s</td><td>{rps:.1}</td></tr>
<tr><td>read</td><td>{bytes}</td></tr>
<tr><td>status 2xx / 3xx / 4xx / 5xx</td><td>{s2} / {s3} / {s4} / {s5}</td></tr>
<tr><td>errors connect / read / write / timeout / protocol</td><td>{ec} / {er} / {ew} / {et} / {ep}</td></tr>
<tr><td>in flight at end / due but never sent</td><td>{infl} / {unsent}</td></tr>
<tr><td>routing mismatches</td><td>{mism}</td></tr>
</table>
{throughput}
{latency_time}
{percentiles}
<table><tr><th>percentile</th><th>latency{corr}</th><th>service time</th></tr>{rows}</table>
<p style="font-size:12px;color:#666">Generated by pier-load. Latency{corr} is measured from each request's scheduled start in the open model (coordinated omission corrected) and from the send in the closed model; service time is always measured from the send.</p>
</body></html>
"##,
        url = esc(&r.url),
        threads = r.threads,
        conns = r.connections,
        proto = r.protocol_name(),
        dur = r.duration.as_secs_f64(),
        warm = r.warmup.as_secs_f64(),
        hosts = r.per_host.len(),
        resp = r.responses(),
        rps = r.rps(),
        bytes = fmt_bytes(r.bytes_read as f64),
        s2 = s.s2xx,
        s3 = s.s3xx,
        s4 = s.s4xx,
        s5 = s.s5xx,
        ec = e.connect,
        er = e.read,
        ew = e.write,
        et = e.timeout,
        ep = e.protocol,
        infl = r.in_flight_at_end,
        unsent = r.unsent,
        mism = r.mismatched,
        corr = if r.rate().is_some() {
            " (corrected)"
        } else {
            ""
        },
    )
}

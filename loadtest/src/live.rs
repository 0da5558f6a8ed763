//! `--tui`: a full-screen live view of a run on the terminal (stderr), redrawn once a second
//! from the rows the collector merges anyway: requests/s and latency percentiles over time,
//! status classes and errors of the last second and in total, errors as they happen, and per
//! host when the run names several hosts. It runs on the collector's thread, never on a worker,
//! and draws one frame a second, so it costs the generator nothing it would notice (measured in
//! docs/benchmarks/pier-load-vs-wrk.md).

use std::collections::VecDeque;
use std::io::{self, Write};

use crossterm::{cursor, queue, terminal};

use crate::report::SecondRow;
use crate::stats::{ErrorCounts, StatusCounts};
use crate::units::fmt_micros;

/// Seconds kept for the charts.
const HISTORY: usize = 240;
/// Error lines kept.
const ERROR_LINES: usize = 50;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The live view; the terminal is given back as it was when it is dropped.
pub struct LiveView {
    title: String,
    total_s: u64,
    hosts: Vec<String>,
    rps: VecDeque<f64>,
    p99: VecDeque<u64>,
    status: StatusCounts,
    errors: ErrorCounts,
    responses: u64,
    error_lines: VecDeque<String>,
    out: io::Stderr,
}

/// `31250` → `31,250`.
fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_errors(e: &ErrorCounts) -> String {
    let parts: Vec<String> = [
        ("connect", e.connect),
        ("read", e.read),
        ("write", e.write),
        ("timeout", e.timeout),
        ("protocol", e.protocol),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{} {k}", int(*n)))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn fmt_status(s: &StatusCounts) -> String {
    format!(
        "2xx {}  3xx {}  4xx {}  5xx {}  1xx/other {}",
        int(s.s2xx),
        int(s.s3xx),
        int(s.s4xx),
        int(s.s5xx),
        int(s.s1xx + s.other)
    )
}

/// The last `width` values as bars scaled to the largest of them.
fn sparkline(values: impl DoubleEndedIterator<Item = f64> + Clone, width: usize) -> String {
    let recent: Vec<f64> = values.rev().take(width).collect();
    let top = recent.iter().copied().fold(0.0, f64::max);
    recent
        .iter()
        .rev()
        .map(|v| {
            if top <= 0.0 {
                BARS[0]
            } else {
                let i = ((v / top) * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            }
        })
        .collect()
}

fn clip(line: &str, width: usize) -> String {
    line.chars().take(width).collect()
}

impl LiveView {
    /// Takes over the terminal (the alternate screen, cursor hidden).
    pub fn start(title: String, total_s: u64, hosts: Vec<String>) -> io::Result<LiveView> {
        let mut out = io::stderr();
        queue!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        out.flush()?;
        let mut view = LiveView {
            title,
            total_s,
            hosts,
            rps: VecDeque::new(),
            p99: VecDeque::new(),
            status: StatusCounts::default(),
            errors: ErrorCounts::default(),
            responses: 0,
            error_lines: VecDeque::new(),
            out,
        };
        view.draw(None)?;
        Ok(view)
    }

    /// Takes in a second of the run and redraws.
    pub fn second(&mut self, row: &SecondRow) -> io::Result<()> {
        if self.rps.len() == HISTORY {
            self.rps.pop_front();
            self.p99.pop_front();
        }
        self.rps.push_back(row.rps());
        self.p99.push_back(row.p99_us);
        self.status.add(&row.status);
        self.errors.add(&row.error_kinds);
        self.responses += row.responses;
        let bad = row.status.s4xx + row.status.s5xx + row.status.s1xx + row.status.other;
        if row.error_kinds.total() > 0 || bad > 0 {
            let mut what = Vec::new();
            if row.error_kinds.total() > 0 {
                what.push(fmt_errors(&row.error_kinds));
            }
            for (n, class) in [
                (row.status.s4xx, "4xx"),
                (row.status.s5xx, "5xx"),
                (row.status.s1xx + row.status.other, "other status"),
            ] {
                if n > 0 {
                    what.push(format!("{} {class}", int(n)));
                }
            }
            if self.error_lines.len() == ERROR_LINES {
                self.error_lines.pop_front();
            }
            self.error_lines
                .push_back(format!("{:>5}s  {}", row.second + 1, what.join(", ")));
        }
        self.draw(Some(row))
    }

    fn draw(&mut self, row: Option<&SecondRow>) -> io::Result<()> {
        let (cols, rows) = terminal::size().unwrap_or((100, 30));
        let (w, h) = (usize::from(cols.max(20)), usize::from(rows.max(10)));
        let mut lines: Vec<String> = Vec::new();
        let elapsed = row.map_or(0, |r| r.second + 1);
        lines.push(format!(
            "pier-load  {}  {elapsed}s / {}s",
            self.title, self.total_s
        ));
        lines.push(String::new());
        match row {
            None => lines.push("  waiting for the first second...".into()),
            Some(r) => {
                let avg = self.rps.iter().sum::<f64>() / self.rps.len().max(1) as f64;
                lines.push(format!(
                    "  req/s     {:>12}   average {}   responses {}",
                    int(r.rps().round() as u64),
                    int(avg.round() as u64),
                    int(self.responses)
                ));
                lines.push(format!(
                    "  latency   p50 {}  p90 {}  p99 {}  max {}   (this second)",
                    fmt_micros(r.p50_us as f64),
                    fmt_micros(r.p90_us as f64),
                    fmt_micros(r.p99_us as f64),
                    fmt_micros(r.max_us as f64)
                ));
                lines.push(format!("  status    {}", fmt_status(&r.status)));
                lines.push(format!(
                    "            {}   (in total)",
                    fmt_status(&self.status)
                ));
                lines.push(format!(
                    "  errors    {}   (in total: {})",
                    fmt_errors(&r.error_kinds),
                    fmt_errors(&self.errors)
                ));
                lines.push(String::new());
                let peak = self.rps.iter().copied().fold(0.0, f64::max);
                lines.push(format!(
                    "  req/s over time (peak {})",
                    int(peak.round() as u64)
                ));
                lines.push(format!(
                    "  {}",
                    sparkline(self.rps.iter().copied(), w.saturating_sub(4))
                ));
                let worst = self.p99.iter().copied().max().unwrap_or(0);
                lines.push(format!(
                    "  p99 over time (highest {})",
                    fmt_micros(worst as f64)
                ));
                lines.push(format!(
                    "  {}",
                    sparkline(self.p99.iter().map(|v| *v as f64), w.saturating_sub(4))
                ));
                lines.push(String::new());
                lines.push("  errors as they happen".into());
                let room = h.saturating_sub(lines.len() + 1);
                let host_rows = if r.hosts.len() > 1 { room / 2 } else { 0 };
                let error_rows = room.saturating_sub(host_rows).saturating_sub(1).max(1);
                if self.error_lines.is_empty() {
                    lines.push("      none".into());
                }
                let skip = self.error_lines.len().saturating_sub(error_rows);
                lines.extend(self.error_lines.iter().skip(skip).cloned());
                if host_rows > 1 {
                    lines.push(String::new());
                    lines.push(format!(
                        "  {:<40} {:>10} {:>8} {:>10}   (this second; failing hosts first)",
                        "host", "req/s", "errors", "misrouted"
                    ));
                    let mut order: Vec<usize> = (0..r.hosts.len()).collect();
                    order.sort_by_key(|&i| {
                        let c = r.hosts[i];
                        (std::cmp::Reverse(c.errors + c.mismatched), c.responses)
                    });
                    for &i in order.iter().take(host_rows.saturating_sub(2)) {
                        let c = r.hosts[i];
                        let name = self.hosts.get(i).map_or("?", String::as_str);
                        lines.push(format!(
                            "  {:<40} {:>10} {:>8} {:>10}",
                            clip(name, 40),
                            int((c.responses as f64 / r.span.max(0.001)).round() as u64),
                            int(c.errors),
                            int(c.mismatched)
                        ));
                    }
                }
            }
        }
        queue!(
            self.out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        for (i, line) in lines.iter().take(h).enumerate() {
            let y = u16::try_from(i).unwrap_or(u16::MAX);
            queue!(self.out, cursor::MoveTo(0, y))?;
            write!(self.out, "{}", clip(line, w))?;
        }
        self.out.flush()
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        let _ = queue!(self.out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_largest_value() {
        let s = sparkline([0.0, 50.0, 100.0].into_iter(), 10);
        assert_eq!(s, "▁▅█");
        // Only the most recent values that fit.
        let s = sparkline((0..100).map(f64::from), 4);
        assert_eq!(s.chars().count(), 4);
        assert!(s.ends_with('█'));
        assert_eq!(sparkline([0.0, 0.0].into_iter(), 5), "▁▁");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(31_250), "31,250");
        assert_eq!(int(1_234_567), "1,234,567");
    }

    #[test]
    fn errors_and_statuses_read_as_words() {
        let e = ErrorCounts {
            timeout: 3,
            connect: 1,
            ..Default::default()
        };
        assert_eq!(fmt_errors(&e), "1 connect, 3 timeout");
        assert_eq!(fmt_errors(&ErrorCounts::default()), "none");
        let s = StatusCounts {
            s2xx: 1500,
            s5xx: 2,
            ..Default::default()
        };
        assert!(
            fmt_status(&s).contains("2xx 1,500  3xx 0  4xx 0  5xx 2"),
            "{}",
            fmt_status(&s)
        );
    }
}

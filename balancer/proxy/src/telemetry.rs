//! Router lines and per-app stats, written to the registry's Redis off the request path.
//!
//! The request path hands each answered request of an app to [`Telemetry::record`]: the
//! router line is formatted there (one allocation) and queued with a non-blocking send on a
//! bounded channel. One thread empties the channel: it writes the lines to the apps' log
//! streams in pipelined batches and folds every request into the app's stats buckets
//! ([`pier_registry::telemetry`]), which it writes every `stats_interval`. When the queue is
//! full or Redis is slow or gone, lines are dropped and counted
//! (`pier_telemetry_dropped_total`), never waited for; stats keep accumulating in memory and
//! are written when Redis answers again.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use pier_registry::telemetry::{logs_key, router_stats_key, RouterWindow, Tier, LOG_STREAM_LEN};
use pier_routes::App;
use prometheus::IntCounter;

use crate::config::TelemetrySettings;
use crate::forward::Forwarded;
use crate::respond::ProxyError;
use crate::serve::Exchange;

/// Lines written per Redis round trip, at most.
const BATCH: usize = 512;
/// How long a Redis command may take before the link counts as down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, Redis is not tried again for this long (lines meanwhile are dropped).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest path kept in a router line, bytes (the rest is cut and marked).
const MAX_PATH: usize = 2048;

/// One answered request on its way to the writer thread.
struct Event {
    app: CompactString,
    status: u16,
    total_us: u64,
    line: Option<String>,
}

/// The request path's end of the queue.
pub struct Telemetry {
    tx: SyncSender<Event>,
    lines: bool,
    dropped: IntCounter,
}

/// Counters the writer keeps in the balancer's metrics.
pub struct TelemetryMetrics {
    /// Router lines written to Redis.
    pub lines: IntCounter,
    /// Router lines dropped: queue full or Redis unreachable.
    pub dropped: IntCounter,
    /// Stats writes that failed (the stats stay in memory and go with the next write).
    pub stats_failures: IntCounter,
}

impl Telemetry {
    /// Starts the writer thread for `redis_url` under `prefix`.
    pub fn start(
        settings: &TelemetrySettings,
        redis_url: &str,
        prefix: &str,
        metrics: TelemetryMetrics,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(settings.queue);
        let dropped = metrics.dropped.clone();
        let writer = Writer {
            url: redis_url.to_string(),
            prefix: prefix.to_string(),
            id: settings.id.clone(),
            stats: settings.stats,
            stats_interval: settings.stats_interval,
            conn: None,
            retry_at: None,
            apps: HashMap::new(),
            metrics,
        };
        std::thread::Builder::new()
            .name("pier-telemetry".into())
            .spawn(move || writer.run(rx))?;
        Ok(Telemetry {
            tx,
            lines: settings.router_lines,
            dropped,
        })
    }

    /// Queues one answered request of `app`; never waits.
    pub(crate) fn record(&self, app: &App, x: &Exchange<'_>, o: &Forwarded) {
        let total = x.end.saturating_duration_since(x.start);
        let line = self.lines.then(|| router_line(app, x, o, total));
        let ev = Event {
            app: app.name.clone(),
            status: o.status,
            total_us: total.as_micros().min(u128::from(u64::MAX)) as u64,
            line,
        };
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev) | TrySendError::Disconnected(ev)) => {
                if ev.line.is_some() {
                    self.dropped.inc();
                }
            }
        }
    }
}

/// The Heroku-style router line: `at=info method=GET path="/" host=… request_id=… fwd="…"
/// instance=… connect=0ms service=3ms total=4ms status=200 bytes=512 protocol=http/1.1`, with
/// `at=error error=REASON` when pier answered itself and `aborted=WHY` when the answer broke.
/// Client-supplied text is quoted and escaped: no control character or quote gets through.
fn router_line(app: &App, x: &Exchange<'_>, o: &Forwarded, total: Duration) -> String {
    let mut s = String::with_capacity(192 + x.target.len().min(MAX_PATH));
    let at = if o.error.is_some() || o.aborted.is_some() {
        "error"
    } else {
        "info"
    };
    s.push_str("at=");
    s.push_str(at);
    if let Some(e) = o.error {
        s.push_str(" error=");
        s.push_str(ProxyError::reason(e));
    }
    if let Some(why) = o.aborted {
        s.push_str(" aborted=");
        s.push_str(why);
    }
    s.push_str(" method=");
    escape_bare(&mut s, x.method);
    s.push_str(" path=\"");
    escape_quoted(&mut s, x.target, MAX_PATH);
    s.push_str("\" host=");
    escape_bare(&mut s, x.host);
    s.push_str(" request_id=");
    escape_bare(&mut s, x.request_id);
    let _ = write!(s, " fwd=\"{}\"", x.peer.ip());
    s.push_str(" instance=");
    push_instance(&mut s, app, o.upstream);
    let ms = |d: Option<Duration>| d.map_or(0, |d| (d.as_micros() as u64).div_ceil(1000));
    let _ = write!(
        s,
        " connect={}ms service={}ms total={}ms status={} bytes={} protocol={}",
        ms(o.connect),
        ms(o.first_byte),
        ms(Some(total)),
        o.status,
        o.bytes_out,
        x.protocol
    );
    s
}

/// The backend's instance id when the registry gave one, else its address; `-` for none.
fn push_instance(s: &mut String, app: &App, upstream: Option<SocketAddr>) {
    let Some(addr) = upstream else {
        s.push('-');
        return;
    };
    match app.backends.iter().find(|b| b.addr == addr) {
        Some(b) if b.id.is_some() => escape_bare(s, b.id().as_bytes()),
        _ => {
            let _ = write!(s, "{addr}");
        }
    }
}

/// Bytes as a bare token: printable ASCII other than space, quote and backslash kept, the rest
/// as `\xNN`; `-` for none.
fn escape_bare(s: &mut String, b: &[u8]) {
    if b.is_empty() {
        s.push('-');
    }
    for &c in b {
        if c.is_ascii_graphic() && c != b'"' && c != b'\\' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
}

/// Bytes inside quotes, cut at `max` (marked `...`): printable ASCII and space kept, `"` and `\`
/// escaped with a backslash, the rest as `\xNN`.
fn escape_quoted(s: &mut String, b: &[u8], max: usize) {
    for &c in &b[..b.len().min(max)] {
        match c {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(c as char);
            }
            b' '..=b'~' => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if b.len() > max {
        s.push_str("...");
    }
}

/// One app's stats, per tier: the bucket being filled and the ones still to be written.
#[derive(Default)]
struct AppStats {
    tiers: [TierStats; 3],
}

#[derive(Default)]
struct TierStats {
    bucket: u64,
    current: RouterWindow,
    dirty: bool,
    /// Finished buckets not yet written (Redis was down at the change of bucket).
    done: Vec<(u64, RouterWindow)>,
}

impl TierStats {
    fn record(&mut self, tier: Tier, now_s: u64, status: u16, total_us: u64) {
        let b = tier.bucket(now_s);
        if b != self.bucket {
            if self.dirty {
                let old = std::mem::take(&mut self.current);
                self.done.push((self.bucket, old));
                // A bucket past its expiry is not worth keeping.
                self.done.retain(|(start, _)| start + tier.ttl() > now_s);
            }
            self.current = RouterWindow::default();
            self.bucket = b;
        }
        self.current.record(status, total_us);
        self.dirty = true;
    }
}

/// The writer thread's state.
struct Writer {
    url: String,
    prefix: String,
    id: String,
    stats: bool,
    stats_interval: Duration,
    conn: Option<redis::Connection>,
    /// While set, Redis failed recently: not tried before then.
    retry_at: Option<Instant>,
    apps: HashMap<CompactString, AppStats>,
    metrics: TelemetryMetrics,
}

fn unix_now() -> (u64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.as_millis() as u64)
}

impl Writer {
    fn run(mut self, rx: Receiver<Event>) {
        let mut lines: Vec<(CompactString, String, u64)> = Vec::with_capacity(BATCH);
        let mut next_stats = Instant::now() + self.stats_interval;
        loop {
            let wait = next_stats.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let (now_s, now_ms) = unix_now();
            if let Some(ev) = first {
                self.take(ev, &mut lines, now_s, now_ms);
                while lines.len() < BATCH {
                    match rx.try_recv() {
                        Ok(ev) => self.take(ev, &mut lines, now_s, now_ms),
                        Err(_) => break,
                    }
                }
            }
            if !lines.is_empty() {
                self.write_lines(&lines);
                lines.clear();
            }
            if Instant::now() >= next_stats {
                self.write_stats(now_s);
                next_stats = Instant::now() + self.stats_interval;
            }
        }
        // The balancer is stopping: what was counted is written once more.
        let (now_s, _) = unix_now();
        self.retry_at = None;
        self.write_stats(now_s);
    }

    /// Counts one request in its app's stats and keeps its line for the next write.
    fn take(
        &mut self,
        ev: Event,
        lines: &mut Vec<(CompactString, String, u64)>,
        now_s: u64,
        now_ms: u64,
    ) {
        if self.stats {
            let app = self.apps.entry(ev.app.clone()).or_default();
            for (t, tier) in app.tiers.iter_mut().zip(Tier::ALL) {
                t.record(tier, now_s, ev.status, ev.total_us);
            }
        }
        if let Some(line) = ev.line {
            lines.push((ev.app, line, now_ms));
        }
    }

    /// The connection, opened if needed; `None` while Redis is failing.
    fn conn(&mut self) -> Option<&mut redis::Connection> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self.conn.is_none() {
            let opened = redis::Client::open(self.url.as_str()).and_then(|c| {
                let conn = c.get_connection_with_timeout(REDIS_TIMEOUT)?;
                conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
                conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
                Ok(conn)
            });
            match opened {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.failed(&e);
                    return None;
                }
            }
        }
        self.retry_at = None;
        self.conn.as_mut()
    }

    fn failed(&mut self, e: &redis::RedisError) {
        tracing::debug!(error = %e, "telemetry: Redis unreachable");
        self.conn = None;
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    fn write_lines(&mut self, lines: &[(CompactString, String, u64)]) {
        let mut pipe = redis::pipe();
        for (app, line, at_ms) in lines {
            pipe.cmd("XADD")
                .arg(logs_key(&self.prefix, app))
                .arg("MAXLEN")
                .arg("~")
                .arg(LOG_STREAM_LEN)
                .arg("*")
                .arg("t")
                .arg(*at_ms)
                .arg("src")
                .arg("router")
                .arg("ps")
                .arg(&self.id)
                .arg("line")
                .arg(line)
                .ignore();
        }
        let n = lines.len() as u64;
        let Some(conn) = self.conn() else {
            self.metrics.dropped.inc_by(n);
            return;
        };
        match pipe.exec(conn) {
            Ok(()) => self.metrics.lines.inc_by(n),
            Err(e) => {
                self.metrics.dropped.inc_by(n);
                self.failed(&e);
            }
        }
    }

    fn write_stats(&mut self, now_s: u64) {
        if !self.stats {
            return;
        }
        let mut pipe = redis::pipe();
        let mut any = false;
        for (name, app) in &self.apps {
            for (t, tier) in app.tiers.iter().zip(Tier::ALL) {
                let current = t.dirty.then_some((t.bucket, &t.current));
                for (bucket, w) in t.done.iter().map(|(b, w)| (*b, w)).chain(current) {
                    let key = router_stats_key(&self.prefix, name, tier, bucket);
                    let expire_at = bucket + tier.ttl();
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(&self.id)
                        .arg(w.encode())
                        .ignore();
                    pipe.cmd("EXPIREAT").arg(&key).arg(expire_at).ignore();
                    any = true;
                }
            }
        }
        if any {
            let Some(conn) = self.conn() else {
                self.metrics.stats_failures.inc();
                return;
            };
            if let Err(e) = pipe.exec(conn) {
                self.metrics.stats_failures.inc();
                self.failed(&e);
                return;
            }
        }
        // Written: finished buckets are done with, and apps quiet for a whole day-bucket's
        // life are forgotten.
        self.apps.retain(|_, app| {
            for t in &mut app.tiers {
                t.done.clear();
                t.dirty = false;
            }
            let hour = &app.tiers[2];
            hour.bucket + Tier::Hour.ttl() > now_s
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_control_characters_and_quotes_out() {
        let mut s = String::new();
        escape_quoted(&mut s, b"/a b\"c\\d\r\n\x1b[31m\xff", 100);
        assert_eq!(s, r#"/a b\"c\\d\x0d\x0a\x1b[31m\xff"#);
        let mut s = String::new();
        escape_bare(&mut s, b"a b\"");
        assert_eq!(s, r"a\x20b\x22");
        let mut s = String::new();
        escape_quoted(&mut s, &[b'a'; 10], 4);
        assert_eq!(s, "aaaa...");
    }

    #[test]
    fn a_change_of_bucket_keeps_the_finished_one_until_written() {
        let mut t = TierStats::default();
        t.record(Tier::TenSeconds, 1000, 200, 10);
        t.record(Tier::TenSeconds, 1005, 500, 10);
        t.record(Tier::TenSeconds, 1012, 200, 10);
        assert_eq!(t.done.len(), 1);
        assert_eq!(t.done[0].0, 1000);
        assert_eq!((t.done[0].1.requests, t.done[0].1.errors_5xx), (2, 1));
        assert_eq!((t.bucket, t.current.requests), (1010, 1));
    }
}

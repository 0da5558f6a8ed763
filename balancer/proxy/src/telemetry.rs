//! Router lines and per-app stats, written to the registry's Redis off the request path.
//!
//! The request path hands each answered request of an app to [`Telemetry::record`]: the
//! router line is formatted there (one allocation) and queued with a non-blocking send on a
//! bounded channel. One thread empties the channel every 25 ms (it sleeps rather than waits on
//! the channel, so no send ever has to wake it): it writes the lines to the apps' log
//! streams in pipelined batches and folds every request into the app's stats buckets
//! ([`pier_registry::telemetry`]), which it writes every `stats_interval`. When the queue is
//! full or Redis is slow or gone, lines are dropped and counted
//! (`pier_telemetry_dropped_total`), never waited for; stats keep accumulating in memory and
//! are written when Redis answers again.
//!
//! The same thread adds each request's bytes to its app's usage counters and, at every
//! `usage_interval` boundary, turns them into a usage report ([`pier_registry::usage`]) for
//! billing: requests, request body bytes in, response body bytes out. Reports wait in a
//! bounded outbox while Redis is away and keep their sequence number when written again.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use pier_registry::telemetry::{logs_key, router_stats_key, RouterWindow, Tier, LOG_STREAM_LEN};
use pier_registry::usage::{self, Outbox, ReporterKind, UsageReport};
use pier_routes::App;
use prometheus::IntCounter;
use smallvec::SmallVec;

use crate::config::TelemetrySettings;
use crate::error::ProxyError;
use crate::outcome::{Access, Outcome};

/// How often the writer empties the queue.
const TICK: Duration = Duration::from_millis(25);
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
    bytes_in: u64,
    bytes_out: u64,
    line: Option<Line>,
}

/// A router line, held inline up to 256 bytes (most lines): formatting one on the request path
/// allocates nothing, and neither does freeing it on the writer's side.
pub(crate) struct Line(SmallVec<[u8; 256]>);

impl Line {
    fn with_capacity(n: usize) -> Self {
        Line(SmallVec::with_capacity(n))
    }

    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn push(&mut self, c: u8) {
        self.0.push(c);
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// The request path's end of the queue.
pub struct Telemetry {
    tx: SyncSender<Event>,
    lines: bool,
    dropped: IntCounter,
    /// Set at shutdown: the writer writes what it counted, with a final usage report.
    stop: Arc<AtomicBool>,
    /// Gets a message when the writer has finished.
    done: Mutex<Receiver<()>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel();
        let (_, now_ms) = unix_now();
        let writer = Writer {
            url: redis_url.to_string(),
            prefix: prefix.to_string(),
            id: settings.id.clone(),
            stats: settings.stats,
            stats_interval: settings.stats_interval,
            conn: None,
            lines_conn: None,
            buf: Vec::new(),
            keys: HashMap::new(),
            retry_at: None,
            apps: HashMap::default(),
            touched: Vec::new(),
            usage: settings.usage.then(|| UsageCounts {
                interval_ms: (settings.usage_interval.as_millis() as u64).max(1),
                from_ms: now_ms,
                next_ms: usage::next_boundary(now_ms, settings.usage_interval.as_millis() as u64),
                apps: HashMap::default(),
                outbox: Outbox::default(),
            }),
            metrics,
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("pier-telemetry".into())
            .spawn(move || {
                writer.run(rx);
                let _ = done_tx.send(());
            })?;
        Ok(Telemetry {
            tx,
            lines: settings.router_lines,
            dropped,
            stop,
            done: Mutex::new(done_rx),
        })
    }

    /// At shutdown: the writer writes its stats and a final usage report (the balancer stopped
    /// on purpose, so no report is missing after it); waits for that at most `limit`.
    pub fn finish(&self, limit: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(done) = self.done.lock() {
            let _ = done.recv_timeout(limit);
        }
    }

    /// Queues one answered request of `app` that took `total`; never waits.
    pub(crate) fn record(&self, app: &App, x: &Access<'_>, o: &Outcome, total: Duration) {
        let line = self.lines.then(|| router_line(app, x, o, total));
        let ev = Event {
            app: app.name.clone(),
            status: o.status,
            total_us: total.as_micros().min(u128::from(u64::MAX)) as u64,
            bytes_in: x.bytes_in,
            bytes_out: o.bytes_out,
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

/// One command in Redis's protocol (RESP): an array of bulk strings.
fn resp(buf: &mut Vec<u8>, args: &[&[u8]]) {
    let mut n = itoa::Buffer::new();
    buf.push(b'*');
    buf.extend_from_slice(n.format(args.len()).as_bytes());
    buf.extend_from_slice(b"\r\n");
    for a in args {
        buf.push(b'$');
        buf.extend_from_slice(n.format(a.len()).as_bytes());
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

/// The Heroku-style router line: `at=info method=GET path="/" host=… request_id=… fwd="…"
/// instance=… connect=0ms service=3ms total=4ms status=200 bytes=512 protocol=http/1.1`, with
/// `at=error error=REASON` when pier answered itself (with `detail=WHY` where the reason has
/// one: why TLS with a backend failed) and `aborted=WHY` when the answer broke.
/// Client-supplied text is quoted and escaped: no control character or quote gets through.
fn router_line(app: &App, x: &Access<'_>, o: &Outcome, total: Duration) -> Line {
    let mut s = Line::with_capacity(192 + x.target.len().min(MAX_PATH));
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
        if let Some(detail) = e.detail() {
            s.push_str(" detail=");
            s.push_str(detail);
        }
    }
    if let Some(why) = o.aborted {
        s.push_str(" aborted=");
        s.push_str(why.as_str());
    }
    s.push_str(" method=");
    escape_bare(&mut s, x.method);
    s.push_str(" path=\"");
    escape_quoted(&mut s, x.target, MAX_PATH);
    s.push_str("\" host=");
    escape_bare(&mut s, x.host);
    s.push_str(" request_id=");
    escape_bare(&mut s, x.request_id);
    s.push_str(" fwd=\"");
    match x.peer.ip() {
        std::net::IpAddr::V4(ip) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in ip.octets().iter().enumerate() {
                if i > 0 {
                    s.push(b'.');
                }
                s.push_str(n.format(*octet));
            }
        }
        ip => {
            let _ = write!(s, "{ip}");
        }
    }
    s.push(b'"');
    s.push_str(" instance=");
    push_instance(&mut s, app, o.upstream);
    let ms = |d: Option<Duration>| d.map_or(0, |d| (d.as_micros() as u64).div_ceil(1000));
    let mut n = itoa::Buffer::new();
    for (name, v, unit) in [
        (" connect=", ms(o.connect), "ms"),
        (" service=", ms(o.first_byte), "ms"),
        (" total=", ms(Some(total)), "ms"),
        (" status=", u64::from(o.status), ""),
        (" bytes=", o.bytes_out, ""),
    ] {
        s.push_str(name);
        s.push_str(n.format(v));
        s.push_str(unit);
    }
    if o.queue_us > 0 {
        let q = Duration::from_micros(u64::from(o.queue_us));
        // Only when the request waited for a slot of its app (`connect` includes it).
        s.push_str(" queue=");
        s.push_str(n.format(ms(Some(q))));
        s.push_str("ms");
    }
    s.push_str(" protocol=");
    s.push_str(x.protocol);
    s
}

/// The backend's instance id when the registry gave one, else its address; `-` for none.
fn push_instance(s: &mut Line, app: &App, upstream: Option<SocketAddr>) {
    let Some(addr) = upstream else {
        s.push(b'-');
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
fn escape_bare(s: &mut Line, b: &[u8]) {
    let plain = |c: &u8| c.is_ascii_graphic() && *c != b'"' && *c != b'\\';
    if b.is_empty() {
        s.push(b'-');
    } else if b.iter().all(plain) {
        s.0.extend_from_slice(b);
        return;
    }
    for &c in b {
        if c.is_ascii_graphic() && c != b'"' && c != b'\\' {
            s.push(c);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
}

/// Bytes inside quotes, cut at `max` (marked `...`): printable ASCII and space kept, `"` and `\`
/// escaped with a backslash, the rest as `\xNN`.
fn escape_quoted(s: &mut Line, b: &[u8], max: usize) {
    let kept = &b[..b.len().min(max)];
    if kept
        .iter()
        .all(|&c| matches!(c, b' '..=b'~') && c != b'"' && c != b'\\')
    {
        s.0.extend_from_slice(kept);
        if b.len() > max {
            s.push_str("...");
        }
        return;
    }
    for &c in kept {
        match c {
            b'"' | b'\\' => {
                s.push(b'\\');
                s.push(c);
            }
            b' '..=b'~' => s.push(c),
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
    /// This tick's requests, folded into the tiers at the end of the tick (one histogram
    /// update per request instead of three).
    tick: RouterWindow,
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
    fn add(&mut self, tier: Tier, now_s: u64, w: &RouterWindow) {
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
        self.current.merge(w);
        self.dirty = true;
    }
}

/// One app's usage since the last report.
#[derive(Default, Clone, Copy)]
struct AppCounts {
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Usage counted for the next report, and the reports not yet written.
struct UsageCounts {
    interval_ms: u64,
    /// Start of the interval being counted.
    from_ms: u64,
    /// When it ends (a multiple of the interval).
    next_ms: u64,
    apps: HashMap<CompactString, AppCounts, foldhash::fast::RandomState>,
    outbox: Outbox,
}

impl UsageCounts {
    /// Ends the interval at `to_ms`: its counts become a report in the outbox.
    fn cut(&mut self, reporter: &str, to_ms: u64, last: bool) {
        let mut r = UsageReport::new(reporter, ReporterKind::Balancer, self.from_ms, to_ms);
        r.last = last;
        for (app, c) in self.apps.drain() {
            let u = r.apps.entry(app.to_string()).or_default();
            u.requests = c.requests;
            u.bytes_in = c.bytes_in;
            u.bytes_out = c.bytes_out;
        }
        self.outbox.push(r);
        self.from_ms = to_ms;
        self.next_ms = usage::next_boundary(to_ms, self.interval_ms);
    }
}

/// The writer thread's state.
struct Writer {
    url: String,
    prefix: String,
    id: String,
    stats: bool,
    stats_interval: Duration,
    /// For stats (with replies).
    conn: Option<redis::Connection>,
    /// For lines (`CLIENT REPLY OFF`).
    lines_conn: Option<redis::Connection>,
    /// The packed commands of one write, reused.
    buf: Vec<u8>,
    /// Apps' log stream keys, made once.
    keys: HashMap<CompactString, String>,
    /// While set, Redis failed recently: not tried before then.
    retry_at: Option<Instant>,
    apps: HashMap<CompactString, AppStats, foldhash::fast::RandomState>,
    /// Apps with requests in this tick.
    touched: Vec<CompactString>,
    /// `None` when usage reports are off.
    usage: Option<UsageCounts>,
    metrics: TelemetryMetrics,
    stop: Arc<AtomicBool>,
}

fn unix_now() -> (u64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.as_millis() as u64)
}

impl Writer {
    fn run(mut self, rx: Receiver<Event>) {
        let mut lines: Vec<(CompactString, Line, u64)> = Vec::with_capacity(BATCH);
        let mut next_stats = Instant::now() + self.stats_interval;
        loop {
            // The writer sleeps rather than waits on the queue: a sender never has a sleeping
            // receiver to wake, so handing a line over costs no system call.
            std::thread::sleep(TICK);
            let (now_s, now_ms) = unix_now();
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(ev) => {
                        self.take(ev, &mut lines, now_ms);
                        if lines.len() >= BATCH {
                            self.write_lines(&lines);
                            lines.clear();
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !lines.is_empty() {
                self.write_lines(&lines);
                lines.clear();
            }
            self.fold_tick(now_s);
            if closed || self.stop.load(Ordering::Relaxed) {
                break;
            }
            if Instant::now() >= next_stats {
                self.write_stats(now_s);
                next_stats = Instant::now() + self.stats_interval;
            }
            if let Some(u) = self.usage.as_mut() {
                if now_ms >= u.next_ms {
                    let to = u.next_ms;
                    u.cut(&self.id, to, false);
                }
                if !u.outbox.is_empty() {
                    self.write_usage();
                }
            }
        }
        // The balancer is stopping: what was counted is written once more, and usage ends
        // with a final report.
        let (now_s, now_ms) = unix_now();
        self.retry_at = None;
        self.fold_tick(now_s);
        self.write_stats(now_s);
        if let Some(u) = self.usage.as_mut() {
            u.cut(&self.id, now_ms.max(u.from_ms), true);
            self.retry_at = None;
            self.write_usage();
        }
    }

    /// Writes the outbox's reports, oldest first: each gets its sequence number (`INCR`) the
    /// first time and keeps it, so one written again after a lost answer is counted once.
    fn write_usage(&mut self) {
        if self.usage.is_none() {
            return;
        }
        if self.conn.is_none() {
            self.conn = self.open();
        }
        let (Some(u), Some(conn)) = (self.usage.as_mut(), self.conn.as_mut()) else {
            return;
        };
        let stream = usage::reports_key(&self.prefix);
        let mut failure = None;
        while let Some(r) = u.outbox.front_mut() {
            if r.seq == 0 {
                match redis::cmd("INCR")
                    .arg(usage::seq_key(&self.prefix, &self.id))
                    .query::<u64>(conn)
                {
                    Ok(n) => r.seq = n,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let Ok(text) = serde_json::to_vec(&*r) else {
                u.outbox.written(); // cannot happen: plain data
                continue;
            };
            let added = redis::cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(usage::REPORT_STREAM_LEN)
                .arg("*")
                .arg("report")
                .arg(text)
                .query::<String>(conn);
            match added {
                Ok(_) => u.outbox.written(),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.metrics.stats_failures.inc();
            self.failed(&e);
        }
    }

    /// Folds this tick's requests of every app that had some into its buckets.
    fn fold_tick(&mut self, now_s: u64) {
        for name in self.touched.drain(..) {
            if let Some(app) = self.apps.get_mut(&name) {
                let tick = std::mem::take(&mut app.tick);
                for (t, tier) in app.tiers.iter_mut().zip(Tier::ALL) {
                    t.add(tier, now_s, &tick);
                }
            }
        }
    }

    /// Counts one request in its app's stats and keeps its line for the next write.
    fn take(&mut self, ev: Event, lines: &mut Vec<(CompactString, Line, u64)>, now_ms: u64) {
        if let Some(u) = self.usage.as_mut() {
            // App names up to 24 bytes are held inline: no allocation per request.
            let c = u.apps.entry(ev.app.clone()).or_default();
            c.requests += 1;
            c.bytes_in += ev.bytes_in;
            c.bytes_out += ev.bytes_out;
        }
        if self.stats {
            let app = self.apps.entry(ev.app.clone()).or_default();
            if app.tick.requests == 0 {
                self.touched.push(ev.app.clone());
            }
            app.tick.record(ev.status, ev.total_us);
        }
        if let Some(line) = ev.line {
            lines.push((ev.app, line, now_ms));
        }
    }

    /// A connection to Redis, or `None` while Redis is failing (not tried again before
    /// `retry_at`).
    fn open(&mut self) -> Option<redis::Connection> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let opened = redis::Client::open(self.url.as_str()).and_then(|c| {
            let conn = c.get_connection_with_timeout(REDIS_TIMEOUT)?;
            conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
            conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
            Ok(conn)
        });
        match opened {
            Ok(c) => {
                self.retry_at = None;
                Some(c)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        tracing::debug!(error = %e, "telemetry: Redis unreachable");
        self.conn = None;
        self.lines_conn = None;
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    /// Writes the lines as one packed pipeline of `XADD`s on a connection that asked Redis for
    /// no replies (`CLIENT REPLY OFF`): nothing to read back or parse per line. A write that
    /// fails drops the batch (counted); an entry Redis refused would go unnoticed, but these are
    /// well-formed by construction.
    fn write_lines(&mut self, lines: &[(CompactString, Line, u64)]) {
        let n = lines.len() as u64;
        if self.lines_conn.is_none() {
            let Some(mut c) = self.open() else {
                self.metrics.dropped.inc_by(n);
                return;
            };
            let mut off = Vec::new();
            resp(&mut off, &[b"CLIENT", b"REPLY", b"OFF"]);
            if let Err(e) = c.send_packed_command(&off) {
                self.metrics.dropped.inc_by(n);
                self.failed(&e);
                return;
            }
            self.lines_conn = Some(c);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut digits = itoa::Buffer::new();
        if self.keys.len() > 100_000 {
            self.keys.clear();
        }
        let cap = LOG_STREAM_LEN.to_string();
        for (app, line, at_ms) in lines {
            let key = self
                .keys
                .entry(app.clone())
                .or_insert_with(|| logs_key(&self.prefix, app));
            let at = digits.format(*at_ms);
            resp(
                &mut buf,
                &[
                    b"XADD",
                    key.as_bytes(),
                    b"MAXLEN",
                    b"~",
                    cap.as_bytes(),
                    b"*",
                    b"t",
                    at.as_bytes(),
                    b"src",
                    b"router",
                    b"ps",
                    self.id.as_bytes(),
                    b"line",
                    &line.0,
                ],
            );
        }
        let sent = match self.lines_conn.as_mut() {
            Some(c) => c.send_packed_command(&buf),
            None => Ok(()),
        };
        self.buf = buf;
        match sent {
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
            if self.conn.is_none() {
                self.conn = self.open();
            }
            let Some(conn) = self.conn.as_mut() else {
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
        let text = |s: &Line| String::from_utf8(s.0.to_vec()).unwrap();
        let mut s = Line::with_capacity(0);
        escape_quoted(&mut s, b"/a b\"c\\d\r\n\x1b[31m\xff", 100);
        assert_eq!(text(&s), r#"/a b\"c\\d\x0d\x0a\x1b[31m\xff"#);
        let mut s = Line::with_capacity(0);
        escape_bare(&mut s, b"a b\"");
        assert_eq!(text(&s), r"a\x20b\x22");
        let mut s = Line::with_capacity(0);
        escape_quoted(&mut s, &[b'a'; 10], 4);
        assert_eq!(text(&s), "aaaa...");
    }

    #[test]
    fn a_change_of_bucket_keeps_the_finished_one_until_written() {
        let one = |status| {
            let mut w = RouterWindow::default();
            w.record(status, 10);
            w
        };
        let mut t = TierStats::default();
        t.add(Tier::TenSeconds, 1000, &one(200));
        t.add(Tier::TenSeconds, 1005, &one(500));
        t.add(Tier::TenSeconds, 1012, &one(200));
        assert_eq!(t.done.len(), 1);
        assert_eq!(t.done[0].0, 1000);
        assert_eq!((t.done[0].1.requests, t.done[0].1.errors_5xx), (2, 1));
        assert_eq!((t.bucket, t.current.requests), (1010, 1));
    }
}

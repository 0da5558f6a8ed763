//! Apps, their settings and their backends, and the choice of a backend for one request.
//!
//! An [`App`] is immutable once built; what changes per request (outstanding requests,
//! consecutive failures, ejection, per-app counters) lives in atomics behind `Arc`s that a
//! rebuilt table carries over from the previous one, so a reload neither resets counters nor
//! forgets that a backend is ejected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use once_cell::race::OnceBox;
use std::time::Duration;

use bytes::Bytes;

/// What the balancer does with a request for an app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Action {
    /// Forward to one of the app's backends.
    #[default]
    Proxy,
    /// Answer with a redirect.
    Redirect {
        status: u16,
        location: Box<str>,
        /// Append the request's path and query to `location`.
        keep_path: bool,
    },
    /// Answer with a fixed body.
    Static {
        status: u16,
        body: Bytes,
        content_type: Box<str>,
    },
    /// Answer 503 with a page (and `Retry-After` when set).
    Maintenance {
        body: Bytes,
        content_type: Box<str>,
        retry_after: Option<u32>,
    },
}

/// How a backend is chosen among an app's live backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    /// Power of two random choices, the one with fewer outstanding requests wins.
    LeastOutstanding,
    /// The same key to the same backend ([`crate::hash`]; the key in [`AppSettings::hash`]).
    ConsistentHash,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastOutstanding => "least-outstanding",
            Policy::ConsistentHash => "consistent-hash",
        }
    }

    /// The policy named `name` (as [`Policy::name`] gives it).
    pub fn parse(name: &str) -> Result<Policy, String> {
        match name {
            "round-robin" => Ok(Policy::RoundRobin),
            "least-outstanding" => Ok(Policy::LeastOutstanding),
            "consistent-hash" => Ok(Policy::ConsistentHash),
            other => Err(format!(
                "unknown policy {other:?} (use \"round-robin\", \"least-outstanding\" or \"consistent-hash\")"
            )),
        }
    }
}

/// Per-app overrides of the balancer's upstream timeouts (`None` = the global default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
}

/// Everything about an app except its name, domains and backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppSettings {
    pub action: Action,
    pub policy: Policy,
    /// What a `consistent-hash` app hashes, and its bound on load (set with that policy only).
    pub hash: Option<crate::hash::HashPolicy>,
    pub timeouts: Timeouts,
    /// Largest request body accepted, in bytes (`None` = the global default).
    pub max_body: Option<u64>,
    /// How many other backends a failed connect may be retried on (`None` = global default).
    pub retries: Option<u32>,
    /// Requests proxied to the app at once, across the balancer process (`None` = the
    /// balancer's `[limits] app_max_in_flight`; `Some(0)` = no limit).
    pub max_in_flight: Option<u32>,
    /// Whether the limit on requests in flight follows the backends' latency
    /// ([`crate::limit`]), under `max_in_flight` (`None` = the balancer's `[limits]
    /// app_adaptive`).
    pub adaptive_limit: Option<bool>,
    /// While the app has no live backend, hold its requests until one registers (bounded by
    /// the balancer's spin settings) instead of answering 503 at once.
    pub spin: bool,
    /// Answer plain-HTTP requests with a 308 redirect to the same URL over HTTPS.
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value sent on HTTPS responses (checked with
    /// [`check_hsts`]); `None` sends none.
    pub hsts: Option<Box<str>>,
    /// What the app's backends speak.
    pub backend_protocol: BackendProtocol,
    /// Active health checks of the app's backends (`None`: passive ejection only).
    pub health_check: Option<HealthCheck>,
    /// A backend that joins the app, or comes back from ejection or a failed health check,
    /// takes a share of requests growing from nothing to its full share over this long
    /// (`None`: at once).
    pub slow_start: Option<Duration>,
}

/// Longest slow start accepted.
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// Checks a slow start: at most an hour; zero turns it off (`None`).
pub fn check_slow_start(d: Duration) -> Result<Option<Duration>, String> {
    if d > MAX_SLOW_START {
        Err("slow_start must be at most 1 hour".into())
    } else {
        Ok((!d.is_zero()).then_some(d))
    }
}

/// An app's active health check: every `interval` each backend is probed; one that fails
/// `fall` probes in a row leaves rotation until it passes `rise` in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// A health check as written, every field optional but the probe's kind (see
/// [`HealthCheck::new`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthCheckSpec<'a> {
    pub path: Option<&'a str>,
    pub tcp: bool,
    pub expect: Option<u16>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path` over a new connection (TLS for an `https://` backend); passes on `expect`.
    Http { path: Box<str>, expect: u16 },
    /// A TCP connection opened within the timeout.
    Tcp,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;

    /// Checks a health check as written (the routes file's and the registry's share this):
    /// exactly one of an HTTP `path` (an absolute path in visible ASCII, answered with `expect`,
    /// default 200) and `tcp`; an interval of 100 ms to 1 hour, a timeout above zero (cut to
    /// the interval), `rise` and `fall` of 1 to 100.
    pub fn new(written: HealthCheckSpec<'_>) -> Result<HealthCheck, String> {
        let HealthCheckSpec {
            path,
            tcp,
            expect,
            interval,
            timeout,
            rise,
            fall,
        } = written;
        let probe = match (path, tcp) {
            (Some(_), true) => return Err("health_check: path and tcp are exclusive".into()),
            (None, false) => {
                return Err("health_check: give a path (HTTP) or tcp = true".into());
            }
            (None, true) => {
                if expect.is_some() {
                    return Err("health_check: expect needs a path".into());
                }
                Probe::Tcp
            }
            (Some(p), false) => {
                if !p.starts_with('/') || p.len() > 1024 || !p.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(format!(
                        "health_check.path {p:?} must be an absolute path of visible ASCII (at most 1024)"
                    ));
                }
                let expect = expect.unwrap_or(200);
                if !(100..=599).contains(&expect) {
                    return Err(format!("health_check.expect {expect} is not a status"));
                }
                Probe::Http {
                    path: p.into(),
                    expect,
                }
            }
        };
        let interval = interval.unwrap_or(Self::DEFAULT_INTERVAL);
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
            return Err("health_check.interval must be between 100 ms and 1 hour".into());
        }
        // A probe never outlasts its interval: a longer timeout is cut to it.
        let timeout = timeout.unwrap_or(Self::DEFAULT_TIMEOUT).min(interval);
        if timeout.is_zero() {
            return Err("health_check.timeout must be above zero".into());
        }
        let rise = rise.unwrap_or(Self::DEFAULT_RISE);
        let fall = fall.unwrap_or(Self::DEFAULT_FALL);
        if !(1..=100).contains(&rise) || !(1..=100).contains(&fall) {
            return Err("health_check.rise and fall must be between 1 and 100".into());
        }
        Ok(HealthCheck {
            probe,
            interval,
            timeout,
            rise,
            fall,
        })
    }
}

/// The protocol pier speaks to an app's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge: requests are streams on shared connections,
    /// trailers pass both ways (gRPC).
    H2c,
}

impl BackendProtocol {
    pub fn name(self) -> &'static str {
        match self {
            BackendProtocol::Http1 => "http1",
            BackendProtocol::H2c => "h2c",
        }
    }

    /// Parses `"http1"` or `"h2c"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "http1" => Ok(BackendProtocol::Http1),
            "h2c" => Ok(BackendProtocol::H2c),
            other => Err(format!(
                "unknown backend_protocol {other:?} (use \"http1\" or \"h2c\")"
            )),
        }
    }
}

/// Longest `Strict-Transport-Security` value accepted.
pub const MAX_HSTS_LEN: usize = 256;
/// Longest HSTS `max-age` accepted: two years (browsers' preload lists ask for one or two).
pub const MAX_HSTS_AGE: u64 = 2 * 365 * 24 * 3600;
/// Longest redirect location accepted.
pub const MAX_LOCATION_LEN: usize = 2048;

/// Checks a redirect's `Location`: an absolute `http://` or `https://` URL with a host, or an
/// absolute path (`/...`, but not `//host` or `/\host`, which browsers follow to another
/// host), in visible ASCII. Other schemes (`javascript:`, `data:`) are refused.
pub fn check_redirect_location(location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err("redirect location must not be empty".into());
    }
    if location.len() > MAX_LOCATION_LEN {
        return Err(format!(
            "redirect location is longer than {MAX_LOCATION_LEN} characters"
        ));
    }
    if let Some(c) = location.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "redirect location {location:?}: {c:?} is not allowed (visible ASCII only; percent-encode the rest)"
        ));
    }
    let lower = location.to_ascii_lowercase();
    let host_after = |prefix: &str| {
        lower
            .strip_prefix(prefix)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| !matches!(c, '/' | '\\' | '?' | '#'))
    };
    let path =
        location.starts_with('/') && !location.starts_with("//") && !location.starts_with("/\\");
    if path || host_after("http://") || host_after("https://") {
        Ok(())
    } else {
        Err(format!(
            "redirect location {location:?} must be an http:// or https:// URL with a host, or an absolute path such as /new"
        ))
    }
}

/// Checks a `Strict-Transport-Security` value: it starts with `max-age=<digits>` (RFC 6797;
/// directive names in any case), optionally followed by `;` and more directives, all in
/// visible ASCII and spaces, at most [`MAX_HSTS_LEN`] bytes.
pub fn check_hsts(value: &str) -> Result<(), String> {
    if value.len() > MAX_HSTS_LEN {
        return Err(format!(
            "hsts value is longer than {MAX_HSTS_LEN} characters"
        ));
    }
    if let Some(c) = value.chars().find(|&c| !(c == ' ' || c.is_ascii_graphic())) {
        return Err(format!(
            "hsts value {value:?}: {c:?} is not allowed (visible ASCII and spaces only)"
        ));
    }
    let example = "(e.g. \"max-age=31536000; includeSubDomains\")";
    let rest = value
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("max-age="))
        .map(|_| &value[8..])
        .ok_or_else(|| {
            format!("hsts value {value:?} must start with max-age=<seconds> {example}")
        })?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after = rest[digits..].trim_start_matches(' ');
    if digits == 0 || !(after.is_empty() || after.starts_with(';')) {
        return Err(format!(
            "hsts value {value:?}: max-age must be a number of seconds {example}"
        ));
    }
    let age = rest[..digits].parse::<u64>().unwrap_or(u64::MAX);
    if age > MAX_HSTS_AGE {
        return Err(format!(
            "hsts value {value:?}: max-age must be between 0 and {MAX_HSTS_AGE} seconds (two years)"
        ));
    }
    Ok(())
}

/// One backend instance of an app.
#[derive(Debug)]
pub struct Backend {
    /// Stable identity (an instance id); `None` means the address is the identity. State such
    /// as ejection follows the id, so a recycled port never inherits another instance's state.
    pub id: Option<Box<str>>,
    pub addr: SocketAddr,
    /// Set when the backend is spoken to over TLS (an `https://` address).
    pub tls: Option<crate::spec::BackendTls>,
    /// Share of the app's requests relative to its other backends (1 to 1000).
    pub weight: u32,
    /// Liveness deadline in milliseconds since the Unix epoch (0 = none); past it the backend
    /// is skipped.
    pub expires_at_ms: u64,
    pub state: BackendState,
}

impl Backend {
    /// The backend's identity as text.
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        match &self.id {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => std::borrow::Cow::Owned(self.addr.to_string()),
        }
    }

    /// What this backend was built from.
    pub fn spec(&self) -> crate::spec::BackendSpec {
        crate::spec::BackendSpec {
            id: self.id.clone(),
            addr: self.addr,
            tls: self.tls.clone(),
            expires_at_ms: self.expires_at_ms,
            weight: self.weight,
        }
    }

    /// Whether the backend is within its liveness deadline at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
    }
}

/// Per-backend balancing state. Kept inline in the backend; a rebuilt table copies the
/// failure count and ejection over (in-flight counts start afresh: they only steer choices).
#[derive(Debug, Default)]
pub struct BackendState {
    outstanding: AtomicU32,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Failed its active health check (`fall` probes in a row), until it passes `rise`.
    check_down: AtomicBool,
    /// Probes in a row that passed (positive) or failed (negative); written by the checker.
    check_streak: AtomicI32,
    /// When the backend (re)entered rotation, ms since the Unix epoch, for the app's slow
    /// start; 0: it has been in rotation since the table knew it.
    ramp_from_ms: AtomicU64,
}

impl BackendState {
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Starts a slow start at `now_ms` (a backend new to its app).
    pub fn start_ramp(&self, now_ms: u64) {
        self.ramp_from_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The share of its full load the backend takes at `now_ms` under a slow start of
    /// `ramp` (linear from 0 to 1); 1 when it is not ramping.
    pub fn ramp_share(&self, now_ms: u64, ramp: Duration) -> f64 {
        let from = self.ramp_from_ms.load(Ordering::Relaxed);
        let ramp_ms = ramp.as_millis() as u64;
        if from == 0 || ramp_ms == 0 || now_ms >= from.saturating_add(ramp_ms) {
            return 1.0;
        }
        now_ms.saturating_sub(from) as f64 / ramp_ms as f64
    }

    /// Whether a pick of this backend is turned down at `now_ms` under a slow start of `ramp`
    /// (with the share of its load it lacks). Out of line: apps without a slow start never
    /// call it.
    #[inline(never)]
    pub fn ramp_turns_down(&self, now_ms: u64, ramp: Duration) -> bool {
        let share = self.ramp_share(now_ms, ramp);
        share < 1.0 && unit_random() >= share
    }

    /// Whether the backend is out of rotation for failing its health check.
    pub fn is_check_down(&self) -> bool {
        self.check_down.load(Ordering::Relaxed)
    }

    /// Counts one probe's result against `check`'s rise and fall. Returns the new state when
    /// this probe changed it (`Some(true)`: back up, `Some(false)`: down).
    pub fn record_probe(&self, passed: bool, check: &HealthCheck, now_ms: u64) -> Option<bool> {
        let streak = self.check_streak.load(Ordering::Relaxed);
        let streak = match (passed, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.check_streak.store(streak, Ordering::Relaxed);
        let down = self.is_check_down();
        if down && streak >= check.rise as i32 {
            self.check_down.store(false, Ordering::Relaxed);
            self.ramp_from_ms.store(now_ms, Ordering::Relaxed);
            Some(true)
        } else if !down && -streak >= check.fall as i32 {
            self.check_down.store(true, Ordering::Relaxed);
            Some(false)
        } else {
            None
        }
    }

    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; after `threshold` in a row the backend is ejected for `cooldown`.
    /// Returns true when this failure ejected it.
    pub fn record_failure(&self, now_ms: u64, threshold: u32, cooldown: Duration) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold > 0 && n >= threshold {
            self.failures.store(0, Ordering::Relaxed);
            let until = now_ms.saturating_add(cooldown.as_millis() as u64);
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            // Back from ejection, it ramps up from there.
            self.ramp_from_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A copy of the failure count and ejection (for a rebuilt table).
    pub fn carried_over(&self) -> BackendState {
        BackendState {
            outstanding: AtomicU32::new(0),
            failures: AtomicU32::new(self.failures.load(Ordering::Relaxed)),
            ejected_until_ms: AtomicU64::new(self.ejected_until_ms.load(Ordering::Relaxed)),
            check_down: AtomicBool::new(self.is_check_down()),
            check_streak: AtomicI32::new(self.check_streak.load(Ordering::Relaxed)),
            ramp_from_ms: AtomicU64::new(self.ramp_from_ms.load(Ordering::Relaxed)),
        }
    }
}

/// Counts one request as outstanding on a backend until dropped.
#[derive(Debug)]
pub struct OutstandingGuard {
    app: Arc<App>,
    idx: usize,
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        if let Some(b) = self.app.backends.get(self.idx) {
            b.state.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Requests answered for one app, by status class (index 0 = 1xx … 4 = 5xx), and the app's
/// round-robin position (kept here so it survives rebuilds and costs idle apps nothing).
#[derive(Debug, Default)]
pub struct AppCounters {
    pub responses: [AtomicU64; 5],
    rr: AtomicU32,
    /// Requests in flight and waiting for a slot (the balancer's per-app limit).
    pub gate: Gate,
    /// The limit that follows the backends' latency, for apps that use one.
    pub adaptive: crate::limit::Adaptive,
}

/// The counts behind an app's limit on requests in flight: carried over when the route table
/// is rebuilt (with [`AppCounters`]), so a reload neither forgets nor resets them. The waiting
/// and the answers are the balancer's; this holds the numbers and the wake-ups.
#[derive(Debug, Default)]
pub struct Gate {
    in_flight: AtomicU32,
    waiting: AtomicU32,
    /// Notified once per slot given back while someone waits.
    freed: tokio::sync::Notify,
}

impl Gate {
    /// Takes a slot if fewer than `limit` are taken; `Some(n)`: it did, `n` were taken before.
    pub fn try_enter(&self, limit: u32) -> Option<u32> {
        self.in_flight
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
    }

    /// Gives a slot back, waking one waiter; returns how many were taken before.
    pub fn leave(&self) -> u32 {
        let before = self.in_flight.fetch_sub(1, Ordering::Release);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_one();
        }
        before
    }

    /// Joins the queue unless `max` already wait; `false`: the queue is full.
    pub fn start_waiting(&self, max: u32) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn stop_waiting(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves when a slot was given back (register it before the last [`Gate::try_enter`]).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl AppCounters {
    pub fn record(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, class: usize) -> u64 {
        self.responses
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// An app as the balancer sees it.
#[derive(Debug)]
pub struct App {
    /// Inline up to 24 bytes: most app names cost no allocation of their own.
    pub name: compact_str::CompactString,
    pub settings: Arc<AppSettings>,
    pub backends: Box<[Backend]>,
    /// Created on first use, shared with later snapshots of the same app, so idle apps cost
    /// one pointer here and a reload does not reset counts. Set at most once: reading it is
    /// one atomic load (an `ArcSwapOption` read took ~50 instructions, three times a request).
    counters: OnceBox<Arc<AppCounters>>,
    /// A consistent-hash app's ring, built on its first pick (other apps never build one).
    ring: OnceBox<crate::hash::Ring>,
}

/// Most backends an app may have for the exclusion list of [`App::pick`] to stay on the stack.
pub const MAX_TRIED: usize = 8;

impl App {
    pub fn new(
        name: &str,
        settings: Arc<AppSettings>,
        backends: Box<[Backend]>,
        counters: Option<Arc<AppCounters>>,
    ) -> Self {
        let cell = OnceBox::new();
        if let Some(c) = counters {
            // A fresh cell: this set cannot fail.
            let _ = cell.set(Box::new(c));
        }
        App {
            name: name.into(),
            settings,
            backends,
            counters: cell,
            ring: OnceBox::new(),
        }
    }

    /// This app's counters (its limit's [`Gate`] among them), created on first use (when two
    /// threads race to create them, one set wins and the other is dropped unused).
    pub fn counters(&self) -> &Arc<AppCounters> {
        self.counters.get_or_init(|| Box::new(Arc::default()))
    }

    /// The consistent-hash ring of this app's backends, built on first use.
    pub fn ring(&self) -> &crate::hash::Ring {
        self.ring
            .get_or_init(|| Box::new(crate::hash::Ring::build(self)))
    }

    /// Counts one response of this app.
    pub fn record_response(&self, status: u16) {
        self.counters().record(status);
    }

    /// The counters if anything was counted yet.
    pub fn counters_if_used(&self) -> Option<Arc<AppCounters>> {
        self.counters.get().map(Arc::clone)
    }

    /// Counts a request as outstanding on backend `idx` until the guard drops.
    pub fn begin(self: &Arc<Self>, idx: usize) -> OutstandingGuard {
        if let Some(b) = self.backends.get(idx) {
            b.state.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        OutstandingGuard {
            app: Arc::clone(self),
            idx,
        }
    }

    /// Chooses a backend for one attempt. Backends whose liveness deadline passed are never
    /// chosen; ejected backends and those in `tried` are avoided, but when every live backend
    /// is ejected the ejection is ignored (trying a backend beats refusing every request).
    pub fn pick(&self, now_ms: u64, tried: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let live = |i: usize| {
            let b = &self.backends[i];
            !tried.contains(&i) && b.is_live(now_ms)
        };
        let ramp = self.settings.slow_start;
        let healthy = |i: usize| {
            let state = &self.backends[i].state;
            live(i)
                && !state.is_ejected(now_ms)
                && !state.is_check_down()
                // In its slow start, a backend turns a pick down with the share it lacks.
                && ramp.is_none_or(|r| !state.ramp_turns_down(now_ms, r))
        };
        match self.settings.policy {
            // A consistent-hash request without its key is spread as round-robin spreads.
            Policy::RoundRobin | Policy::ConsistentHash => {
                let turn = self.counters().rr.fetch_add(1, Ordering::Relaxed) as usize;
                let start = self.weighted_slot(turn, self.total_weight());
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| healthy(i))
                    .or_else(|| (0..n).map(|k| (start + k) % n).find(|&i| live(i)))
            }
            Policy::LeastOutstanding => self
                .two_choices(n, &healthy)
                .or_else(|| self.two_choices(n, &live)),
        }
    }

    /// The sum of the backends' weights (their number when every weight is 1).
    fn total_weight(&self) -> usize {
        self.backends.iter().map(|b| b.weight as usize).sum()
    }

    /// The backend at position `turn` of a cycle where each backend has `weight` places in a
    /// row, `total` ([`App::total_weight`]) in all: plain round-robin when every weight is 1
    /// (weights are at least 1, so that is when `total` is their number).
    fn weighted_slot(&self, turn: usize, total: usize) -> usize {
        let n = self.backends.len();
        if total == n {
            return turn % n.max(1);
        }
        let mut place = turn % total.max(1);
        for (i, b) in self.backends.iter().enumerate() {
            let w = b.weight as usize;
            if place < w {
                return i;
            }
            place -= w;
        }
        0
    }

    fn two_choices(&self, n: usize, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let r = fast_random();
        let total = self.total_weight();
        let uniform = total == n;
        let a = self.weighted_slot(r as usize, total);
        // The second draw differs from the first (from the other n-1 backends when weights
        // are equal; by weight otherwise, moving on when it lands on the first).
        let b = if n < 2 {
            a
        } else if uniform {
            (a + 1 + ((r >> 32) as usize) % (n - 1)) % n
        } else {
            match self.weighted_slot((r >> 32) as usize, total) {
                b if b == a => (a + 1) % n,
                b => b,
            }
        };
        // Load relative to weight: outstanding / weight, compared without dividing.
        let lighter = |x: usize, y: usize| {
            let (bx, by) = (&self.backends[x], &self.backends[y]);
            u64::from(bx.state.outstanding()) * u64::from(by.weight)
                < u64::from(by.state.outstanding()) * u64::from(bx.weight)
        };
        let pick_a = ok(a);
        let pick_b = b != a && ok(b);
        match (pick_a, pick_b) {
            (true, true) => Some(if lighter(b, a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            // Both draws unusable: fall back to a scan so a lone healthy backend is still found.
            (false, false) => {
                let mut best: Option<usize> = None;
                for i in (0..n).map(|k| (a + k) % n) {
                    if ok(i) && best.is_none_or(|bi| lighter(i, bi)) {
                        best = Some(i);
                    }
                }
                best
            }
        }
    }

    /// True when at least one backend is within its liveness deadline.
    pub fn has_live_backend(&self, now_ms: u64) -> bool {
        self.backends.iter().any(|b| b.is_live(now_ms))
    }
}

/// A uniform draw in [0, 1).
fn unit_random() -> f64 {
    (fast_random() >> 11) as f64 / (1u64 << 53) as f64
}

/// A small per-thread xorshift generator: good enough to spread load, and free of locks.
fn fast_random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn app(policy: Policy, n: usize) -> App {
        weighted(policy, &vec![1; n])
    }

    /// An app of `policy` with one backend (`b0`, `b1`, ...) of each weight.
    pub(crate) fn weighted(policy: Policy, weights: &[u32]) -> App {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                id: Some(format!("b{i}").into()),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                tls: None,
                expires_at_ms: 0,
                weight,
                state: BackendState::default(),
            })
            .collect();
        App::new(
            "a",
            Arc::new(AppSettings {
                policy,
                ..AppSettings::default()
            }),
            backends,
            None,
        )
    }

    #[test]
    fn weights_share_requests_in_proportion() {
        // Round-robin: exactly, each cycle of 4 gives 3 to the first.
        let a = weighted(Policy::RoundRobin, &[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..4000 {
            counts[a.pick(0, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [3000, 1000]);
        // Least-outstanding with nothing outstanding: by weight, within statistical bounds
        // (expected 3:1 of 40,000; 5 sigma is about 430).
        let a = weighted(Policy::LeastOutstanding, &[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..40_000 {
            counts[a.pick(0, &[]).unwrap()] += 1;
        }
        assert!((29_000..31_000).contains(&counts[0]), "{counts:?}");
        // Load is judged relative to weight: 2 outstanding on weight 4 is lighter than 1 on 1.
        let a = Arc::new(weighted(Policy::LeastOutstanding, &[4, 1]));
        let _g = [a.begin(0), a.begin(0), a.begin(1)];
        for _ in 0..200 {
            assert_eq!(a.pick(0, &[]), Some(0));
        }
    }

    #[test]
    fn a_ramping_backend_takes_its_share_of_picks() {
        let mut a = weighted(Policy::RoundRobin, &[1, 1]);
        a.settings = Arc::new(AppSettings {
            slow_start: Some(Duration::from_secs(10)),
            ..AppSettings::default()
        });
        let t = 1_000_000;
        a.backends[1].state.start_ramp(t);
        let share = |now: u64| {
            let n = (0..20_000).filter(|_| a.pick(now, &[]) == Some(1)).count();
            n as f64 / 20_000.0
        };
        // Its full share is a half; at a quarter of the ramp, a quarter of that.
        assert!(share(t) < 0.01);
        assert!(
            (0.10..0.15).contains(&share(t + 2_500)),
            "{}",
            share(t + 2_500)
        );
        assert!((0.48..0.52).contains(&share(t + 10_000)));
        assert_eq!(
            a.backends[1]
                .state
                .ramp_share(t + 5_000, Duration::from_secs(10)),
            0.5
        );
        // Carried over a rebuild.
        assert_eq!(
            a.backends[1]
                .state
                .carried_over()
                .ramp_share(t, Duration::from_secs(10)),
            0.0
        );
    }

    #[test]
    fn round_robin_cycles_through_backends() {
        let a = app(Policy::RoundRobin, 3);
        let picks: Vec<_> = (0..6).map(|_| a.pick(0, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ejected_and_tried_backends_are_avoided() {
        let a = app(Policy::RoundRobin, 3);
        assert!(a.backends[1]
            .state
            .record_failure(1000, 1, Duration::from_secs(10)));
        for _ in 0..10 {
            let p = a.pick(2000, &[0]).unwrap();
            assert_eq!(p, 2);
        }
        // After the cool-down the backend is chosen again.
        let picks: Vec<_> = (0..6).map(|_| a.pick(20_000, &[]).unwrap()).collect();
        assert!(picks.contains(&1));
    }

    #[test]
    fn all_ejected_still_picks() {
        let a = app(Policy::LeastOutstanding, 2);
        for b in a.backends.iter() {
            b.state.record_failure(0, 1, Duration::from_secs(10));
        }
        assert!(a.pick(1, &[]).is_some());
        assert_eq!(a.pick(1, &[0, 1]), None);
    }

    #[test]
    fn expired_backends_are_never_picked() {
        let mut a = app(Policy::LeastOutstanding, 2);
        a.backends[0].expires_at_ms = 100;
        for _ in 0..50 {
            assert_eq!(a.pick(200, &[]), Some(1));
        }
        a.backends[1].expires_at_ms = 100;
        assert_eq!(a.pick(200, &[]), None);
        assert!(!a.has_live_backend(200));
    }

    #[test]
    fn least_outstanding_prefers_idle_backend() {
        let a = Arc::new(app(Policy::LeastOutstanding, 2));
        let _busy: Vec<_> = (0..5).map(|_| a.begin(0)).collect();
        assert_eq!(a.backends[0].state.outstanding(), 5);
        let picks: Vec<_> = (0..100).map(|_| a.pick(0, &[]).unwrap()).collect();
        let ones = picks.iter().filter(|&&p| p == 1).count();
        // With two backends both are always drawn, and the idle one wins.
        assert_eq!(ones, 100, "backend 1 chosen {ones} times of 100");
    }

    #[test]
    fn hsts_values_are_checked() {
        for ok in [
            "max-age=31536000",
            "max-age=0",
            "Max-Age=600; includeSubDomains",
            "max-age=63072000; includeSubDomains; preload",
            "max-age=5 ;preload",
        ] {
            assert_eq!(check_hsts(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "includeSubDomains",
            " max-age=1",
            "max-age=",
            "max-age=abc",
            "max-age=10x",
            "max-age=\"10\"",
            "max-age=1;\tpreload",
            "max-age=1\r\nX-Evil: 1",
            "max-age=1; caf\u{e9}",
        ] {
            assert!(check_hsts(bad).is_err(), "{bad:?}");
        }
        assert!(check_hsts(&format!("max-age=1;{}", "a".repeat(300))).is_err());
        // Between 0 and two years.
        assert!(check_hsts("max-age=63072001").is_err());
        assert!(check_hsts("max-age=99999999999999999999999").is_err());
    }

    #[test]
    fn redirect_locations_are_web_urls_or_absolute_paths() {
        for ok in [
            "https://example.com/",
            "HTTP://example.com",
            "https://[::1]:8443/x?y#z",
            "/new/place?x=1",
            "/",
        ] {
            assert_eq!(check_redirect_location(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,<script>",
            "//evil.example/",
            "/\\evil.example/",
            "https:///x",
            "https://",
            "ftp://example.com/",
            "relative/path",
            "https://example.com/a b",
            "https://example.com/\r\nX: 1",
        ] {
            assert!(check_redirect_location(bad).is_err(), "{bad:?}");
        }
        assert!(check_redirect_location(&format!("/{}", "a".repeat(3000))).is_err());
    }
}

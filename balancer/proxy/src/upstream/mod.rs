//! Stage `upstream`: choosing a backend and exchanging the request with it.
//!
//! - [`pool`]: connections to backends and the pools that reuse them.
//! - this module: the one backend selection — pick a live backend not tried yet, take a pooled
//!   connection or open one, count a failure towards passive ejection, try the next backend
//!   (`retries` at most) — for both backend protocols, and the effective timeouts of an app.
//! - [`h1`]: the exchange with an HTTP/1.1 backend (retries on a stale pooled connection when
//!   the request is replayable, the WebSocket tunnel after a `101`).
//! - [`h2c`]: the exchange with a cleartext HTTP/2 backend (one multiplexed connection each).
//!
//! The exchanges are written once, against [`crate::downstream::Downstream`]: an HTTP/1.1
//! connection and an HTTP/2 stream reach either kind of backend through the same code.
//!
//! Retries follow one rule: a request is sent again only when no byte of it can have been
//! processed — the connection to the backend failed — or when it is idempotent, its body (if
//! any) is held whole, and it failed on a pooled connection that the backend had already
//! closed.

pub mod h1;
pub mod h2c;
pub mod pool;

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use smallvec::SmallVec;
use tokio::time::timeout;

use pier_routes::app::{Backend, MAX_TRIED};
use pier_routes::hash::hash_key;
use pier_routes::{App, HashOn, Policy};

use crate::config::Config;
use crate::downstream::Downstream;
use crate::error::ProxyError;
use crate::shared::Worker;
use pool::{ConnectError, UpstreamConn};

/// The effective upstream timeouts for an app.
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub fn of(cfg: &Config, app: &App) -> Self {
        let t = &app.settings.timeouts;
        Timeouts {
            connect: t.connect.unwrap_or(cfg.timeouts.connect),
            first_byte: t.first_byte.unwrap_or(cfg.timeouts.first_byte),
            idle: t.idle.unwrap_or(cfg.timeouts.upstream_idle),
        }
    }
}

/// The backends one request has tried, and the next one to try.
pub struct Attempts<'a> {
    w: &'a Worker,
    app: &'a App,
    tried: SmallVec<[usize; MAX_TRIED]>,
    retries: usize,
    /// The request's start in wall-clock milliseconds (liveness and ejection).
    now_ms: u64,
    /// The hash of the request's key, for a consistent-hash app (`None`: no key; spread).
    key: Option<u64>,
    pub timeouts: Timeouts,
}

impl<'a> Attempts<'a> {
    pub fn new(w: &'a Worker, app: &'a App, now_ms: u64) -> Self {
        let cfg = &w.shared.config;
        Attempts {
            w,
            app,
            tried: SmallVec::new(),
            retries: app.settings.retries.unwrap_or(cfg.upstream.retries) as usize,
            now_ms,
            key: None,
            timeouts: Timeouts::of(cfg, app),
        }
    }

    /// Reads the key of `d`'s request when the app hashes one to choose a backend.
    pub fn key_from<D: Downstream>(mut self, d: &D) -> Self {
        if self.app.settings.policy == Policy::ConsistentHash {
            if let Some(h) = &self.app.settings.hash {
                self.key = request_key(d, &h.on);
            }
        }
        self
    }

    /// A connection to an HTTP/1.1 backend: `(backend index, connection)`. A pooled one
    /// unless `fresh` (`at` is a recent reading of the clock, for the pool's idle check), else
    /// a new one.
    pub async fn h1(
        &mut self,
        fresh: bool,
        at: Instant,
    ) -> Result<(usize, UpstreamConn), ProxyError> {
        let w = self.w;
        let mut last_error = ProxyError::NoBackend;
        loop {
            let idx = self.pick().ok_or(last_error)?;
            let backend = &self.app.backends[idx];
            let tls = backend.tls.as_ref();
            if !fresh {
                if let Some(c) = w.pool.take(backend.addr, tls, at) {
                    w.shared.metrics.upstream_reused.inc();
                    return Ok((idx, c));
                }
            }
            let connector = &w.shared.upstream_tls;
            match pool::connect(backend.addr, tls, connector, self.timeouts.connect).await {
                Ok(c) => {
                    w.shared.metrics.upstream_connects.inc();
                    return Ok((idx, c));
                }
                Err(e) => last_error = self.connect_failed(idx, e)?,
            }
        }
    }

    /// A ready stream slot on an h2c backend's connection: `(backend index, sender)`.
    pub async fn h2(&mut self) -> Result<(usize, SendRequest<Bytes>), ProxyError> {
        let mut last_error = ProxyError::NoBackend;
        loop {
            let idx = self.pick().ok_or(last_error)?;
            let backend = &self.app.backends[idx];
            if backend.tls.is_some() {
                // Refused when the routes file loads and by the API; a registry written to
                // directly could still pair them.
                let error = std::io::Error::other("an https:// backend of an h2c app");
                last_error = self.connect_failed(
                    idx,
                    ConnectError::Tls {
                        reason: "h2c-is-cleartext",
                        error,
                    },
                )?;
                continue;
            }
            match self.h2_slot(backend).await {
                Ok(s) => return Ok((idx, s)),
                Err(e) => {
                    self.w.h2_pool.drop_conn(backend.addr);
                    last_error = self.connect_failed(idx, e)?;
                }
            }
        }
    }

    /// A live backend not tried yet.
    fn pick(&self) -> Option<usize> {
        let live_at = self.w.shared.liveness_ms(self.now_ms);
        match (self.key, &self.app.settings.hash) {
            (Some(key), Some(h)) => self.app.pick_hashed(live_at, &self.tried, key, h.balance),
            _ => self.app.pick(live_at, &self.tried),
        }
    }

    /// Backend `idx` could not be connected to: it counts a failure (towards ejection) and
    /// joins the tried. `Ok(error)`: another backend may be tried (`retries` times at most);
    /// `Err(error)`: give up with it.
    fn connect_failed(&mut self, idx: usize, e: ConnectError) -> Result<ProxyError, ProxyError> {
        let metrics = &self.w.shared.metrics;
        metrics.upstream_connect_errors.inc();
        let backend = &self.app.backends[idx];
        let err = match &e {
            ConnectError::Timeout => ProxyError::UpstreamConnectTimeout,
            ConnectError::Io(_) => ProxyError::UpstreamConnect,
            ConnectError::Tls { reason, error } => {
                // A certificate that does not verify is a setup problem an operator must see.
                tracing::warn!(
                    backend = %backend.addr,
                    server_name = backend.tls.as_ref().and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
                    app = %self.app.name,
                    reason,
                    error = %error,
                    "upstream TLS handshake failed"
                );
                ProxyError::UpstreamTls(reason)
            }
        };
        tracing::debug!(backend = %backend.addr, app = %self.app.name, error = ?e, "upstream connect failed");
        self.failed_at(idx, self.now_ms);
        self.tried.push(idx);
        if self.tried.len() > self.retries || self.tried.len() >= MAX_TRIED {
            return Err(err);
        }
        metrics.upstream_retries.inc();
        Ok(err)
    }

    /// A ready stream slot on the connection to an h2c backend, opened if there is none.
    async fn h2_slot(&self, backend: &Backend) -> Result<SendRequest<Bytes>, ConnectError> {
        let w = self.w;
        let m = &w.shared.metrics;
        let connect = self.timeouts.connect;
        let (send, reused) = w.h2_pool.sender(backend.addr, connect).await?;
        if reused {
            m.upstream_reused.inc();
        } else {
            m.upstream_connects.inc();
        }
        match timeout(connect, send.ready()).await {
            Err(_) => Err(ConnectError::Timeout),
            Ok(Err(e)) => Err(ConnectError::Io(std::io::Error::other(e))),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// Counts a failure of backend `idx` now (towards its passive ejection).
    pub fn failed(&self, idx: usize) {
        self.failed_at(idx, crate::util::now_ms());
    }

    fn failed_at(&self, idx: usize, now_ms: u64) {
        let cfg = &self.w.shared.config.upstream;
        let backend = &self.app.backends[idx];
        if backend
            .state
            .record_failure(now_ms, cfg.eject_after, cfg.eject_for)
        {
            self.w.shared.metrics.upstream_ejections.inc();
            tracing::warn!(backend = %backend.addr, app = %self.app.name, "backend ejected");
        }
    }
}

/// The hash of a request's key for a consistent-hash app: the client's address, the first
/// value of a header, or a cookie's value; `None` when the request has none (or it is empty).
fn request_key<D: Downstream>(d: &D, on: &HashOn) -> Option<u64> {
    match on {
        HashOn::ClientIp => Some(match d.client_ip() {
            std::net::IpAddr::V4(v4) => hash_key(&v4.octets()),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => hash_key(&v4.octets()),
                None => hash_key(&v6.octets()),
            },
        }),
        HashOn::Header(name) => d.field_values(name).next().and_then(non_empty),
        HashOn::Cookie(name) => d
            .field_values("cookie")
            .find_map(|v| cookie_value(v, name.as_bytes()))
            .and_then(non_empty),
    }
}

/// The hash of a key that is not empty (an empty one is no key: it would send every request
/// without one to the same backend).
fn non_empty(key: &[u8]) -> Option<u64> {
    (!key.is_empty()).then(|| hash_key(key))
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`, RFC 6265 §4.2.1), its
/// quotes kept; the first if it appears twice.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::cookie_value;

    #[test]
    fn cookies_are_found_by_name() {
        let h = b"theme=dark; sid=abc123;lang = en; empty=";
        assert_eq!(cookie_value(h, b"sid"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(h, b"lang"), Some(&b"en"[..]));
        assert_eq!(cookie_value(h, b"empty"), Some(&b""[..]));
        assert_eq!(cookie_value(h, b"the"), None);
        assert_eq!(cookie_value(b"", b"sid"), None);
        assert_eq!(cookie_value(b"noequals", b"noequals"), None);
    }
}

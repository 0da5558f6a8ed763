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
use pier_routes::App;

use crate::config::Config;
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
            timeouts: Timeouts::of(cfg, app),
        }
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
        self.app.pick(live_at, &self.tried)
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

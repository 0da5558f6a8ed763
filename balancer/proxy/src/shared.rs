//! What the request path shares: [`Shared`] by every worker (config, the route table, TLS,
//! metrics, shutdown, telemetry), and [`Worker`] per worker runtime (its upstream pools).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use pier_routes::RouteTable;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::pool::{H2Pool, UpstreamPool};

/// State shared by every worker: the config, the route table, metrics, shutdown.
pub struct Shared {
    pub config: Config,
    /// The one route snapshot, replaced whole on reload (certificates included; the TLS
    /// resolver holds a second handle on it).
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// Set when there are `https` listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Chooses certificates by name (also asked whether an h2 request is misdirected).
    pub tls_resolver: Option<Arc<crate::tls::SniResolver>>,
    /// TLS to `https://` backends (`[upstream_tls]`), one session cache for every worker.
    pub upstream_tls: tokio_rustls::TlsConnector,
    pub metrics: Metrics,
    pub shutdown_tx: watch::Sender<bool>,
    pub shutdown_rx: watch::Receiver<bool>,
    /// Mirrors the watch channel for the request path: one relaxed load, no lock.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Client connections open now (drained to zero on shutdown).
    pub open: AtomicUsize,
    pub conn_limit: Arc<Semaphore>,
    /// Woken on every route table swap (held `spin` requests wait on it).
    pub routes_changed: tokio::sync::Notify,
    /// When the registry last answered (ms since the epoch; 0 = never).
    pub registry_contact_ms: std::sync::atomic::AtomicU64,
    /// Requests held by `spin` now.
    pub spin_held: AtomicUsize,
    /// Router lines and stats, with a registry.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// Token buckets per client address, when `[limits] client_rate` is set.
    pub client_limits: Option<crate::client_limits::ClientLimits>,
    /// Open connections per client (`[limits] client_max_connections`), when capped.
    pub client_conns: Option<Arc<crate::client_conns::ClientConns>>,
    /// Each app's requests in flight against an equal share (`crate::overload`).
    pub fair: crate::overload::FairShare,
    /// The files the routes file named, read for the table in use (watched with it).
    routes_files: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

/// How far past the registry's last answer backends' deadlines are still judged by the wall
/// clock: the feed blocks up to a second between answers, so this covers a healthy feed.
const LIVENESS_SLACK_MS: u64 = 3_000;

impl Shared {
    /// The time backends' liveness deadlines are judged at, given the wall clock `now`. While
    /// the registry does not answer, no heartbeat can reach the table, so deadlines are judged
    /// at its last answer (plus [`LIVENESS_SLACK_MS`]): the last-known table keeps serving whole
    /// instead of losing its backends one deadline at a time. Without a registry (a routes
    /// file), the wall clock.
    #[inline]
    pub fn liveness_ms(&self, now: u64) -> u64 {
        match self.registry_contact_ms.load(Ordering::Relaxed) {
            0 => now,
            contact => now.min(contact.saturating_add(LIVENESS_SLACK_MS)),
        }
    }

    /// The files (besides the routes file) the table in use was built from.
    pub fn routes_files(&self) -> Vec<std::path::PathBuf> {
        self.routes_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_routes_files(&self, files: Vec<std::path::PathBuf>) {
        *self.routes_files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }

    pub fn new(config: Config, table: RouteTable) -> Result<Arc<Self>, rustls::Error> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let metrics = Metrics::new();
        metrics.table(&table);
        let limit = config.max_connections;
        let routes = Arc::new(ArcSwap::from_pointee(table));
        let (tls, tls_resolver) = match &config.tls {
            Some(t) => {
                let resolver = Arc::new(crate::tls::SniResolver::new(Arc::clone(&routes), t));
                let cfg =
                    crate::tls::server_config(Arc::clone(&resolver), &config.http2, t.min_version)?;
                (Some(tokio_rustls::TlsAcceptor::from(cfg)), Some(resolver))
            }
            None => (None, None),
        };
        let upstream_tls = tokio_rustls::TlsConnector::from(crate::tls::upstream_client_config(
            &config.upstream_tls,
        )?);
        let telemetry = match (&config.telemetry, &config.registry) {
            (Some(t), Some(r)) => {
                let m = crate::telemetry::TelemetryMetrics {
                    lines: metrics.router_lines.clone(),
                    dropped: metrics.telemetry_dropped.clone(),
                    stats_failures: metrics.stats_write_failures.clone(),
                };
                match crate::telemetry::Telemetry::start(t, &r.url, &r.prefix, m) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::error!(error = %e, "telemetry writer not started: no router lines or stats");
                        None
                    }
                }
            }
            _ => None,
        };
        let client_limits = (config.limits.client_rate > 0).then(|| {
            crate::client_limits::ClientLimits::new(
                config.limits.client_rate,
                config.limits.client_burst,
            )
        });
        let client_conns = (config.limits.client_max_connections > 0).then(|| {
            Arc::new(crate::client_conns::ClientConns::new(
                config.limits.client_max_connections,
            ))
        });
        Ok(Arc::new(Shared {
            client_limits,
            client_conns,
            fair: crate::overload::FairShare::default(),
            config,
            routes,
            tls,
            tls_resolver,
            upstream_tls,
            metrics,
            shutdown_tx,
            shutdown_rx,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            open: AtomicUsize::new(0),
            conn_limit: Arc::new(Semaphore::new(limit)),
            routes_changed: tokio::sync::Notify::new(),
            routes_files: std::sync::Mutex::new(Vec::new()),
            registry_contact_ms: std::sync::atomic::AtomicU64::new(0),
            spin_held: AtomicUsize::new(0),
            telemetry,
        }))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Stops accepting and asks idle connections to close.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
    }

    /// Installs a new route table.
    pub fn swap_routes(&self, table: RouteTable) {
        self.metrics.table(&table);
        self.routes.store(Arc::new(table));
        self.routes_changed.notify_waiters();
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// What one worker owns: its upstream pool (and a handle on the shared state).
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: UpstreamPool,
    /// Connections to h2c backends (one multiplexed connection per address).
    pub h2_pool: H2Pool,
    /// This worker's saturation and shedding (`crate::overload`).
    pub overload: crate::overload::Overload,
    /// Wakes this worker's idle keep-alive connections when the balancer starts draining (they
    /// sleep until their keep-alive deadline otherwise, with no periodic wake-up).
    pub drain: tokio::sync::Notify,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Arc<Self> {
        let u = &shared.config.upstream;
        let pool = UpstreamPool::new(u.pool_max_idle, u.pool_idle_timeout);
        Arc::new(Worker {
            id,
            shared,
            pool,
            h2_pool: H2Pool::default(),
            overload: crate::overload::Overload::default(),
            drain: tokio::sync::Notify::new(),
        })
    }
}

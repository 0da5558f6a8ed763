//! Stage `accept`: listeners, worker runtimes, the accept loop, and draining on shutdown.
//!
//! Two layouts (`[runtime] mode`): `per-core` runs one single-threaded tokio runtime per worker
//! thread, each with its own `SO_REUSEPORT` listener socket and upstream pool, so a connection
//! lives and dies on one core; `shared` runs one work-stealing runtime whose threads share the
//! listeners and one pool. A semaphore caps open client connections; accept errors are logged
//! and backed off; shutdown stops accepting, lets in-flight requests finish, and closes idle
//! keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use pier_routes::RouteTable;

use crate::config::{Config, Listener, RuntimeMode};
use crate::metrics::Metrics;
use crate::serve::serve_connection;
use crate::stream::ClientStream;
use crate::upstream::UpstreamPool;
use bytes::BytesMut;

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
                let cfg = crate::tls::server_config(Arc::clone(&resolver), &config.http2)?;
                (Some(tokio_rustls::TlsAcceptor::from(cfg)), Some(resolver))
            }
            None => (None, None),
        };
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
        Ok(Arc::new(Shared {
            config,
            routes,
            tls,
            tls_resolver,
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
    pub h2_pool: crate::upstream_h2::H2Pool,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Arc<Self> {
        let u = &shared.config.upstream;
        let pool = UpstreamPool::new(u.pool_max_idle, u.pool_idle_timeout);
        Arc::new(Worker {
            id,
            shared,
            pool,
            h2_pool: crate::upstream_h2::H2Pool::default(),
        })
    }
}

/// Creates a listening socket. With `reuse_port`, several sockets may bind the same address and
/// the kernel spreads connections among them.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections_open.dec();
    }
}

/// Accepts connections on one listener until shutdown.
pub async fn accept_loop(worker: Arc<Worker>, listener: TcpListener, cfg: Listener) {
    let shared = Arc::clone(&worker.shared);
    let mut shutdown = shared.shutdown_rx.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&shared.conn_limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|d| *d) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|d| *d) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                spawn_connection(&worker, stream, peer, cfg, Some(permit));
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning on the error.
                tracing::warn!(listener = %cfg.addr, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // Connections the kernel already accepted would be reset when the socket closes. Shrink
    // the backlog so new SYNs are dropped (the client retries, then finds the port closed),
    // take what is queued, serve it (the answers say Connection: close), and close only once
    // the queue has stayed empty for a moment.
    let _ = socket2::SockRef::from(&listener).listen(0);
    while let Ok(Ok((stream, peer))) =
        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
    {
        spawn_connection(&worker, stream, peer, cfg, None);
    }
}

fn spawn_connection(
    worker: &Arc<Worker>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    cfg: Listener,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let shared = &worker.shared;
    let _ = stream.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections_open.inc();
    shared.metrics.connections_total.inc();
    let guard = OpenGuard(Arc::clone(shared));
    let w = Arc::clone(worker);
    tokio::spawn(async move {
        if cfg.tls {
            serve_tls(w, stream, peer, cfg).await;
        } else {
            serve_connection(w, ClientStream::Plain(stream), peer, cfg).await;
        }
        drop(guard);
        drop(permit);
    });
}

/// The TLS handshake (bounded by `tls.handshake_timeout`, so a client that never sends a
/// ClientHello is closed), then HTTP/1.1 or h2 as ALPN decided.
async fn serve_tls(w: Arc<Worker>, stream: tokio::net::TcpStream, peer: SocketAddr, cfg: Listener) {
    let shared = &w.shared;
    let (Some(acceptor), Some(tls)) = (&shared.tls, &shared.config.tls) else {
        return;
    };
    let m = &shared.metrics;
    // Boxed: the handshake state (a whole rustls connection) would otherwise be part of every
    // connection task's size, plain ones included.
    let handshake = Box::pin(acceptor.accept(stream));
    let stream = match tokio::time::timeout(tls.handshake_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            m.tls_handshakes.with_label_values(&["failed"]).inc();
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            m.tls_handshakes.with_label_values(&["timeout"]).inc();
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    m.tls_handshakes.with_label_values(&["ok"]).inc();
    // Boxed at once: a TLS stream is over a kilobyte, and a moved-from local keeps its place
    // in the task for the connection's life.
    let stream = Box::new(stream);
    if crate::tls::negotiated_h2(stream.get_ref().1) {
        Box::pin(crate::h2::serve_h2(
            w,
            ClientStream::Tls(stream),
            peer,
            cfg,
            BytesMut::new(),
        ))
        .await;
    } else {
        serve_connection(w, ClientStream::Tls(stream), peer, cfg).await;
    }
}

/// Binds every listener (for per-core mode, once per worker) and starts the workers on their
/// own threads. Returns once all sockets are bound, so bind errors reach the caller.
pub fn start_workers(shared: &Arc<Shared>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let cfg = &shared.config;
    let mut threads = Vec::new();
    match cfg.mode {
        RuntimeMode::PerCore => {
            let mut per_worker = Vec::new();
            for _ in 0..cfg.workers {
                let socks = cfg
                    .listeners
                    .iter()
                    .map(|l| bind(l.addr, true).map(|s| (s, *l)))
                    .collect::<std::io::Result<Vec<_>>>()?;
                per_worker.push(socks);
            }
            for (id, socks) in per_worker.into_iter().enumerate() {
                let worker = Worker::new(id, Arc::clone(shared));
                let handle = std::thread::Builder::new()
                    .name(format!("pier-worker-{id}"))
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot start worker runtime");
                                return;
                            }
                        };
                        rt.block_on(run_worker(worker, socks));
                    })?;
                threads.push(handle);
            }
        }
        RuntimeMode::Shared => {
            let socks = cfg
                .listeners
                .iter()
                .map(|l| bind(l.addr, false).map(|s| (s, *l)))
                .collect::<std::io::Result<Vec<_>>>()?;
            let worker = Worker::new(0, Arc::clone(shared));
            let threads_n = cfg.workers;
            let handle = std::thread::Builder::new()
                .name("pier-runtime".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads_n)
                        .thread_name("pier-worker")
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start runtime");
                            return;
                        }
                    };
                    rt.block_on(run_worker(worker, socks));
                })?;
            threads.push(handle);
        }
    }
    Ok(threads)
}

/// Runs one worker's accept loops and its pool reaper until shutdown, then waits for its
/// connections to drain.
async fn run_worker(worker: Arc<Worker>, socks: Vec<(std::net::TcpListener, Listener)>) {
    let mut loops = Vec::new();
    for (sock, cfg) in socks {
        match TcpListener::from_std(sock) {
            Ok(l) => loops.push(tokio::spawn(accept_loop(Arc::clone(&worker), l, cfg))),
            Err(e) => tracing::error!(listener = %cfg.addr, error = %e, "cannot register listener"),
        }
    }
    let reaper = {
        let w = Arc::clone(&worker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let idle = w.shared.config.upstream.pool_idle_timeout;
            loop {
                tick.tick().await;
                w.pool.reap();
                w.h2_pool.reap(idle);
            }
        })
    };
    for l in loops {
        let _ = l.await;
    }
    // Listeners are closed now; keep the runtime alive while connections finish.
    let deadline = tokio::time::Instant::now() + worker.shared.config.timeouts.shutdown;
    while worker.shared.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reaper.abort();
}

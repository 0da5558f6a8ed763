//! Stage `accept`: listeners, worker runtimes, the accept loop, TLS and ALPN, the h2c
//! preface, and draining on shutdown; each connection is handed to a front end
//! ([`front::h1`] or [`front::h2`]).
//!
//! Two layouts (`[runtime] mode`): `per-core` runs one single-threaded tokio runtime per worker
//! thread, each with its own `SO_REUSEPORT` listener socket and upstream pool, so a connection
//! lives and dies on one core; `shared` runs one work-stealing runtime whose threads share the
//! listeners and one pool. A semaphore caps open client connections; accept errors are logged
//! and backed off; shutdown stops accepting, lets in-flight requests finish, and closes idle
//! keep-alive connections.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::config::{Listener, RuntimeMode};
use crate::front;
use crate::shared::{Shared, Worker};
use crate::stream::ClientStream;

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
    tokio::spawn(serve_connection(
        Arc::clone(worker),
        stream,
        peer,
        cfg,
        (guard, permit),
    ));
}

/// One client connection from accept to close; `held` (the open-connection count and the
/// connection's permit) is released when it ends. This future is the connection task's for the
/// connection's whole life, so every path taken by few connections (the PROXY header, TLS, a
/// refusal, the switch to HTTP/2) is boxed, and it is written as a plain function returning an
/// `async move` block that uses what it captured in place (an `async fn` would keep a second
/// copy of each argument): the task then holds what a plain HTTP/1.x connection needs while
/// idle, a few hundred bytes, rather than the largest path's state.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_connection(
    w: Arc<Worker>,
    mut stream: tokio::net::TcpStream,
    mut peer: SocketAddr,
    cfg: Listener,
    held: (OpenGuard, Option<tokio::sync::OwnedSemaphorePermit>),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Mentioned so that the block owns it (and drops it when it ends), not copied.
        let _ = &held;
        if cfg.proxy_protocol {
            let within = w.shared.config.timeouts.client_header;
            match Box::pin(crate::proxy_protocol::read_header(
                &mut stream,
                peer,
                within,
            ))
            .await
            {
                Ok(client) => peer = client,
                Err(e) => {
                    let m = &w.shared.metrics.proxy_protocol_refused;
                    m.with_label_values(&[e.reason()]).inc();
                    tracing::debug!(listener = %cfg.addr, from = %peer, error = %e, "connection closed");
                    return;
                }
            }
        }
        // The client's cap on connections (not on trusted listeners: those are your proxy's).
        let mut _slot = None;
        if let (Some(conns), false) = (&w.shared.client_conns, cfg.trusted) {
            match conns.enter(peer.ip()) {
                // Boxed: the cap is off by default, and the task would carry the slot's bytes
                // either way.
                Some(s) => _slot = Some(Box::new(s)),
                None => {
                    w.shared.metrics.client_connections_refused.inc();
                    tracing::debug!(listener = %cfg.addr, client = %peer, "connection refused: the client holds its max connections");
                    if cfg.tls {
                        Box::pin(serve_tls(w, stream, peer, cfg, true)).await;
                    } else {
                        Box::pin(crate::client_conns::refuse(stream, false)).await;
                    }
                    return;
                }
            }
        }
        if cfg.tls {
            Box::pin(serve_tls(w, stream, peer, cfg, false)).await;
        } else {
            // HTTP/1.x, until the client turns out to speak HTTP/2 with prior knowledge (its
            // first bytes are the preface, RFC 9113 §3.3): then the connection goes to the h2
            // front end, with what was read of it.
            // (What h1 hands back lives only in this block, not across the h2 connection's
            // await, where it would widen every idle connection's task.)
            let h2 = {
                let client = front::h1::Client::boxed(ClientStream::Plain(stream), peer, cfg);
                let Some((s, read)) = front::h1::serve(Arc::clone(&w), client).await else {
                    return;
                };
                Box::pin(front::h2::serve(w, s, peer, cfg, read))
            };
            h2.await;
        }
    }
}

/// The TLS handshake (bounded by `tls.handshake_timeout`, so a client that never sends a
/// ClientHello is closed), then HTTP/1.1 or h2 as ALPN decided; or, when the connection is
/// `refused` (its client's cap), the refusal in the protocol ALPN chose.
async fn serve_tls(
    w: Arc<Worker>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    cfg: Listener,
    refused: bool,
) {
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
    if refused {
        let h2 = crate::tls::negotiated_h2(stream.get_ref().1);
        return Box::pin(crate::client_conns::refuse(stream, h2)).await;
    }
    if crate::tls::negotiated_h2(stream.get_ref().1) {
        let h2 = front::h2::serve(w, ClientStream::Tls(stream), peer, cfg, BytesMut::new());
        Box::pin(h2).await;
    } else {
        // ALPN chose HTTP/1.1 (or nothing): no preface to look for.
        let client = front::h1::Client::boxed(ClientStream::Tls(stream), peer, cfg);
        let _ = front::h1::serve(w, client).await;
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
    let probe = tokio::spawn(crate::overload::probe(Arc::clone(&worker)));
    let reaper = {
        let w = Arc::clone(&worker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let idle = w.shared.config.upstream.pool_idle_timeout;
            loop {
                tick.tick().await;
                w.pool.reap();
                w.h2_pool.reap(idle);
                if let Some(l) = &w.shared.client_limits {
                    l.reap(crate::util::now_ms());
                }
                // Free memory back to the system (a pass over this thread's heap pages: no
                // CPU time measurable with 15,000 idle connections held, see
                // docs/benchmarks/idle-connections.md).
                crate::memory::release();
            }
        })
    };
    for l in loops {
        let _ = l.await;
    }
    // Idle keep-alive connections sleep until their deadline: wake them to close (each checks
    // the shutdown flag after it registers, so none that went idle since is missed).
    worker.drain.notify_waiters();
    // Listeners are closed now; keep the runtime alive while connections finish.
    let deadline = tokio::time::Instant::now() + worker.shared.config.timeouts.shutdown;
    while worker.shared.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reaper.abort();
    probe.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, read from the function's type alone.
    fn returned_size<A, B, C, D, E, F: std::future::Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // Every open connection's task holds this future for the connection's life: an
        // unboxed rare path (a TLS handshake, a refusal) inlined here once made every idle
        // connection pay 4.5 KiB. At most 408 bytes, tokio's task cell is 512 bytes.
        let size = returned_size(serve_connection);
        assert!(
            size <= 408,
            "the connection future is {size} bytes (at most 408)"
        );
    }
}

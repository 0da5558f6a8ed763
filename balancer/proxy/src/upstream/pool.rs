//! Connections to backends, and the pools that reuse them: idle HTTP/1.1 keep-alive
//! connections ([`UpstreamPool`]) and one multiplexed connection per h2c backend ([`H2Pool`]).
//!
//! Each worker owns one [`UpstreamPool`] (in the per-core runtime mode nothing is shared between
//! cores; in the shared mode all threads use one). Idle connections are kept last-in first-out
//! so the warmest is reused, dropped after `pool_idle_timeout` (keep it below the backends' own
//! keep-alive timeout), and checked for a close or stray bytes before each reuse.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use pier_routes::BackendTls;

use crate::stream::UpstreamStream;

/// One connection to a backend, with its read buffer.
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub buf: BytesMut,
    pub addr: SocketAddr,
    /// For a TLS connection, the identity its certificate was verified for: it joins the
    /// address in the pool's key, so that a cleartext and a TLS connection to one address never
    /// mix, nor do TLS connections verified for different names. Boxed, so that the cleartext
    /// connection (the common one) stays as small as it was before TLS to backends.
    tls: Option<Box<BackendTls>>,
    /// True when this connection came from the pool (it may have been closed by the backend).
    pub reused: bool,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
    /// The TLS handshake failed: a short reason (`unknown-issuer`, `name-mismatch`, …, see
    /// [`crate::tls::failure_reason`]) and the error as rustls or the socket gave it.
    Tls {
        reason: &'static str,
        error: io::Error,
    },
}

/// Opens a TCP connection to `addr` within `timeout`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ConnectError::Io)?;
    socket.set_nodelay(true).map_err(ConnectError::Io)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Opens a new connection to the backend at `addr` within `timeout`: TCP, then for a TLS
/// backend (`tls`) the handshake with `connector` (both within the one deadline).
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    connector: &TlsConnector,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = connect_tcp(addr, timeout).await?;
    let stream = match tls {
        None => UpstreamStream::Plain(tcp),
        // Boxed: the handshake's future is large, and a cleartext connection should not carry
        // its size in every request's future.
        Some(t) => Box::pin(handshake(addr, t, tcp, connector, deadline)).await?,
    };
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::with_capacity(16 * 1024),
        addr,
        tls: tls.map(|t| Box::new(t.clone())),
        reused: false,
    })
}

/// The TLS handshake with an `https://` backend over `tcp`, by `deadline`.
async fn handshake(
    addr: SocketAddr,
    tls: &BackendTls,
    tcp: TcpStream,
    connector: &TlsConnector,
    deadline: tokio::time::Instant,
) -> Result<UpstreamStream, ConnectError> {
    let name = server_name(addr, tls);
    match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(error)) => Err(ConnectError::Tls {
            reason: handshake_failure(&error),
            error,
        }),
        Ok(Ok(s)) => Ok(UpstreamStream::Tls(Box::new(s))),
    }
}

/// Why a TLS handshake with a backend failed (see [`crate::tls::failure_reason`]); a backend
/// that closes the connection instead of answering is `handshake-closed`.
fn handshake_failure(error: &io::Error) -> &'static str {
    crate::tls::failure_reason(error).unwrap_or(match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "handshake-closed",
        _ => "handshake-failed",
    })
}

/// The name a backend's certificate is verified for: its `server_name` (sent as SNI when it is
/// a DNS name), else its IP address (no SNI).
fn server_name(addr: SocketAddr, tls: &BackendTls) -> ServerName<'static> {
    tls.server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// Idle keep-alive connections by backend: address, and for TLS the verified identity.
pub struct UpstreamPool {
    idle: Mutex<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// Keyed with foldhash rather than SipHash: the keys are backends from the route table, not
/// attacker-chosen, and the pool is looked up twice per proxied request.
type Lists<K> = HashMap<K, Vec<Pooled>, foldhash::fast::RandomState>;

/// An idle connection and when it went idle (kept here, not in the connection that every
/// request moves around).
struct Pooled {
    since: Instant,
    conn: UpstreamConn,
}

/// The idle lists. Cleartext connections are keyed by address alone, so the common path hashes
/// and compares two integers and nothing else.
#[derive(Default)]
struct Idle {
    plain: Lists<AddrKey>,
    tls: Lists<(AddrKey, BackendTls)>,
}

/// A backend's address as two integers: hashed with two fixed-size writes, where the derived
/// `Hash` of a `SocketAddr` writes the variant, the address bytes as a slice and the port
/// (several times the instructions, twice per request). Equal when the addresses, ports and IPv6
/// scopes are (an IPv6 flow label does not name another backend); a v4 and a v6 address never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddrKey(u128, u64);

impl From<SocketAddr> for AddrKey {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => {
                AddrKey(u128::from(a.ip().to_bits()), u64::from(a.port()) | 1 << 63)
            }
            SocketAddr::V6(a) => AddrKey(
                a.ip().to_bits(),
                u64::from(a.port()) | u64::from(a.scope_id()) << 16,
            ),
        }
    }
}

impl UpstreamPool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        UpstreamPool {
            idle: Mutex::new(Idle::default()),
            max_idle,
            idle_timeout,
        }
    }

    /// Takes the most recently used live connection to the backend at `addr` (over TLS when
    /// `tls` is given, verified for that identity), if any. `now` is a recent reading of the
    /// clock (the request's start).
    pub fn take(
        &self,
        addr: SocketAddr,
        tls: Option<&BackendTls>,
        now: Instant,
    ) -> Option<UpstreamConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = match tls {
            None => idle.plain.get_mut(&AddrKey::from(addr))?,
            Some(t) => idle.tls.get_mut(&(AddrKey::from(addr), t.clone()))?,
        };
        while let Some(Pooled { since, mut conn }) = list.pop() {
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // Everything below is older still.
                list.clear();
                return None;
            }
            if conn.stream.is_quiet() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly, at `now`.
    pub fn put(&self, conn: UpstreamConn, now: Instant) {
        if self.max_idle == 0 || !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = match &conn.tls {
            None => idle.plain.entry(AddrKey::from(conn.addr)).or_default(),
            Some(t) => {
                let key = (AddrKey::from(conn.addr), BackendTls::clone(t));
                idle.tls.entry(key).or_default()
            }
        };
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Pooled { since: now, conn });
    }

    /// Drops connections idle for longer than the timeout; called periodically.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |list: &mut Vec<Pooled>| {
            list.retain(|p| p.since.elapsed() < self.idle_timeout);
            !list.is_empty()
        };
        idle.plain.retain(|_, list| fresh(list));
        idle.tls.retain(|_, list| fresh(list));
    }

    /// Number of idle connections held.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let plain: usize = idle.plain.values().map(Vec::len).sum();
        plain + idle.tls.values().map(Vec::len).sum::<usize>()
    }
}

/// One shared connection to a backend.
struct H2Backend {
    send: SendRequest<Bytes>,
    /// Set by the connection's driver task when the connection ends.
    closed: Arc<AtomicBool>,
    /// When a request last took a stream on it.
    last_used: Instant,
}

/// Multiplexed connections to h2c backends, one per address.
#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<HashMap<SocketAddr, H2Backend>>,
}

impl H2Pool {
    /// A sender on the connection to `addr`, opening one if there is none (or it closed).
    /// The `bool` says whether the connection was already open.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<(SendRequest<Bytes>, bool), ConnectError> {
        {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = conns.get_mut(&addr) {
                if !b.closed.load(Ordering::Relaxed) {
                    b.last_used = Instant::now();
                    return Ok((b.send.clone(), true));
                }
            }
        }
        let tcp = connect_tcp(addr, connect_timeout).await?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(tcp);
        let (send, connection) = match timeout(connect_timeout, handshake).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Io(std::io::Error::other(e))),
            Ok(Ok(pair)) => pair,
        };
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %addr, error = %e, "h2c backend connection ended");
            }
            flag.store(true, Ordering::Relaxed);
        });
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.insert(
            addr,
            H2Backend {
                send: send.clone(),
                closed,
                last_used: Instant::now(),
            },
        );
        Ok((send, false))
    }

    /// Forgets connections that ended, and lets go of those no request has used for `idle`
    /// (a backend that left the table, or a quiet one): once its streams in flight finish, an
    /// h2 connection with no handle left sends GOAWAY and closes. Called periodically.
    pub fn reap(&self, idle: Duration) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, b| !b.closed.load(Ordering::Relaxed) && b.last_used.elapsed() < idle);
    }

    /// Forgets the connection to `addr` (after it failed a request).
    pub fn drop_conn(&self, addr: SocketAddr) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn connector() -> TlsConnector {
        let settings = crate::config::UpstreamTlsSettings::default();
        TlsConnector::from(crate::tls::upstream_client_config(&settings).unwrap())
    }

    #[tokio::test]
    async fn pool_reuses_live_and_drops_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = UpstreamPool::new(4, Duration::from_secs(30));
        let a = connect(addr, None, &connector(), Duration::from_secs(1))
            .await
            .unwrap();
        let (mut server_a, _) = listener.accept().await.unwrap();
        let b = connect(addr, None, &connector(), Duration::from_secs(1))
            .await
            .unwrap();
        let (_server_b, _) = listener.accept().await.unwrap();
        pool.put(b, Instant::now());
        pool.put(a, Instant::now());
        assert_eq!(pool.idle_count(), 2);
        // The server closes `a` (the most recent): take() must skip it and return `b`.
        server_a.shutdown().await.unwrap();
        drop(server_a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool
            .take(addr, None, Instant::now())
            .expect("b is still alive");
        assert!(got.reused);
        assert!(pool.take(addr, None, Instant::now()).is_none());
    }

    #[tokio::test]
    async fn plain_and_tls_connections_to_one_address_never_mix() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = UpstreamPool::new(4, Duration::from_secs(30));
        let a = connect(addr, None, &connector(), Duration::from_secs(1))
            .await
            .unwrap();
        let _s = listener.accept().await.unwrap();
        pool.put(a, Instant::now());
        let tls = |name: Option<&str>| BackendTls {
            server_name: name.map(Arc::from),
        };
        let now = Instant::now();
        assert!(pool.take(addr, Some(&tls(None)), now).is_none());
        assert!(pool
            .take(addr, Some(&tls(Some("api.internal"))), now)
            .is_none());
        assert!(pool.take(addr, None, now).is_some());
    }

    #[test]
    fn addr_keys_are_equal_only_for_one_backend() {
        let keys: Vec<AddrKey> = [
            "127.0.0.1:80",
            "127.0.0.1:81",
            "127.0.0.2:80",
            "[::ffff:127.0.0.1]:80",
            "[::7f00:1]:80",
            "[fe80::1%2]:80",
            "[fe80::1%3]:80",
            "[fe80::1]:80",
        ]
        .iter()
        .map(|a| AddrKey::from(a.parse::<SocketAddr>().unwrap()))
        .collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a == b, i == j, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_cleartext_connection_stays_small() {
        // Every request moves one, and moves of more than 128 bytes are calls to memcpy: TLS
        // state lives behind boxes, the idle time in the pool.
        let size = std::mem::size_of::<UpstreamConn>();
        assert!(size <= 120, "{size} bytes (120 before TLS to backends)");
    }

    #[tokio::test]
    async fn idle_timeout_expires_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = UpstreamPool::new(4, Duration::from_millis(20));
        let a = connect(addr, None, &connector(), Duration::from_secs(1))
            .await
            .unwrap();
        let _s = listener.accept().await.unwrap();
        pool.put(a, Instant::now());
        tokio::time::sleep(Duration::from_millis(40)).await;
        pool.reap();
        assert_eq!(pool.idle_count(), 0);
    }
}

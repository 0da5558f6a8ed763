//! An in-test HTTP server with known behaviour, on a loopback port chosen by the OS, so the
//! tests can compare what pier-load reports with what the server really saw.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with each request.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Hold every response that is due in `[start + at, start + at + len)` until the window ends.
    pub stall: Option<(Duration, Duration)>,
    /// Echo the request's Host in this response header (a routing check target)...
    pub echo_header: Option<&'static str>,
    /// ...except for this host, which gets a wrong value.
    pub misroute: Option<String>,
    /// Answer `Connection: close` on every Nth response of a connection.
    pub close_every: Option<u64>,
    /// Every Nth response uses chunked encoding.
    pub chunked_every: Option<u64>,
    /// Read requests but never answer.
    pub silent: bool,
    /// Answer pipelined requests one by one (a write per response, a pause between) and read
    /// whatever arrived in between, so `max_batch`/`batches` show how the client refills.
    /// Bodiless requests only.
    pub answer_each: bool,
    /// h2: after this many streams on a connection, shut it down gracefully (GOAWAY).
    pub h2_streams_per_conn: Option<u64>,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub open: AtomicI64,
    /// Most requests found in one read: > 1 means the client pipelined.
    pub max_batch: AtomicU64,
    /// Reads that held at least one request (requests / batches is the mean batch).
    pub batches: AtomicU64,
    /// Most h2 streams open at once on one connection.
    pub max_streams: AtomicU64,
    pub per_host: Mutex<HashMap<String, u64>>,
    /// Request body bytes received, and requests by method.
    pub body_bytes: AtomicU64,
    pub methods: Mutex<HashMap<String, u64>>,
    pub sni: Mutex<HashMap<String, u64>>,
}

impl Seen {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn hosts(&self) -> HashMap<String, u64> {
        self.per_host.lock().unwrap().clone()
    }

    fn count_host(&self, host: &str) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        *self
            .per_host
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_default() += 1;
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    pub started: Instant,
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    /// Waits until every connection the client opened has been closed and drained.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.seen.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Requests already read are counted before responses are written; a short pause lets
        // the last reads finish.
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a plain HTTP/1.1 server.
pub fn start(b: Behaviour) -> TestServer {
    start_inner(b, None)
}

/// Starts a TLS server offering h2 and http/1.1 via ALPN (h2c prior knowledge when `tls` is
/// `None` and `h2c` is set).
pub fn start_tls(b: Behaviour, tls: Arc<rustls::ServerConfig>) -> TestServer {
    start_inner(b, Some(Mode::Tls(tls)))
}

pub fn start_h2c() -> TestServer {
    start_h2c_with(Behaviour::default())
}

pub fn start_h2c_with(b: Behaviour) -> TestServer {
    start_inner(b, Some(Mode::H2c))
}

enum Mode {
    Tls(Arc<rustls::ServerConfig>),
    H2c,
}

fn start_inner(b: Behaviour, mode: Option<Mode>) -> TestServer {
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let b = Arc::new(b);
    let mode = mode.map(Arc::new);
    let s = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            s.connections.fetch_add(1, Ordering::SeqCst);
            s.open.fetch_add(1, Ordering::SeqCst);
            let (s, b, mode) = (s.clone(), b.clone(), mode.clone());
            tokio::spawn(async move {
                match mode.as_deref() {
                    None if b.answer_each => serve_h1_one_by_one(sock, &s).await,
                    None => serve_h1(sock, &s, &b, started).await,
                    Some(Mode::H2c) => serve_h2(sock, &s, &b).await,
                    Some(Mode::Tls(cfg)) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        if let Ok(tls) = acceptor.accept(sock).await {
                            let (_, conn) = tls.get_ref();
                            if let Some(name) = conn.server_name() {
                                *s.sni.lock().unwrap().entry(name.to_string()).or_default() += 1;
                            }
                            if conn.alpn_protocol() == Some(b"h2") {
                                serve_h2(tls, &s, &b).await;
                            } else {
                                serve_h1(tls, &s, &b, started).await;
                            }
                        }
                    }
                }
                s.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    TestServer {
        addr,
        seen,
        started,
        rt,
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    seen: &Seen,
    b: &Behaviour,
    started: Instant,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 16384];
    let mut answered = 0u64;
    // After a `Connection: close` answer, requests still arriving are counted, not answered.
    let mut closing = false;
    loop {
        let n = match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut out = Vec::new();
        let mut batch = 0;
        let mut close = false;
        let was_closing = closing;
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            buf.drain(..end + 4 + len);
            seen.body_bytes.fetch_add(len as u64, Ordering::SeqCst);
            let method = head.split(' ').next().unwrap_or("").to_string();
            *seen.methods.lock().unwrap().entry(method).or_default() += 1;
            let host = header(&head, "host").unwrap_or("").to_string();
            let host = host.split(':').next().unwrap_or("").to_string();
            seen.count_host(&host);
            batch += 1;
            if b.silent || closing {
                continue;
            }
            if let Some((at, len)) = b.stall {
                let (from, to) = (started + at, started + at + len);
                let now = Instant::now();
                if now >= from && now < to {
                    // Flush what is ready, then hold this response until the stall ends.
                    if !out.is_empty() {
                        let _ = sock.write_all(&out).await;
                        out.clear();
                    }
                    tokio::time::sleep_until(to.into()).await;
                }
            }
            answered += 1;
            let status: u16 = host
                .strip_prefix("status-")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let mut extra = String::new();
            if let Some(h) = b.echo_header {
                let value = if b.misroute.as_deref() == Some(host.as_str()) {
                    "somewhere-else"
                } else {
                    host.as_str()
                };
                extra.push_str(&format!("{h}: {value}\r\n"));
            }
            if b.close_every.is_some_and(|n| answered % n == 0) {
                extra.push_str("Connection: close\r\n");
                close = true;
                closing = true;
            }
            let body = format!("hello {host} #{answered}");
            if b.chunked_every.is_some_and(|n| answered % n == 0) {
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 {status} X\r\n{extra}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
            } else {
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        }
        seen.max_batch.fetch_max(batch, Ordering::SeqCst);
        if !out.is_empty() && sock.write_all(&out).await.is_err() {
            return;
        }
        if close && !was_closing {
            let _ = sock.shutdown().await;
        }
    }
}

async fn serve_h1_one_by_one(mut sock: tokio::net::TcpStream, seen: &Seen) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 16384];
    let end_of = |buf: &[u8]| buf.windows(4).position(|w| w == b"\r\n\r\n");
    loop {
        // With requests waiting, a read only picks up what arrived during the last answer.
        let read = if end_of(&buf).is_some() {
            tokio::time::timeout(Duration::from_micros(300), sock.read(&mut tmp))
                .await
                .ok()
        } else {
            Some(sock.read(&mut tmp).await)
        };
        if let Some(r) = read {
            let n = match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let batch = tmp[..n].windows(4).filter(|w| *w == b"\r\n\r\n").count() as u64;
            if batch > 0 {
                seen.max_batch.fetch_max(batch, Ordering::SeqCst);
                seen.batches.fetch_add(1, Ordering::SeqCst);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        if let Some(end) = end_of(&buf) {
            buf.drain(..end + 4);
            seen.count_host("");
            if sock
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin>(sock: S, seen: &Seen, b: &Behaviour) {
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    let open = Arc::new(AtomicU64::new(0));
    let mut accepted = 0u64;
    // `silent`: streams held open, never answered (nor reset) while the connection lasts.
    let mut unanswered = Vec::new();
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        accepted += 1;
        if b.h2_streams_per_conn == Some(accepted) {
            // GOAWAY: streams after this one are refused unprocessed.
            conn.graceful_shutdown();
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .unwrap_or_default();
        seen.count_host(&host);
        if b.silent {
            unanswered.push(respond);
            continue;
        }
        let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_streams.fetch_max(now_open, Ordering::SeqCst);
        let open = open.clone();
        tokio::spawn(async move {
            // A little service time so that streams overlap.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let resp = http::Response::builder()
                .status(200)
                .header("x-backend", host.as_str())
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(resp, false) {
                let _ = send.send_data(Bytes::from(format!("hello h2 {host}")), true);
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A CA and a server certificate for `names`, signed by it: (server config, CA PEM).
pub fn tls_config(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(cfg), ca.pem())
}

/// A unique scratch directory for one test.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pier-load-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

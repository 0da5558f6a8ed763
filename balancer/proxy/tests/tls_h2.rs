//! TLS, HTTP/2 and WebSocket through a real balancer process: rustls and h2 clients from their
//! crates, raw h2 frames written here for the conformance and abuse cases, tungstenite for
//! WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `names`, written as PEM files into `dir`.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

pub fn make_cert(dir: &std::path::Path, label: &str, names: &[&str]) -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert_pem = ck.cert.pem();
    let key_pem = ck.key_pair.serialize_pem();
    let cert_path = dir.join(format!("{label}.crt"));
    let key_path = dir.join(format!("{label}.key"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    TestCert {
        cert_pem,
        key_pem,
        der: ck.cert.der().clone(),
        cert_path,
        key_path,
    }
}

/// A TLS balancer: `http` on the harness port, `https` on `tls_port`, default certificate for
/// `default.test`.
pub struct TlsSetup {
    pub b: Balancer,
    pub tls_port: u16,
    pub default: TestCert,
    pub certs: tempfile::TempDir,
}

pub async fn tls_balancer(routes: &str, extra: &str) -> TlsSetup {
    let certs = tempfile::tempdir().unwrap();
    let default = make_cert(certs.path(), "default", &["default.test"]);
    let tls_port = free_port();
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\"]\nhttps = [\"127.0.0.1:{tls_port}\"]\n\
         [tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"500ms\"\n{extra}",
        default.cert_path, default.key_path
    );
    let b = Balancer::start(routes, &config).await;
    TlsSetup {
        b,
        tls_port,
        default,
        certs,
    }
}

/// A rustls client that trusts `roots` and offers `alpn`.
pub fn client_config(
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub async fn tls_connect(
    port: u16,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Sends one HTTP/1.1 request over `io` and reads the whole answer (`Connection: close`).
async fn h1_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    host: &str,
    path: &str,
) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An h2 client (the `h2` crate) over any stream.
async fn h2_client<S>(io: S) -> h2::client::SendRequest<Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<(http::response::Parts, Vec<u8>), h2::Error> {
    let mut send = send.clone().ready().await?;
    let method = if body.is_some() { "POST" } else { "GET" };
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_none())?;
    if let Some(b) = body {
        for piece in b.chunks(16 * 1024) {
            stream.reserve_capacity(piece.len());
            stream.send_data(Bytes::copy_from_slice(piece), false)?;
        }
        stream.send_data(Bytes::new(), true)?;
    }
    let resp = resp.await?;
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok((parts, out))
}

fn backend_routes(app: &str, domains: &[&str], b: &Backend) -> String {
    app_routes(app, domains, &[b.addr], "")
}

#[tokio::test]
async fn https_http11_forwards_with_proto_https() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let mut tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let text = h1_over(&mut tls, "default.test", "/hello").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("one /hello"), "{text}");
    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen[0].header("x-forwarded-port"),
        Some(s.tls_port.to_string().as_str())
    );
    // The plain listener still says http.
    let r = get(s.b.addr(), "default.test", "/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.seen()[1].header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn tls_versions_are_12_and_13_only() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut store = rustls::RootCertStore::empty();
        store.add(s.default.der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        let tls = tls_connect(s.tls_port, "default.test", Arc::new(cfg))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
    }
    // A TLS 1.0 ClientHello (record and hello version 0x0301, no supported_versions) is refused.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.tls_port)).await.unwrap();
    let hello = legacy_client_hello();
    tcp.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 7];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0], 21, "an alert record, got {buf:?}");
    assert_eq!(buf[5], 2, "a fatal alert");
    assert!(
        buf[6] == 70 || buf[6] == 40,
        "protocol_version or handshake_failure: {buf:?}"
    );
}

/// A minimal TLS 1.0 ClientHello offering TLS_RSA_WITH_AES_128_CBC_SHA.
fn legacy_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs[1] = (body.len() >> 16) as u8;
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", s.tls_port)).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed before the test's own deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(
        s.b.metrics_with(&["pier_tls_handshakes_total{result=\"timeout\"} 1"])
            .await
            .contains("pier_tls_handshakes_total{result=\"timeout\"} 1"),
        "{}",
        s.b.metrics().await
    );
}

#[tokio::test]
async fn h2_over_tls_by_alpn_reaches_an_http11_backend() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let cfg = client_config(&[&s.default.der], &[b"h2", b"http/1.1"]);
    let tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2_client(tls).await;
    let (parts, body) = h2_get(&mut send, "https://default.test/a?b=1", None)
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, b"one /a?b=1");
    assert!(parts.headers.get("connection").is_none());
    // Several requests share the connection, concurrently.
    let mut joins = Vec::new();
    for i in 0..20 {
        let mut s2 = send.clone();
        joins.push(tokio::spawn(async move {
            h2_get(&mut s2, &format!("https://default.test/n{i}"), None)
                .await
                .unwrap()
        }));
    }
    for (i, j) in joins.into_iter().enumerate() {
        let (p, b) = j.await.unwrap();
        assert_eq!(p.status, 200);
        assert_eq!(b, format!("one /n{i}").as_bytes());
    }
    let seen = backend.seen();
    let first = &seen[0];
    assert_eq!(first.request_line, "GET /a?b=1 HTTP/1.1");
    assert_eq!(first.header("host"), Some("default.test"));
    assert_eq!(first.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.len(), 21);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_the_plain_listener() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let mut send = h2_client(tcp).await;
    let (parts, body) = h2_get(&mut send, "http://a.test/x", None).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, b"one /x");
    // Unknown host: 404 with the reason, over h2.
    let (parts, _) = h2_get(&mut send, "http://nope.test/x", None).await.unwrap();
    assert_eq!(parts.status, 404);
    assert_eq!(parts.headers["x-pier-error"], "unknown-host");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(get(b.addr(), "a.test", "/y").await.status, 200);
    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn chunked_answers_reach_h2_clients_with_their_trailers() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let cfg = client_config(&[&s.default.der], &[b"h2"]);
    let tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let mut send = h2_client(tls).await.ready().await.unwrap();
    for (path, trailer) in [("/chunked", Some("abc")), ("/n1", None)] {
        let req = http::Request::get(format!("https://default.test{path}"))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let (parts, mut body) = resp.await.unwrap().into_parts();
        assert_eq!(parts.status, 200, "{path}");
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        match trailer {
            Some(v) => {
                // The backend sends `5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc`.
                assert_eq!(got, b"hello world");
                let t = trailers.expect("a trailers frame");
                assert_eq!(t.get("x-checksum").unwrap(), v);
                assert_eq!(t.len(), 1);
            }
            None => assert!(trailers.is_none(), "{path}: {trailers:?}"),
        }
    }
}

#[tokio::test]
async fn h2_request_bodies_small_and_streamed() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let mut send = h2_client(TcpStream::connect(b.addr()).await.unwrap()).await;
    let (p, _) = h2_get(&mut send, "http://a.test/small", Some(b"hello".to_vec()))
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (p, _) = h2_get(&mut send, "http://a.test/big", Some(big.clone()))
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    let seen = backend.seen();
    assert_eq!(seen[0].header("content-length"), Some("5"));
    assert_eq!(seen[0].body, b"hello");
    // No length given and longer than what is read ahead: chunked upstream.
    assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[1].body_len, 1_000_000);
    // A large streamed response.
    let (p, body) = h2_get(&mut send, "http://a.test/big/3000000", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(body.len(), 3_000_000);
}

#[tokio::test]
async fn h2_request_trailers_reach_http11_backends() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let mut send = h2_client(TcpStream::connect(b.addr()).await.unwrap())
        .await
        .ready()
        .await
        .unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // A small body (read whole before the backend is asked) and a streamed one.
    for (path, body) in [("/small", b"hello".to_vec()), ("/big", big.clone())] {
        let req = http::Request::post(format!("http://a.test{path}"))
            .body(())
            .unwrap();
        let (resp, mut stream) = send.send_request(req, false).unwrap();
        for piece in body.chunks(16 * 1024) {
            stream.reserve_capacity(piece.len());
            stream
                .send_data(Bytes::copy_from_slice(piece), false)
                .unwrap();
        }
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("abc"));
        // Not allowed in trailers (RFC 9110 §6.5.1): dropped.
        t.insert("content-type", http::HeaderValue::from_static("text/evil"));
        stream.send_trailers(t).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200, "{path}");
    }
    let seen = backend.seen();
    for (i, len) in [(0, 5), (1, big.len() as u64)] {
        assert_eq!(seen[i].header("transfer-encoding"), Some("chunked"));
        assert_eq!(seen[i].header("content-type"), None);
        assert_eq!(seen[i].body_len, len);
        assert_eq!(
            seen[i].trailers,
            vec![("x-checksum".to_string(), "abc".to_string())]
        );
    }
    assert_eq!(seen[0].body, b"hello");
}

// ---- raw h2 frames ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        assert!(n.len() < 127 && v.len() < 127);
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
        out.push(v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn get_fields(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", "a.test".into()),
        (":path", path.into()),
    ]
}

/// A raw h2 connection that has sent its preface and SETTINGS.
struct RawH2 {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame read back: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

impl RawH2 {
    async fn open(addr: SocketAddr) -> RawH2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(4, 0, 0, &[]));
        tcp.write_all(&hello).await.unwrap();
        RawH2 {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    async fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until one on `stream` ends it (HEADERS/DATA with END_STREAM, or
    /// RST_STREAM), or a GOAWAY. Returns the frames seen.
    async fn until_done(&mut self, stream: u32) -> Vec<Frame> {
        let mut seen = Vec::new();
        while let Some(f) = self.next(Duration::from_secs(5)).await {
            let done = f.0 == 7
                || (f.2 == stream && (f.0 == 3 || ((f.0 == 0 || f.0 == 1) && f.1 & 1 != 0)));
            seen.push(f);
            if done {
                break;
            }
        }
        seen
    }
}

fn status_of(frames: &[Frame], stream: u32) -> Option<String> {
    // The balancer's HPACK output is not decoded here: h2 encodes :status 200/404/400 etc. with
    // the static table (index 8..14) when it can. Report the first HEADERS block's first byte.
    frames
        .iter()
        .find(|f| f.0 == 1 && f.2 == stream)
        .map(|f| format!("{:#04x}", f.3.first().copied().unwrap_or(0)))
}

fn was_refused(frames: &[Frame], stream: u32) -> bool {
    frames
        .iter()
        .any(|f| (f.0 == 3 && f.2 == stream) || f.0 == 7)
        // Or a 400 answer: static table index 12 = ":status 400" (0x8c when indexed).
        || status_of(frames, stream).as_deref() == Some("0x8c")
}

/// A conformance case: what it is, its header fields, its body.
type Case = (&'static str, Vec<(String, String)>, Option<Vec<u8>>);

#[tokio::test]
async fn malformed_h2_requests_never_reach_the_backend() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let s = |v: &[(&'static str, String)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.clone())).collect()
    };
    let mut cases: Vec<Case> = Vec::new();
    let mut upper = s(&get_fields("/upper"));
    upper.push(("X-Upper".into(), "1".into()));
    cases.push(("uppercase name", upper, None));
    let mut conn = s(&get_fields("/conn"));
    conn.push(("connection".into(), "keep-alive".into()));
    cases.push(("connection-specific field", conn, None));
    let mut te = s(&get_fields("/te"));
    te.push(("te".into(), "gzip".into()));
    cases.push(("te other than trailers", te, None));
    let mut late = s(&get_fields("/late")[..3]);
    late.push(("x-a".into(), "1".into()));
    late.push((":path".into(), "/late".into()));
    cases.push(("pseudo-header after a field", late, None));
    let nopath = s(&get_fields("/")[..3]);
    cases.push(("no :path", nopath, None));
    let mut bogus = s(&get_fields("/bogus"));
    bogus.push((":bogus".into(), "1".into()));
    cases.push(("unknown pseudo-header", bogus, None));
    let mut ws = s(&get_fields("/ws"));
    ws.push(("x-a".into(), " padded".into()));
    cases.push(("leading whitespace in a value", ws, None));
    let mut host = s(&get_fields("/host"));
    host.push(("host".into(), "other.test".into()));
    cases.push(("host disagrees with :authority", host, None));
    let mut cl = s(&get_fields("/cl"));
    cl[0].1 = "POST".into();
    cl.push(("content-length".into(), "10".into()));
    cases.push(("content-length above the data", cl, Some(b"12345".to_vec())));
    let mut cl2 = s(&get_fields("/cl2"));
    cl2[0].1 = "POST".into();
    cl2.push(("content-length".into(), "2".into()));
    cases.push((
        "content-length below the data",
        cl2,
        Some(b"12345".to_vec()),
    ));
    let mut rel = s(&get_fields("relative"));
    rel[3].1 = "relative".into();
    cases.push(("relative :path", rel, None));

    for (what, fields, body) in cases {
        let mut c = RawH2::open(b.addr()).await;
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let block = hpack(&refs);
        let end = if body.is_none() { 1 } else { 0 };
        let mut bytes = frame(1, 4 | end, 1, &block);
        if let Some(data) = body {
            bytes.extend(frame(0, 1, 1, &data));
        }
        c.send(&bytes).await.unwrap();
        let frames = c.until_done(1).await;
        assert!(was_refused(&frames, 1), "{what}: {frames:?}");
    }
    // A well-formed request on a raw connection works (the cases above were not refused for
    // some other reason).
    let mut c = RawH2::open(b.addr()).await;
    let good = get_fields("/good");
    let refs: Vec<(&str, &str)> = good.iter().map(|(a, b)| (*a, b.as_str())).collect();
    c.send(&frame(1, 5, 1, &hpack(&refs))).await.unwrap();
    let frames = c.until_done(1).await;
    assert_eq!(status_of(&frames, 1).as_deref(), Some("0x88"), "{frames:?}");
    let paths: Vec<String> = backend
        .seen()
        .iter()
        .map(|s| s.path().to_string())
        .collect();
    assert_eq!(
        paths,
        vec!["/good"],
        "only the good request reached the backend"
    );
}

/// Sends `flood` on a raw connection and expects GOAWAY ENHANCE_YOUR_CALM (0xb), while a
/// second client keeps being served.
async fn expect_calm(b: &Balancer, flood: Vec<u8>, metric_kind: &str) {
    let mut c = RawH2::open(b.addr()).await;
    let sender = tokio::spawn(async move {
        let _ = c.send(&flood).await;
        c
    });
    let mut bystander = h2_client(TcpStream::connect(b.addr()).await.unwrap()).await;
    let (p, _) = h2_get(&mut bystander, "http://a.test/bystander", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    let mut c = sender.await.unwrap();
    let mut goaway = None;
    while let Some(f) = c.next(Duration::from_secs(5)).await {
        if f.0 == 7 {
            goaway = Some(u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
            break;
        }
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM for {metric_kind}"
    );
    let abuse = format!("pier_h2_abuse_total{{kind=\"{metric_kind}\"}}");
    let m = b.metrics_with(&[&abuse]).await;
    assert!(
        m.contains(&format!("pier_h2_abuse_total{{kind=\"{metric_kind}\"}}")),
        "{m}"
    );
}

#[tokio::test]
async fn h2_floods_end_in_goaway() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(
        &backend_routes("one", &["a.test"], &backend),
        "[http2]\ncontrol_frame_rate = 200\nmax_header_frames = 8\n",
    )
    .await;
    // PING flood.
    let pings: Vec<u8> = (0..5000u64)
        .flat_map(|i| frame(6, 0, 0, &i.to_be_bytes()))
        .collect();
    expect_calm(&b, pings, "control-frame-flood").await;
    // SETTINGS flood.
    let settings: Vec<u8> = (0..5000).flat_map(|_| frame(4, 0, 0, &[])).collect();
    expect_calm(&b, settings, "control-frame-flood").await;
    // Rapid reset: open a stream and cancel it, over and over.
    let fields = get_fields("/reset");
    let refs: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let block = hpack(&refs);
    let mut resets = Vec::new();
    for i in 0..3000u32 {
        let id = 1 + 2 * i;
        resets.extend(frame(1, 5, id, &block));
        resets.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    expect_calm(&b, resets, "control-frame-flood").await;
    // CONTINUATION flood: a header block that never ends.
    let mut cont = frame(1, 0, 1, &block);
    for _ in 0..1000 {
        cont.extend(frame(9, 0, 1, &hpack(&[("x-a", "b")])));
    }
    expect_calm(&b, cont, "continuation-flood").await;
    // Empty DATA frames.
    let mut post = get_fields("/empty");
    post[0].1 = "POST".into();
    let refs: Vec<(&str, &str)> = post.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let mut empty = frame(1, 4, 1, &hpack(&refs));
    for _ in 0..5000 {
        empty.extend(frame(0, 0, 1, &[]));
    }
    expect_calm(&b, empty, "control-frame-flood").await;
}

// ---- WebSocket ----

/// A WebSocket echo server (tungstenite) on a free port.
async fn ws_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        // tungstenite queued the close reply; flushing sends it.
                        let _ = ws.flush().await;
                        break;
                    }
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn ws_session(url_port: u16, host: &str) -> Vec<String> {
    use futures_util::{SinkExt, StreamExt};
    let tcp = TcpStream::connect(("127.0.0.1", url_port)).await.unwrap();
    let req = http::Request::builder()
        .uri(format!("ws://{host}/chat"))
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut got = Vec::new();
    for i in 0..50 {
        let text = format!("message {i} {}", "x".repeat(i * 100));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        got.push(m.into_text().unwrap().to_string());
    }
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        0u8, 1, 2, 255,
    ]))
    .await
    .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    got.push(format!("{:?}", m.into_data()));
    ws.close(None).await.unwrap();
    // The close is passed both ways: the server's close frame comes back, then EOF.
    let mut closed = false;
    while let Some(m) = ws.next().await {
        match m {
            Ok(m) if m.is_close() => closed = true,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(closed, "the server's close frame came back");
    got
}

#[tokio::test]
async fn websocket_echo_through_the_balancer_matches_direct() {
    let echo = ws_echo().await;
    let b = Balancer::start(&app_routes("ws", &["ws.test"], &[echo], ""), "").await;
    let direct = ws_session(echo.port(), "ws.test").await;
    let proxied = ws_session(b.port, "ws.test").await;
    assert_eq!(direct, proxied);
    assert_eq!(proxied.len(), 51);
    let m = b
        .metrics_with(&["pier_tunnels_total 1", "pier_tunnels_open 0"])
        .await;
    assert!(m.contains("pier_tunnels_total 1"), "{m}");
    assert!(m.contains("pier_tunnels_open 0"), "{m}");
}

#[tokio::test]
async fn upgrade_refused_by_the_backend_is_not_a_tunnel_and_not_reused() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(
        b"GET /no-ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    // The backend saw the upgrade asked for.
    let seen = backend.seen();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(seen[0].header("connection"), Some("upgrade"));
    // The client connection carries on as HTTP/1.1; the backend connection was not reused.
    c.send(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    assert_ne!(seen[0].conn_id, seen[1].conn_id);
    // Other upgrades (h2c) are not passed on.
    c.send(b"GET /h2c HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    assert_eq!(seen[2].header("upgrade"), None);
    assert_eq!(seen[2].header("http2-settings"), None);
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let echo = ws_echo().await;
    let b = Balancer::start(
        &app_routes("ws", &["ws.test"], &[echo], ""),
        "[timeouts]\ntunnel_idle = \"300ms\"\n",
    )
    .await;
    use futures_util::StreamExt;
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.test/idle", tcp)
        .await
        .unwrap();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(end.is_ok(), "the tunnel was not closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

// ---- certificates by SNI ----

/// The leaf certificate a TLS listener presents for `sni` (verification off: we look at what
/// is served, not whether it is trusted).
async fn served_cert(port: u16, sni: &str) -> Option<Vec<u8>> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let tls = tls_connect(port, sni, Arc::new(cfg)).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs[0].to_vec())
}

#[tokio::test]
async fn certificates_chosen_by_sni_from_the_routes_file_and_swapped_on_reload() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let wild = make_cert(dir.path(), "wild", &["*.apps.test"]);
    let routes = |shop_cert: &TestCert| {
        format!(
            "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
            app_routes(
                "one",
                &["shop.test", "*.apps.test", "default.test", "other.test"],
                &[backend.addr],
                ""
            ),
            shop_cert.cert_path,
            shop_cert.key_path,
            wild.cert_path,
            wild.key_path
        )
    };
    let s = tls_balancer(&routes(&shop), "").await;
    let port = s.tls_port;
    assert_eq!(
        served_cert(port, "shop.test").await.unwrap(),
        shop.der.to_vec()
    );
    assert_eq!(
        served_cert(port, "a.apps.test").await.unwrap(),
        wild.der.to_vec()
    );
    // No certificate of its own: the default one.
    assert_eq!(
        served_cert(port, "other.test").await.unwrap(),
        s.default.der.to_vec()
    );
    assert_eq!(
        served_cert(port, "unknown.test").await.unwrap(),
        s.default.der.to_vec()
    );
    // A verified client gets the page over the shop certificate.
    let cfg = client_config(&[&shop.der], &[b"http/1.1"]);
    let mut tls = tls_connect(port, "shop.test", cfg).await.unwrap();
    assert!(h1_over(&mut tls, "shop.test", "/")
        .await
        .starts_with("HTTP/1.1 200"));
    // The admin view lists them (soonest expiry first, never a key) and metrics count them.
    let listed = admin_get(s.b.admin, "/certs").await.unwrap();
    assert_eq!(listed.status, 200);
    let v: serde_json::Value = serde_json::from_str(&listed.text()).unwrap();
    assert_eq!(v["count"], 2);
    let domains: Vec<&str> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["domain"].as_str().unwrap())
        .collect();
    assert!(
        domains.contains(&"shop.test") && domains.contains(&"*.apps.test"),
        "{v}"
    );
    assert_eq!(v["certificates"][0]["source"], "routes-file");
    assert_eq!(
        v["certificates"][0]["fingerprint_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(!listed.text().contains("PRIVATE KEY"));
    let m = s.b.metrics().await;
    assert!(m.contains("pier_tls_certificates 2"), "{m}");
    assert!(m.contains("pier_tls_cert_earliest_expiry_seconds "), "{m}");
    // Hot swap: a new certificate for shop.test in the routes file, no restart.
    let renewed = make_cert(dir.path(), "shop2", &["shop.test"]);
    s.b.write_routes(&routes(&renewed));
    let t = Instant::now();
    while served_cert(port, "shop.test").await.unwrap() != renewed.der.to_vec() {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the TLS listener serves `cert` as the default certificate.
async fn wait_served_cert(s: &TlsSetup, cert: &TestCert) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(s.tls_port, "default.test").await.unwrap() != cert.der.to_vec() {
        assert!(
            Instant::now() < deadline,
            "not reloaded: {}",
            s.b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_default_certificate_and_keeps_it_when_the_new_pair_is_bad() {
    // The files are not watched here: only the signal can reload them.
    let s = tls_balancer(
        &app_routes("blog", &["blog.test"], &[], ""),
        "watch = false\n",
    )
    .await;
    let port = s.tls_port;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        s.default.der.to_vec()
    );
    // certbot-style renewal: new files in place, then SIGHUP.
    let renewed = make_cert(s.certs.path(), "default", &["default.test"]);
    assert_ne!(renewed.der, s.default.der);
    s.b.signal("HUP");
    wait_served_cert(&s, &renewed).await;
    // A key that does not belong to the certificate: refused, the renewed one keeps serving.
    let other = make_cert(s.certs.path(), "other", &["other.test"]);
    std::fs::write(&renewed.key_path, &other.key_pem).unwrap();
    s.b.signal("HUP");
    s.b.wait_log("default certificate reload refused").await;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        renewed.der.to_vec()
    );
}

#[tokio::test]
async fn renewed_default_certificate_files_are_served_without_a_signal() {
    let s = tls_balancer(
        &app_routes("blog", &["blog.test"], &[], ""),
        "watch_interval = \"100ms\"\n",
    )
    .await;
    let port = s.tls_port;
    let renewed = make_cert(s.certs.path(), "default", &["default.test"]);
    wait_served_cert(&s, &renewed).await;
    assert!(s.b.log_text().contains("file-changed"));
    // A key that does not belong to the certificate is refused; the renewed pair keeps serving.
    let other = make_cert(s.certs.path(), "other", &["other.test"]);
    std::fs::write(&renewed.key_path, &other.key_pem).unwrap();
    s.b.wait_log("default certificate reload refused").await;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        renewed.der.to_vec()
    );
}

#[tokio::test]
async fn h2_request_for_a_name_of_another_certificate_is_misdirected() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let routes = format!(
        "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
        app_routes(
            "one",
            &["shop.test", "default.test", "plain.test"],
            &[backend.addr],
            ""
        ),
        shop.cert_path,
        shop.key_path
    );
    let s = tls_balancer(&routes, "").await;
    let cfg = client_config(&[&shop.der], &[b"h2"]);
    let tls = tls_connect(s.tls_port, "shop.test", cfg).await.unwrap();
    let mut send = h2_client(tls).await;
    let (p, _) = h2_get(&mut send, "https://shop.test/ok", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    // default.test is served with the default certificate: not on this connection.
    let (p, _) = h2_get(&mut send, "https://default.test/x", None)
        .await
        .unwrap();
    assert_eq!(p.status, 421);
    assert_eq!(p.headers["x-pier-error"], "misdirected-request");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(
        &backend_routes("one", &["default.test"], &backend),
        "unknown_sni = \"reject\"\n",
    )
    .await;
    assert!(served_cert(s.tls_port, "default.test").await.is_some());
    assert!(served_cert(s.tls_port, "nobody.test").await.is_none());
}

#[tokio::test]
async fn https_redirect_and_hsts_per_app() {
    let backend = Backend::start("one").await;
    let routes = format!(
        "{}\n{}",
        app_routes(
            "secure",
            &["default.test"],
            &[backend.addr],
            "https_redirect = true\nhsts = \"max-age=31536000; includeSubDomains\"\n"
        ),
        app_routes("loose", &["loose.test"], &[backend.addr], "")
    );
    let s = tls_balancer(&routes, "https_port = 443\n").await;
    let r = get(s.b.addr(), "default.test", "/a/b?c=d").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://default.test/a/b?c=d"));
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "never over plain HTTP"
    );
    assert_eq!(get(s.b.addr(), "loose.test", "/").await.status, 200);
    // Over TLS: proxied, with HSTS added.
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let mut tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let text = h1_over(&mut tls, "default.test", "/in").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"),
        "{text}"
    );
    // And over h2, where the h2c request on the plain port is redirected too.
    let mut plain = h2_client(TcpStream::connect(s.b.addr()).await.unwrap()).await;
    let (p, _) = h2_get(&mut plain, "http://default.test/h2", None)
        .await
        .unwrap();
    assert_eq!(p.status, 308);
    let cfg = client_config(&[&s.default.der], &[b"h2"]);
    let mut send = h2_client(tls_connect(s.tls_port, "default.test", cfg).await.unwrap()).await;
    let (p, _) = h2_get(&mut send, "https://default.test/h2", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(
        p.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
}

/// A registry on a fresh redis-server with app `shop` owning `domains` (verified), and a
/// backend for it (not registered).
async fn shop_registry(domains: &[&str]) -> (RedisServer, pier_registry::Registry, Backend) {
    use pier_registry::model::{AppRecord, DomainRecord};
    let redis = RedisServer::start();
    let reg = pier_registry::Registry::connect(&redis.url())
        .await
        .unwrap();
    let backend = Backend::start("one").await;
    reg.put_app("shop", &AppRecord::default()).await.unwrap();
    for d in domains {
        reg.put_domain(d, &DomainRecord::verified("shop"))
            .await
            .unwrap();
    }
    (redis, reg, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_certificates_are_served_and_swapped_without_restart() {
    use pier_registry::model::{BackendRecord, CertRecord};
    let (redis, reg, backend) = shop_registry(&["shop.test"]).await;
    reg.put_backend(
        "shop",
        "i0",
        &BackendRecord {
            address: backend.addr.to_string(),
            expires_at_ms: 0,
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = make_cert(dir.path(), "first", &["shop.test"]);
    let rec = |c: &TestCert| CertRecord {
        app: "shop".into(),
        cert: c.cert_pem.clone(),
        key: c.key_pem.clone(),
        added_ms: 0,
    };
    reg.put_cert("shop.test", &rec(&first)).await.unwrap();
    let s = tls_balancer(
        "",
        &format!(
            "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n",
            redis.url()
        ),
    )
    .await;
    let wait_for = |want: Vec<u8>| {
        let port = s.tls_port;
        async move {
            let t = Instant::now();
            loop {
                if served_cert(port, "shop.test").await == Some(want.clone()) {
                    return;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "certificate not served"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(first.der.to_vec()).await;
    let cfg = client_config(&[&first.der], &[b"h2"]);
    let mut send = h2_client(tls_connect(s.tls_port, "shop.test", cfg).await.unwrap()).await;
    let (p, body) = h2_get(&mut send, "https://shop.test/x", None)
        .await
        .unwrap();
    assert_eq!((p.status, body), (http::StatusCode::OK, b"one /x".to_vec()));
    // Renewed in the registry: the next handshake gets the new one.
    let second = make_cert(dir.path(), "second", &["shop.test"]);
    reg.put_cert("shop.test", &rec(&second)).await.unwrap();
    wait_for(second.der.to_vec()).await;
    // The open connection keeps working.
    let (p, _) = h2_get(&mut send, "https://shop.test/y", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    // Deleted: back to the default certificate.
    reg.delete_cert("shop.test").await.unwrap();
    wait_for(s.default.der.to_vec()).await;
}

#[test]
fn tls_config_problems_are_keyed() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let b = make_cert(dir.path(), "b", &["b.test"]);
    let check = |text: &str| {
        let p = dir.path().join("balancer.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::write(dir.path().join("routes.toml"), "").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pier-balancer"))
            .arg("--check")
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let base = "[routes]\nfile = \"routes.toml\"\n";
    let (ok, text) = check(&format!("[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}"));
    assert!(
        !ok && text.contains("tls: listen.https needs [tls] cert and key"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, b.key_path
    ));
    assert!(!ok && text.contains("tls.cert: "), "{text}");
    assert!(text.contains("does not match"), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = \"missing.pem\"\nkey = {:?}\n",
        a.key_path
    ));
    assert!(!ok && text.contains("tls.cert: cannot read"), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\nunknown_sni = \"maybe\"\n",
        a.cert_path, a.key_path
    ));
    assert!(!ok && text.contains("tls.unknown_sni"), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, a.key_path
    ));
    assert!(ok, "{text}");
}

// ---- command-line clients: curl and openssl s_client ----

fn run_tool(cmd: &str, args: &[&str], stdin: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (.ci/run installs it): {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_s_client_see_alpn_sni_and_h2() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let routes = format!(
        "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
        app_routes("one", &["shop.test", "default.test"], &[backend.addr], ""),
        shop.cert_path,
        shop.key_path
    );
    let s = tls_balancer(&routes, "").await;
    let port = s.tls_port.to_string();
    let http = s.b.port.to_string();
    let shop_pem = shop.cert_pem.clone();
    let tools = tokio::task::spawn_blocking(move || {
        let resolve = format!("shop.test:{port}:127.0.0.1");
        let url = format!("https://shop.test:{port}/curl");
        let cacert = shop.cert_path.to_str().unwrap().to_string();
        // curl verifies the shop certificate for shop.test and negotiates h2.
        let h2 = run_tool(
            "curl",
            &[
                "-sS",
                "--http2",
                "--cacert",
                &cacert,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ],
            b"",
        );
        let h1 = run_tool(
            "curl",
            &[
                "-sS",
                "--http1.1",
                "--cacert",
                &cacert,
                "--resolve",
                &resolve,
                "-w",
                " %{http_version} %{http_code}",
                &url,
            ],
            b"",
        );
        let h2c = run_tool(
            "curl",
            &[
                "-sS",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "-H",
                "Host: shop.test",
                &format!("http://127.0.0.1:{http}/h2c"),
            ],
            b"",
        );
        let s_client = |name: &str| {
            run_tool(
                "openssl",
                &[
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    name,
                    "-alpn",
                    "h2,http/1.1",
                ],
                b"",
            )
        };
        (h2, h1, h2c, s_client("shop.test"), s_client("default.test"))
    })
    .await
    .unwrap();
    let (h2, h1, h2c, shop_hello, default_hello) = tools;
    assert!(h2.0, "{}", h2.1);
    assert_eq!(h2.1.trim(), "2 200");
    assert!(h1.1.ends_with("one /curl 1.1 200"), "{}", h1.1);
    assert_eq!(h2c.1.trim(), "2 200", "{}", h2c.1);
    // s_client: the certificate chosen by SNI, ALPN h2, a modern protocol.
    let served = |text: &str| -> String {
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
        text[start..end].split_whitespace().collect()
    };
    let pem = |p: &str| -> String {
        let end = p.find("-----END CERTIFICATE-----").unwrap();
        p[..end].split_whitespace().collect()
    };
    assert_eq!(served(&shop_hello.1), pem(&shop_pem));
    assert!(
        shop_hello.1.contains("ALPN protocol: h2"),
        "{}",
        shop_hello.1
    );
    assert!(shop_hello.1.contains("New, TLSv1.3"), "{}", shop_hello.1);
    assert_eq!(served(&default_hello.1), pem(&s.default.cert_pem));
    assert!(
        default_hello.1.contains("ALPN protocol: h2"),
        "{}",
        default_hello.1
    );
}

// ---- h2c backends ----

/// An h2c backend (the `h2` crate's server): `/echo` streams each request DATA frame back as it
/// comes and ends with the request's trailers as response trailers; anything else answers
/// `h2c <path> <body bytes>` with headers `x-seen-<name>` for a few request fields and trailers
/// `grpc-status: 0` when the request says `te: trailers`.
async fn h2c_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, conns, _) = h2c_backend_counting_closes().await;
    (addr, conns)
}

/// [`h2c_backend`], also counting the connections that ended.
async fn h2c_backend_counting_closes() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&conns);
    let closed = Arc::clone(&closes);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let path = parts.uri.path().to_string();
                        if path == "/echo" {
                            let resp = http::Response::builder().status(200).body(()).unwrap();
                            let mut out = respond.send_response(resp, false).unwrap();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                out.send_data(chunk, false).unwrap();
                            }
                            let trailers = body.trailers().await.unwrap().unwrap_or_default();
                            out.send_trailers(trailers).unwrap();
                            return;
                        }
                        let mut n = 0;
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            n += chunk.len();
                        }
                        let req_trailers = body.trailers().await.ok().flatten();
                        let mut resp = http::Response::builder().status(200);
                        for name in [
                            "x-forwarded-for",
                            "x-forwarded-proto",
                            "via",
                            "te",
                            "cookie",
                            "x-client",
                            "content-length",
                        ] {
                            if let Some(v) = parts.headers.get(name) {
                                resp = resp.header(format!("x-seen-{name}"), v.clone());
                            }
                        }
                        resp = resp
                            .header("x-seen-authority", parts.uri.authority().unwrap().as_str());
                        if let Some(t) = &req_trailers {
                            if let Some(v) = t.get("x-checksum") {
                                resp = resp.header("x-seen-trailer", v.clone());
                            }
                        }
                        let trailers = parts.headers.get("te").is_some_and(|v| v == "trailers");
                        let mut out = respond
                            .send_response(resp.body(()).unwrap(), false)
                            .unwrap();
                        out.send_data(Bytes::from(format!("h2c {path} {n}")), !trailers)
                            .unwrap();
                        if trailers {
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", http::HeaderValue::from_static("0"));
                            out.send_trailers(t).unwrap();
                        }
                    });
                }
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (addr, conns, closes)
}

#[tokio::test]
async fn h2_clients_reach_h2c_backends_with_trailers_both_ways() {
    let (be, conns) = h2c_backend().await;
    let b = Balancer::start(
        &app_routes("grpc", &["g.test"], &[be], "backend_protocol = \"h2c\"\n"),
        "",
    )
    .await;
    let mut send = h2_client(TcpStream::connect(b.addr()).await.unwrap()).await;
    // A gRPC-shaped call: te: trailers, a body with request trailers, response trailers.
    let req = http::Request::builder()
        .method("POST")
        .uri("http://g.test/pkg.Svc/Call")
        .header("te", "trailers")
        .header("x-client", "yes")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, mut stream) = ready.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"hello"), false)
        .unwrap();
    let mut t = http::HeaderMap::new();
    t.insert("x-checksum", http::HeaderValue::from_static("abc"));
    stream.send_trailers(t).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    assert_eq!(parts.status, 200);
    let h = &parts.headers;
    assert_eq!(h["x-seen-te"], "trailers");
    assert_eq!(h["x-seen-x-client"], "yes");
    assert_eq!(h["x-seen-x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-seen-x-forwarded-proto"], "http");
    assert_eq!(h["x-seen-authority"], "g.test");
    assert_eq!(h["x-seen-trailer"], "abc");
    let mut got = Vec::new();
    while let Some(c) = body.data().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, b"h2c /pkg.Svc/Call 5");
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    // Bidirectional streaming: each piece comes back before the next is sent.
    let req = http::Request::builder()
        .method("POST")
        .uri("http://g.test/echo")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, mut stream) = ready.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"ping-1"), false)
        .unwrap();
    let resp = resp.await.unwrap();
    let mut body = resp.into_body();
    for i in 1..=5 {
        let mut piece = Vec::new();
        while piece.len() < 6 {
            let c = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .expect("an echo before the request ends")
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(c.len());
            piece.extend_from_slice(&c);
        }
        assert_eq!(piece, format!("ping-{i}").as_bytes());
        if i < 5 {
            stream
                .send_data(Bytes::from(format!("ping-{}", i + 1)), false)
                .unwrap();
        }
    }
    stream.send_trailers(http::HeaderMap::new()).unwrap();
    assert!(body.data().await.is_none());
    // Many requests, one backend connection (multiplexed).
    for i in 0..20 {
        let (p, _) = h2_get(&mut send, &format!("http://g.test/n{i}"), None)
            .await
            .unwrap();
        assert_eq!(p.status, 200);
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http11_clients_reach_h2c_backends() {
    let (be, _) = h2c_backend().await;
    let dead = free_port();
    let b = Balancer::start(
        &app_routes(
            "grpc",
            &["g.test"],
            &[SocketAddr::from(([127, 0, 0, 1], dead)), be],
            "backend_protocol = \"h2c\"\npolicy = \"round-robin\"\n",
        ),
        "",
    )
    .await;
    let mut c = Conn::connect(b.addr()).await;
    for i in 0..4 {
        c.send(format!("GET /a{i} HTTP/1.1\r\nHost: g.test\r\nCookie: a=1\r\n\r\n").as_bytes())
            .await;
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("h2c /a{i} 0"));
        assert_eq!(r.header("x-seen-cookie"), Some("a=1"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    }
    // A chunked upload arrives whole.
    c.send(b"POST /up HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "h2c /up 11");
    // With a Content-Length, the backend sees it.
    c.send(b"POST /len HTTP/1.1\r\nHost: g.test\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "h2c /len 3");
    assert_eq!(r.header("x-seen-content-length"), Some("3"));
    // Trailers pass both ways: a chunked upload's become the request stream's trailers, and
    // the answer's end the chunked body the client gets (Host may not come from trailers).
    c.send(b"POST /up HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Checksum: abc\r\nHost: evil.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "h2c /up 2");
    assert_eq!(r.header("x-seen-trailer"), Some("abc"));
    c.send(b"POST /echo HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nping\r\n0\r\nX-Checksum: def\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "ping");
    assert_eq!(
        r.trailers,
        vec![("x-checksum".to_string(), "def".to_string())]
    );
    // Without trailers the body just ends.
    c.send(b"POST /echo HTTP/1.1\r\nHost: g.test\r\nContent-Length: 4\r\n\r\npong")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!((r.text().as_str(), r.trailers.len()), ("pong", 0));
}

#[tokio::test]
async fn an_unused_h2c_backend_connection_is_let_go_after_the_pool_idle_timeout() {
    use std::sync::atomic::Ordering::SeqCst;
    let (be, conns, closes) = h2c_backend_counting_closes().await;
    let b = Balancer::start(
        &app_routes("grpc", &["g.test"], &[be], "backend_protocol = \"h2c\"\n"),
        "[runtime]\nworkers = 1\n[upstream]\npool_idle_timeout = \"300ms\"\n",
    )
    .await;
    let mut c = Conn::connect(b.addr()).await;
    for i in 0..3 {
        c.send(format!("GET /a{i} HTTP/1.1\r\nHost: g.test\r\n\r\n").as_bytes())
            .await;
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.text(), format!("h2c /a{i} 0"));
    }
    assert_eq!(conns.load(SeqCst), 1, "one multiplexed connection");
    assert_eq!(closes.load(SeqCst), 0);
    // Unused past the idle timeout, the balancer lets the connection go (reaped once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while closes.load(SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the idle h2c connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next request opens a new one.
    c.send(b"GET /again HTTP/1.1\r\nHost: g.test\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "h2c /again 0");
    assert_eq!(conns.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_in_flight_finish_when_the_balancer_drains() {
    let backend = Backend::start("one").await;
    let mut b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let mut send = h2_client(TcpStream::connect(b.addr()).await.unwrap()).await;
    let (p, _) = h2_get(&mut send, "http://a.test/warm", None).await.unwrap();
    assert_eq!(p.status, 200);
    let mut slow = send.clone();
    let in_flight =
        tokio::spawn(async move { h2_get(&mut slow, "http://a.test/slow/700", None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.signal("TERM");
    let (p, body) = in_flight
        .await
        .unwrap()
        .expect("the stream in flight completes");
    assert_eq!(p.status, 200);
    assert_eq!(body, b"one /slow/700");
    // The balancer then exits on its own.
    let t = Instant::now();
    loop {
        if let Ok(Some(_)) = b.child.try_wait() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn websocket_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    let echo = ws_echo().await;
    let s = tls_balancer(&app_routes("ws", &["default.test"], &[echo], ""), "").await;
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://default.test/chat", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("secure {i} {}", "y".repeat(i * 500));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

/// A masked client WebSocket frame (RFC 6455 §5.2) with a short payload.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn websocket_over_h2_extended_connect() {
    let echo = ws_echo().await;
    let b = Balancer::start(&app_routes("ws", &["ws.test"], &[echo], ""), "").await;
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let t = Instant::now();
    while !send.is_extended_connect_protocol_enabled() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.unwrap();
    }
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("http://ws.test/chat")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 0..5 {
        let text = format!("over h2 {i}");
        stream
            .send_data(Bytes::from(ws_frame(0x1, text.as_bytes())), false)
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 + text.len() {
            let c = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .expect("an echo")
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(c.len());
            got.extend_from_slice(&c);
        }
        assert_eq!(got[0], 0x81);
        assert_eq!(usize::from(got[1]), text.len());
        assert_eq!(&got[2..], text.as_bytes());
    }
    // Close: the server's close frame comes back and the stream ends.
    stream
        .send_data(Bytes::from(ws_frame(0x8, &[0x03, 0xe8])), false)
        .unwrap();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the stream ends")
    {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(rest.first(), Some(&0x88), "{rest:?} {}", b.log_text());
    // Plain CONNECT is still refused.
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("ws.test:443")
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 405);
    let m = b.metrics_with(&["pier_tunnels_total 1"]).await;
    assert!(m.contains("pier_tunnels_total 1"), "{m}");
}

#[tokio::test]
async fn idle_h2_connections_get_goaway_and_a_split_preface_is_understood() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(
        &backend_routes("one", &["a.test"], &backend),
        "[timeouts]\nclient_keepalive = \"1s\"\n",
    )
    .await;
    // The preface in two pieces, a moment apart: still h2c, not a malformed HTTP/1 request.
    let mut tcp = TcpStream::connect(b.addr()).await.unwrap();
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(&PREFACE[10..]).await.unwrap();
    tcp.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let mut c = RawH2 {
        tcp,
        buf: Vec::new(),
    };
    let fields = get_fields("/split");
    let refs: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
    c.send(&frame(1, 5, 1, &hpack(&refs))).await.unwrap();
    let frames = c.until_done(1).await;
    assert_eq!(status_of(&frames, 1).as_deref(), Some("0x88"), "{frames:?}");
    // Then idle: a GOAWAY (NO_ERROR) within a few seconds, and the connection closes.
    let started = Instant::now();
    let mut goaway = None;
    while let Some(f) = c.next(Duration::from_secs(5)).await {
        if f.0 == 7 {
            goaway = Some(u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
        }
    }
    assert_eq!(goaway, Some(0), "GOAWAY NO_ERROR");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_that_would_drop_most_certificates_is_held() {
    use pier_registry::model::CertRecord;
    let domains = ["a.shop.test", "b.shop.test"];
    let (redis, reg, backend) = shop_registry(&domains).await;
    let dir = tempfile::tempdir().unwrap();
    let mut certs = Vec::new();
    for d in domains {
        let c = make_cert(dir.path(), d, &[d]);
        reg.put_cert(
            d,
            &CertRecord {
                app: "shop".into(),
                cert: c.cert_pem.clone(),
                key: c.key_pem.clone(),
                added_ms: 0,
            },
        )
        .await
        .unwrap();
        certs.push(c);
    }
    let _ = backend;
    let s = tls_balancer(
        "",
        &format!(
            "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\nresync_interval = \"300ms\"\n",
            redis.url()
        ),
    )
    .await;
    let t = Instant::now();
    while served_cert(s.tls_port, "a.shop.test").await != Some(certs[0].der.to_vec()) {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The certificates vanish behind the balancers' back (no change in the feed): the next
    // periodic resync would drop them all.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("pier:certs")
        .query_async(&mut c)
        .await
        .unwrap();
    let t = Instant::now();
    while s.b.metric("pier_registry_resyncs_held_total").await < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held: both certificates are still served.
    assert_eq!(
        served_cert(s.tls_port, "a.shop.test").await,
        Some(certs[0].der.to_vec())
    );
    assert_eq!(
        served_cert(s.tls_port, "b.shop.test").await,
        Some(certs[1].der.to_vec())
    );
    assert!(
        s.b.log_text().contains("certificates_in_registry=0"),
        "{}",
        s.b.log_text()
    );
}

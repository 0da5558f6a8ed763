//! HTTP/2 for tests: a client from the `h2` crate ([`h2_client`], [`h2_get`]), raw frames
//! written by hand for conformance and abuse cases ([`RawH2`], [`frame`], [`hpack`]), and an
//! h2c backend ([`h2c_backend`]) served by the `h2` crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An h2 client (the `h2` crate) over any stream.
pub async fn h2_client<S>(io: S) -> h2::client::SendRequest<Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request on `send` (a POST with `body` when there is one, sent in 16 KiB DATA frames;
/// a GET otherwise); returns the answer's head and its whole body.
pub async fn h2_get(
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

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: `kind` (0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY,
/// 9 CONTINUATION), `flags`, `stream` and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
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

/// A raw h2 connection that has sent its preface and SETTINGS.
pub struct RawH2 {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

/// A frame read back: type, flags, stream, payload.
pub type Frame = (u8, u8, u32, Vec<u8>);

impl RawH2 {
    /// Connects to `addr` and sends the preface and an empty SETTINGS frame.
    pub async fn open(addr: SocketAddr) -> RawH2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(4, 0, 0, &[]));
        tcp.write_all(&hello).await.unwrap();
        RawH2 {
            tcp,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// The next whole frame, or `None` at EOF, on an error or once `within` has passed.
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
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
    pub async fn until_done(&mut self, stream: u32) -> Vec<Frame> {
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

/// An h2c backend (the `h2` crate's server): `/echo` streams each request DATA frame back as it
/// comes and ends with the request's trailers as response trailers; anything else answers
/// `h2c <path> <body bytes>` with headers `x-seen-<name>` for a few request fields and trailers
/// `grpc-status: 0` when the request says `te: trailers`.
pub async fn h2c_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, conns, _) = h2c_backend_counting_closes().await;
    (addr, conns)
}

/// [`h2c_backend`], also counting the connections that ended.
pub async fn h2c_backend_counting_closes() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let b = h2c_backend_counted().await;
    (b.addr, b.conns, b.closes)
}

/// An h2c backend ([`h2c_backend_counted`]) and what it counted.
pub struct H2cBackend {
    pub addr: SocketAddr,
    /// Connections accepted, and ended.
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
    pub closes: Arc<std::sync::atomic::AtomicUsize>,
    /// `/silent` streams the client reset before the backend gave up on them (60 s).
    pub resets: Arc<std::sync::atomic::AtomicUsize>,
}

/// [`h2c_backend`] with every count; `/silent` never answers and counts the stream's reset.
pub async fn h2c_backend_counted() -> H2cBackend {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&conns);
    let closed = Arc::clone(&closes);
    let reset = Arc::clone(&resets);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed = Arc::clone(&closed);
            let reset = Arc::clone(&reset);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let reset = Arc::clone(&reset);
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let path = parts.uri.path().to_string();
                        if path == "/silent" {
                            let was_reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
                            let within = Duration::from_secs(60);
                            if let Ok(Ok(_)) = tokio::time::timeout(within, was_reset).await {
                                reset.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            return;
                        }
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
    H2cBackend {
        addr,
        conns,
        closes,
        resets,
    }
}

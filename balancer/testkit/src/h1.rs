//! HTTP/1.1 written by hand, for tests that must not lean on pier's own parser: a raw client
//! connection ([`Conn`]) that reads answers as a client sees them ([`Response`]), and a
//! programmable backend ([`Backend`]) that records what it was sent ([`Seen`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A parsed response as seen by a client.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection with its read buffer.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn::from(TcpStream::connect(addr).await.unwrap())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(64 * 1024);
        tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))?
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof in line",
                ));
            }
        }
    }

    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof in body",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one response (skipping nothing: 1xx answers are returned as responses too).
    pub async fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        let status_line = self.line().await?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut r = Response {
            status,
            head: status_line.clone() + "\r\n",
            ..Response::default()
        };
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            r.head.push_str(&line);
            r.head.push_str("\r\n");
            let (n, v) = line.split_once(':').unwrap();
            r.headers.push((n.to_string(), v.trim().to_string()));
        }
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(r);
        }
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    loop {
                        let t = self.line().await?;
                        if t.is_empty() {
                            break;
                        }
                        let (n, v) = t.split_once(':').unwrap();
                        r.trailers.push((n.to_string(), v.trim().to_string()));
                    }
                    break;
                }
                let data = self.exact(size).await?;
                r.body.extend_from_slice(&data);
                self.exact(2).await?;
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().unwrap();
            r.body = self.exact(len).await?;
        } else {
            while self.fill().await? > 0 {}
            r.body = std::mem::take(&mut self.buf);
        }
        Ok(r)
    }

    /// True when the peer has closed the connection (EOF within the timeout).
    pub async fn is_closed(&mut self, within: Duration) -> bool {
        let before = self.buf.len();
        match tokio::time::timeout(within, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.len() == before,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }
}

/// Sends one request on a fresh connection and reads the response.
pub async fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Conn::connect(addr).await;
    c.send(raw.as_bytes()).await;
    c.read_response(raw.starts_with("HEAD ")).await.unwrap()
}

/// A GET of `path` for `host` on a fresh connection (`Connection: close`).
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends one HTTP/1.1 request over `io` and reads the whole answer (`Connection: close`).
pub async fn h1_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
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

/// One request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub body_len: u64,
    pub trailers: Vec<(String, String)>,
    pub conn_id: usize,
    pub raw_head: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }
}

/// A programmable HTTP/1.1 backend. Paths choose behaviour:
/// - `/status/N`: answer status N (empty body)
/// - `/chunked`: chunked answer with a trailer
/// - `/close`: `Connection: close` answer, then close
/// - `/eof-body`: answer without length, body ends at close
/// - `/big/N`: N bytes of body, streamed
/// - `/slow/MS`: wait MS milliseconds before answering
/// - `/silent`: read the request, never answer (counted in `hung_up` when the balancer
///   closes the connection first)
/// - `/partial`: send the head and half the body, then stall
/// - `/continue`: send `100 Continue` before reading the body
/// - `/raw/NAME`: send a canned malformed response (see `RAW`)
/// - anything else: 200 with body `<backend name> <path>`
///
/// Request bodies are read (and counted, kept when small) before answering, except `/early`,
/// which answers 413 at once without reading the body.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub conns: Arc<AtomicUsize>,
    /// `/silent` connections the balancer closed before the backend gave up (60 s).
    pub hung_up: Arc<AtomicUsize>,
    pub stop: Arc<tokio::sync::Notify>,
}

/// The malformed answers `/raw/NAME` sends, by name.
pub const RAW: &[(&str, &str)] = &[
    (
        "cl-te",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "two-cl",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ),
    (
        "bad-status",
        "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    ),
    ("bare-lf", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    (
        "obs-fold",
        "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    ),
    (
        "bad-chunk",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    ),
    (
        "gzip-te",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    ),
    (
        "space-colon",
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    ),
];

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    pub async fn start_on(name: &str, port: u16) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let b = Backend {
            addr: listener.local_addr().unwrap(),
            name: name.to_string(),
            seen: Arc::default(),
            conns: Arc::default(),
            hung_up: Arc::default(),
            stop: Arc::default(),
        };
        let me = b.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((s, _)) = a else { continue };
                        let id = me.conns.fetch_add(1, Ordering::SeqCst) + 1;
                        let me2 = me.clone();
                        tokio::spawn(async move { me2.connection(s, id).await });
                    }
                    _ = me.stop.notified() => return,
                }
            }
        });
        b
    }

    /// Stops accepting (the port is freed; open connections carry on).
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn connection(self, stream: TcpStream, conn_id: usize) {
        let mut c = Conn::from(stream);
        loop {
            let Ok(request_line) = c.line().await else {
                return;
            };
            let mut headers = Vec::new();
            let mut raw_head = request_line.clone() + "\r\n";
            loop {
                let Ok(line) = c.line().await else { return };
                if line.is_empty() {
                    break;
                }
                raw_head.push_str(&line);
                raw_head.push_str("\r\n");
                if let Some((n, v)) = line.split_once(':') {
                    headers.push((n.to_string(), v.trim().to_string()));
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
            let find = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let chunked =
                find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            let length: u64 = find("content-length").map_or(0, |v| v.parse().unwrap());
            let mut seen = Seen {
                request_line: request_line.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                body_len: 0,
                trailers: Vec::new(),
                conn_id,
                raw_head,
            };
            if path == "/early" {
                self.seen.lock().unwrap().push(seen);
                let _ = c
                    .stream
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            if path == "/continue" {
                let _ = c.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            // Read the body.
            if chunked {
                loop {
                    let Ok(size_line) = c.line().await else {
                        return;
                    };
                    let size =
                        u64::from_str_radix(size_line.split(';').next().unwrap(), 16).unwrap();
                    if size == 0 {
                        loop {
                            let Ok(t) = c.line().await else { return };
                            if t.is_empty() {
                                break;
                            }
                            let (n, v) = t.split_once(':').unwrap();
                            seen.trailers.push((n.to_string(), v.trim().to_string()));
                        }
                        break;
                    }
                    if c.consume_body(size, &mut seen).await.is_err() {
                        return;
                    }
                    let Ok(_) = c.exact(2).await else { return };
                }
            } else if length > 0 && c.consume_body(length, &mut seen).await.is_err() {
                return;
            }
            self.seen.lock().unwrap().push(seen);
            let body = format!("{} {}", self.name, path);
            let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let head_req = request_line.starts_with("HEAD ");
            let result = match seg.as_slice() {
                ["status", n] => {
                    let n: u16 = n.parse().unwrap();
                    let extra = if n == 304 { "ETag: \"x\"\r\n" } else { "" };
                    let len = if n == 204 || n == 304 {
                        ""
                    } else {
                        "Content-Length: 0\r\n"
                    };
                    c.stream
                        .write_all(format!("HTTP/1.1 {n} X\r\n{extra}{len}\r\n").as_bytes())
                        .await
                }
                ["chunked"] => {
                    let msg = if head_req {
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                    } else {
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
                         5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
                            .to_string()
                    };
                    c.stream.write_all(msg.as_bytes()).await
                }
                ["close"] => {
                    let _ = c
                        .stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                                .as_bytes(),
                        )
                        .await;
                    return;
                }
                ["eof-body"] => {
                    let _ = c
                        .stream
                        .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{body}").as_bytes())
                        .await;
                    return;
                }
                ["big", n] => {
                    let n: u64 = n.parse().unwrap();
                    let r = c
                        .stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes(),
                        )
                        .await;
                    if r.is_err() || head_req {
                        continue;
                    }
                    let block = vec![b'x'; 256 * 1024];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(block.len() as u64) as usize;
                        if c.stream.write_all(&block[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                    Ok(())
                }
                ["slow", ms] => {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                    c.stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await
                }
                ["silent"] => {
                    let mut byte = [0u8; 1];
                    let read = c.stream.read(&mut byte);
                    if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(60), read).await {
                        self.hung_up.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                ["partial"] => {
                    let _ = c
                        .stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                        .await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                ["raw", name] => {
                    let raw = RAW.iter().find(|(n, _)| n == name).unwrap().1;
                    c.stream.write_all(raw.as_bytes()).await
                }
                _ => {
                    let b = if head_req { "" } else { body.as_str() };
                    c.stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: {}\r\nX-Conn: {conn_id}\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\r\n{b}",
                                body.len(),
                                self.name
                            )
                            .as_bytes(),
                        )
                        .await
                }
            };
            if result.is_err() {
                return;
            }
        }
    }
}

impl Conn {
    async fn consume_body(&mut self, mut n: u64, seen: &mut Seen) -> std::io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "eof",
                ));
            }
            let k = (self.buf.len() as u64).min(n) as usize;
            if seen.body.len() < 1 << 20 {
                let keep = k.min((1 << 20) - seen.body.len());
                seen.body.extend_from_slice(&self.buf[..keep]);
            }
            self.buf.drain(..k);
            seen.body_len += k as u64;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Parses `Key: value` lines of a raw head into a map (lower-case keys; repeated keys joined).
pub fn header_map(raw_head: &str) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    for line in raw_head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            m.entry(k.to_ascii_lowercase())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_string());
        }
    }
    m
}

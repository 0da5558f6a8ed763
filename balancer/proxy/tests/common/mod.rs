//! Test harness: a real `pier-balancer` process on free loopback ports, programmable backends
//! written here (not with pier's own parser), and a raw HTTP/1.1 client.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use pier_testkit::{free_port, RedisServer};

/// A running balancer process. Killed when dropped.
pub struct Balancer {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Balancer {
    /// Starts a balancer with `routes` as its routes file and `extra` appended to its config.
    /// A port chosen here can be taken by another test process before the balancer binds it;
    /// such a start is tried again on new ports (twice at most), any other failure is final.
    pub async fn start(routes: &str, extra: &str) -> Balancer {
        let mut tries = 0;
        loop {
            match Self::try_start(routes, extra).await {
                Ok(b) => return b,
                Err(e) if tries < 2 && e.contains("Address already in use") => tries += 1,
                Err(e) => panic!("balancer starts: {e}"),
            }
        }
    }

    pub async fn try_start(routes: &str, extra: &str) -> Result<Balancer, String> {
        Self::try_start_with(routes, extra, &[]).await
    }

    /// [`Balancer::try_start`] with more files (name, content) next to the routes file.
    pub async fn try_start_with(
        routes: &str,
        extra: &str,
        files: &[(&str, &str)],
    ) -> Result<Balancer, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let port = free_port();
        let admin = free_port();
        let has_listen = extra.contains("[listen]");
        let listen = if has_listen {
            String::new()
        } else {
            format!("[listen]\nhttp = [\"127.0.0.1:{port}\"]\n")
        };
        let has_routes = extra.contains("[routes]");
        let routes_section = if has_routes {
            String::new()
        } else {
            "[routes]\nfile = \"routes.toml\"\nwatch_interval = \"100ms\"\n".to_string()
        };
        let has_runtime = extra.contains("[runtime]");
        let runtime = if has_runtime {
            String::new()
        } else {
            "[runtime]\nworkers = 2\n".to_string()
        };
        let config = format!(
            "{listen}[admin]\nlisten = \"127.0.0.1:{admin}\"\n{routes_section}{runtime}{}\n",
            extra.replace("{port}", &port.to_string())
        );
        std::fs::write(dir.path().join("balancer.toml"), config).unwrap();
        std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
        let log = dir.path().join("balancer.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier-balancer"))
            .arg("--config")
            .arg(dir.path().join("balancer.toml"))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut b = Balancer {
            child,
            port,
            admin,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!("balancer exited with {status}: {}", b.log_text()));
            }
            if let Ok(r) = admin_get(admin, "/healthz").await {
                if r.status == 200 && TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Ok(b);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("balancer did not start: {}", b.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn write_routes(&self, routes: &str) {
        // Write then rename, as an editor or a deploy tool would.
        let tmp = self.dir.path().join("routes.toml.tmp");
        std::fs::write(&tmp, routes).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("routes.toml")).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(admin_get(self.admin, "/metrics").await.unwrap().body).unwrap()
    }

    /// The metrics once every one of `lines` is in them (a request is counted just after its
    /// answer is written, so a client can read the answer first), or as they are after 5 s.
    pub async fn metrics_with(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.contains(l)) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Value of one metric line (exact name with labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until the routes table version reaches `v`.
    pub async fn wait_version(&self, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.metric("pier_route_table_version").await as u64;
            if got >= v {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "route version stuck at {got}, want {v}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the balancer's log contains `text`.
    pub async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} not logged:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss_peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn admin_get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await?;
    let mut c = Conn::from(s);
    c.read_response(false).await
}

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

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
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
/// - `/silent`: read the request, never answer
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
    pub stop: Arc<tokio::sync::Notify>,
}

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
                    tokio::time::sleep(Duration::from_secs(60)).await;
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

/// Routes for one app `app` with `domains` and `backends`.
pub fn app_routes(app: &str, domains: &[&str], backends: &[SocketAddr], extra: &str) -> String {
    let d: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let b: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[app]]\nname = \"{app}\"\ndomains = [{}]\nbackends = [{}]\n{extra}\n",
        d.join(", "),
        b.join(", ")
    )
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

/// Writes `bytes` with a flush, for tests that need std I/O.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

//! Loopback ports, a raw HTTP GET, reading a request for a test server, and a tiny HTTP app
//! server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one HTTP/1.1 request from `s` for a test server: its head as text, with a body
/// announced by `Content-Length` read and dropped. `buf` holds bytes read before (a pipelined
/// request) and keeps what follows this request. `None` once the client closes or fails.
pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        read_more(s, buf).await?;
    }
    buf.drain(..head_end + length);
    Some(head)
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A loopback port nothing listens on right now, never handed out before by this process: the
/// kernel can give the same port to two `bind(0)` calls in a row once the first socket is closed,
/// and a test that asks for two ports (a listener and an admin port) must not get one twice.
pub fn free_port() -> u16 {
    free_port_on([127, 0, 0, 1].into())
}

/// A loopback port where connections are refused, held for as long as the returned socket
/// lives: bound but not listening, so the kernel hands it to no other socket meanwhile (a
/// port from [`free_port`] is free only until someone binds port 0 and gets it).
pub fn refusing_port() -> (u16, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (port, s)
}

/// [`free_port`] on another loopback address (`127.0.0.2` stands for a second machine).
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    // Hold every socket tried until a new port comes up, so the kernel cannot offer one again.
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
        held.push(l);
    }
}

/// One GET over a fresh connection with the given Host; returns (status, body).
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// What a test backend saw: (method, path, host) of each request.
pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A tiny HTTP/1.1 app server (keep-alive, GET only). It answers
/// `/.well-known/pier-challenge/<token>` with the token when `tokens` maps the request's Host
/// to it, 404 for other challenges, and `hello from <name>` for any other path.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub seen: Seen,
    pub tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let name = name.to_string();
        let (s, t) = (seen.clone(), tokens.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_backend_conn(
                    stream,
                    name.clone(),
                    s.clone(),
                    t.clone(),
                ));
            }
        });
        TestBackend { addr, seen, tokens }
    }

    pub fn serve_challenge(&self, host: &str, token: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(host.to_string(), token.to_string());
    }
}

async fn serve_backend_conn(
    mut stream: tokio::net::TcpStream,
    name: String,
    seen: Seen,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let host = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        seen.lock()
            .unwrap()
            .push((method, path.clone(), host.clone()));
        let (status, body) = match path.strip_prefix("/.well-known/pier-challenge/") {
            Some(t) => match tokens.lock().unwrap().get(&host) {
                Some(want) if want == t => ("200 OK", format!("{want}\n")),
                _ => ("404 Not Found", "no such challenge\n".to_string()),
            },
            None => ("200 OK", format!("hello from {name}")),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

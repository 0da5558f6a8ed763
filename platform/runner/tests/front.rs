//! The front of a web instance over real loopback sockets: static paths answered by the runner,
//! everything else passed to a fake app that records what reaches it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pier_runner::front::Front;
use pier_runner::statics::StaticSite;
use pier_slug::Manifest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake app saw: one line per request (`METHOD target`), and the connections it took.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    headers: Vec<Vec<(String, String)>>,
    connections: usize,
}

/// A fake app: echoes request bodies on `/echo`, answers `/chunked` in chunks, upgrades
/// `/ws` (then echoes bytes raw), else says which path it got.
async fn fake_app() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = l.accept().await.unwrap();
            s.lock().unwrap().connections += 1;
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(app(req, &s).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn app(
    mut req: Request<Incoming>,
    seen: &Mutex<Seen>,
) -> Response<http_body_util::Full<Bytes>> {
    use http_body_util::BodyExt;
    {
        let mut s = seen.lock().unwrap();
        s.requests.push(format!("{} {}", req.method(), req.uri()));
        s.headers.push(
            req.headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        );
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(http_body_util::Full::new(body))
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(up.await.unwrap());
                let mut buf = [0u8; 64];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap()
        }
        _ => Response::builder()
            .header("x-app", "yes")
            .body(http_body_util::Full::new(Bytes::from(format!(
                "app saw {path}"
            ))))
            .unwrap(),
    }
}

struct Setup {
    front: Front,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let slug = dir.path();
    std::fs::create_dir_all(slug.join("static")).unwrap();
    std::fs::write(slug.join("app.py"), "SECRET").unwrap();
    std::fs::write(slug.join("static/site.css"), "body{}").unwrap();
    std::fs::write(slug.join("static/site.css.gz"), "GZ").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(slug.join("static/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("../app.py", slug.join("static/leak")).unwrap();
    let m = Manifest::parse("[static]\n\"/static\" = \"static\"\n").unwrap();
    let site = StaticSite::new(slug, &m, false).unwrap();
    let (app_addr, seen) = fake_app().await;
    let front = Front::start(site, "127.0.0.1".parse().unwrap(), app_addr)
        .await
        .unwrap();
    Setup {
        front,
        seen,
        _dir: dir,
    }
}

/// Sends `raw` on a new connection and reads until the server closes it.
async fn raw(addr: SocketAddr, raw: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn static_paths_are_answered_by_the_front_and_never_reach_the_app() {
    let s = setup().await;
    let a = s.front.addr();
    let r = text(&raw(a, "GET /static/site.css HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n").await);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.to_lowercase().contains("content-encoding: gzip"), "{r}");
    assert!(r.ends_with("\r\n\r\nGZ"), "{r}");
    for path in [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/leak",
        "/static/nope",
    ] {
        let r = text(
            &raw(
                a,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await,
        );
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 404"),
            "{path}: {r}"
        );
        assert!(!r.contains("SECRET"), "{path}: {r}");
    }
    let r = text(&raw(a, "POST /static/site.css HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").await);
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(
        s.seen.lock().unwrap().requests.is_empty(),
        "the app saw a static request"
    );
}

#[tokio::test]
async fn a_large_file_is_streamed_whole_and_by_range() {
    let s = setup().await;
    let r = raw(
        s.front.addr(),
        "GET /static/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head_end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text(&r[..head_end]);
    assert!(head.contains("content-length: 300000"), "{head}");
    let body = &r[head_end..];
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let r = raw(s.front.addr(), "GET /static/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=100000-\r\nConnection: close\r\n\r\n").await;
    let head_end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(text(&r[..head_end]).starts_with("HTTP/1.1 206"));
    let body = &r[head_end..];
    assert_eq!(body.len(), 200_000);
    assert_eq!(body[0], (100_000 % 251) as u8);
}

#[tokio::test]
async fn other_requests_reach_the_app_with_their_headers_and_bodies_on_kept_connections() {
    let s = setup().await;
    let a = s.front.addr();
    // Two requests, one after the other, on one connection from the balancer's side; headers
    // as sent, hop-by-hop ones dropped.
    let mut c = TcpStream::connect(a).await.unwrap();
    c.write_all(b"GET /hello?x=1 HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 10.1.2.3\r\nX-Request-Id: abc\r\nKeep-Alive: timeout=5\r\n\r\n")
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !text(&first).contains("app saw /hello") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", text(&first));
        first.extend_from_slice(&buf[..n]);
    }
    // The app's connection goes back to the pool once its answer is read whole.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    c.read_to_end(&mut first).await.unwrap();
    let r = text(&first);
    assert!(r.contains("app saw /hello"), "{r}");
    assert!(r.contains("x-app: yes"), "{r}");
    assert!(r.contains("hello world"), "{r}");
    {
        let seen = s.seen.lock().unwrap();
        assert_eq!(seen.requests, vec!["GET /hello?x=1", "POST /echo"]);
        let h = &seen.headers[0];
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("host"), Some("app.test"));
        assert_eq!(get("x-forwarded-for"), Some("10.1.2.3"));
        assert_eq!(get("x-request-id"), Some("abc"));
        assert_eq!(get("keep-alive"), None);
        assert_eq!(
            seen.connections, 1,
            "the second request reused the app connection"
        );
    }
    // A non-static path that merely looks like one.
    let r = text(
        &raw(
            a,
            "GET /staticky HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(r.contains("app saw /staticky"), "{r}");
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_to_the_app() {
    let s = setup().await;
    let mut c = TcpStream::connect(s.front.addr()).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = text(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
    c.write_all(b"ping over the tunnel").await.unwrap();
    let mut got = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping over the tunnel");
}

#[tokio::test]
async fn an_app_that_is_gone_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("s")).unwrap();
    let m = Manifest::parse("[static]\n\"/s\" = \"s\"\n").unwrap();
    let site = StaticSite::new(dir.path(), &m, false).unwrap();
    // A free port nothing listens on (the kit never hands it out twice).
    let gone = SocketAddr::from(([127, 0, 0, 1], pier_testkit::free_port()));
    let front = Front::start(site, "127.0.0.1".parse().unwrap(), gone)
        .await
        .unwrap();
    let r = text(
        &raw(
            front.addr(),
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    );
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    // Dropped, the front closes its port.
    let addr = front.addr();
    drop(front);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_release_without_static_mounts_has_no_front() {
    let dir = tempfile::tempdir().unwrap();
    let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    assert!(Front::for_release(dir.path(), ip, app, false)
        .await
        .unwrap()
        .is_none());
    std::fs::write(dir.path().join("pier.toml"), "[static]\n").unwrap();
    assert!(Front::for_release(dir.path(), ip, app, false)
        .await
        .unwrap()
        .is_none());
    std::fs::write(
        dir.path().join("pier.toml"),
        "[static]\n\"/s\" = \"gone\"\n",
    )
    .unwrap();
    let e = Front::for_release(dir.path(), ip, app, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gone/ is not in the app"), "{e}");
}

//! Static files end to end: `platform/examples/hello-static` (its `pier.toml` declares
//! `/static`) deployed with the CLI, every part a real process, requests sent through the
//! balancer. The runner answers static paths itself: validators and 304s, ranges, compressed
//! twins, traversal refused; every other path reaches the app, whose log shows no static
//! request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{example_dir, Platform};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVED_WITHIN: Duration = Duration::from_secs(30);

/// An answer: status, headers (names lowercased; the last of a repeated one), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// `METHOD path` for `host` through the balancer at `addr` with extra `headers`, on a fresh
/// connection; the path is sent exactly as given.
async fn send(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        body = unchunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The example, copied, with a link from `static/` to the app's own code beside it.
fn app_with_a_leaking_link() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = example_dir("hello-static");
    for f in ["Procfile", "app.py", "pier.toml"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    std::fs::create_dir(d.path().join("static")).unwrap();
    for f in ["style.css", "style.css.gz", "style.css.br"] {
        std::fs::copy(src.join("static").join(f), d.path().join("static").join(f)).unwrap();
    }
    std::os::unix::fs::symlink("../app.py", d.path().join("static/leak.py")).unwrap();
    std::os::unix::fs::symlink("style.css", d.path().join("static/alias.css")).unwrap();
    d
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join("static").join(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_by_the_runner_and_never_reach_the_app() {
    let p = Platform::start(&["127.0.0.2"]).await;
    let dir = app_with_a_leaking_link();
    p.pier(&["apps", "create", "site"]).ok();
    let out = p.deploy_dir("site", dir.path());
    assert!(
        out.stdout.contains(
            "-----> pier.toml: static /static -> static/ (Cache-Control: public, max-age=3600)"
        ),
        "{out:?}"
    );
    let host = Platform::host("site");
    p.balancer
        .wait_served(
            &host,
            |b| b.starts_with("hello from site v1"),
            SERVED_WITHIN,
        )
        .await;
    let b = p.balancer.addr();
    let css = file(dir.path(), "style.css");

    // The file, with its validators, type and cache policy.
    let a = send(b, &host, "GET", "/static/style.css", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, css);
    assert_eq!(a.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(a.header("cache-control"), "public, max-age=3600");
    assert_eq!(a.header("vary"), "Accept-Encoding");
    assert_eq!(a.header("accept-ranges"), "bytes");
    let etag = a.header("etag").to_string();
    let last_modified = a.header("last-modified").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{a:?}");
    assert!(last_modified.ends_with(" GMT"), "{a:?}");
    // The same ETag from the other spelling of the file (a link inside the directory).
    let alias = send(b, &host, "GET", "/static/alias.css", &[]).await;
    assert_eq!(alias.body, css);

    // Conditional requests.
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(a.status, 304, "{a:?}");
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag"), etag);
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("If-Modified-Since", &last_modified)],
    )
    .await;
    assert_eq!(a.status, 304, "{a:?}");
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("If-None-Match", "\"something-else\"")],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // Ranges.
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("Range", "bytes=0-9")],
    )
    .await;
    assert_eq!(a.status, 206, "{a:?}");
    assert_eq!(a.body, &css[..10]);
    assert_eq!(
        a.header("content-range"),
        format!("bytes 0-9/{}", css.len())
    );
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("Range", "bytes=-5")],
    )
    .await;
    assert_eq!(a.body, &css[css.len() - 5..]);
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("Range", "bytes=99999-")],
    )
    .await;
    assert_eq!(a.status, 416, "{a:?}");
    assert_eq!(a.header("content-range"), format!("bytes */{}", css.len()));

    // Compressed twins, as the client accepts them.
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(a.header("content-encoding"), "br", "{a:?}");
    assert_eq!(a.body, file(dir.path(), "style.css.br"));
    assert_eq!(a.header("content-type"), "text/css; charset=utf-8");
    let a = send(
        b,
        &host,
        "GET",
        "/static/style.css",
        &[("Accept-Encoding", "gzip, br;q=0")],
    )
    .await;
    assert_eq!(a.header("content-encoding"), "gzip", "{a:?}");
    assert_eq!(a.body, file(dir.path(), "style.css.gz"));
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&a.body[..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, css, "the twin is the file, compressed");

    // Paths that leave the directory: refused, never the file.
    for path in [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/%2E%2E/app.py",
        "/static/..%2fapp.py",
        "/static%2f..%2fapp.py",
        "/static/leak.py",
        "/static/../pier.toml",
    ] {
        let a = send(b, &host, "GET", path, &[]).await;
        println!("GET {path}: {}", a.status);
        assert!(
            matches!(a.status, 400 | 403 | 404),
            "{path}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        let text = String::from_utf8_lossy(&a.body);
        assert!(
            !text.contains("ThreadingHTTPServer") && !text.contains("[static]"),
            "{path} leaked a file: {text}"
        );
    }
    let a = send(
        b,
        &host,
        "POST",
        "/static/style.css",
        &[("Content-Length", "0")],
    )
    .await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.header("allow"), "GET, HEAD, OPTIONS");
    let a = send(b, &host, "GET", "/static/missing.css", &[]).await;
    assert_eq!(a.status, 404, "{a:?}");

    // Every other path reaches the app.
    let a = send(b, &host, "GET", "/hello-app", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        String::from_utf8_lossy(&a.body).contains("the app got /hello-app"),
        "{a:?}"
    );
    let a = send(b, &host, "GET", "/staticky", &[]).await;
    assert!(
        String::from_utf8_lossy(&a.body).contains("the app got /staticky"),
        "{a:?}"
    );

    // The app's log has its own requests and no static one.
    let start = Instant::now();
    let log = loop {
        let out = p.pier(&["logs", "site", "-n", "500"]).ok();
        if out.stdout.contains("GET /staticky") {
            break out.stdout;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "{out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(log.contains("GET /hello-app"), "{log}");
    let static_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" app[") && (l.contains("/static/") || l.contains("/static%")))
        .collect();
    assert!(
        static_lines.is_empty(),
        "static requests reached the app: {static_lines:?}"
    );

    // A pier.toml naming a directory the app does not have fails the deploy; v1 keeps serving.
    std::fs::write(
        dir.path().join("pier.toml"),
        "[static]\n\"/static\" = \"public\"\n",
    )
    .unwrap();
    let out = p.pier(&[
        "deploy",
        "site",
        &dir.path().display().to_string(),
        "--wait",
        "60",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("pier.toml: static.\"/static\": the directory public/ is not in the app"),
        "{out:?}"
    );
    let a = send(b, &host, "GET", "/static/style.css", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, css);
}

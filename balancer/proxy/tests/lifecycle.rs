//! The balancer as a process: config checking, reload, graceful shutdown, observability, and
//! memory while streaming very large bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_testkit::certs::make_cert;
use pier_testkit::h1::{get, request, Backend, Conn};
use pier_testkit::proxy::{admin_get, app_routes, write_file, Balancer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn check(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pier-balancer"))
        .arg("--check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_config_is_valid() {
    // Checked from a copy of config/ that also holds the throwaway certificate the TLS example
    // tells its reader to make (keys are not committed).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    make_cert(&dir.path().join("tls"), "example", &["localhost"]);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // routes.toml is a routes file, prices.toml the API's price sheet (parsed by pier-api's
        // tests): not balancer configs.
        if path.extension().is_some_and(|e| e == "toml")
            && !name.contains("routes")
            && !name.contains("prices")
        {
            let (ok, stdout, stderr) = check(&path);
            assert!(ok, "{name}: {stderr}");
            assert!(stdout.contains("configuration is valid"), "{stdout}");
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected at least four example configs, found {checked}"
    );
}

#[test]
fn check_reports_every_problem_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write_file(
        &cfg,
        b"[listen]\nhttp = [\"127.0.0.1:99999\"]\n[routes]\nfile = \"routes.toml\"\n[timeouts]\nconnect = \"soon\"\n",
    );
    let (ok, _, stderr) = check(&cfg);
    assert!(!ok);
    let file = cfg.display().to_string();
    assert!(
        stderr.contains(&format!("{file}: listen.http[0]: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}: timeouts.connect: ")),
        "{stderr}"
    );

    // The config is fine but its routes file is not: each route problem is listed.
    write_file(
        &cfg,
        b"[listen]\nhttp = [\"127.0.0.1:8080\"]\n[routes]\nfile = \"routes.toml\"\n",
    );
    write_file(
        &dir.path().join("routes.toml"),
        b"[[app]]\nname = \"a\"\ndomains = [\"x..test\"]\nbackends = [\"nope\"]\n[[app]]\nname = \"b\"\nmaintenance = { file = \"missing.html\" }\n",
    );
    let (ok, _, stderr) = check(&cfg);
    assert!(!ok);
    let routes = dir.path().join("routes.toml").display().to_string();
    assert!(
        stderr.contains(&format!("{routes}: app[0] (a).domains[0]: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{routes}: app[0] (a).backends[0]: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{routes}: app[1] (b).maintenance.file: ")),
        "{stderr}"
    );

    // Unknown keys are refused.
    write_file(
        &cfg,
        b"[listen]\nhttp = [\"127.0.0.1:8080\"]\nhtttp = []\n[routes]\nfile = \"routes.toml\"\n",
    );
    let (ok, _, stderr) = check(&cfg);
    assert!(!ok);
    assert!(stderr.contains("unknown field `htttp`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_file_changes_and_sighup_swap_the_table_without_dropping_requests() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let b = Balancer::start(&app_routes("app", &["app.test"], &[one.addr], ""), "").await;
    // A keep-alive connection and a slow in-flight request, both spanning the reload.
    let mut keep = Conn::connect(b.addr()).await;
    keep.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(
        keep.read_response(false).await.unwrap().header("x-backend"),
        Some("one")
    );
    let addr = b.addr();
    let inflight = tokio::spawn(async move {
        request(
            addr,
            "GET /slow/800 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.write_routes(&format!(
        "{}{}",
        app_routes("app", &["app.test"], &[two.addr], ""),
        app_routes("new", &["new.test"], &[two.addr], "")
    ));
    b.wait_version(2).await;
    let r = get(b.addr(), "new.test", "/").await;
    assert_eq!(r.header("x-backend"), Some("two"));
    keep.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(
        keep.read_response(false).await.unwrap().header("x-backend"),
        Some("two")
    );
    let slow = inflight.await.unwrap();
    assert_eq!((slow.status, slow.text().as_str()), (200, "one /slow/800"));

    // An invalid file is refused; the old table keeps serving.
    b.write_routes(
        "[[app]]\nname = \"app\"\ndomains = [\"app.test\"]\nbackends = [\"not-an-address\"]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("pier_route_reloads_total{result=\"error\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(b.addr(), "new.test", "/").await.status, 200);
    assert!(b.log_text().contains("routes reload refused"));
    assert!(b.log_text().contains("not-an-address"));

    // SIGHUP reloads too (the file is fixed without the watcher's help: watch is on, so use
    // the version to tell which reload happened).
    b.write_routes(&app_routes(
        "app",
        &["app.test", "hup.test"],
        &[one.addr],
        "",
    ));
    b.wait_version(3).await;
    b.signal("HUP");
    b.wait_version(4).await;
    assert_eq!(
        get(b.addr(), "hup.test", "/").await.header("x-backend"),
        Some("one")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_routes_file_names_is_watched_with_it() {
    let routes = "[[app]]\nname = \"page\"\ndomains = [\"page.test\"]\n\
                  static = { file = \"page.html\" }\n";
    let b = Balancer::try_start_with(routes, "", &[("page.html", "first\n")])
        .await
        .unwrap();
    assert_eq!(get(b.addr(), "page.test", "/").await.text(), "first\n");
    // The page is replaced as a deploy tool would (write, then rename over); the routes file
    // is not touched.
    let dir = b.dir.path();
    std::fs::write(dir.join("page.html.tmp"), "second\n").unwrap();
    std::fs::rename(dir.join("page.html.tmp"), dir.join("page.html")).unwrap();
    b.wait_version(2).await;
    assert_eq!(get(b.addr(), "page.test", "/").await.text(), "second\n");
    // A page that disappears is a refused reload: the last one keeps being served.
    std::fs::remove_file(dir.join("page.html")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("pier_route_reloads_total{result=\"error\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(b.addr(), "page.test", "/").await.text(), "second\n");
    // The routes file names a page before it exists: refused, then served once it is created.
    b.write_routes(
        "[[app]]\nname = \"page\"\ndomains = [\"page.test\"]\nstatic = { file = \"new.html\" }\n",
    );
    while b.metric("pier_route_reloads_total{result=\"error\"}").await < 2.0 {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(dir.join("new.html"), "third\n").unwrap();
    b.wait_version(3).await;
    assert_eq!(get(b.addr(), "page.test", "/").await.text(), "third\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    // An idle connection sleeps until its keep-alive deadline (60 s here) with no periodic
    // wake-up: the drain must wake it, and the balancer exit long before either deadline.
    let be = Backend::start("be").await;
    let mut b = Balancer::start(
        &app_routes("app", &["app.test"], &[be.addr], ""),
        "[timeouts]
shutdown = \"30s\"\nclient_keepalive = \"60s\"\n",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = Conn::connect(b.addr()).await;
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        idle.push(c);
    }
    // Past the one second after which a connection gives its buffers back and waits idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.signal("TERM");
    let t = Instant::now();
    for c in &mut idle {
        assert!(
            c.is_closed(Duration::from_secs(5)).await,
            "an idle connection stayed open"
        );
    }
    let status = b.exit_status(t, Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let be = Backend::start("be").await;
    let mut b = Balancer::start(
        &app_routes("app", &["app.test"], &[be.addr], ""),
        "[timeouts]\nshutdown = \"10s\"\n",
    )
    .await;
    let addr = b.addr();
    // Load: 20 clients with keep-alive connections doing requests, some slow, in a loop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..20 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut failed = Vec::new();
            let mut conn: Option<Conn> = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => conn.insert(Conn::from(s)),
                        // Refused after shutdown began: no request was sent, none failed.
                        Err(_) => break,
                    },
                };
                let path = if i % 4 == 0 { "/slow/700" } else { "/fast" };
                c.send(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
                    .await;
                match c.read_response(false).await {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        if r.header("connection") == Some("close") {
                            conn = None;
                        }
                    }
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => {
                        failed.push(format!("{e}"));
                        conn = None;
                    }
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.signal("TERM");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during shutdown: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 20, "too little load: {total}");
    // The process exits by itself once drained, well before the deadline.
    let status = b.exit_status(t, Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    assert!(b.log_text().contains("pier-balancer stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_routes_and_json_access_log() {
    let be = Backend::start("be").await;
    let b = Balancer::start(
        &app_routes("app", &["app.test", "*.app.test"], &[be.addr], ""),
        "[log]\nformat = \"json\"\n",
    )
    .await;
    assert_eq!(get(b.addr(), "app.test", "/x").await.status, 200);
    assert_eq!(get(b.addr(), "nope.test", "/").await.status, 404);
    let expected = [
        "pier_responses_total{class=\"2xx\"} 1",
        "pier_responses_total{class=\"4xx\"} 1",
        "pier_app_responses_total{app=\"app\",class=\"2xx\"} 1",
        "pier_errors_total{reason=\"unknown-host\"} 1",
        "pier_request_duration_seconds_bucket",
        "pier_upstream_connect_errors_total 0",
        "pier_upstream_retries_total 0",
        "pier_upstream_ejections_total 0",
        "pier_connections_open",
        "pier_route_table_domains 2",
        "pier_route_table_apps 1",
        "pier_route_table_version 1",
    ];
    let m = b.metrics_with(&expected).await;
    for name in expected {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    let r = admin_get(b.admin, "/routes").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["domains"], 2);
    assert_eq!(v["apps"][0]["name"], "app");
    assert_eq!(
        v["apps"][0]["domains"],
        serde_json::json!(["*.app.test", "app.test"])
    );
    assert_eq!(v["apps"][0]["backends"][0]["address"], be.addr.to_string());
    assert_eq!(admin_get(b.admin, "/healthz").await.unwrap().status, 200);
    // The access log is JSON lines with the documented fields.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = b.log_text();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "pier::access" && v["app"] == "app")
        .unwrap_or_else(|| panic!("no access line in {log}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/x");
    assert_eq!(line["upstream"], be.addr.to_string());
    assert_eq!(line["request_id"].as_str().unwrap().len(), 36);
    for field in [
        "client",
        "host",
        "duration_us",
        "first_byte_us",
        "bytes",
        "method",
    ] {
        assert!(line.get(field).is_some(), "{field} missing in {line}");
    }
}

/// A sink backend: reads a request with a Content-Length body, discards it, answers the count.
async fn sink_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = vec![0u8; 256 * 1024];
                let (len, mut got) = loop {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    head.extend_from_slice(&buf[..n]);
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&head[..i]).to_lowercase();
                        let len: u64 = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        break (len, (head.len() - i - 4) as u64);
                    }
                };
                while got < len {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "body cut at {got}");
                    got += n as u64;
                }
                let body = got.to_string();
                s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_and_download_pass_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let sink = sink_backend().await;
    let be = Backend::start("big").await;
    let b = Balancer::start(
        &format!(
            "{}{}",
            app_routes("up", &["up.test"], &[sink], ""),
            app_routes("down", &["down.test"], &[be.addr], "")
        ),
        "[runtime]\nworkers = 1\n",
    )
    .await;
    let base = b.rss_peak_kib();
    // Upload 1 GiB.
    let mut s = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(
        format!("POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let block = vec![b'u'; 1 << 20];
    for _ in 0..1024 {
        s.write_all(&block).await.unwrap();
    }
    let mut c = Conn::from(s);
    let r = c.read_response(false).await.unwrap();
    assert_eq!((r.status, r.text()), (200, GIB.to_string()));
    // Download 1 GiB, counting without keeping it.
    c.send(format!("GET /big/{GIB} HTTP/1.1\r\nHost: down.test\r\n\r\n").as_bytes())
        .await;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got: u64 = 0;
    c.buf.clear();
    loop {
        let n = c.stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        if got == 0 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                got = (head.len() - i - 4) as u64;
            }
        } else {
            got += n as u64;
        }
        if got >= GIB {
            break;
        }
    }
    assert_eq!(got, GIB);
    let peak = b.rss_peak_kib();
    // Streaming keeps at most a few buffers per connection: the peak may not grow by more than
    // 32 MiB over start-up, against 2 GiB moved.
    assert!(
        peak < base + 32 * 1024,
        "RSS peak grew from {base} KiB to {peak} KiB"
    );
}

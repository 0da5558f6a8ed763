//! The upstream side over real sockets: balancing, pooling, retries, ejection, timeouts, and
//! strict checking of backend responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use pier_testkit::free_port;
use pier_testkit::h1::{get, request, Backend, Conn, RAW};
use pier_testkit::proxy::{admin_get, app_routes, Balancer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn dead_addr() -> SocketAddr {
    // A port that was free a moment ago: connecting to it is refused.
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_and_least_outstanding_avoids_busy_backends() {
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    let routes = format!(
        "{}{}",
        app_routes("rr", &["rr.test"], &[a.addr, c.addr], ""),
        app_routes(
            "lo",
            &["lo.test"],
            &[a.addr, c.addr],
            "policy = \"least-outstanding\""
        ),
    );
    let b = Balancer::start(&routes, "[runtime]\nworkers = 1\n").await;
    let mut conn = Conn::connect(b.addr()).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        conn.send(b"GET / HTTP/1.1\r\nHost: rr.test\r\n\r\n").await;
        let r = conn.read_response(false).await.unwrap();
        *counts
            .entry(r.header("x-backend").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts["a"], 5, "{counts:?}");
    assert_eq!(counts["c"], 5, "{counts:?}");
    // Hold a slow request on whichever backend gets it; the next ones go to the other.
    let addr = b.addr();
    let slow = tokio::spawn(async move {
        request(
            addr,
            "GET /slow/1500 HTTP/1.1\r\nHost: lo.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = if a.seen().iter().any(|s| s.path() == "/slow/1500") {
        "a"
    } else {
        "c"
    };
    for _ in 0..6 {
        conn.send(b"GET /quick HTTP/1.1\r\nHost: lo.test\r\n\r\n")
            .await;
        let r = conn.read_response(false).await.unwrap();
        assert_ne!(
            r.header("x-backend"),
            Some(busy),
            "went to the busy backend"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retries_another_backend_and_ejects_the_dead_one() {
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let b = Balancer::start(
        &app_routes("app", &["app.test"], &[dead, live.addr], ""),
        "[runtime]\nworkers = 1\n[upstream]\neject_after = 2\neject_for = \"30s\"\n",
    )
    .await;
    for i in 0..10 {
        let r = get(b.addr(), "app.test", &format!("/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        assert_eq!(r.header("x-backend"), Some("live"));
    }
    assert_eq!(live.count(), 10);
    // Two failures ejected it: later requests no longer try it.
    assert_eq!(b.metric("pier_upstream_connect_errors_total").await, 2.0);
    assert_eq!(b.metric("pier_upstream_ejections_total").await, 1.0);
    assert_eq!(b.metric("pier_upstream_retries_total").await, 2.0);
    let routes = String::from_utf8(admin_get(b.admin, "/routes").await.unwrap().body).unwrap();
    let v: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let backends = v["apps"][0]["backends"].as_array().unwrap();
    let dead_entry = backends
        .iter()
        .find(|x| x["address"] == dead.to_string())
        .unwrap();
    assert_eq!(dead_entry["ejected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_502_with_reason() {
    let b = Balancer::start(
        &app_routes("app", &["app.test"], &[dead_addr(), dead_addr()], ""),
        "",
    )
    .await;
    let r = get(b.addr(), "app.test", "/").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-pier-error"), Some("upstream-connect-failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_retried_only_for_idempotent_requests() {
    // A backend that answers one request per connection but (wrongly) says keep-alive, then
    // closes: the pooled connection is dead when the next request arrives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let served = s2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                // Close after a moment, without saying so: the balancer pooled this connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
            });
        }
    });
    let b = Balancer::start(
        &app_routes("app", &["app.test"], &[addr], ""),
        "[runtime]\nworkers = 1\n",
    )
    .await;
    let mut c = Conn::connect(b.addr()).await;
    for i in 0..5 {
        c.send(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "GET {i}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_on_a_connection_closed_mid_request_is_not_resent() {
    // The backend reads the whole request, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    let b = Balancer::start(&app_routes("app", &["app.test"], &[addr], ""), "").await;
    let r = request(
        b.addr(),
        "POST /pay HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-pier-error"), Some("upstream-closed"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "POST was resent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_first_byte_504_and_upstream_idle_aborts() {
    let be = Backend::start("slow").await;
    let b = Balancer::start(
        &app_routes(
            "app",
            &["app.test"],
            &[be.addr],
            "timeouts = { first_byte = \"300ms\", idle = \"300ms\" }",
        ),
        "",
    )
    .await;
    let t = std::time::Instant::now();
    let r = get(b.addr(), "app.test", "/silent").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-pier-error"), Some("upstream-timeout"));
    assert!(t.elapsed() < Duration::from_secs(5));
    // A response that stalls mid-body: the client gets what was sent, then a close.
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET /partial HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let err = c.read_response(false).await;
    assert!(
        err.is_err(),
        "truncated body must not look complete: {err:?}"
    );
    // The slow request did not delay a fast one.
    let r = get(b.addr(), "app.test", "/fast").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_504() {
    // A listener with a backlog of one that never accepts: once its queue is full, further
    // connection attempts hang in SYN-SENT until the balancer's connect timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let b = Balancer::start(
        &app_routes(
            "app",
            &["app.test"],
            &[addr],
            "retries = 0\ntimeouts = { connect = \"300ms\" }",
        ),
        "",
    )
    .await;
    let r = get(b.addr(), "app.test", "/").await;
    assert_eq!(r.status, 504, "{}", r.head);
    assert_eq!(r.header("x-pier-error"), Some("upstream-connect-timeout"));
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_responses_are_502_and_the_connection_is_not_reused() {
    let be = Backend::start("bad").await;
    let b = Balancer::start(
        &app_routes("app", &["app.test"], &[be.addr], ""),
        "[runtime]\nworkers = 1\n",
    )
    .await;
    for (name, _) in RAW {
        let mut c = Conn::connect(b.addr()).await;
        c.send(format!("GET /raw/{name} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await;
        let r = c.read_response(false).await;
        match *name {
            // A bad chunk is only seen after the head went out: the client sees a cut body.
            "bad-chunk" => assert!(r.is_err() || r.unwrap().status == 200),
            _ => {
                let r = r.unwrap();
                assert_eq!(r.status, 502, "{name}: {}", r.head);
                assert!(r.header("x-pier-error").is_some(), "{name}");
            }
        }
    }
    // Every one of those connections was dropped: a new request opens a new connection.
    let before = be.conns.load(std::sync::atomic::Ordering::SeqCst);
    let r = get(b.addr(), "app.test", "/ok").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        be.conns.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_an_apps_requests_in_proportion() {
    let heavy = Backend::start("heavy").await;
    let light = Backend::start("light").await;
    let routes = format!(
        "[[app]]\nname = \"blog\"\ndomains = [\"blog.test\"]\n\
         backends = [{{ address = \"{}\", weight = 3 }}, \"{}\"]\n",
        heavy.addr, light.addr
    );
    let b = Balancer::start(&routes, "[runtime]\nworkers = 1\n").await;
    for _ in 0..400 {
        assert_eq!(get(b.addr(), "blog.test", "/").await.status, 200);
    }
    // Round-robin by weight: 3 of every 4 (a retry on a fresh connection would take a turn
    // of its own, hence the slack).
    assert!((295..=305).contains(&heavy.count()), "{}", heavy.count());
    assert_eq!(heavy.count() + light.count(), 400);
    // A weight out of range is refused with its key.
    let bad = routes.replace("weight = 3", "weight = 0");
    let err = Balancer::try_start(&bad, "").await.err().unwrap();
    assert!(err.contains("backends[0].weight"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_joins_ramps_up_over_the_apps_slow_start() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let app = |backends: &str| {
        format!(
            "[[app]]\nname = \"blog\"\ndomains = [\"blog.test\"]\nslow_start = \"3s\"\nbackends = [{backends}]\n"
        )
    };
    let b = Balancer::start(&app(&format!("\"{}\"", old.addr)), "").await;
    let v = b.metric("pier_route_table_version").await as u64;
    b.write_routes(&app(&format!("\"{}\", \"{}\"", old.addr, new.addr)));
    b.wait_version(v + 1).await;
    // Just after joining it takes a small part of its half: about 3 % over the first ~200 ms.
    for _ in 0..200 {
        assert_eq!(get(b.addr(), "blog.test", "/").await.status, 200);
    }
    let early = new.count();
    assert!(early < 40, "{early} of 200 went to the new backend at once");
    // After the slow start, its full half.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let before = new.count();
    for _ in 0..200 {
        assert_eq!(get(b.addr(), "blog.test", "/").await.status, 200);
    }
    let late = new.count() - before;
    assert!((80..=120).contains(&late), "{late} of 200 once ramped up");
}

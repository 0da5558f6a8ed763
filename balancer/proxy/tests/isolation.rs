//! One app's stalled backend never takes the balancer from another: the per-app limit on
//! requests in flight, its queue and its answer, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pier_testkit::h1::{get, Backend, Response};
use pier_testkit::proxy::{admin_get, app_routes, Balancer};
use pier_testkit::wait_until;

/// App `slow` (limit 2 in its routes) and app `fast`, each with its own backend.
async fn two_apps(config: &str) -> (Balancer, Backend, Backend) {
    let slow = Backend::start("slow").await;
    let fast = Backend::start("fast").await;
    let routes = format!(
        "{}{}",
        app_routes("slow", &["slow.test"], &[slow.addr], "max_in_flight = 2"),
        app_routes("fast", &["fast.test"], &[fast.addr], ""),
    );
    (Balancer::start(&routes, config).await, slow, fast)
}

fn overloaded(r: &Response) -> bool {
    r.status == 503
        && r.header("x-pier-error") == Some("app-overloaded")
        && r.header("retry-after") == Some("1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_app_is_refused_with_the_reason_and_other_apps_are_served() {
    let (b, slow, _fast) =
        two_apps("[limits]\napp_queue = 1\napp_queue_timeout = \"400ms\"\n").await;
    let addr = b.addr();
    // Two requests take the slow app's two slots for 2 s.
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "slow.test", "/slow/2000").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third waits in the one-place queue, the fourth finds it full: refused at once.
    let queued = tokio::spawn(async move {
        let t = Instant::now();
        (get(addr, "slow.test", "/q").await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let full = get(addr, "slow.test", "/full").await;
    assert!(overloaded(&full), "{} {:?}", full.status, full.head);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // The other app is served meanwhile.
    for _ in 0..5 {
        let r = get(addr, "fast.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
    // The admin's view of the table shows the counts.
    let routes = admin_get(b.admin, "/routes").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&routes.text()).unwrap();
    let app = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(app["max_in_flight"], 2, "{app}");
    assert_eq!(app["in_flight"], 2, "{app}");
    assert_eq!(app["queued"], 1, "{app}");
    // The queued request gave up after its 400 ms, never having reached the backend.
    let (r, waited) = queued.await.unwrap();
    assert!(overloaded(&r), "{} {:?}", r.status, r.head);
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    let paths: Vec<String> = slow.seen().iter().map(|s| s.path().to_string()).collect();
    assert_eq!(paths, ["/slow/2000", "/slow/2000"]);
    // Slots given back: served again.
    assert_eq!(get(addr, "slow.test", "/after").await.status, 200);
    let m = b.metrics().await;
    assert!(
        m.contains("reason=\"app-overloaded\"} 2"),
        "{}",
        m.lines()
            .filter(|l| l.contains("app-overloaded"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_takes_the_first_slot_given_back() {
    let (b, slow, _fast) = two_apps("[limits]\napp_queue = 4\napp_queue_timeout = \"5s\"\n").await;
    let addr = b.addr();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "slow.test", "/slow/600").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let r = get(addr, "slow.test", "/queued").await;
    assert_eq!(r.status, 200, "{}", r.head);
    // It waited for a slot (about 400 ms more), and was then served.
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(slow.count(), 3);
    // The access log says how long it waited in the queue (and nothing for the others).
    b.wait_log("/queued").await;
    let log = b.log_text();
    let line = log.lines().find(|l| l.contains("path=/queued")).unwrap();
    let queue_us: u64 = line
        .split("queue_us=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(queue_us >= 250_000, "{line}");
    let held_line = log.lines().find(|l| l.contains("path=/slow/600")).unwrap();
    assert!(held_line.contains("queue_us=0"), "{held_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_sets_the_default_and_an_app_may_turn_it_off() {
    // The balancer's limit is 1 with no queue; app `open` turns its own off (0).
    let be = Backend::start("b").await;
    let routes = format!(
        "{}{}",
        app_routes("open", &["open.test"], &[be.addr], "max_in_flight = 0"),
        app_routes("tight", &["tight.test"], &[be.addr], ""),
    );
    let b = Balancer::start(&routes, "[limits]\napp_max_in_flight = 1\napp_queue = 0\n").await;
    let addr = b.addr();
    let all: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "open.test", "/slow/300").await }))
        .collect();
    for h in all {
        assert_eq!(h.await.unwrap().status, 200);
    }
    let first = tokio::spawn(async move { get(addr, "tight.test", "/slow/500").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = get(addr, "tight.test", "/").await;
    assert!(overloaded(&second), "{} {:?}", second.status, second.head);
    assert_eq!(first.await.unwrap().status, 200);
    // The slot is given back just after the answer's last byte went out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "tight.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_and_others_are_served() {
    let be = Backend::start("b").await;
    let routes = app_routes("blog", &["blog.test"], &[be.addr], "");
    let trusted = pier_testkit::net::free_port();
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\", {{ address = \"127.0.0.1:{trusted}\", trusted = true }}]\n\
         [limits]\nclient_rate = 1\nclient_burst = 3\n"
    );
    let b = Balancer::start(&routes, &config).await;
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    let one = b"GET / HTTP/1.1\r\nHost: blog.test\r\n\r\n";
    for i in 0..3 {
        c.send(one).await;
        assert_eq!(c.read_response(false).await.unwrap().status, 200, "{i}");
    }
    c.send(one).await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.head);
    assert_eq!(r.header("x-pier-error"), Some("rate-limited"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // The connection stays usable, and a token comes back within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(one).await;
    assert_eq!(c.read_response(false).await.unwrap().status, 200);
    assert_eq!(be.count(), 4);

    // Behind a trusted proxy, each forwarded client has its own bucket.
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], trusted));
    let mut p = pier_testkit::h1::Conn::connect(proxy).await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..3 {
            p.send(
                format!("GET / HTTP/1.1\r\nHost: blog.test\r\nX-Forwarded-For: 10.9.9.9, {client}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert_eq!(
                p.read_response(false).await.unwrap().status,
                200,
                "{client}"
            );
        }
    }
    p.send(b"GET / HTTP/1.1\r\nHost: blog.test\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n")
        .await;
    assert_eq!(p.read_response(false).await.unwrap().status, 429);
    // Counted once each (recorded just after the answer went out).
    let start = Instant::now();
    while !b.metrics().await.contains("reason=\"rate-limited\"} 2") {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_against_the_same_limit() {
    // h2c with prior knowledge: three streams at once on one connection to an app with two
    // slots and no queue: one is refused with the reason, the others are served.
    let (b, _slow, _fast) = two_apps("[limits]\napp_queue = 0\n").await;
    let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let send = pier_testkit::h2::h2_client(tcp).await;
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                // Staggered so the refused one is the last.
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                let (parts, _) =
                    pier_testkit::h2::h2_get(&mut send, "http://slow.test/slow/800", None)
                        .await
                        .unwrap();
                (
                    parts.status.as_u16(),
                    parts
                        .headers
                        .get("x-pier-error")
                        .map(|v| v.to_str().unwrap().to_string()),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for s in streams {
        answers.push(s.await.unwrap());
    }
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[1].0, 200);
    assert_eq!(answers[2], (503, Some("app-overloaded".to_string())));
}

/// Waits (3 s at most) until `n` of `be`'s `/silent` connections were closed by the balancer.
async fn hung_up(be: &Backend, n: usize, what: &str) {
    let closed =
        || async { (be.hung_up.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(()) };
    wait_until(what, Duration::from_secs(3), closed).await;
}

/// Waits (5 s at most) until `be` has seen `n` requests.
async fn seen(be: &Backend, n: usize) {
    let count = || async { (be.count() >= n).then_some(()) };
    wait_until(
        "the backend to see the requests",
        Duration::from_secs(5),
        count,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_backend_connection_at_once() {
    // The backend never answers, and the first-byte timeout is long: only the client's close
    // can end the wait.
    let be = Backend::start("stalled").await;
    let routes = app_routes("stalled", &["stalled.test"], &[be.addr], "");
    let b = Balancer::start(&routes, "[timeouts]\nfirst_byte = \"60s\"\n").await;
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    c.send(b"GET /silent HTTP/1.1\r\nHost: stalled.test\r\n\r\n")
        .await;
    seen(&be, 1).await;
    drop(c);
    hung_up(&be, 1, "the backend connection to close with the client's").await;
    b.wait_log("path=/silent").await;
    let log = b.log_text();
    let line = log.lines().find(|l| l.contains("path=/silent")).unwrap();
    assert!(line.contains("status=499"), "{line}");
    assert!(line.contains("aborted=\"client-closed\""), "{line}");
    // Nothing of it is pooled: the next request gets a working connection.
    assert_eq!(get(b.addr(), "stalled.test", "/next").await.status, 200);

    // The same once a body was streamed up (it came after the head, not with it).
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    c.send(b"POST /silent HTTP/1.1\r\nHost: stalled.test\r\nContent-Length: 5\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(b"hello").await;
    seen(&be, 3).await;
    drop(c);
    hung_up(
        &be,
        2,
        "the backend connection to close with the uploading client's",
    )
    .await;

    // An HTTP/2 client that streamed its body up whole (larger than what the balancer reads
    // before asking the backend), then resets its stream while the backend thinks: the
    // backend connection closes with it.
    let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let send = pier_testkit::h2::h2_client(tcp).await;
    let req = http::Request::builder()
        .method("POST")
        .uri("http://stalled.test/silent")
        .body(())
        .unwrap();
    let mut s = send.clone().ready().await.unwrap();
    let (resp, mut up) = s.send_request(req, false).unwrap();
    up.send_data(bytes::Bytes::from(vec![b'x'; 200 * 1024]), true)
        .unwrap();
    seen(&be, 4).await;
    // The body reaches the backend and the balancer waits for the answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.send_reset(h2::Reason::CANCEL);
    drop(resp);
    hung_up(
        &be,
        3,
        "the backend connection to close with the h2 client's reset",
    )
    .await;

    // An h2c backend's stream is reset (its connection carries other streams).
    let h2c = pier_testkit::h2::h2c_backend_counted().await;
    let routes = app_routes(
        "grpc",
        &["grpc.test"],
        &[h2c.addr],
        "backend_protocol = \"h2c\"",
    );
    let b = Balancer::start(&routes, "[timeouts]\nfirst_byte = \"60s\"\n").await;
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    c.send(b"GET /silent HTTP/1.1\r\nHost: grpc.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    let reset = |n: usize| {
        let resets = std::sync::Arc::clone(&h2c.resets);
        async move { (resets.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(()) }
    };
    let within = Duration::from_secs(3);
    wait_until("the h2c stream reset, its client gone", within, || reset(1)).await;
    // An HTTP/2 client that resets its stream: the backend's stream is reset too.
    let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    let send = pier_testkit::h2::h2_client(tcp).await;
    let req = http::Request::builder()
        .uri("http://grpc.test/silent")
        .body(())
        .unwrap();
    let mut s = send.clone().ready().await.unwrap();
    let (resp, _) = s.send_request(req, true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(resp);
    wait_until("the h2c stream reset with the client's", within, || {
        reset(2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_while_the_first_waits_is_answered_after_it() {
    let be = Backend::start("b").await;
    let routes = app_routes("blog", &["blog.test"], &[be.addr], "");
    let b = Balancer::start(&routes, "").await;
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    c.send(b"GET /slow/400 HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Sent while the first waits for its backend: read ahead, kept, answered second.
    c.send(b"GET /second HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let first = c.read_response(false).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.text(), "b /slow/400");
    let second = c.read_response(false).await.unwrap();
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.text(), "b /second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_the_queue_gives_its_place_up() {
    let (b, slow, _fast) = two_apps("[limits]\napp_queue = 1\napp_queue_timeout = \"30s\"\n").await;
    let addr = b.addr();
    // Both slots held by requests the backend never answers.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = pier_testkit::h1::Conn::connect(addr).await;
        c.send(b"GET /silent HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            .await;
        held.push(c);
    }
    seen(&slow, 2).await;
    // One waits in the one-place queue, then leaves.
    let mut q = pier_testkit::h1::Conn::connect(addr).await;
    q.send(b"GET /queued HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .await;
    let queued = |n: u64| async move {
        let routes = admin_get(b.admin, "/routes").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&routes.text()).unwrap();
        let apps = v["apps"].as_array().unwrap().clone();
        let app = apps.into_iter().find(|a| a["name"] == "slow").unwrap();
        (app["queued"].as_u64() == Some(n)).then_some(())
    };
    let within = Duration::from_secs(5);
    wait_until("one request queued", within, || queued(1)).await;
    drop(q);
    let gone = Duration::from_secs(3);
    wait_until("the place given up by its client", gone, || queued(0)).await;
    // The freed place takes the next one (which waits, rather than being refused as full).
    let mut next = pier_testkit::h1::Conn::connect(addr).await;
    next.send(b"GET /next HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        .await;
    wait_until("the next request queued", within, || queued(1)).await;
    b.wait_log("path=/queued").await;
    let log = b.log_text();
    let line = log.lines().find(|l| l.contains("path=/queued")).unwrap();
    assert!(line.contains("status=499"), "{line}");
    // The held ones' clients leave too: their backend connections close.
    drop(held);
    hung_up(&slow, 2, "the held requests' backend connections to close").await;
    // And the queued one gets a slot and reaches the backend.
    let reached = || async {
        slow.seen()
            .iter()
            .any(|s| s.path() == "/next")
            .then_some(())
    };
    wait_until("the queued request at the backend", within, reached).await;
    assert!(!slow.seen().iter().any(|s| s.path() == "/queued"));
}

/// The app's adaptive limit as `/routes` shows it.
async fn adaptive_limit(b: &Balancer, app: &str) -> Option<u64> {
    let routes = admin_get(b.admin, "/routes").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&routes.text()).unwrap();
    let apps = v["apps"].as_array().unwrap().clone();
    let a = apps.into_iter().find(|a| a["name"] == app).unwrap();
    a["adaptive_limit"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_shrinks_when_latency_rises_and_grows_back() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let be = Backend::start("b").await;
    let routes = app_routes(
        "adaptive",
        &["adaptive.test"],
        &[be.addr],
        "adaptive_limit = true\nmax_in_flight = 200",
    );
    let b = Balancer::start(&routes, "[limits]\napp_queue = 1000\n").await;
    // 30 clients, each one request after another; the backend's latency is `delay` ms.
    let delay = Arc::new(AtomicU64::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..30 {
        let (delay, stop, addr) = (Arc::clone(&delay), Arc::clone(&stop), b.addr());
        clients.push(tokio::spawn(async move {
            let mut c = pier_testkit::h1::Conn::connect(addr).await;
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                let ms = delay.load(Ordering::Relaxed);
                c.send(
                    format!("GET /slow/{ms} HTTP/1.1\r\nHost: adaptive.test\r\n\r\n").as_bytes(),
                )
                .await;
                let r = c.read_response(false).await.unwrap();
                assert!(r.status == 200 || r.status == 503, "{}", r.head);
                ok += usize::from(r.status == 200);
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fast = adaptive_limit(&b, "adaptive")
        .await
        .expect("the limit started");
    // Twenty times the latency: the limit falls.
    delay.store(100, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let slow = adaptive_limit(&b, "adaptive").await.unwrap();
    // Back to fast: it grows again.
    delay.store(5, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let again = adaptive_limit(&b, "adaptive").await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        assert!(c.await.unwrap() > 0);
    }
    assert!(fast > 20, "it grew from its start of 20 under load: {fast}");
    assert!(slow * 2 <= fast, "fast {fast}, slow {slow}");
    assert!(again >= slow * 2, "slow {slow}, again {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_connections_is_answered_429_and_closed() {
    let be = Backend::start("b").await;
    let routes = app_routes("blog", &["blog.test"], &[be.addr], "");
    let trusted = pier_testkit::net::free_port();
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\", {{ address = \"127.0.0.1:{trusted}\", trusted = true }}]\n\
         [limits]\nclient_max_connections = 2\n"
    );
    let b = Balancer::start(&routes, &config).await;
    let one = b"GET / HTTP/1.1\r\nHost: blog.test\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
        c.send(one).await;
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        open.push(c);
    }
    // The third, whatever it sends, gets the refusal and the close.
    let mut third = pier_testkit::h1::Conn::connect(b.addr()).await;
    third.send(one).await;
    let r = third.read_response(false).await.unwrap();
    assert_eq!(r.status, 429, "{}", r.head);
    assert_eq!(r.header("x-pier-error"), Some("too-many-connections"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(third.is_closed(Duration::from_secs(3)).await);
    assert_eq!(
        be.count(),
        2,
        "the refused request never reached the backend"
    );
    // One closed: a new one is taken.
    drop(open.pop());
    let start = Instant::now();
    loop {
        let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
        c.send(one).await;
        match c.read_response(false).await.unwrap().status {
            200 => break,
            429 => assert!(start.elapsed() < Duration::from_secs(3)),
            s => panic!("{s}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A trusted listener's connections are its proxy's: not capped.
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], trusted));
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = pier_testkit::h1::Conn::connect(proxy).await;
        c.send(one).await;
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
        held.push(c);
    }
    assert!(b
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("pier_client_connections_refused_total ") && !l.ends_with(" 0")));
}

/// The durations of `Server-Timing`'s metrics, in milliseconds, by name.
fn server_timing(value: &str) -> std::collections::HashMap<String, f64> {
    value
        .split(',')
        .map(|m| {
            let (name, dur) = m.trim().split_once(";dur=").unwrap();
            (name.to_string(), dur.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_timings_go_to_the_client_in_server_timing_when_asked() {
    let be = Backend::start("b").await;
    let (h2c, _) = pier_testkit::h2::h2c_backend().await;
    let routes = format!(
        "{}{}",
        app_routes("one", &["one.test"], &[be.addr], "max_in_flight = 1"),
        app_routes("grpc", &["grpc.test"], &[h2c], "backend_protocol = \"h2c\""),
    );
    let b = Balancer::start(&routes, "[headers]\nserver_timing = true\n").await;
    let addr = b.addr();
    let r = get(addr, "one.test", "/slow/150").await;
    let t = server_timing(r.header("server-timing").expect("Server-Timing"));
    assert!(t["pier-service"] >= 140.0, "{t:?}");
    assert!(t["pier-connect"] < 140.0, "{t:?}");
    assert_eq!(t["pier-queue"], 0.0, "{t:?}");
    // A request that waited for the app's one slot says how long.
    let held = tokio::spawn(async move { get(addr, "one.test", "/slow/400").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(addr, "one.test", "/after").await;
    assert_eq!(r.status, 200);
    let t = server_timing(r.header("server-timing").unwrap());
    assert!(t["pier-queue"] >= 200.0, "{t:?}");
    assert!(t["pier-connect"] >= t["pier-queue"], "{t:?}");
    held.await.unwrap();
    // Over HTTP/2 as well, to either kind of backend.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut send = pier_testkit::h2::h2_client(tcp).await;
    let (head, _) = pier_testkit::h2::h2_get(&mut send, "http://one.test/slow/120", None)
        .await
        .unwrap();
    let t = server_timing(head.headers["server-timing"].to_str().unwrap());
    assert!(t["pier-service"] >= 110.0, "{t:?}");
    let (head, _) = pier_testkit::h2::h2_get(&mut send, "http://grpc.test/", None)
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    let t = server_timing(head.headers["server-timing"].to_str().unwrap());
    assert!(t.contains_key("pier-service"), "{t:?}");
    let r = get(addr, "grpc.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.header("server-timing").is_some(), "{}", r.head);

    // Off by default.
    let quiet = Balancer::start(&app_routes("one", &["one.test"], &[be.addr], ""), "").await;
    let r = get(quiet.addr(), "one.test", "/").await;
    assert_eq!(r.header("server-timing"), None);
}

/// Floods app `flood.test` from 100 connections for `for_ms` while one client sends app
/// `quiet.test` a request every 10 ms; returns (flood's answers by status, quiet's).
async fn flood_beside_a_quiet_app(
    b: &Balancer,
    for_ms: u64,
) -> (
    std::collections::HashMap<u16, usize>,
    std::collections::HashMap<u16, usize>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..100 {
        let (stop, addr) = (Arc::clone(&stop), b.addr());
        flood.push(tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            let mut c = pier_testkit::h1::Conn::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                c.send(b"GET / HTTP/1.1\r\nHost: flood.test\r\n\r\n").await;
                let r = c.read_response(false).await.unwrap();
                if r.status == 503 {
                    assert_eq!(r.header("x-pier-error"), Some("overloaded"), "{}", r.head);
                    assert_eq!(r.header("retry-after"), Some("1"));
                }
                *seen.entry(r.status).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut quiet = std::collections::HashMap::new();
    let mut c = pier_testkit::h1::Conn::connect(b.addr()).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(for_ms) {
        c.send(b"GET / HTTP/1.1\r\nHost: quiet.test\r\n\r\n").await;
        *quiet
            .entry(c.read_response(false).await.unwrap().status)
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut flooded = std::collections::HashMap::new();
    for f in flood {
        for (status, n) in f.await.unwrap() {
            *flooded.entry(status).or_insert(0) += n;
        }
    }
    (flooded, quiet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_balancer_sheds_the_flooded_app_and_serves_the_quiet_one() {
    let flood_be = Backend::start("flood").await;
    let quiet_be = Backend::start("quiet").await;
    let routes = format!(
        "{}{}",
        app_routes("flood", &["flood.test"], &[flood_be.addr], ""),
        app_routes("quiet", &["quiet.test"], &[quiet_be.addr], ""),
    );
    // A threshold the flood is sure to pass on any machine: the worker is "saturated" as soon
    // as its run queue delays its timers by a millisecond.
    let b = Balancer::start(
        &routes,
        "[runtime]\nworkers = 1\n[limits]\noverload_lag = \"1ms\"\n",
    )
    .await;
    let (flooded, quiet) = flood_beside_a_quiet_app(&b, 2000).await;
    assert!(
        flooded.get(&503).copied().unwrap_or(0) > 0,
        "the flooded app was never shed: {flooded:?}"
    );
    assert!(flooded.get(&200).copied().unwrap_or(0) > 0, "{flooded:?}");
    assert_eq!(
        quiet.keys().copied().collect::<Vec<_>>(),
        [200],
        "{quiet:?}"
    );
    let m = b.metrics().await;
    assert!(m.contains("pier_worker_lag_seconds{worker=\"0\"}"), "{m}");

    // Off: nothing is shed.
    let off = Balancer::start(
        &routes,
        "[runtime]\nworkers = 1\n[limits]\noverload_lag = \"0s\"\n",
    )
    .await;
    let (flooded, quiet) = flood_beside_a_quiet_app(&off, 1000).await;
    assert_eq!(
        flooded.keys().copied().collect::<Vec<_>>(),
        [200],
        "{flooded:?}"
    );
    assert_eq!(
        quiet.keys().copied().collect::<Vec<_>>(),
        [200],
        "{quiet:?}"
    );
}

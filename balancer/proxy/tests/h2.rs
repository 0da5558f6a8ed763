//! HTTP/2 through a real balancer process: h2 over TLS (ALPN) and h2c (prior knowledge),
//! request and response bodies and trailers, malformed requests and floods written as raw
//! frames, h2c backends, streams in flight while draining, GOAWAY on idle connections. The `h2`
//! crate's client and the raw frames from `pier_testkit::h2`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_testkit::free_port;
use pier_testkit::h1::{get, Backend, Conn};
use pier_testkit::h2::{
    frame, h2_client, h2_get, h2c_backend, h2c_backend_counting_closes, hpack, Frame, RawH2,
    PREFACE,
};
use pier_testkit::proxy::{app_routes, backend_routes, Balancer};
use pier_testkit::tls::{client_config, tls_balancer, tls_connect};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

fn get_fields(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", "a.test".into()),
        (":path", path.into()),
    ]
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

// ---- h2c backends ----

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

// ---- draining ----

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

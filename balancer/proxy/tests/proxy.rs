//! The request path over real sockets: routing, HTTP/1.1 semantics, headers, pier's own answers,
//! and refusal of smuggling shapes (which must never reach a backend).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pier_testkit::h1::{get, header_map, request, Backend, Conn};
use pier_testkit::proxy::{app_routes, Balancer};

async fn setup(extra_routes: &str, extra_config: &str) -> (Balancer, Backend) {
    let be = Backend::start("b1").await;
    let routes = format!(
        "app_domains = [\"apps.test\"]\n{}{}",
        app_routes("blog", &["blog.test", "*.blog.test"], &[be.addr], ""),
        extra_routes
    );
    (Balancer::start(&routes, extra_config).await, be)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_normalised_host_with_wildcards_and_precedence() {
    let deep = Backend::start("deep").await;
    let exact = Backend::start("exact").await;
    let catch = Backend::start("catch").await;
    let extra = format!(
        "{}{}{}",
        app_routes("deep", &["*.x.blog.test"], &[deep.addr], ""),
        app_routes("exact", &["a.x.blog.test"], &[exact.addr], ""),
        app_routes("other", &["*"], &[catch.addr], ""),
    );
    let (b, be) = setup(&extra, "").await;
    let cases = [
        ("blog.test", "b1"),
        ("BLOG.Test", "b1"),
        ("blog.test.", "b1"),
        ("blog.test:8080", "b1"),
        ("www.blog.test", "b1"),
        ("a.b.c.blog.test", "b1"),
        ("y.x.blog.test", "deep"),
        ("z.y.x.blog.test", "deep"),
        ("a.x.blog.test", "exact"),
        ("x.blog.test", "b1"),
        ("blog.apps.test", "b1"),
        ("unknown.test", "catch"),
    ];
    for (host, want) in cases {
        let r = get(b.addr(), host, "/p").await;
        assert_eq!(r.status, 200, "{host}: {}", r.head);
        assert_eq!(r.header("x-backend"), Some(want), "{host}");
    }
    // Absolute-form targets route by their authority, not the Host field (RFC 9112 §3.2.2).
    let r = request(
        b.addr(),
        "GET http://www.blog.test/abs?q=1 HTTP/1.1\r\nHost: unknown.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.header("x-backend"), Some("b1"));
    let seen = be.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.request_line, "GET /abs?q=1 HTTP/1.1");
    assert_eq!(last.header("host"), Some("www.blog.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_bad_host_is_400() {
    let (b, be) = setup("", "").await;
    let r = get(b.addr(), "nope.test", "/").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-pier-error"), Some("unknown-host"));
    assert!(r.text().contains("unknown-host"));
    for host in ["bad host", "a..b", "x.test:port", "[::1", "a/b"] {
        let r = get(b.addr(), host, "/").await;
        assert_eq!(r.status, 400, "{host}");
        assert_eq!(r.header("x-pier-error"), Some("bad-host"), "{host}");
    }
    assert_eq!(be.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelining_answer_in_order() {
    let (b, be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    // Three pipelined requests in one write, the middle one slow: answers stay in order.
    c.send(
        b"GET /one HTTP/1.1\r\nHost: blog.test\r\n\r\nGET /slow/200 HTTP/1.1\r\nHost: blog.test\r\n\r\nGET /three HTTP/1.1\r\nHost: blog.test\r\n\r\n",
    )
    .await;
    for want in ["b1 /one", "b1 /slow/200", "b1 /three"] {
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), want);
    }
    // The same client connection carries more requests, over one upstream connection.
    for _ in 0..5 {
        c.send(b"GET /again HTTP/1.1\r\nHost: blog.test\r\n\r\n")
            .await;
        assert_eq!(c.read_response(false).await.unwrap().status, 200);
    }
    let conns: std::collections::HashSet<usize> = be.seen().iter().map(|s| s.conn_id).collect();
    assert!(
        conns.len() <= 2,
        "upstream connections not reused: {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_are_removed_and_forwarding_fields_added() {
    let (b, be) = setup("", "").await;
    let r = request(
        b.addr(),
        "GET /h HTTP/1.1\r\nHost: blog.test\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: 10\r\n\
         TE: trailers\r\nUpgrade: websocket\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.test\r\nX-Request-Id: trace-42\r\nVia: 1.0 corp\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    // Response side: the backend's Connection-listed and Keep-Alive fields are gone, Via added.
    assert!(r.header("x-hop").is_none(), "{}", r.head);
    assert!(r.header("keep-alive").is_none());
    assert_eq!(r.header("via"), Some("1.1 pier"));
    let seen = be.seen();
    let s = &seen[0];
    let h = header_map(&s.raw_head);
    for gone in ["x-private", "keep-alive", "te", "upgrade", "connection"] {
        assert!(!h.contains_key(gone), "{gone} forwarded: {}", s.raw_head);
    }
    // Public listener: the client's X-Forwarded-* are replaced, a sane request id kept.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-port"], b.port.to_string());
    assert_eq!(h["x-forwarded-host"], "blog.test");
    assert_eq!(h["x-request-id"], "trace-42");
    assert!(h["x-request-start"].starts_with("t="));
    assert_eq!(h["via"], "1.0 corp, 1.1 pier");
    // An unusable request id is replaced by a generated one.
    request(
        b.addr(),
        "GET /h HTTP/1.1\r\nHost: blog.test\r\nX-Request-Id: bad id\"\r\nConnection: close\r\n\r\n",
    )
    .await;
    let id = be.seen()[1].header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_its_buffers_release_serves_big_and_split_heads() {
    // After a second of idleness a keep-alive connection gives its buffers back; the next
    // request, even a head much bigger than the small buffer it starts again with and sent in
    // pieces, is read whole and forwarded intact.
    let (b, be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET /first HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    assert_eq!(c.read_response(false).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let big = "v".repeat(6000);
    let head = format!("GET /second HTTP/1.1\r\nHost: blog.test\r\nX-Big: {big}\r\n\r\n");
    let (a, rest) = head.as_bytes().split_at(700);
    c.send(a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(rest).await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "b1 /second");
    let seen = be.seen();
    let last = seen.last().unwrap();
    let got = last
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-big"));
    assert_eq!(got.map(|(_, v)| v.len()), Some(6000));
    // And the connection goes on.
    c.send(b"GET /third HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    assert_eq!(c.read_response(false).await.unwrap().text(), "b1 /third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_listener_keeps_client_forwarding_fields() {
    let be = Backend::start("b1").await;
    let b = Balancer::start(
        &app_routes("blog", &["blog.test"], &[be.addr], ""),
        "[listen]\nhttp = [{ address = \"127.0.0.1:{port}\", trusted = true }]\n",
    )
    .await;
    request(
        b.addr(),
        "GET / HTTP/1.1\r\nHost: blog.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    let h = header_map(&be.seen()[0].raw_head);
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_with_any_framing() {
    let (b, be) = setup("", "").await;
    // Content-Length upload.
    let r = request(
        b.addr(),
        "POST /up HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    )
    .await;
    assert_eq!(r.status, 200);
    // Chunked upload with a trailer: forwarded chunked, trailer kept.
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"POST /chunks HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\nabcd\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"3\r\nefg\r\n0\r\nX-Sum: 7\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = be.seen();
    assert_eq!(seen[0].body, b"hello world");
    assert_eq!(seen[0].header("content-length"), Some("11"));
    assert_eq!(seen[1].body, b"abcdefg");
    assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        seen[1].trailers,
        vec![("X-Sum".to_string(), "7".to_string())]
    );
    // Chunked download with trailers to an HTTP/1.1 client: chunked, trailer passed.
    c.send(b"GET /chunked HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.trailers,
        vec![("X-Checksum".to_string(), "abc".to_string())]
    );
    // A body delimited by the backend closing reaches an HTTP/1.1 client chunked, and the
    // client connection stays usable.
    c.send(b"GET /eof-body HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "b1 /eof-body");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    c.send(b"GET /after HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    assert_eq!(c.read_response(false).await.unwrap().text(), "b1 /after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_close_delimited_bodies_and_no_trailers() {
    let (b, _be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET /chunked HTTP/1.0\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert_eq!(r.text(), "hello world");
    assert!(r.trailers.is_empty());
    // Keep-alive is opt-in for HTTP/1.0.
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET /x HTTP/1.0\r\nHost: blog.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /y HTTP/1.0\r\nHost: blog.test\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "b1 /y");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_304_have_no_body_and_keep_the_connection() {
    let (b, _be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"HEAD /big/1000 HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(true).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    c.send(b"GET /status/204 HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 204);
    assert!(r.header("content-length").is_none());
    c.send(b"GET /status/304 HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"x\""));
    c.send(b"GET /last HTTP/1.1\r\nHost: blog.test\r\n\r\n")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.text(), "b1 /last", "a body leaked into the next response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_relayed() {
    let (b, be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"POST /continue HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.read_response(false).await.unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"hello").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(be.seen()[0].body, b"hello");
    assert_eq!(be.seen()[0].header("expect"), Some("100-continue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_stops_the_upload_and_closes() {
    let (b, _be) = setup("", "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"POST /early HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 100000000\r\n\r\npartial")
        .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_actions_redirect_static_maintenance_and_no_backend() {
    let extra = "[[app]]\nname = \"r\"\ndomains = [\"r.test\"]\nredirect = { location = \"https://new.test/\", status = 308, keep_path = true }\n\
                 [[app]]\nname = \"s\"\ndomains = [\"s.test\"]\nstatic = { body = \"hi\", status = 202 }\n\
                 [[app]]\nname = \"m\"\ndomains = [\"m.test\"]\nmaintenance = { retry_after = 60 }\n\
                 [[app]]\nname = \"empty\"\ndomains = [\"e.test\"]\n";
    let (b, _be) = setup(extra, "").await;
    let r = get(b.addr(), "r.test", "/a/b?c").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://new.test/a/b?c"));
    let r = get(b.addr(), "s.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (202, "hi"));
    let r = get(b.addr(), "m.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.header("x-pier-error"), Some("maintenance"));
    assert!(r.text().contains("maintenance"));
    let r = get(b.addr(), "e.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-pier-error"), Some("no-backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_414_431() {
    let extra = app_routes("small", &["small.test"], &[], "max_body = 10");
    let be = Backend::start("s").await;
    let extra = extra.replace("backends = []", &format!("backends = [\"{}\"]", be.addr));
    let (b, be1) = setup(
        &extra,
        "[limits]\nmax_request_line = \"1KiB\"\nmax_header_bytes = \"4KiB\"\nmax_headers = 20\n",
    )
    .await;
    let r = request(
        b.addr(),
        "POST / HTTP/1.1\r\nHost: small.test\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-pier-error"), Some("body-too-large"));
    // A chunked body over the limit is cut off too.
    let r = request(
        b.addr(),
        "POST / HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
    let long = "a".repeat(2000);
    let r = request(
        b.addr(),
        &format!("GET /{long} HTTP/1.1\r\nHost: blog.test\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 414);
    let big = "x".repeat(5000);
    let r = request(
        b.addr(),
        &format!("GET / HTTP/1.1\r\nHost: blog.test\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let r = request(
        b.addr(),
        &format!("GET / HTTP/1.1\r\nHost: blog.test\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(r.header("x-pier-error"), Some("too-many-headers"));
    assert_eq!(be1.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_never_reach_a_backend() {
    let (b, be) = setup("", "").await;
    let cases: &[(&str, u16, &str)] = &[
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "content-length-and-transfer-encoding"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, "content-length-and-transfer-encoding"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "bad-content-length"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, "bad-content-length"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "bad-content-length"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: +5\r\n\r\nhello", 400, "bad-content-length"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nContent-Length: 0x5\r\n\r\nhello", 400, "bad-content-length"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, "bad-transfer-encoding"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported-transfer-encoding"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad-transfer-encoding"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, "whitespace-before-colon"),
        ("POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400, "bad-header-value"),
        ("POST / HTTP/1.0\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "transfer-encoding-in-http10"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nX-A: a\r\n b\r\n\r\n", 400, "obs-fold"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nX-A: a\rb\r\n\r\n", 400, "bad-header-value"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nX-A: a\0b\r\n\r\n", 400, "bad-header-value"),
        ("GET / HTTP/1.1\nHost: blog.test\n\n", 400, "bare-lf"),
        ("GET / HTTP/1.1\r\nHost: blog.test\nX-A: b\r\n\r\n", 400, "bare-lf"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nHost: other.test\r\n\r\n", 400, "duplicate-host"),
        ("GET / HTTP/1.1\r\n\r\n", 400, "missing-host"),
        ("GET  / HTTP/1.1\r\nHost: blog.test\r\n\r\n", 400, "bad-target"),
        ("GET / HTTP/1.1 x\r\nHost: blog.test\r\n\r\n", 400, "bad-version"),
        ("GET / HTTP/3.0\r\nHost: blog.test\r\n\r\n", 505, "unsupported-version"),
        ("G@T / HTTP/1.1\r\nHost: blog.test\r\n\r\n", 400, "bad-method"),
        ("GET foo HTTP/1.1\r\nHost: blog.test\r\n\r\n", 400, "bad-target"),
        ("CONNECT blog.test:443 HTTP/1.1\r\nHost: blog.test\r\n\r\n", 405, "connect-not-supported"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nX\x01: y\r\n\r\n", 400, "bad-header-name"),
        ("GET / HTTP/1.1\r\nHost: blog.test\r\nExpect: magic\r\n\r\n", 417, "unsupported-expect"),
    ];
    for (raw, status, reason) in cases {
        let r = request(b.addr(), raw).await;
        assert_eq!(r.status, *status, "{raw:?}: {}", r.head);
        assert_eq!(r.header("x-pier-error"), Some(*reason), "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
    }
    // Malformed chunked bodies are cut off; what reached the backend is at most the well-formed
    // prefix, never a second request smuggled in the body.
    for raw in [
        "POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: blog.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    ] {
        let mut c = Conn::connect(b.addr()).await;
        c.send(raw.as_bytes()).await;
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 400, "{raw:?}");
        assert!(c.is_closed(Duration::from_secs(2)).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        be.seen().iter().all(|s| !s.path().contains("smuggled")),
        "{:?}",
        be.seen()
    );
    assert!(be
        .seen()
        .iter()
        .all(|s| s.request_line.starts_with("POST / ")));
    // A higher minor version of HTTP/1 is processed as HTTP/1.1 (RFC 9112 §2.3), not refused:
    // forwarded and answered as HTTP/1.1.
    let r = request(b.addr(), "GET /minor HTTP/1.2\r\nHost: blog.test\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
    let seen = be.seen();
    let minor = seen
        .iter()
        .find(|s| s.path() == "/minor")
        .expect("forwarded");
    assert_eq!(minor.request_line, "GET /minor HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_and_idle_keepalive_closes() {
    let (b, _be) = setup(
        "",
        "[timeouts]\nclient_header = \"300ms\"\nclient_keepalive = \"400ms\"\n",
    )
    .await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: blo").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.send(b"g.test\r\nX-A: 1\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.header("x-pier-error"), Some("header-timeout"));
    // An idle keep-alive connection is closed quietly after client_keepalive.
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: blog.test\r\n\r\n").await;
    assert_eq!(c.read_response(false).await.unwrap().status, 200);
    let t = std::time::Instant::now();
    assert!(c.is_closed(Duration::from_secs(3)).await);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(c.buf.is_empty(), "no bytes expected on idle close");
}

//! WebSocket through a real balancer process: over HTTP/1.1, over TLS and over h2 (extended
//! CONNECT), an upgrade the backend refuses, idle tunnels. tungstenite for the client; the echo
//! server and hand-made frames from `pier_testkit::ws`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use pier_testkit::h1::{Backend, Conn};
use pier_testkit::proxy::{app_routes, backend_routes, Balancer};
use pier_testkit::tls::{client_config, tls_balancer, tls_connect};
use pier_testkit::ws::{ws_echo, ws_frame};
use tokio::net::TcpStream;

async fn ws_session(url_port: u16, host: &str) -> Vec<String> {
    use futures_util::{SinkExt, StreamExt};
    let tcp = TcpStream::connect(("127.0.0.1", url_port)).await.unwrap();
    let req = http::Request::builder()
        .uri(format!("ws://{host}/chat"))
        .header("host", host)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut got = Vec::new();
    for i in 0..50 {
        let text = format!("message {i} {}", "x".repeat(i * 100));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        got.push(m.into_text().unwrap().to_string());
    }
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        0u8, 1, 2, 255,
    ]))
    .await
    .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    got.push(format!("{:?}", m.into_data()));
    ws.close(None).await.unwrap();
    // The close is passed both ways: the server's close frame comes back, then EOF.
    let mut closed = false;
    while let Some(m) = ws.next().await {
        match m {
            Ok(m) if m.is_close() => closed = true,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(closed, "the server's close frame came back");
    got
}

#[tokio::test]
async fn websocket_echo_through_the_balancer_matches_direct() {
    let echo = ws_echo().await;
    let b = Balancer::start(&app_routes("ws", &["ws.test"], &[echo], ""), "").await;
    let direct = ws_session(echo.port(), "ws.test").await;
    let proxied = ws_session(b.port, "ws.test").await;
    assert_eq!(direct, proxied);
    assert_eq!(proxied.len(), 51);
    let m = b
        .metrics_with(&["pier_tunnels_total 1", "pier_tunnels_open 0"])
        .await;
    assert!(m.contains("pier_tunnels_total 1"), "{m}");
    assert!(m.contains("pier_tunnels_open 0"), "{m}");
}

#[tokio::test]
async fn upgrade_refused_by_the_backend_is_not_a_tunnel_and_not_reused() {
    let backend = Backend::start("one").await;
    let b = Balancer::start(&backend_routes("one", &["a.test"], &backend), "").await;
    let mut c = Conn::connect(b.addr()).await;
    c.send(
        b"GET /no-ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    // The backend saw the upgrade asked for.
    let seen = backend.seen();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(seen[0].header("connection"), Some("upgrade"));
    // The client connection carries on as HTTP/1.1; the backend connection was not reused.
    c.send(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    assert_ne!(seen[0].conn_id, seen[1].conn_id);
    // Other upgrades (h2c) are not passed on.
    c.send(b"GET /h2c HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n").await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.seen();
    assert_eq!(seen[2].header("upgrade"), None);
    assert_eq!(seen[2].header("http2-settings"), None);
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let echo = ws_echo().await;
    let b = Balancer::start(
        &app_routes("ws", &["ws.test"], &[echo], ""),
        "[timeouts]\ntunnel_idle = \"300ms\"\n",
    )
    .await;
    use futures_util::StreamExt;
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://ws.test/idle", tcp)
        .await
        .unwrap();
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(end.is_ok(), "the tunnel was not closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

// ---- over TLS ----

#[tokio::test]
async fn websocket_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    let echo = ws_echo().await;
    let s = tls_balancer(&app_routes("ws", &["default.test"], &[echo], ""), "").await;
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://default.test/chat", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("secure {i} {}", "y".repeat(i * 500));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

// ---- over h2: extended CONNECT (RFC 8441) ----

#[tokio::test]
async fn websocket_over_h2_extended_connect() {
    let echo = ws_echo().await;
    let b = Balancer::start(&app_routes("ws", &["ws.test"], &[echo], ""), "").await;
    let tcp = TcpStream::connect(b.addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let t = Instant::now();
    while !send.is_extended_connect_protocol_enabled() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.unwrap();
    }
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("http://ws.test/chat")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    for i in 0..5 {
        let text = format!("over h2 {i}");
        stream
            .send_data(Bytes::from(ws_frame(0x1, text.as_bytes())), false)
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 + text.len() {
            let c = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .expect("an echo")
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(c.len());
            got.extend_from_slice(&c);
        }
        assert_eq!(got[0], 0x81);
        assert_eq!(usize::from(got[1]), text.len());
        assert_eq!(&got[2..], text.as_bytes());
    }
    // Close: the server's close frame comes back and the stream ends.
    stream
        .send_data(Bytes::from(ws_frame(0x8, &[0x03, 0xe8])), false)
        .unwrap();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the stream ends")
    {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(rest.first(), Some(&0x88), "{rest:?} {}", b.log_text());
    // Plain CONNECT is still refused.
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("ws.test:443")
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 405);
    let m = b.metrics_with(&["pier_tunnels_total 1"]).await;
    assert!(m.contains("pier_tunnels_total 1"), "{m}");
}

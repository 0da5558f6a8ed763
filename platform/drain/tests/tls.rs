//! TLS drains end to end: an HTTPS server (hyper over tokio-rustls) and a syslog-over-TLS
//! receiver started by the test with a certificate of the test kit's, trusted by the drainer
//! through its extra CA file (`pier drainer --drain-ca`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{expected, parse, texts, Drainer, Setup, WITHIN};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pier_testkit::certs::cert_pair;
use tokio::net::TcpListener;

/// One request the HTTPS server got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
    status: u16,
}

#[derive(Default)]
struct Server {
    requests: Vec<Seen>,
    connections: usize,
    /// Statuses to answer, in order; 200 once they are used up.
    answers: Vec<u16>,
}

/// An HTTPS server on loopback with `cert`/`key`; returns its port.
async fn https_server(cert: &str, key: &str, state: Arc<Mutex<Server>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::tls_server(cert, key, &[b"http/1.1"]));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            state.lock().unwrap().connections += 1;
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes().to_vec();
                        let mut s = state.lock().unwrap();
                        let status = if s.answers.is_empty() {
                            200
                        } else {
                            s.answers.remove(0)
                        };
                        s.requests.push(Seen {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                            status,
                        });
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// Splits a logplex body into its octet-counted messages.
fn split_frames(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ').expect("LEN SP");
        let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
        out.push(String::from_utf8(rest[sp + 1..sp + 1 + len].to_vec()).unwrap());
        rest = &rest[sp + 1 + len..];
    }
    out
}

fn ca_file(cert: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), cert).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drain_posts_logplex_batches_over_one_kept_alive_connection() {
    let s = Setup::start().await;
    let (cert, key) = cert_pair(&["localhost"], 2020, 2090);
    let ca = ca_file(&cert);
    // The first batch is answered 503: sent again later, never lost.
    let server = Arc::new(Mutex::new(Server {
        answers: vec![503],
        ..Default::default()
    }));
    let port = https_server(&cert, &key, server.clone()).await;
    let drain = s
        .add_drain("blog", &format!("https://localhost:{port}/logs?app=blog"))
        .await;
    let mut cfg = s.config("d");
    cfg.extra_ca = Some(ca.path().to_path_buf());
    let drainer = Drainer::start(cfg);
    s.append("blog", 1..=5).await;
    let d = s
        .wait_drain("blog", &drain.id, "5 delivered", |d| d.delivered == 5)
        .await;
    assert!(
        d.last_error.as_deref().is_some_and(|e| e.contains("503")),
        "the refused batch is recorded: {d:?}"
    );
    s.append("blog", 6..=8).await;
    s.wait_drain("blog", &drain.id, "8 delivered", |d| d.delivered == 8)
        .await;

    let last_ids: Vec<String> = s
        .store
        .recent_logs("blog", 8)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    let (requests, connections) = {
        let seen = server.lock().unwrap();
        (seen.requests.clone(), seen.connections)
    };
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200, 200]);
    assert_eq!(connections, 1, "one connection, kept alive");
    let mut delivered = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/logs?app=blog");
        let h = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("content-type"), "application/logplex-1");
        assert_eq!(h("logplex-drain-token"), drain.id);
        assert_eq!(h("host"), format!("localhost:{port}"));
        assert!(h("user-agent").starts_with("pier-drain/"));
        let frames = split_frames(&r.body);
        assert_eq!(h("logplex-msg-count"), frames.len().to_string());
        // A batch sent again carries the same frame id: its last line's stream id.
        let last = if i < 2 { &last_ids[4] } else { &last_ids[7] };
        assert_eq!(&h("logplex-frame-id"), last);
        for f in &frames {
            let m = parse(f);
            assert_eq!(
                (m.pri.as_str(), m.hostname.as_str(), m.app_name.as_str()),
                ("14", "blog", "app")
            );
        }
        if r.status == 200 {
            delivered.extend(texts(&frames));
        }
    }
    assert_eq!(delivered, expected(1..=8));
    drainer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_needs_a_trusted_certificate() {
    let s = Setup::start().await;
    let (cert, key) = cert_pair(&["localhost"], 2020, 2090);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frames: pier_testkit::syslog::Frames = Arc::default();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::tls_server(&cert, &key, &[]));
    let got = frames.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, got) = (acceptor.clone(), got.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    pier_testkit::syslog::read_frames(tls, got).await;
                }
            });
        }
    });
    let drain = s
        .add_drain("blog", &format!("syslog+tls://localhost:{port}"))
        .await;
    // Without the CA, the certificate is refused and nothing is sent.
    let drainer = Drainer::start(s.config("plain"));
    s.append("blog", 1..=3).await;
    let d = s
        .wait_drain("blog", &drain.id, "the handshake failure", |d| {
            d.last_error.is_some()
        })
        .await;
    let why = d.last_error.unwrap();
    assert!(why.contains("TLS handshake with localhost failed"), "{why}");
    drainer.stop().await;
    assert!(frames.lock().unwrap().is_empty());

    // With it (pier drainer --drain-ca), the lines written meanwhile arrive.
    let ca = ca_file(&cert);
    let mut cfg = s.config("trusting");
    cfg.extra_ca = Some(ca.path().to_path_buf());
    let drainer = Drainer::start(cfg);
    s.append("blog", 4..=6).await;
    common::wait_until("6 messages over TLS", WITHIN, || async {
        (frames.lock().unwrap().len() >= 6).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(&frames.lock().unwrap()), expected(1..=6));
    drainer.stop().await;
}

#[tokio::test]
async fn a_ca_file_without_certificates_is_refused_at_start() {
    let s = Setup::start().await;
    let empty = ca_file("not a certificate\n");
    let mut cfg = s.config("d");
    cfg.extra_ca = Some(empty.path().to_path_buf());
    let e = pier_drain::run(cfg, std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
}

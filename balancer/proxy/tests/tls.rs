//! TLS through a real balancer process: protocol versions and handshakes (`[tls] min_version`),
//! certificates chosen by SNI (routes file, registry, default certificate) and swapped or
//! reloaded, HTTPS redirect and HSTS, TLS to `https://` backends (verification, pooling, SNI,
//! mutual TLS), the configuration check's TLS keys, and curl and openssl s_client as clients.
//! rustls clients from their crate; the TLS helpers from `pier_testkit::tls`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_testkit::certs::{make_cert, TestCa, TestCert};
use pier_testkit::h1::{get, h1_over, Backend, Conn};
use pier_testkit::h2::{h2_client, h2_get};
use pier_testkit::proxy::{
    admin_get, app_routes, backend_routes, written_backend_routes, Balancer,
};
use pier_testkit::tls::{
    client_config, client_config_versions, served_cert, tls_balancer, tls_connect, TlsBackend,
    TlsSetup,
};
use pier_testkit::{run_tool, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn https_http11_forwards_with_proto_https() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let mut tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let text = h1_over(&mut tls, "default.test", "/hello").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("one /hello"), "{text}");
    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen[0].header("x-forwarded-port"),
        Some(s.tls_port.to_string().as_str())
    );
    // The plain listener still says http.
    let r = get(s.b.addr(), "default.test", "/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.seen()[1].header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn tls_versions_are_12_and_13_only() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut store = rustls::RootCertStore::empty();
        store.add(s.default.der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[v])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        let tls = tls_connect(s.tls_port, "default.test", Arc::new(cfg))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
    }
    // A TLS 1.0 ClientHello (record and hello version 0x0301, no supported_versions) is refused.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.tls_port)).await.unwrap();
    let hello = legacy_client_hello();
    tcp.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 7];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0], 21, "an alert record, got {buf:?}");
    assert_eq!(buf[5], 2, "a fatal alert");
    assert!(
        buf[6] == 70 || buf[6] == 40,
        "protocol_version or handshake_failure: {buf:?}"
    );
}

#[tokio::test]
async fn min_version_13_refuses_tls12_clients_and_the_default_serves_both() {
    let backend = Backend::start("one").await;
    let routes = backend_routes("one", &["default.test"], &backend);
    for (extra, tls12_served) in [("", true), ("min_version = \"1.3\"\n", false)] {
        let s = tls_balancer(&routes, extra).await;
        for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let cfg = client_config_versions(&[&s.default.der], &[v]);
            let served = v.version == rustls::ProtocolVersion::TLSv1_3 || tls12_served;
            match tls_connect(s.tls_port, "default.test", cfg).await {
                Ok(mut tls) => {
                    assert!(served, "{extra:?}: a {:?} client was served", v.version);
                    assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
                    let text = h1_over(&mut tls, "default.test", "/v").await;
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                }
                Err(e) => {
                    assert!(
                        !served,
                        "{extra:?}: a {:?} client was refused: {e}",
                        v.version
                    );
                    // rustls answers a ClientHello without TLS 1.3 with protocol_version.
                    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
                }
            }
        }
    }
}

/// A minimal TLS 1.0 ClientHello offering TLS_RSA_WITH_AES_128_CBC_SHA.
fn legacy_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs[1] = (body.len() >> 16) as u8;
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(&backend_routes("one", &["default.test"], &backend), "").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", s.tls_port)).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed before the test's own deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(
        s.b.metrics_with(&["pier_tls_handshakes_total{result=\"timeout\"} 1"])
            .await
            .contains("pier_tls_handshakes_total{result=\"timeout\"} 1"),
        "{}",
        s.b.metrics().await
    );
}

// ---- certificates by SNI ----

#[tokio::test]
async fn certificates_chosen_by_sni_from_the_routes_file_and_swapped_on_reload() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let wild = make_cert(dir.path(), "wild", &["*.apps.test"]);
    let routes = |shop_cert: &TestCert| {
        format!(
            "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
            app_routes(
                "one",
                &["shop.test", "*.apps.test", "default.test", "other.test"],
                &[backend.addr],
                ""
            ),
            shop_cert.cert_path,
            shop_cert.key_path,
            wild.cert_path,
            wild.key_path
        )
    };
    let s = tls_balancer(&routes(&shop), "").await;
    let port = s.tls_port;
    assert_eq!(
        served_cert(port, "shop.test").await.unwrap(),
        shop.der.to_vec()
    );
    assert_eq!(
        served_cert(port, "a.apps.test").await.unwrap(),
        wild.der.to_vec()
    );
    // No certificate of its own: the default one.
    assert_eq!(
        served_cert(port, "other.test").await.unwrap(),
        s.default.der.to_vec()
    );
    assert_eq!(
        served_cert(port, "unknown.test").await.unwrap(),
        s.default.der.to_vec()
    );
    // A verified client gets the page over the shop certificate.
    let cfg = client_config(&[&shop.der], &[b"http/1.1"]);
    let mut tls = tls_connect(port, "shop.test", cfg).await.unwrap();
    assert!(h1_over(&mut tls, "shop.test", "/")
        .await
        .starts_with("HTTP/1.1 200"));
    // The admin view lists them (soonest expiry first, never a key) and metrics count them.
    let listed = admin_get(s.b.admin, "/certs").await.unwrap();
    assert_eq!(listed.status, 200);
    let v: serde_json::Value = serde_json::from_str(&listed.text()).unwrap();
    assert_eq!(v["count"], 2);
    let domains: Vec<&str> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["domain"].as_str().unwrap())
        .collect();
    assert!(
        domains.contains(&"shop.test") && domains.contains(&"*.apps.test"),
        "{v}"
    );
    assert_eq!(v["certificates"][0]["source"], "routes-file");
    assert_eq!(
        v["certificates"][0]["fingerprint_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(!listed.text().contains("PRIVATE KEY"));
    let m = s.b.metrics().await;
    assert!(m.contains("pier_tls_certificates 2"), "{m}");
    assert!(m.contains("pier_tls_cert_earliest_expiry_seconds "), "{m}");
    // Hot swap: a new certificate for shop.test in the routes file, no restart.
    let renewed = make_cert(dir.path(), "shop2", &["shop.test"]);
    s.b.write_routes(&routes(&renewed));
    let t = Instant::now();
    while served_cert(port, "shop.test").await.unwrap() != renewed.der.to_vec() {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the TLS listener serves `cert` as the default certificate.
async fn wait_served_cert(s: &TlsSetup, cert: &TestCert) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(s.tls_port, "default.test").await.unwrap() != cert.der.to_vec() {
        assert!(
            Instant::now() < deadline,
            "not reloaded: {}",
            s.b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_default_certificate_and_keeps_it_when_the_new_pair_is_bad() {
    // The files are not watched here: only the signal can reload them.
    let s = tls_balancer(
        &app_routes("blog", &["blog.test"], &[], ""),
        "watch = false\n",
    )
    .await;
    let port = s.tls_port;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        s.default.der.to_vec()
    );
    // certbot-style renewal: new files in place, then SIGHUP.
    let renewed = make_cert(s.certs.path(), "default", &["default.test"]);
    assert_ne!(renewed.der, s.default.der);
    s.b.signal("HUP");
    wait_served_cert(&s, &renewed).await;
    // A key that does not belong to the certificate: refused, the renewed one keeps serving.
    let other = make_cert(s.certs.path(), "other", &["other.test"]);
    std::fs::write(&renewed.key_path, &other.key_pem).unwrap();
    s.b.signal("HUP");
    s.b.wait_log("default certificate reload refused").await;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        renewed.der.to_vec()
    );
}

#[tokio::test]
async fn renewed_default_certificate_files_are_served_without_a_signal() {
    let s = tls_balancer(
        &app_routes("blog", &["blog.test"], &[], ""),
        "watch_interval = \"100ms\"\n",
    )
    .await;
    let port = s.tls_port;
    let renewed = make_cert(s.certs.path(), "default", &["default.test"]);
    wait_served_cert(&s, &renewed).await;
    assert!(s.b.log_text().contains("file-changed"));
    // A key that does not belong to the certificate is refused; the renewed pair keeps serving.
    let other = make_cert(s.certs.path(), "other", &["other.test"]);
    std::fs::write(&renewed.key_path, &other.key_pem).unwrap();
    s.b.wait_log("default certificate reload refused").await;
    assert_eq!(
        served_cert(port, "default.test").await.unwrap(),
        renewed.der.to_vec()
    );
}

#[tokio::test]
async fn h2_request_for_a_name_of_another_certificate_is_misdirected() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let routes = format!(
        "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
        app_routes(
            "one",
            &["shop.test", "default.test", "plain.test"],
            &[backend.addr],
            ""
        ),
        shop.cert_path,
        shop.key_path
    );
    let s = tls_balancer(&routes, "").await;
    let cfg = client_config(&[&shop.der], &[b"h2"]);
    let tls = tls_connect(s.tls_port, "shop.test", cfg).await.unwrap();
    let mut send = h2_client(tls).await;
    let (p, _) = h2_get(&mut send, "https://shop.test/ok", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    // default.test is served with the default certificate: not on this connection.
    let (p, _) = h2_get(&mut send, "https://default.test/x", None)
        .await
        .unwrap();
    assert_eq!(p.status, 421);
    assert_eq!(p.headers["x-pier-error"], "misdirected-request");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(
        &backend_routes("one", &["default.test"], &backend),
        "unknown_sni = \"reject\"\n",
    )
    .await;
    assert!(served_cert(s.tls_port, "default.test").await.is_some());
    assert!(served_cert(s.tls_port, "nobody.test").await.is_none());
}

#[tokio::test]
async fn https_redirect_and_hsts_per_app() {
    let backend = Backend::start("one").await;
    let routes = format!(
        "{}\n{}",
        app_routes(
            "secure",
            &["default.test"],
            &[backend.addr],
            "https_redirect = true\nhsts = \"max-age=31536000; includeSubDomains\"\n"
        ),
        app_routes("loose", &["loose.test"], &[backend.addr], "")
    );
    let s = tls_balancer(&routes, "https_port = 443\n").await;
    let r = get(s.b.addr(), "default.test", "/a/b?c=d").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://default.test/a/b?c=d"));
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "never over plain HTTP"
    );
    assert_eq!(get(s.b.addr(), "loose.test", "/").await.status, 200);
    // Over TLS: proxied, with HSTS added.
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let mut tls = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let text = h1_over(&mut tls, "default.test", "/in").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n"),
        "{text}"
    );
    // And over h2, where the h2c request on the plain port is redirected too.
    let mut plain = h2_client(TcpStream::connect(s.b.addr()).await.unwrap()).await;
    let (p, _) = h2_get(&mut plain, "http://default.test/h2", None)
        .await
        .unwrap();
    assert_eq!(p.status, 308);
    let cfg = client_config(&[&s.default.der], &[b"h2"]);
    let mut send = h2_client(tls_connect(s.tls_port, "default.test", cfg).await.unwrap()).await;
    let (p, _) = h2_get(&mut send, "https://default.test/h2", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(
        p.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
}

// ---- certificates from the registry ----

/// A registry on a fresh redis-server with app `shop` owning `domains` (verified), and a
/// backend for it (not registered).
async fn shop_registry(domains: &[&str]) -> (RedisServer, pier_registry::Registry, Backend) {
    use pier_registry::model::{AppRecord, DomainRecord};
    let redis = RedisServer::start();
    let reg = pier_registry::Registry::connect(&redis.url())
        .await
        .unwrap();
    let backend = Backend::start("one").await;
    reg.put_app("shop", &AppRecord::default()).await.unwrap();
    for d in domains {
        reg.put_domain(d, &DomainRecord::verified("shop"))
            .await
            .unwrap();
    }
    (redis, reg, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_certificates_are_served_and_swapped_without_restart() {
    use pier_registry::model::{BackendRecord, CertRecord};
    let (redis, reg, backend) = shop_registry(&["shop.test"]).await;
    reg.put_backend(
        "shop",
        "i0",
        &BackendRecord {
            address: backend.addr.to_string(),
            expires_at_ms: 0,
            weight: None,
            server_name: None,
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = make_cert(dir.path(), "first", &["shop.test"]);
    let rec = |c: &TestCert| CertRecord {
        app: "shop".into(),
        cert: c.cert_pem.clone(),
        key: c.key_pem.clone(),
        added_ms: 0,
        source: Default::default(),
    };
    reg.put_cert("shop.test", &rec(&first)).await.unwrap();
    let s = tls_balancer(
        "",
        &format!(
            "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n",
            redis.url()
        ),
    )
    .await;
    let wait_for = |want: Vec<u8>| {
        let port = s.tls_port;
        async move {
            let t = Instant::now();
            loop {
                if served_cert(port, "shop.test").await == Some(want.clone()) {
                    return;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "certificate not served"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(first.der.to_vec()).await;
    let cfg = client_config(&[&first.der], &[b"h2"]);
    let mut send = h2_client(tls_connect(s.tls_port, "shop.test", cfg).await.unwrap()).await;
    let (p, body) = h2_get(&mut send, "https://shop.test/x", None)
        .await
        .unwrap();
    assert_eq!((p.status, body), (http::StatusCode::OK, b"one /x".to_vec()));
    // Renewed in the registry: the next handshake gets the new one.
    let second = make_cert(dir.path(), "second", &["shop.test"]);
    reg.put_cert("shop.test", &rec(&second)).await.unwrap();
    wait_for(second.der.to_vec()).await;
    // The open connection keeps working.
    let (p, _) = h2_get(&mut send, "https://shop.test/y", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    // Deleted: back to the default certificate.
    reg.delete_cert("shop.test").await.unwrap();
    wait_for(s.default.der.to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_that_would_drop_most_certificates_is_held() {
    use pier_registry::model::CertRecord;
    let domains = ["a.shop.test", "b.shop.test"];
    let (redis, reg, backend) = shop_registry(&domains).await;
    let dir = tempfile::tempdir().unwrap();
    let mut certs = Vec::new();
    for d in domains {
        let c = make_cert(dir.path(), d, &[d]);
        reg.put_cert(
            d,
            &CertRecord {
                app: "shop".into(),
                cert: c.cert_pem.clone(),
                key: c.key_pem.clone(),
                added_ms: 0,
                source: Default::default(),
            },
        )
        .await
        .unwrap();
        certs.push(c);
    }
    let _ = backend;
    let s = tls_balancer(
        "",
        &format!(
            "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\nresync_interval = \"300ms\"\n",
            redis.url()
        ),
    )
    .await;
    let t = Instant::now();
    while served_cert(s.tls_port, "a.shop.test").await != Some(certs[0].der.to_vec()) {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The certificates vanish behind the balancers' back (no change in the feed): the next
    // periodic resync would drop them all.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("pier:certs")
        .query_async(&mut c)
        .await
        .unwrap();
    let t = Instant::now();
    while s.b.metric("pier_registry_resyncs_held_total").await < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held: both certificates are still served.
    assert_eq!(
        served_cert(s.tls_port, "a.shop.test").await,
        Some(certs[0].der.to_vec())
    );
    assert_eq!(
        served_cert(s.tls_port, "b.shop.test").await,
        Some(certs[1].der.to_vec())
    );
    assert!(
        s.b.log_text().contains("certificates_in_registry=0"),
        "{}",
        s.b.log_text()
    );
}

// ---- TLS to backends ----

/// Sends `n` GETs for `host` over one keep-alive connection (so one worker's pool serves them).
async fn keep_alive_gets(addr: std::net::SocketAddr, host: &str, n: usize) -> Vec<(u16, String)> {
    let mut c = Conn::connect(addr).await;
    let mut out = Vec::new();
    for i in 0..n {
        c.send(format!("GET /r{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await;
        let r = c.read_response(false).await.unwrap();
        out.push((r.status, r.text()));
    }
    out
}

#[tokio::test]
async fn https_backends_verified_with_ca_file_are_pooled_and_get_their_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("pier test backends CA");
    let ca_file = ca.write(dir.path(), "ca");
    // One backend known by its IP (certificate for 127.0.0.1, no SNI), one by a name.
    let by_ip = TlsBackend::start("by-ip", &ca.server(&["127.0.0.1"]), None).await;
    let by_name = TlsBackend::start("by-name", &ca.server(&["api.internal"]), None).await;
    let routes = written_backend_routes(
        "ip",
        &["ip.test"],
        &[&format!("\"https://{}\"", by_ip.addr)],
    ) + &written_backend_routes(
        "named",
        &["named.test"],
        &[&format!(
            "{{ address = \"https://{}\", server_name = \"api.internal\" }}",
            by_name.addr
        )],
    );
    let b = Balancer::start(&routes, &format!("[upstream_tls]\nca_file = {ca_file:?}\n")).await;
    for (host, be) in [("ip.test", &by_ip), ("named.test", &by_name)] {
        let answers = keep_alive_gets(b.addr(), host, 3).await;
        for (i, (status, text)) in answers.iter().enumerate() {
            assert_eq!(*status, 200, "{host}: {text}\n{}", b.log_text());
            assert_eq!(text, &format!("{} /r{i} conn=1", be.name), "{host}");
        }
        // Three requests, one TLS connection: pooled like a plain backend.
        assert_eq!(be.seen().len(), 1, "{host}: {:?}", be.seen());
        assert_eq!(
            be.failed_handshakes
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
    assert_eq!(
        by_ip.seen()[0].sni,
        None,
        "an IP address is never sent as SNI"
    );
    assert_eq!(by_name.seen()[0].sni.as_deref(), Some("api.internal"));
    assert!(
        b.metrics().await.contains("pier_upstream_reused_total 4"),
        "{}",
        b.metrics().await
    );
}

#[tokio::test]
async fn a_backend_certificate_that_does_not_verify_is_a_502_upstream_tls_and_counts_towards_ejection(
) {
    let dir = tempfile::tempdir().unwrap();
    let right = TestCa::new("the backends' CA");
    let wrong = TestCa::new("another CA");
    let wrong_file = wrong.write(dir.path(), "wrong");
    let right_file = right.write(dir.path(), "right");
    let be = TlsBackend::start("be", &right.server(&["127.0.0.1", "api.internal"]), None).await;
    let routes =
        written_backend_routes("api", &["api.test"], &[&format!("\"https://{}\"", be.addr)]);
    let b = Balancer::start(
        &routes,
        &format!("[upstream]\neject_after = 2\n[upstream_tls]\nca_file = {wrong_file:?}\n"),
    )
    .await;
    for _ in 0..2 {
        let r = get(b.addr(), "api.test", "/").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.header("x-pier-error"), Some("upstream-tls"));
    }
    assert_eq!(be.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The backend sees the handshakes fail a moment after pier gave up on them.
    let failed = &be.failed_handshakes;
    pier_testkit::wait_until("two failed handshakes", Duration::from_secs(5), || async {
        (failed.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let m = b
        .metrics_with(&[
            "pier_upstream_ejections_total 1",
            "reason=\"upstream-tls\"} 2",
        ])
        .await;
    assert!(m.contains("pier_upstream_ejections_total 1"), "{m}");
    assert!(
        m.contains("pier_errors_total{reason=\"upstream-tls\"} 2"),
        "{m}"
    );
    pier_testkit::wait_until("the reason logged", Duration::from_secs(5), || async {
        let log = b.log_text();
        (log.contains("upstream TLS handshake failed") && log.contains("unknown-issuer"))
            .then_some(())
    })
    .await;

    // The right CA, but a certificate for another name than the one asked for.
    let routes = written_backend_routes(
        "api",
        &["api.test"],
        &[&format!(
            "{{ address = \"https://{}\", server_name = \"db.internal\" }}",
            be.addr
        )],
    );
    let b = Balancer::start(
        &routes,
        &format!("[upstream_tls]\nca_file = {right_file:?}\n"),
    )
    .await;
    let r = get(b.addr(), "api.test", "/").await;
    assert_eq!(
        (r.status, r.header("x-pier-error")),
        (502, Some("upstream-tls"))
    );
    pier_testkit::wait_until("the reason logged", Duration::from_secs(5), || async {
        b.log_text().contains("name-mismatch").then_some(())
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_shows_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let backends = TestCa::new("backends");
    let clients = TestCa::new("clients");
    let ca_file = backends.write(dir.path(), "backends");
    let client = clients.client("pier-balancer");
    let (cert, key) = client.write(dir.path(), "client");
    let be = TlsBackend::start("mtls", &backends.server(&["127.0.0.1"]), Some(&clients)).await;
    let routes =
        written_backend_routes("api", &["api.test"], &[&format!("\"https://{}\"", be.addr)]);
    let b = Balancer::start(
        &routes,
        &format!("[upstream_tls]\nca_file = {ca_file:?}\ncert = {cert:?}\nkey = {key:?}\n"),
    )
    .await;
    let r = get(b.addr(), "api.test", "/who").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), b.log_text());
    assert_eq!(
        be.seen()[0].client_cert.as_deref(),
        Some(&client.chain[0][..])
    );

    // Without a client certificate the backend refuses the connection: a 502. Over TLS 1.3 the
    // refusal (the alert certificate_required) comes after pier's side of the handshake, on
    // the first read.
    let b = Balancer::start(&routes, &format!("[upstream_tls]\nca_file = {ca_file:?}\n")).await;
    let r = get(b.addr(), "api.test", "/who").await;
    assert_eq!(
        (r.status, r.header("x-pier-error")),
        (502, Some("upstream-tls")),
        "{}",
        r.text()
    );
    // Logs are written by a background thread.
    pier_testkit::wait_until("the reason logged", Duration::from_secs(5), || async {
        b.log_text()
            .contains("client-certificate-required")
            .then_some(())
    })
    .await;
    assert_eq!(
        be.seen().len(),
        1,
        "only the first balancer's handshake completed"
    );
}

#[tokio::test]
async fn the_backend_handshake_is_bounded_by_the_connect_timeout() {
    // A backend that accepts and never says a word of TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let routes = written_backend_routes("api", &["api.test"], &[&format!("\"https://{addr}\"")])
        + "timeouts = { connect = \"300ms\" }\n";
    let b = Balancer::start(&routes, "").await;
    let started = Instant::now();
    let r = get(b.addr(), "api.test", "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.header("x-pier-error"), Some("upstream-connect-timeout"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_https_backends_are_verified_and_the_router_line_says_why_not() {
    use pier_registry::model::{AppRecord, BackendRecord, DomainRecord};
    let redis = RedisServer::start();
    let reg = pier_registry::Registry::connect(&redis.url())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("backends");
    let ca_file = ca.write(dir.path(), "ca");
    let good = TlsBackend::start("good", &ca.server(&["web.internal"]), None).await;
    let stranger = TestCa::new("nobody trusts this");
    let bad = TlsBackend::start("bad", &stranger.server(&["127.0.0.1"]), None).await;
    for (app, be, server_name) in [("good", &good, Some("web.internal")), ("bad", &bad, None)] {
        reg.put_app(app, &AppRecord::default()).await.unwrap();
        reg.put_domain(&format!("{app}.test"), &DomainRecord::verified(app))
            .await
            .unwrap();
        let rec = BackendRecord {
            address: format!("https://{}", be.addr),
            expires_at_ms: 0,
            weight: None,
            server_name: server_name.map(str::to_string),
        };
        reg.put_backend(app, "web.1", &rec).await.unwrap();
    }
    let config = format!(
        "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n[telemetry]\nid = \"lb-1\"\n\
         [upstream_tls]\nca_file = {ca_file:?}\n",
        redis.url()
    );
    let b = Balancer::start("", &config).await;
    let t = Instant::now();
    loop {
        let r = get(b.addr(), "good.test", "/").await;
        if r.status == 200 {
            assert_eq!(r.text(), "good / conn=1");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(good.seen()[0].sni.as_deref(), Some("web.internal"));
    let r = get(b.addr(), "bad.test", "/").await;
    assert_eq!(
        (r.status, r.header("x-pier-error")),
        (502, Some("upstream-tls"))
    );
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis::cmd("XRANGE")
                .arg("pier:logs:bad")
                .arg("-")
                .arg("+")
                .query_async(&mut c)
                .await
                .unwrap();
        if let Some((_, f)) = entries.last() {
            let line = &f["line"];
            assert!(
                line.starts_with("at=error error=upstream-tls detail=unknown-issuer method=GET"),
                "{line}"
            );
            assert!(line.contains(" status=502 "), "{line}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no router line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the configuration check ----

#[test]
fn tls_config_problems_are_keyed() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let b = make_cert(dir.path(), "b", &["b.test"]);
    let check = |text: &str| {
        let p = dir.path().join("balancer.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::write(dir.path().join("routes.toml"), "").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pier-balancer"))
            .arg("--check")
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let base = "[routes]\nfile = \"routes.toml\"\n";
    let (ok, text) = check(&format!("[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}"));
    assert!(
        !ok && text.contains("tls: listen.https needs [tls] cert and key"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, b.key_path
    ));
    assert!(!ok && text.contains("tls.cert: "), "{text}");
    assert!(text.contains("does not match"), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = \"missing.pem\"\nkey = {:?}\n",
        a.key_path
    ));
    assert!(!ok && text.contains("tls.cert: cannot read"), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\nunknown_sni = \"maybe\"\n",
        a.cert_path, a.key_path
    ));
    assert!(!ok && text.contains("tls.unknown_sni"), "{text}");
    for bad in ["\"1.1\"", "\"tls1.3\"", "1.0"] {
        let (ok, text) = check(&format!(
            "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\nmin_version = {bad}\n",
            a.cert_path, a.key_path
        ));
        let file = dir.path().join("balancer.toml").display().to_string();
        assert!(
            !ok && text.contains(&format!("{file}: tls.min_version: unknown version")),
            "{bad}: {text}"
        );
        assert!(text.contains("use \"1.2\" or \"1.3\""), "{text}");
    }
    for good in ["\"1.2\"", "\"1.3\"", "1.3"] {
        let (ok, text) = check(&format!(
            "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\nmin_version = {good}\n",
            a.cert_path, a.key_path
        ));
        assert!(ok, "{good}: {text}");
    }
    // [upstream_tls]: a CA file without certificates, a client certificate without its key,
    // a client pair that does not match.
    std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
    let (ok, text) = check(&format!(
        "[listen]\nhttp = [\"127.0.0.1:8080\"]\n{base}[upstream_tls]\nca_file = \"empty.pem\"\ncert = {:?}\n",
        a.cert_path
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("upstream_tls.ca_file: ") && text.contains("no certificate in it"),
        "{text}"
    );
    assert!(text.contains("upstream_tls.key: "), "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttp = [\"127.0.0.1:8080\"]\n{base}[upstream_tls]\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, b.key_path
    ));
    assert!(
        !ok && text.contains("upstream_tls.cert: ") && text.contains("does not match"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "[listen]\nhttp = [\"127.0.0.1:8080\"]\n{base}[upstream_tls]\nca_file = {:?}\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, a.cert_path, a.key_path
    ));
    assert!(ok, "{text}");
    let (ok, text) = check(&format!(
        "[listen]\nhttps = [\"127.0.0.1:8443\"]\n{base}[tls]\ncert = {:?}\nkey = {:?}\n",
        a.cert_path, a.key_path
    ));
    assert!(ok, "{text}");
}

// ---- command-line clients: curl and openssl s_client ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_s_client_see_alpn_sni_and_h2() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let shop = make_cert(dir.path(), "shop", &["shop.test"]);
    let routes = format!(
        "{}\n[[cert]]\ncert = {:?}\nkey = {:?}\n",
        app_routes("one", &["shop.test", "default.test"], &[backend.addr], ""),
        shop.cert_path,
        shop.key_path
    );
    let s = tls_balancer(&routes, "").await;
    let port = s.tls_port.to_string();
    let http = s.b.port.to_string();
    let shop_pem = shop.cert_pem.clone();
    let tools = tokio::task::spawn_blocking(move || {
        let resolve = format!("shop.test:{port}:127.0.0.1");
        let url = format!("https://shop.test:{port}/curl");
        let cacert = shop.cert_path.to_str().unwrap().to_string();
        // curl verifies the shop certificate for shop.test and negotiates h2.
        let h2 = run_tool(
            "curl",
            &[
                "-sS",
                "--http2",
                "--cacert",
                &cacert,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ],
            b"",
        );
        let h1 = run_tool(
            "curl",
            &[
                "-sS",
                "--http1.1",
                "--cacert",
                &cacert,
                "--resolve",
                &resolve,
                "-w",
                " %{http_version} %{http_code}",
                &url,
            ],
            b"",
        );
        let h2c = run_tool(
            "curl",
            &[
                "-sS",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "-H",
                "Host: shop.test",
                &format!("http://127.0.0.1:{http}/h2c"),
            ],
            b"",
        );
        let s_client = |name: &str| {
            run_tool(
                "openssl",
                &[
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    name,
                    "-alpn",
                    "h2,http/1.1",
                ],
                b"",
            )
        };
        (h2, h1, h2c, s_client("shop.test"), s_client("default.test"))
    })
    .await
    .unwrap();
    let (h2, h1, h2c, shop_hello, default_hello) = tools;
    assert!(h2.0, "{}", h2.1);
    assert_eq!(h2.1.trim(), "2 200");
    assert!(h1.1.ends_with("one /curl 1.1 200"), "{}", h1.1);
    assert_eq!(h2c.1.trim(), "2 200", "{}", h2c.1);
    // s_client: the certificate chosen by SNI, ALPN h2, a modern protocol.
    let served = |text: &str| -> String {
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a certificate");
        let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
        text[start..end].split_whitespace().collect()
    };
    let pem = |p: &str| -> String {
        let end = p.find("-----END CERTIFICATE-----").unwrap();
        p[..end].split_whitespace().collect()
    };
    assert_eq!(served(&shop_hello.1), pem(&shop_pem));
    assert!(
        shop_hello.1.contains("ALPN protocol: h2"),
        "{}",
        shop_hello.1
    );
    assert!(shop_hello.1.contains("New, TLSv1.3"), "{}", shop_hello.1);
    assert_eq!(served(&default_hello.1), pem(&s.default.cert_pem));
    assert!(
        default_hello.1.contains("ALPN protocol: h2"),
        "{}",
        default_hello.1
    );
}

#[tokio::test]
async fn a_client_past_its_connections_gets_goaway_over_h2_and_429_over_https() {
    let backend = Backend::start("one").await;
    let s = tls_balancer(
        &backend_routes("one", &["default.test"], &backend),
        "[limits]\nclient_max_connections = 1\n",
    )
    .await;
    // The one connection allowed, held open.
    let cfg = client_config(&[&s.default.der], &[b"h2"]);
    let first = tls_connect(s.tls_port, "default.test", cfg.clone())
        .await
        .unwrap();
    let mut held = h2_client(first).await;
    let (head, _) = h2_get(&mut held, "https://default.test/", None)
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    // Over h2: GOAWAY with ENHANCE_YOUR_CALM.
    let second = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let mut refused = h2_client(second).await;
    let e = h2_get(&mut refused, "https://default.test/", None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}");
    // Over HTTP/1.1: the 429.
    let cfg = client_config(&[&s.default.der], &[b"http/1.1"]);
    let mut third = tls_connect(s.tls_port, "default.test", cfg).await.unwrap();
    let text = h1_over(&mut third, "default.test", "/").await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.contains("x-pier-error: too-many-connections"),
        "{text}"
    );
    assert_eq!(backend.count(), 1);
}

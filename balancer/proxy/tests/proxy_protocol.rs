//! The PROXY protocol on a listener marked for it, over real sockets: the client address taken
//! from version 1 and version 2 headers, connections without a valid one closed, and a
//! `PROXY` line on an ordinary listener refused as the bad request it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use pier_testkit::h1::{Backend, Conn};
use pier_testkit::net::free_port;
use pier_testkit::proxy::{app_routes, Balancer};

const GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: blog.test\r\n\r\n";

/// A balancer with a PROXY-protocol listener (`b.addr()`) and an ordinary one (returned).
async fn setup() -> (Balancer, SocketAddr, Backend) {
    let be = Backend::start("b1").await;
    let plain = free_port();
    let config = format!(
        "[listen]\nhttp = [{{ address = \"127.0.0.1:{{port}}\", proxy_protocol = true }}, \"127.0.0.1:{plain}\"]\n"
    );
    let routes = app_routes("blog", &["blog.test"], &[be.addr], "");
    let b = Balancer::start(&routes, &config).await;
    (b, SocketAddr::from(([127, 0, 0, 1], plain)), be)
}

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

/// Sends `header` then one GET, and returns the `X-Forwarded-For` the backend saw.
async fn forwarded_for(b: &Balancer, be: &Backend, header: &[u8]) -> String {
    let before = be.count();
    let mut c = Conn::connect(b.addr()).await;
    c.send(&[header, GET].concat()).await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = be.seen();
    assert_eq!(seen.len(), before + 1);
    seen[before].header("x-forwarded-for").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_from_the_header() {
    let (b, _, be) = setup().await;
    let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 80\r\n";
    assert_eq!(forwarded_for(&b, &be, v1).await, "203.0.113.9");
    let v1_6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 80\r\n";
    assert_eq!(forwarded_for(&b, &be, v1_6).await, "2001:db8::9");
    // UNKNOWN and LOCAL (health checks of the load balancer in front) keep the real peer.
    assert_eq!(
        forwarded_for(&b, &be, b"PROXY UNKNOWN\r\n").await,
        "127.0.0.1"
    );
    assert_eq!(
        forwarded_for(&b, &be, &v2(0x20, 0x00, &[])).await,
        "127.0.0.1"
    );

    let mut v4 = vec![198, 51, 100, 7, 10, 0, 0, 1];
    v4.extend_from_slice(&40000u16.to_be_bytes());
    v4.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(
        forwarded_for(&b, &be, &v2(0x21, 0x11, &v4)).await,
        "198.51.100.7"
    );
    // With a TLV after the addresses (as AWS sends), and the request in the same write.
    let mut tlv = v4.clone();
    tlv.extend_from_slice(&[0xEA, 0x00, 0x03, b'v', b'p', b'c']);
    assert_eq!(
        forwarded_for(&b, &be, &v2(0x21, 0x11, &tlv)).await,
        "198.51.100.7"
    );
    let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
    v6.extend_from_slice(&[0; 11]);
    v6.push(7);
    v6.extend_from_slice(&[0; 16]);
    v6.extend_from_slice(&40000u16.to_be_bytes());
    v6.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(
        forwarded_for(&b, &be, &v2(0x21, 0x21, &v6)).await,
        "2001:db8::7"
    );

    // A header that arrives in pieces is waited for; the request after it is untouched, and
    // the connection keeps serving requests with the header's address.
    let mut c = Conn::connect(b.addr()).await;
    c.send(b"PROXY TCP4 192.0.2.").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"44 10.0.0.1 1234 80\r").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&[b"\n".as_slice(), GET, GET].concat()).await;
    for _ in 0..2 {
        let r = c.read_response(false).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
    }
    let seen = be.seen();
    for s in &seen[seen.len() - 2..] {
        assert_eq!(s.header("x-forwarded-for"), Some("192.0.2.44"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_header_the_connection_is_closed_and_nothing_is_forwarded() {
    let (b, _, be) = setup().await;
    let mut v4 = vec![198, 51, 100, 7, 10, 0, 0, 1, 0, 1, 0, 80];
    let cases: Vec<Vec<u8>> = vec![
        GET.to_vec(),
        b"PROXY TCP4 203.0.113.9 10.0.0.1 99999 80\r\n".to_vec(),
        b"PROXY TCP4 not-an-ip 10.0.0.1 1 80\r\n".to_vec(),
        b"PROXY TCP4 203.0.113.9 10.0.0.1 1 80\n".to_vec(),
        [b"PROXY TCP4 203.0.113.9 ".as_slice(), &[b'1'; 100], b"\r\n"].concat(),
        v2(0x22, 0x11, &v4),
        v2(0x21, 0x11, &v4[..8]),
        {
            v4.truncate(4);
            v2(0x21, 0x21, &v4)
        },
    ];
    for header in cases {
        let mut c = Conn::connect(b.addr()).await;
        c.send(&[header.as_slice(), GET].concat()).await;
        assert!(
            c.is_closed(Duration::from_secs(2)).await,
            "{:?}",
            String::from_utf8_lossy(&header)
        );
    }
    assert_eq!(be.count(), 0);
    let m = b.metrics().await;
    assert!(
        m.contains("pier_proxy_protocol_refused_total{reason=\"missing\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pier_proxy_protocol_refused_total{reason=\"malformed\"} 7"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_listener_never_takes_an_address_from_the_client() {
    let (_b, plain, be) = setup().await;
    let mut c = Conn::connect(plain).await;
    c.send(
        &[
            b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 80\r\n".as_slice(),
            GET,
        ]
        .concat(),
    )
    .await;
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(be.count(), 0);
    // A request without one is served with the real peer.
    let mut c = Conn::connect(plain).await;
    c.send(GET).await;
    assert_eq!(c.read_response(false).await.unwrap().status, 200);
    assert_eq!(be.seen()[0].header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_https_listener_the_header_comes_before_the_handshake() {
    use tokio::io::AsyncWriteExt;
    let be = Backend::start("b1").await;
    let certs = tempfile::tempdir().unwrap();
    let cert = pier_testkit::certs::make_cert(certs.path(), "blog", &["blog.test"]);
    let tls_port = free_port();
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\"]\n\
         https = [{{ address = \"127.0.0.1:{tls_port}\", proxy_protocol = true }}]\n\
         [tls]\ncert = {:?}\nkey = {:?}\n",
        cert.cert_path, cert.key_path
    );
    let routes = app_routes("blog", &["blog.test"], &[be.addr], "");
    let _b = Balancer::start(&routes, &config).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.80 10.0.0.1 5000 443\r\n")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("blog.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pier_testkit::tls::accept_any())
        .connect(name, tcp)
        .await
        .unwrap();
    let answer = pier_testkit::h1::h1_over(&mut tls, "blog.test", "/tls").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(be.seen()[0].header("x-forwarded-for"), Some("203.0.113.80"));
    assert_eq!(be.seen()[0].header("x-forwarded-proto"), Some("https"));
}

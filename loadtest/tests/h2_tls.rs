#![allow(clippy::unwrap_used)]
//! HTTP/2 (h2c prior knowledge and ALPN over TLS) and HTTP/1.1 over TLS, with SNI per host.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{scratch, start_h2c, start_h2c_with, start_tls, tls_config, Behaviour};
use pier_load::config::{HostMode, Protocol, RunConfig, TlsOptions};
use pier_load::hosts::expand_pattern;
use pier_load::target::Target;

fn config(url: &str) -> RunConfig {
    let mut cfg = RunConfig::new(Target::parse(url).unwrap());
    cfg.threads = 1;
    cfg.connections = 2;
    cfg.duration = Duration::from_millis(800);
    cfg
}

#[test]
fn h2c_streams_are_counted_per_stream() {
    let server = start_h2c();
    let mut cfg = config(&server.url());
    cfg.protocol = Protocol::Http2 { max_streams: 8 };
    cfg.hosts = expand_pattern("s{0..3}.test").unwrap();
    cfg.expect_header = Some("x-backend".into());
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    server.wait_idle();
    let seen = server.seen.requests();
    assert!(r.responses() > 100, "{} responses", r.responses());
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert_eq!(r.mismatched, 0);
    // Streams the server accepted were answered or still in flight at the end.
    assert!(
        seen >= r.responses(),
        "server {seen} < client {}",
        r.responses()
    );
    assert!(seen <= r.responses() + r.in_flight_at_end);
    // Streams really ran concurrently on a connection.
    assert!(server.seen.max_streams.load(Ordering::SeqCst) > 1);
    assert_eq!(server.seen.hosts().len(), 4);
}

#[test]
fn h2_streams_time_out_one_by_one() {
    // Every stream hangs: each of the 8 stream workers times out about every 150 ms.
    let server = start_h2c_with(Behaviour {
        silent: true,
        ..Default::default()
    });
    let mut cfg = config(&server.url());
    cfg.protocol = Protocol::Http2 { max_streams: 4 };
    cfg.duration = Duration::from_secs(1);
    cfg.timeout = Some(Duration::from_millis(150));
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    server.wait_idle();
    assert_eq!(r.responses(), 0);
    // 8 workers × 6 whole timeouts in a second; generous bounds for a busy box.
    assert!(r.errors.timeout >= 24, "{:?}", r.errors);
    assert!(r.errors.timeout <= 64, "{:?}", r.errors);
    assert_eq!(r.errors.total(), r.errors.timeout, "{:?}", r.errors);
    assert_eq!(
        r.errors.timeout + r.in_flight_at_end,
        server.seen.requests()
    );
}

#[test]
fn h2_over_tls_with_alpn_and_a_trusted_ca() {
    let names = ["a.test", "b.test", "c.test"];
    let (tls, ca_pem) = tls_config(&names);
    let server = start_tls(Behaviour::default(), tls);
    let dir = scratch("h2tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut cfg = config(&format!("https://a.test:{}/", server.addr.port()));
    cfg.connect_to = Some(server.addr.to_string());
    cfg.protocol = Protocol::Http2 { max_streams: 4 };
    cfg.connections = 3;
    cfg.hosts = names
        .iter()
        .map(|n| pier_load::hosts::HostEntry {
            name: n.to_string(),
            expect: None,
        })
        .collect();
    cfg.host_mode = HostMode::Pin;
    cfg.tls = TlsOptions {
        insecure: false,
        ca_file: Some(ca),
    };
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    server.wait_idle();
    assert!(
        r.responses() > 50,
        "{} responses; {:?} {:?}",
        r.responses(),
        r.errors,
        r.first_connect_error
    );
    assert_eq!(
        r.errors.total(),
        0,
        "{:?} {:?}",
        r.errors,
        r.first_connect_error
    );
    // One connection pinned to each host, each announcing its host in SNI.
    let sni = server.seen.sni.lock().unwrap().clone();
    for n in names {
        assert!(sni.contains_key(n), "no SNI {n}: {sni:?}");
    }
}

#[test]
fn h1_over_tls_insecure_and_verification_failure() {
    let (tls, _) = tls_config(&["secure.test"]);
    let server = start_tls(Behaviour::default(), tls);
    let url = format!("https://secure.test:{}/", server.addr.port());

    // Without trusting the CA the handshake fails, and that is a connect error.
    let mut cfg = config(&url);
    cfg.connect_to = Some(server.addr.to_string());
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    assert_eq!(r.responses(), 0);
    assert!(r.errors.connect > 0);

    cfg.tls.insecure = true;
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    server.wait_idle();
    assert!(
        r.responses() > 50,
        "{:?} {:?}",
        r.errors,
        r.first_connect_error
    );
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(server.seen.sni.lock().unwrap().contains_key("secure.test"));
}

#[test]
fn graceful_goaway_is_a_reconnect_not_an_error() {
    // Like nginx's keepalive_requests: after 40 streams the server sends GOAWAY; streams the
    // client opened beyond it were not processed and are sent again on a new connection.
    let server = start_h2c_with(Behaviour {
        h2_streams_per_conn: Some(40),
        ..Default::default()
    });
    let mut cfg = config(&server.url());
    cfg.protocol = Protocol::Http2 { max_streams: 8 };
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    server.wait_idle();
    assert!(r.responses() > 100, "{} responses", r.responses());
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert!(r.reconnects > 3, "{} reconnects", r.reconnects);
}

#[test]
fn h2_open_model_accounts_for_every_due_request() {
    let server = start_h2c();
    let mut cfg = config(&server.url());
    cfg.protocol = Protocol::Http2 { max_streams: 4 };
    cfg.duration = Duration::from_secs(1);
    cfg.warmup = Duration::from_millis(200);
    cfg.model = pier_load::LoadModel::Open { rate: 500.0 };
    let r = pier_load::run(&cfg, &mut |_| {}).unwrap();
    let due = r.responses() + r.errors.total() + r.in_flight_at_end + r.unsent;
    assert!(
        (499..=501).contains(&due),
        "{due} accounted for: {} answered, {:?}, {} in flight, {} unsent",
        r.responses(),
        r.errors,
        r.in_flight_at_end,
        r.unsent
    );
    assert!(r.responses() >= 480, "{} responses", r.responses());
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
}

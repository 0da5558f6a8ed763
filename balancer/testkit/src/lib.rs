//! pier's test kit: what the integration tests of every crate share, written once.
//!
//! It owns helpers that start real things on loopback for tests (a private `redis-server` on a
//! free port, a tiny HTTP app, the workspace's own binaries) and small clients to look at them.
//! It holds no test of its own and is only ever a dev-dependency. It depends on no pier crate,
//! so any crate of the workspace may use it.
//!
//! Modules:
//! - [`net`]: free loopback ports, a raw HTTP GET, one request read for a test server
//!   ([`net::read_request`]), a tiny HTTP app ([`net::TestBackend`]).
//! - [`redis_server`]: [`RedisServer`], a private `redis-server` process.
//! - [`postgres_server`]: [`PostgresServer`], a private PostgreSQL server (password auth).
//! - [`process`]: the workspace's binaries, [`process::Output`] of a run, waiting for a condition.
//! - [`certs`]: self-signed certificates, as PEM strings or as files ([`certs::make_cert`]), and
//!   a private CA issuing server and client certificates ([`certs::TestCa`]).
//! - [`dns`]: [`DnsServer`], an authoritative DNS server on loopback (hickory-server).
//! - [`balancer`]: a `pier-balancer` process following a Redis registry.
//! - [`proxy`]: a `pier-balancer` process following a routes file ([`proxy::Balancer`]), and
//!   the routes files written for it.
//! - [`h1`]: HTTP/1.1 by hand: a raw client connection ([`h1::Conn`]) and a programmable
//!   backend ([`h1::Backend`]).
//! - [`h2`]: HTTP/2: an `h2` crate client, raw frames ([`h2::RawH2`]), an h2c backend.
//! - [`tls`]: a balancer with an https listener ([`tls::tls_balancer`]), rustls clients, and an
//!   HTTPS backend ([`tls::TlsBackend`]).
//! - [`ws`]: a WebSocket echo server and hand-made client frames.
//! - [`browser`]: headless Chromium over the DevTools protocol ([`browser::Browser`]).
//! - [`syslog`]: [`SyslogListener`], a syslog receiver of octet-counted frames.
//! - [`pty`]: [`pty::PtyProcess`], a command run on a pseudo-terminal, as at a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod balancer;
pub mod browser;
pub mod certs;
pub mod dns;
pub mod h1;
pub mod h2;
pub mod limited_ca;
pub mod net;
pub mod pebble;
pub mod postgres_server;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod redis_server;
pub mod syslog;
pub mod tls;
pub mod ws;

pub use dns::DnsServer;
pub use net::{free_port, http_get, TestBackend};
pub use postgres_server::PostgresServer;
pub use process::{run_tool, wait_until, workspace_binary, Output};
pub use redis_server::RedisServer;
pub use syslog::SyslogListener;

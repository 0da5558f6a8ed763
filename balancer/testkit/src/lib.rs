//! pier's test kit: what the integration tests of every crate share, written once.
//!
//! It owns helpers that start real things on loopback for tests (a private `redis-server` on a
//! free port, a tiny HTTP app, the workspace's own binaries) and small clients to look at them.
//! It holds no test of its own and is only ever a dev-dependency. It depends on no pier crate,
//! so any crate of the workspace may use it.
//!
//! Modules:
//! - [`net`]: free loopback ports, a raw HTTP GET, a tiny HTTP app ([`net::TestBackend`]).
//! - [`redis_server`]: [`RedisServer`], a private `redis-server` process.
//! - [`postgres_server`]: [`PostgresServer`], a private PostgreSQL server (password auth).
//! - [`process`]: the workspace's binaries, [`process::Output`] of a run, waiting for a condition.
//! - [`certs`]: self-signed certificates.
//! - [`dns`]: [`DnsServer`], an authoritative DNS server on loopback (hickory-server).
//! - [`balancer`]: a `pier-balancer` process following a Redis registry.
//! - [`browser`]: headless Chromium over the DevTools protocol ([`browser::Browser`]).
//! - [`syslog`]: [`SyslogListener`], a syslog receiver of octet-counted frames.
//! - [`pty`]: [`pty::PtyProcess`], a command run on a pseudo-terminal, as at a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod balancer;
pub mod browser;
pub mod certs;
pub mod dns;
pub mod net;
pub mod postgres_server;
pub mod process;
pub mod pty;
pub mod redis_server;
pub mod syslog;

pub use dns::DnsServer;
pub use net::{free_port, http_get, TestBackend};
pub use postgres_server::PostgresServer;
pub use process::{wait_until, workspace_binary, Output};
pub use redis_server::RedisServer;
pub use syslog::SyslogListener;

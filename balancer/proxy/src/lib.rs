//! pier-balancer: the hostname-routing HTTP/1.1, HTTP/2 and TLS reverse proxy at the centre
//! of pier.
//!
//! This crate owns the request path — listeners, TLS, the HTTP/1.1 and HTTP/2 front ends, the
//! one pipeline every request goes through, the exchanges with backends over pooled
//! connections, the answers pier writes itself — plus the admin endpoints, metrics, the
//! routes-file reload and the registry feed. It does not own the route table's data structure
//! ([`pier_routes`]) nor the HTTP/1.x codec ([`pier_h1`]), and never asks the registry on the
//! request path.
//!
//! The request path reads top to bottom; a module imports only from its own layer or below
//! (docs/architecture.md tells the same story at length):
//! 1. [`accept`] — listeners, worker runtimes, connection cap, the PROXY protocol header
//!    ([`proxy_protocol`]), TLS handshake and ALPN, the h2c preface, shutdown drain.
//! 2. [`front`] — [`front::h1`] (an HTTP/1.x connection) and [`front::h2`] (an HTTP/2
//!    connection and its streams, [`front::h2::guard`] against floods) read their protocol into
//!    one [`downstream::Request`] and implement [`downstream::Downstream`].
//! 3. [`pipeline`] — route, action, upstream peer, proxy, logging: written once; its per-app
//!    limit on requests in flight is [`admission`], the per-client rate [`client_limits`].
//! 4. [`upstream`] — backend selection with retries and ejection, the exchange with HTTP/1.1
//!    ([`upstream::h1`]) and h2c ([`upstream::h2c`]) backends, the pools ([`upstream::pool`]).
//! 5. Below them all: [`relay`] (bodies and tunnels between sockets), [`h2io`] (h2 streams as
//!    byte streams), [`stream`] (plain or TLS sockets, the client's and backends'), [`respond`] (pier's own answers),
//!    [`error`] (the one error type and the abort reasons), [`outcome`], [`shared`] (state of
//!    the workers), [`tls`], [`config`], [`metrics`], [`util`].
//!
//! Around it: [`health`] (active health checks of backends), [`reload`] (routes file → table →
//! `ArcSwap`), [`registry_sync`] (the Redis
//! registry → table edits → `ArcSwap`), [`admin`] (`/metrics`, `/healthz`, `/routes`),
//! [`logging`], [`telemetry`] (router lines and per-app stats to the registry's Redis, off the
//! request path).

pub mod accept;
pub mod admin;
pub mod admission;
pub mod client_conns;
pub mod client_limits;
pub mod config;
pub mod downstream;
pub mod error;
pub mod front;
pub mod h2io;
pub mod health;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outcome;
pub mod overload;
pub mod pipeline;
pub mod proxy_protocol;
pub mod registry_sync;
pub mod relay;
pub mod reload;
pub mod respond;
pub mod shared;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod util;

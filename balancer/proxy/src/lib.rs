//! pier-balancer: the hostname-routing HTTP/1.1 reverse proxy at the centre of pier.
//!
//! This crate owns the request path — listeners, HTTP/1.1 parsing and serving, routing through
//! the route table, forwarding to backends over pooled keep-alive connections, the answers pier
//! writes itself — plus the admin endpoints, metrics and the routes-file reload. It does not own
//! the route table's data structure ([`pier_routes`]) and never talks to the registry itself.
//!
//! The request path, stage by stage (docs/architecture.md tells the same story at length):
//! 1. [`server`] — accept: listener sockets, worker runtimes, connection cap, shutdown drain.
//! 2. [`serve`] — serve: read and parse a request head ([`h1::head`]), check its framing
//!    ([`h1::framing`]), find the app (route), answer locally or forward.
//! 3. [`forward`] — forward: pick a backend, take a pooled connection ([`upstream`]) or connect,
//!    write the canonical head ([`headers`]), stream the body ([`relay`]), retry when safe.
//! 4. [`respond`] — respond: the one mapping from failure to status code and `X-Pier-Error`.
//!
//! Around it: [`config`] (the TOML pipeline), [`reload`] (routes file → table → `ArcSwap`),
//! [`registry_sync`] (the Redis registry → table edits → `ArcSwap`),
//! [`admin`] (`/metrics`, `/healthz`, `/routes`), [`metrics`], [`logging`], [`util`],
//! [`telemetry`] (router lines and per-app stats to the registry's Redis, off the request path).

pub mod admin;
pub mod config;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod registry_sync;
pub mod relay;
pub mod reload;
pub mod respond;
pub mod serve;
pub mod server;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod upstream_h2;
pub mod util;

//! The route table of pier: which app serves a hostname, and how.
//!
//! This crate owns the data the balancer routes with and nothing else: it does no I/O, opens no
//! socket and reads no file (a routes file's text is handed in, and any page it names is read
//! through a loader the caller gives). The balancer holds one [`RouteTable`] behind an
//! `ArcSwap` and replaces it whole; the registry (Redis) and the routes file both produce a
//! [`RouteSpec`] that [`RouteTable::build`] turns into a table.
//!
//! Modules:
//! - [`host`]: normalising a request's `Host` (on the stack) and configured domains (IDNA).
//! - [`table`]: the sharded, immutable table and its lookup order.
//! - [`app`]: apps, settings, backends, and the choice of a backend (round-robin, two choices).
//! - [`hash`]: the consistent-hash choice of a backend, with bounded loads.
//! - [`limit`]: the adaptive limit on an app's requests in flight.
//! - [`spec`]: what a table is built from.
//! - [`file`]: the routes file (TOML) and its validation, with every error keyed.
//! - [`cert`]: TLS certificate chains and keys: parsing, checks, what they cover.
//! - [`units`]: durations and sizes as written in config files.

pub mod app;
pub mod cert;
pub mod file;
pub mod hash;
pub mod host;
pub mod limit;
pub mod spec;
pub mod table;
pub mod units;

pub use app::{
    Action, App, AppCounters, AppSettings, Backend, BackendState, OutstandingGuard, Policy,
    Timeouts,
};
pub use hash::{HashOn, HashPolicy};
pub use host::{DomainPattern, HostError, RequestHost};
pub use spec::{AppSpec, BackendSpec, BackendTls, CertSpec, RouteSpec};
pub use table::{AcmeChallenge, BuildError, CertEntry, MatchKind, RouteMatch, RouteTable};

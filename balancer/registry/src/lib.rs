//! The registry: pier's source of truth for apps, domains, backends and certificates, kept in
//! Redis.
//!
//! This crate owns the Redis schema (documented in docs/registry.md), the typed records stored
//! in it, atomic writes (each one a Lua script that changes the data, bumps the version and
//! appends to the change log in one step), and the two reads a balancer needs: a full snapshot
//! and the change feed from a position. It turns registry data into a
//! [`pier_routes::RouteTable`] and changes into table edits, skipping (and counting) bad entries
//! so one broken record never poisons a table. It does not serve HTTP (that is `platform/`) and
//! does not route (that is `pier-balancer`).
//!
//! Modules:
//! - [`schema`]: key names.
//! - [`model`]: the records (apps, domains, backends, tokens) and the change entries.
//! - [`client`]: [`Registry`], the typed client: writes, snapshot, feed.
//! - [`claims`]: pending custom-domain claims, and the write that turns a proven one into the
//!   app's verified domain.
//! - [`balancers`]: each balancer's report of the table it serves and its lag.
//! - [`apply`]: registry data to route specs and table edits.
//! - [`cert`]: TLS certificate chains and keys (the parser the routes file uses too).
//! - [`telemetry`]: the apps' log streams and stats buckets that balancers and runners write.
//! - [`usage`]: usage reports for billing (balancers, runners, add-ons), their stream and
//!   the outbox that keeps a report's sequence number until it is written.

pub mod acme;
pub mod apply;
pub mod balancers;
pub mod claims;
pub mod client;

/// TLS certificates: parsing, checks and coverage. The code lives in pier-routes because the
/// routes file uses it too (and pier-routes cannot depend on this crate).
pub use pier_routes::cert;
pub mod model;
pub mod schema;
pub mod telemetry;
pub mod usage;

pub use balancers::BalancerStatus;
pub use claims::{ClaimAdded, Granted};
pub use client::{Registry, RegistryError, SnapshotHead};
pub use model::{
    AppRecord, BackendRecord, CertRecord, CertSource, ChallengeRecord, Change, ClaimRecord,
    DomainRecord, Snapshot,
};

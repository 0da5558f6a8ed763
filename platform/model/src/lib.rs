//! pier's platform wire types and the typed client of the registry API.
//!
//! This crate owns what crosses the wire between the platform's programs: the records of
//! releases, formations, runners and instances ([`platform`]), stored as they are in Redis and
//! answered as they are by the API, with their validation; and the HTTP client the CLI and the
//! domain verifier use ([`client`]). It does no I/O of its own beyond
//! that client and knows nothing of Redis (that is `pier-registry` and the services).
//!
//! Modules:
//! - [`api`]: the registry API's request and response bodies.
//! - [`platform`]: releases, formation, runners, instances, runs; config keys and Procfiles.
//! - [`runproto`]: the wire protocol of an attached one-off process (`pier run`).
//! - [`client`]: a small HTTP/1.1 client, and [`client::ApiClient`] for the registry API.
//! - [`drain`]: log drains: their URLs, which addresses they may reach, their records and wire
//!   types.
//! - [`net`]: IP networks (the operator's allow lists).

pub mod api;
pub mod client;
pub mod drain;
pub mod net;
pub mod platform;
pub mod runproto;

pub use client::{ApiClient, ApiResponse, ClientError, UploadBody};

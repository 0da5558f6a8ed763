//! pier's platform wire types and the typed client of the registry API.
//!
//! This crate owns what crosses the wire between the platform's programs: the HTTP client the
//! CLI, the runners and the domain verifier use ([`client`]). It does no I/O of its own beyond
//! that client and knows nothing of Redis (that is `pier-registry` and the services).
//!
//! Modules:
//! - [`client`]: a small HTTP/1.1 client, and [`client::ApiClient`] for the registry API.

pub mod client;

pub use client::{ApiClient, ApiResponse, ClientError};

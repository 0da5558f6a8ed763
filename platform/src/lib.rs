//! pier's platform: the registry API server (`pier api`) and the `pier` command-line client.
//!
//! This crate owns the HTTP/JSON API through which operators and app owners change the
//! registry (apps, settings, domains, backends, tokens), its authorisation rules, the
//! ownership check of custom domains, the OpenAPI document describing it, and the client verbs
//! of the `pier` binary. It does not own the Redis schema or its atomic writes (that is
//! `pier-registry`, which every write here goes through) and it never routes traffic or talks
//! to a balancer: balancers follow the registry on their own. Runners, the coordinator and
//! `pier up` are later work.
//!
//! Modules, in the order a request meets them:
//! - [`server`]: accept loop, HTTP/1.1 connections (hyper), body limits, JSON responses.
//! - [`router`]: the route table, matched by method and path; the one list of routes.
//! - [`auth`]: tokens (made, hashed, stored hashed) and who a caller is.
//! - [`api`]: the handlers and their request and response bodies.
//! - [`verify`]: the pluggable ownership check of custom domains and its HTTP implementation.
//! - [`netpolicy`]: which addresses owners may register as backends.
//! - [`error`]: [`ApiError`], mapped to status codes in one place.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.
//! - [`client`]: a small HTTP client, and [`client::ApiClient`] for the API.
//! - [`cli`]: the command-line arguments and the client verbs.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod error;
pub mod netpolicy;
pub mod openapi;
pub mod router;
pub mod server;
pub mod verify;

pub use api::ApiState;
pub use error::ApiError;

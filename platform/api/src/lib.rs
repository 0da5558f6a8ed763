//! pier's registry API server (`pier api`).
//!
//! This crate owns the HTTP/JSON API through which operators and app owners change the
//! registry (apps, settings, domains, backends, tokens), its authorisation rules, the
//! ownership check of custom domains and the OpenAPI document describing it. It does not own
//! the Redis schema or its atomic writes (that is `pier-registry`, which every write here goes
//! through), the HTTP client (`pier-model`) or the `pier` binary and its verbs (`pier-cli`),
//! and it never routes traffic or talks to a balancer: balancers follow the registry on their
//! own.
//!
//! Modules, in the order a request meets them:
//! - [`server`]: accept loop, HTTP/1.1 connections (hyper), body limits, JSON responses.
//! - [`router`]: the route table, matched by method and path; the one list of routes.
//! - [`body`]: request bodies: size and time limits, media type, strict JSON parsing.
//! - [`throttle`]: failed token attempts limited per client address.
//! - [`acme`]: certificates issued and renewed for verified domains (ACME, HTTP-01 answered by
//!   every balancer), their state as owners see it.
//! - [`ui`]: the web dashboard's files (`/ui`), built into the binary.
//! - [`git`]: the apps' git repositories (`/git/APP.git`): `git push` deploys, clone and fetch
//!   read, spoken by the real `git http-backend`.
//! - [`auth`]: tokens (made, hashed, stored hashed) and who a caller is.
//! - [`api`]: the handlers of apps, backends and tokens, and the state they share.
//! - [`domains`]: custom domains (claims, the DNS proof, the operator's grant) and certificates.
//! - [`names`]: which domain names may be claimed (IDNA, public suffixes, no IP literals).
//! - [`addons`]: per-app PostgreSQL databases and Redis users.
//! - [`dedicated`]: dedicated Redis add-ons, placed on a runner.
//! - [`backups`]: PostgreSQL backups: captured with `pg_dump`, listed, downloaded, restored
//!   after their checksum is checked.
//! - [`backup_store`]: where backups' archives live (a private directory, or S3).
//! - [`backup_schedule`]: daily scheduled captures and their retention.
//! - [`logs`]: an app's log lines, and the live tail.
//! - [`stats`]: an app's requests and its instances' use over the last minute, hour and day.
//! - [`usage`]: usage an operator can bill: the collector (report stream → PostgreSQL), the
//!   add-on reports, and each month's quantities, costs and gaps.
//! - [`usage_db`]: the platform's own PostgreSQL database (sqlx, embedded migrations).
//! - [`prices`]: the operator's price sheet (`pier api --prices`).
//! - [`drains`]: log drains (where the drainer forwards an app's lines) and their checks.
//! - [`platform`]: deploys, releases, config vars, formation, instances, runners.
//! - [`runs`]: one-off processes (`pier run`), and the relay of an attached client's WebSocket.
//! - [`balancers`]: the balancers' reports of the table they serve.
//! - [`verify`]: the ownership proof of custom domains, by DNS (hickory-resolver).
//! - [`netpolicy`]: which addresses owners may register as backends.
//! - [`error`]: [`ApiError`], mapped to status codes in one place.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.
//! - [`contract`]: the server's rules (lengths, patterns, ranges) stated in that document.
//! - [`schema`]: the JSON Schema subset that checks request bodies against it.

#![recursion_limit = "512"]

pub mod acme;
pub mod addons;
pub mod api;
pub mod auth;
pub mod backup_schedule;
pub mod backup_store;
pub mod backups;
pub mod balancers;
pub mod body;
pub mod contract;
pub mod dedicated;
pub mod domains;
pub mod drains;
pub mod error;
pub mod git;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod netpolicy;
pub mod openapi;
pub mod platform;
pub mod prices;
pub mod router;
pub mod runs;
pub mod schema;
pub mod server;
pub mod stats;
pub mod throttle;
pub mod ui;
pub mod usage;
pub mod usage_db;
pub mod verify;

pub use api::ApiState;
pub use error::ApiError;

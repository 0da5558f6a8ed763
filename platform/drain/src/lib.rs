//! pier's log drainer (`pier drainer`): forwards each app's log lines to the app's drains, a
//! syslog server (RFC 5424 over TCP or TLS, octet-counted) or an HTTPS endpoint (Heroku's
//! logplex batches).
//!
//! It owns delivery: reading the apps' log streams from each drain's cursor, formatting,
//! connecting (the address policy checked again at each connection), retrying with backoff,
//! and writing each drain's progress and status back. It does not own the drains' records and
//! keys (`pier-store`), their URL rules and address policy (`pier-model`), or adding and
//! removing drains (the API).
//!
//! Modules:
//! - [`drainer`]: the service: [`run`], its lease, its configuration.
//! - [`forwarder`]: the leader's tasks, one per drain, matched to the drains in Redis.
//! - [`worker`]: one drain's loop: read a batch, deliver, move the cursor, back off.
//! - [`notify`]: wake-ups of drains when their app's stream has new lines (`XREAD`).
//! - [`sink`]: a drain's delivery end: [`syslog`] or [`http`].
//! - [`connect`]: resolution, the address policy, TCP and TLS.
//! - [`format`]: RFC 5424 messages and octet-counted frames.

pub mod connect;
pub mod drainer;
pub mod format;
pub mod forwarder;
pub mod http;
pub mod notify;
pub mod sink;
pub mod syslog;
pub mod worker;

pub use drainer::{run, DrainerConfig, DrainerError};

//! Add-on provisioners: what gives an app a database and a Redis of its own on the operator's
//! servers.
//!
//! Each provisioner makes the app's resources idempotently: run again with the same password
//! after a timeout or a crash, it finds what the first run made and finishes it, never making a
//! second one. It knows nothing of HTTP or of the platform's state; the API records add-ons and
//! sets the app's config vars.
//!
//! Modules:
//! - [`postgres`]: a role and a database per app, `CONNECT` revoked from `PUBLIC`, a connection
//!   limit.
//! - [`pgdump`]: `pg_dump` and `pg_restore` found and set up against one app's database (the
//!   platform's backups).
//! - [`redis`]: an ACL user per app limited to its key prefix, enumeration and dangerous commands
//!   denied.

pub mod pgdump;
pub mod postgres;
pub mod redis;

/// Why an add-on could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error("bad server URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the {server} server: {reason}")]
    Unreachable {
        server: &'static str,
        reason: String,
    },
    #[error("the {server} server refused: {reason}")]
    Refused {
        server: &'static str,
        reason: String,
    },
}

/// The name of an app's resources on a shared server: `pier_<app>` with `-` as `_`, cut to fit
/// PostgreSQL's 63-byte identifiers (app names are at most 63 bytes).
pub fn resource_name(app: &str) -> String {
    let mut name = format!("pier_{}", app.replace('-', "_"));
    name.truncate(63);
    name
}

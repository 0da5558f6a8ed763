//! The platform's live state in Redis, next to the registry: what should run (releases, the
//! current release and formation of each app, restart requests), what runs (runners and their
//! heartbeats, instance reports), and what the coordinator decided (assignments), with the
//! coordinator's lease and fencing token.
//!
//! It owns these keys and their atomic writes; it does not own routes, domains or backends
//! (that is `pier-registry`, which runners and the coordinator use beside it) and it decides
//! nothing: the API writes the desired state, runners report, the coordinator reconciles.
//!
//! Desired and actual state are kept apart so that any process can restart at any time: every
//! record here is whole and can be read again.
//!
//! Modules:
//! - [`keys`]: key names.
//! - [`store`]: [`Store`], the typed client.
//! - [`lease`]: the coordinator's lease and the fenced writes only a leader can make.
//! - [`services`]: add-on processes pinned to a runner (dedicated Redis).
//! - [`stats`]: the stats buckets balancers and runners write and `pier stats` reads.
//! - [`drains`]: log drains, their cursors, and the drainer's fenced progress.
//! - [`runs`]: one-off processes (`pier run`): each writer its own field of a run's record.
//! - [`backups`]: PostgreSQL backups' records, the one-at-a-time lock, schedules and the
//!   per-day claim of a scheduled capture.
//! - [`usage`]: usage reports for billing on their stream (written, and read by the
//!   collector).

pub mod backups;
pub mod drains;
pub mod keys;
pub mod lease;
pub mod runs;
pub mod services;
pub mod stats;
pub mod store;
pub mod usage;

pub use drains::{DrainCreated, StreamBatch};
pub use lease::{FencedOp, Lease};
pub use store::{Store, StoreError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

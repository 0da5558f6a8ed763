//! The runner (`pier runner`): runs on each machine the instances the coordinator assigns to it.
//!
//! Every tick it heartbeats its runner record, reads its assignments, starts a supervisor for
//! each new one and stops those no longer assigned. A supervisor fetches and unpacks the
//! release's slug (once per slug on this machine), starts the Procfile command with `PORT` and
//! the config vars under the app's own Unix user and limits, waits for its health check, then
//! registers it as a backend and keeps its deadline fresh. On stop it deregisters first, waits
//! for the drain delay, then sends SIGTERM, and SIGKILL after a grace period. Crashes restart
//! with backoff.
//!
//! It owns no desired state: when Redis is unreachable it keeps what runs running, and it
//! converges again once Redis is back. It never builds.
//!
//! Modules:
//! - [`config`]: the runner's settings ([`RunnerConfig`]).
//! - [`logs`]: instances' output shipped to their apps' log streams, dropped (counted) rather
//!   than waited for.
//! - [`slugs`]: this machine's unpacked slugs.
//! - [`process`]: starting an instance's process with its user and limits, signals, usage.
//! - [`supervisor`]: one instance's life.
//! - [`statics`]: static files (`pier.toml`): which requests are static, and their answers.
//! - [`front`]: a web instance's front port: static files served, the rest passed to the app.
//! - [`runs`]: one one-off process's life (`pier run`), [`pty`] its terminal, [`exec`] where
//!   the API attaches its client.
//! - [`runner`]: the main loop.

pub mod config;
pub mod exec;
pub mod front;
pub mod logs;
pub mod process;
pub mod pty;
pub mod runner;
pub mod runs;
pub mod services;
pub mod slugs;
pub mod statics;
pub mod supervisor;
pub mod usage;

pub use config::RunnerConfig;
pub use runner::{is_root, reachable_by_others, run};

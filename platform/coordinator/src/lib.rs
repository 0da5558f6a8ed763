//! The coordinator (`pier coordinator`): one leader at a time places instances on runners,
//! rolls releases out and moves the work of dead runners.
//!
//! Each tick the leader reads the whole platform state ([`world::World`]), computes what to
//! change with a pure function ([`plan::plan`]), and writes the changes with its fencing token
//! so that a deposed leader's late writes are refused. Reconciling is safe to run again at any
//! time: it only compares what should run with what runs.
//!
//! Modules:
//! - [`world`]: the state read each tick.
//! - [`plan`]: desired against actual, as fenced writes.
//! - [`coordinator`]: the lease and the loop.

pub mod coordinator;
pub mod plan;
mod runs;
pub mod world;

pub use coordinator::{run, CoordinatorConfig};

//! Giving memory back to the system once connections have gone.
//!
//! The binary picks the allocator (mimalloc: docs/benchmarks/idle-connections.md) and
//! registers how to make it return what it holds free ([`on_release`]); the library calls
//! [`release`] from each worker's housekeeping tick. An allocator returns freed pages only when
//! it is called, so a worker that served a burst and then went quiet would otherwise keep the
//! burst's memory resident.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what [`release`] calls (once; later calls are ignored).
pub fn on_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Asks the allocator to return the calling thread's free memory to the system, if the binary
/// said how.
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}

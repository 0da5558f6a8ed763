//! pier-h1: HTTP/1.x on the wire, with no I/O and no async runtime, so that it can be tested,
//! fuzzed and benchmarked alone.
//!
//! - [`head`]: strict request and response head parsing (RFC 9112 §2–5), field positions kept
//!   as offsets into the received bytes, limits on line, head and field count.
//! - [`framing`]: what a parsed head says about its message body (RFC 9112 §6), `Connection`
//!   options, and the chunked decoder (§7).
//! - [`rewrite`]: the heads pier writes — the canonical request sent upstream with its
//!   forwarding fields, the response head sent back, interim and switching heads.
//!
//! The proxy (`pier-balancer`) reads and writes sockets around these; nothing here blocks or
//! allocates per field.

pub mod framing;
pub mod head;
pub mod rewrite;

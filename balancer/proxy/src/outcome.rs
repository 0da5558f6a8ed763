//! How a request ended, whatever protocol carried it and whoever answered it: what the access
//! log, the metrics, the router line and the next request on the connection need to know.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Abort, ProxyError};

/// How one request ended.
#[derive(Debug)]
pub struct Outcome {
    /// The status sent (0 when no head went out).
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub bytes_out: u64,
    /// From the request sent to the backend's response head.
    pub first_byte: Option<Duration>,
    /// From the request head to the backend connection in hand (picked, connected or reused),
    /// the time in the app's queue included.
    pub connect: Option<Duration>,
    /// Microseconds the request waited in its app's queue for a slot (0: it did not wait).
    /// Four bytes, not an `Option<Duration>`: an `Outcome` is moved on every request, and
    /// past 128 bytes each move is a call to `memcpy`.
    pub queue_us: u32,
    /// Whether the client connection may carry another request.
    pub keep_alive: bool,
    /// Set when pier answered the request itself with an error.
    pub error: Option<ProxyError>,
    /// Set when the exchange broke after the response head was sent.
    pub aborted: Option<Abort>,
    /// When the answer was complete, if that was read already.
    pub end: Option<Instant>,
}

impl Outcome {
    /// An answer pier gave without a backend.
    pub fn local(status: u16, error: Option<ProxyError>, keep_alive: bool) -> Outcome {
        Outcome {
            status,
            upstream: None,
            bytes_out: 0,
            first_byte: None,
            connect: None,
            keep_alive,
            error,
            aborted: None,
            end: None,
            queue_us: 0,
        }
    }

    /// pier's own answer to a failed exchange; `in_sync` says whether the client connection
    /// can carry another request.
    pub fn failed(err: ProxyError, in_sync: bool, upstream: Option<SocketAddr>) -> Outcome {
        Outcome {
            upstream,
            ..Outcome::local(err.status(), Some(err), in_sync)
        }
    }

    /// An exchange cut after `status` went out (0: before any head).
    pub fn cut(status: u16, why: Abort, keep_alive: bool) -> Outcome {
        Outcome {
            aborted: Some(why),
            ..Outcome::local(status, None, keep_alive)
        }
    }

    /// The same outcome, through the backend at `addr`.
    pub fn via(self, addr: SocketAddr) -> Outcome {
        Outcome {
            upstream: Some(addr),
            ..self
        }
    }
}

/// What the access log says about a request besides its [`Outcome`].
pub struct Access<'a> {
    pub peer: SocketAddr,
    pub method: &'a [u8],
    pub host: &'a [u8],
    pub target: &'a [u8],
    pub request_id: &'a [u8],
    pub start: Instant,
    /// When the answer was complete.
    pub end: Instant,
    pub protocol: &'static str,
    /// The request body's declared length (`Content-Length`; 0 for none or chunked), for
    /// usage reports.
    pub bytes_in: u64,
}

//! The one error type of the request path, and the one list of reasons an answer broke.
//!
//! Every failure the proxy can meet before a response head goes out is a [`ProxyError`]: it
//! says who failed ([`Party`]: the client, the backend, or pier itself), which status the client
//! gets, the short reason sent in `X-Pier-Error` and counted in `pier_errors_total`, and whether
//! the client connection can stay open. An attempt at a backend ends in a [`Failure`], which
//! also says whether the request may be sent again. Once the head is out, nothing can be
//! answered any more: the exchange is cut and the access record says why ([`Abort`]).

use pier_h1::framing::{ChunkError, FramingError};
use pier_h1::head::HeadError;

/// Who a failure is on: what the status class says (4xx, 502/504, 503) and what an operator
/// looks at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The request was malformed, too large or too slow.
    Client,
    /// The backend could not be reached, or answered badly or too late.
    Backend,
    /// pier had no app or no live backend for the request.
    Pier,
}

/// Everything that can stop a request from being proxied normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The request head was malformed or over a limit.
    Head(HeadError),
    /// The request's framing or its Host/Expect fields were unusable.
    Framing(FramingError),
    /// The request body's chunked coding was malformed.
    RequestChunk(ChunkError),
    BadHost,
    BadTarget,
    ConnectNotSupported,
    BodyTooLarge,
    /// The client took too long to send its head.
    HeaderTimeout,
    /// The client stopped sending its body.
    BodyTimeout,
    UnknownHost,
    NoBackend,
    /// The app has as many requests in flight as its limit allows and its queue is full, or a
    /// request waited in it too long.
    AppOverloaded,
    /// The balancer's worker is saturated and the app takes more than an equal share of it
    /// ([`crate::overload`]).
    Overloaded,
    /// The client sent more requests than `[limits] client_rate` allows.
    RateLimited,
    /// Every attempt to connect to a backend failed.
    UpstreamConnect,
    /// TLS with an `https://` backend failed (its certificate did not verify, it refused
    /// pier's, it does not speak TLS): the short reason, as [`crate::tls::failure_reason`]
    /// gives it.
    UpstreamTls(&'static str),
    UpstreamConnectTimeout,
    /// The backend closed or reset the connection before a full response head.
    UpstreamClosed,
    /// The backend's response was malformed (head or framing).
    UpstreamBadResponse(&'static str),
    /// No response head within the first-byte timeout.
    UpstreamTimeout,
    UpstreamIo,
    /// An h2 request the RFC calls malformed (RFC 9113 §8.1.1, §8.2, §8.3).
    BadH2Request(&'static str),
    /// An h2 request for a host this connection's certificate does not serve (RFC 9110 §15.5.20).
    Misdirected,
}

impl ProxyError {
    pub fn status(self) -> u16 {
        use ProxyError::*;
        match self {
            Head(HeadError::LineTooLong) => 414,
            Head(HeadError::HeadTooLarge | HeadError::TooManyHeaders) => 431,
            Head(HeadError::UnsupportedVersion) => 505,
            Head(_) | RequestChunk(_) | BadHost | BadTarget | BadH2Request(_) => 400,
            Misdirected => 421,
            Framing(f) => f.status(),
            ConnectNotSupported => 405,
            BodyTooLarge => 413,
            HeaderTimeout | BodyTimeout => 408,
            UnknownHost => 404,
            NoBackend | AppOverloaded | Overloaded => 503,
            RateLimited => 429,
            UpstreamConnect
            | UpstreamTls(_)
            | UpstreamClosed
            | UpstreamBadResponse(_)
            | UpstreamIo => 502,
            UpstreamConnectTimeout | UpstreamTimeout => 504,
        }
    }

    /// The `X-Pier-Error` value: short, stable, documented in docs/configuration.md.
    pub fn reason(self) -> &'static str {
        use ProxyError::*;
        match self {
            Head(h) => h.reason(),
            Framing(f) => f.reason(),
            RequestChunk(c) => c.reason(),
            BadHost => "bad-host",
            BadTarget => "bad-target",
            ConnectNotSupported => "connect-not-supported",
            BodyTooLarge => "body-too-large",
            HeaderTimeout => "header-timeout",
            BodyTimeout => "body-timeout",
            UnknownHost => "unknown-host",
            NoBackend => "no-backend",
            AppOverloaded => "app-overloaded",
            Overloaded => "overloaded",
            RateLimited => "rate-limited",
            UpstreamConnect => "upstream-connect-failed",
            UpstreamTls(_) => "upstream-tls",
            UpstreamConnectTimeout => "upstream-connect-timeout",
            UpstreamClosed => "upstream-closed",
            UpstreamBadResponse(r) => r,
            UpstreamTimeout => "upstream-timeout",
            UpstreamIo => "upstream-io",
            BadH2Request(r) => r,
            Misdirected => "misdirected-request",
        }
    }

    /// Who failed.
    pub fn party(self) -> Party {
        use ProxyError::*;
        match self {
            Head(_) | Framing(_) | RequestChunk(_) | BadHost | BadTarget | ConnectNotSupported
            | BodyTooLarge | HeaderTimeout | BodyTimeout | BadH2Request(_) | Misdirected
            | RateLimited => Party::Client,
            UnknownHost | NoBackend | AppOverloaded | Overloaded => Party::Pier,
            UpstreamConnect
            | UpstreamTls(_)
            | UpstreamConnectTimeout
            | UpstreamClosed
            | UpstreamBadResponse(_)
            | UpstreamTimeout
            | UpstreamIo => Party::Backend,
        }
    }

    /// More about the reason, where there is more to say: for `upstream-tls`, why TLS failed
    /// (`unknown-issuer`, `name-mismatch`, …). In the access line and the router line, not in
    /// `X-Pier-Error` (clients get the stable reason only).
    pub fn detail(self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamTls(why) => Some(why),
            _ => None,
        }
    }

    /// The `Retry-After` seconds sent with the answer, where waiting helps.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            ProxyError::AppOverloaded | ProxyError::Overloaded | ProxyError::RateLimited => Some(1),
            _ => None,
        }
    }

    /// Whether the client connection can stay open after this answer: only when the request
    /// was fully read and understood.
    pub fn keeps_connection(self) -> bool {
        use ProxyError::*;
        matches!(
            self,
            UnknownHost
                | NoBackend
                | AppOverloaded
                | Overloaded
                | RateLimited
                | UpstreamConnect
                | UpstreamTls(_)
                | UpstreamConnectTimeout
                | UpstreamClosed
                | UpstreamBadResponse(_)
                | UpstreamTimeout
                | UpstreamIo
        )
    }
}

/// Why an exchange was cut after its response head went out (the access log's `aborted=`
/// and the router line's). The texts are stable: operators grep for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// The client closed its connection before its answer began (while sending its body,
    /// or waiting).
    ClientClosed,
    /// The client stopped taking the answer (write failed or timed out).
    ClientWrite,
    /// The HTTP/2 client reset the stream.
    ClientReset,
    /// The backend stopped sending the body for longer than its idle timeout.
    UpstreamIdleTimeout,
    /// The backend's chunked body was malformed.
    BadResponseChunk,
    /// The backend closed before its body was complete.
    UpstreamClosedMidBody,
    /// Nothing moved through a tunnel for `tunnel_idle`.
    TunnelIdleTimeout,
    TunnelRead,
    TunnelWrite,
    /// Stream to stream (HTTP/2 both sides): nothing moved for the idle timeout.
    IdleTimeout,
    /// Stream to stream: the stream read from was reset.
    ReadReset,
    /// Stream to stream: the stream written to was reset.
    WriteReset,
}

impl Abort {
    pub fn as_str(self) -> &'static str {
        match self {
            Abort::ClientClosed => "client-closed",
            Abort::ClientWrite => "client-write",
            Abort::ClientReset => "client-reset",
            Abort::UpstreamIdleTimeout => "upstream-idle-timeout",
            Abort::BadResponseChunk => "bad-response-chunk",
            Abort::UpstreamClosedMidBody => "upstream-closed-mid-body",
            Abort::TunnelIdleTimeout => "tunnel-idle-timeout",
            Abort::TunnelRead => "tunnel-read",
            Abort::TunnelWrite => "tunnel-write",
            Abort::IdleTimeout => "idle-timeout",
            Abort::ReadReset => "read-reset",
            Abort::WriteReset => "write-reset",
        }
    }
}

/// How one attempt at a backend failed, and so what may happen next.
#[derive(Debug)]
pub enum Failure {
    /// A pooled connection turned out closed before any response byte: the request may be
    /// sent again on a new connection when it is replayable.
    Stale,
    /// The backend failed before a response head reached the client (counts towards its
    /// ejection). `in_sync` says whether the client's request was read whole, so that its
    /// connection can carry another request after pier's answer.
    Upstream { err: ProxyError, in_sync: bool },
    /// The client failed while sending its body: answer with this error if any, then close.
    Client(Option<ProxyError>),
    /// The response was under way when something broke: nothing more can be sent.
    Aborted(Abort),
}

//! The one interface between a front end and the rest of the request path.
//!
//! A front end (an HTTP/1.1 connection, an HTTP/2 stream) reads its protocol into a
//! [`Request`] and implements [`Downstream`] for it: answer with one of pier's own responses,
//! answer an error, write the request for a backend, and give out the two halves an exchange
//! with a backend needs at once — the request body still to come ([`RequestBody`]) and the
//! client's side of the answer ([`ResponseSink`]: interim heads, the response head, the body
//! and its trailers, a tunnel). The pipeline and the exchanges with backends (the layers
//! above this one) are written once against these traits; everything that
//! differs between HTTP/1.1 and HTTP/2 clients lives in the front ends.
//!
//! The traits are used with static dispatch only (each front end's future is a concrete type),
//! so their futures cost no allocation; they are declared `Send` so that the generic request
//! path can be spawned on a work-stealing runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use pier_routes::RequestHost;
use tokio::io::{AsyncRead, AsyncWrite};

use pier_h1::framing::{BodyKind, ResponseFraming};
use pier_h1::head::{HeaderList, ResponseHead};

use crate::config::Listener;
use crate::error::{Abort, ProxyError};
use crate::outcome::Outcome;
use crate::relay::{RelayError, RelayLimits};
use crate::respond::LocalResponse;

/// One request, read and checked by its front end, whatever protocol carried it.
pub struct Request {
    /// The Host sent upstream (the Host field, the authority of an absolute-form target, or
    /// `:authority`).
    pub host: Bytes,
    /// The host the request is routed by (normalised by `pier_routes::RequestHost`: lower-cased,
    /// without port or trailing dot; ASCII): see [`Request::name`].
    pub name: RoutingName,
    /// The origin-form target sent upstream.
    pub target: Bytes,
    pub request_id: SmallVec<[u8; 64]>,
    /// When the request head arrived.
    pub start: Instant,
    /// The same instant in wall-clock milliseconds (liveness, ejection, `X-Request-Start`).
    pub start_ms: u64,
    pub head_request: bool,
    /// Whether the method may be sent twice ([`is_idempotent`]).
    pub idempotent: bool,
    /// The declared body length (`Content-Length`).
    pub length: Option<u64>,
    /// A WebSocket over HTTP/2 (extended CONNECT, RFC 8441): the stream becomes a tunnel.
    pub tunnel: bool,
    /// The largest body accepted (0 = no limit): the config's, then the app's.
    pub max_body: u64,
    /// Router timings so far, for `Server-Timing` (`[headers] server_timing`; otherwise left
    /// at 0): the wait for a slot of the app, and from the head to a backend connection.
    pub queue_us: u32,
    pub connect_us: u32,
}

/// pier's timings of one request, sent to the client in `Server-Timing` when the config asks
/// (`[headers] server_timing`), as Heroku's router logs them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterTiming {
    /// Waiting for a slot of the app's limit.
    pub queue_us: u32,
    /// From the request head to a backend connection in hand (the queue included).
    pub connect_us: u32,
    /// From the request sent to the backend's response head.
    pub service_us: u32,
}

impl RouterTiming {
    /// `pier-queue;dur=0.012, pier-connect;dur=0.350, pier-service;dur=2.100` (milliseconds,
    /// W3C Server Timing).
    pub fn value(&self) -> String {
        let ms = |us: u32| format!("{}.{:03}", us / 1000, us % 1000);
        format!(
            "pier-queue;dur={}, pier-connect;dur={}, pier-service;dur={}",
            ms(self.queue_us),
            ms(self.connect_us),
            ms(self.service_us)
        )
    }
}

/// Microseconds in a `u32` (saturating past an hour and ten minutes).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Where a request's routing name is: most often the start of its Host bytes (a lower-case
/// name, with or without a port), so that keeping it costs nothing.
#[derive(Debug, Clone, Default)]
pub enum RoutingName {
    /// No Host (HTTP/1.0): routed as the empty name.
    #[default]
    None,
    /// The first `n` bytes of [`Request::host`].
    Prefix(usize),
    /// A normalised copy (the Host had upper case or a trailing dot).
    Owned(Box<str>),
}

impl RoutingName {
    /// The routing name of `host`, normalised as `name`.
    pub fn of(host: &[u8], name: &RequestHost) -> RoutingName {
        let n = name.as_bytes();
        if host.starts_with(n) {
            RoutingName::Prefix(n.len())
        } else {
            RoutingName::Owned(name.as_str().into())
        }
    }
}

impl Request {
    /// The routing name (empty when there is none).
    pub fn name(&self) -> &str {
        match &self.name {
            RoutingName::None => "",
            RoutingName::Prefix(n) => self
                .host
                .get(..*n)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            RoutingName::Owned(s) => s,
        }
    }
}

/// The methods a request may be sent with twice (RFC 9110 §9.2.2): only these are ever retried
/// on a new connection after a pooled one turned out closed.
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Why a wait for the backend's answer ended without one.
pub enum Waited {
    TimedOut,
    /// The client went away (an HTTP/2 stream reset; an HTTP/1.x connection closed).
    ClientGone,
}

/// What the client's side said once a response head went out.
pub struct HeadSent {
    /// The body, when it was sent with the head (it was all in the buffer, and small).
    pub body_sent: Option<u64>,
    /// Whether the client connection may carry another request.
    pub keep_alive: bool,
}

/// A client's side of one request: what the pipeline and the upstream exchanges need.
pub trait Downstream: Send {
    /// The request body still to come from the client.
    type Body<'a>: RequestBody + Send
    where
        Self: 'a;
    /// The client's side of the answer.
    type Sink<'a>: ResponseSink + Send
    where
        Self: 'a;

    /// `http/1.1` or `h2`, for the access log.
    const PROTOCOL: &'static str;
    /// Whether the client may keep sending while the answer comes (HTTP/2 streams): an h2c
    /// backend then gets the body and gives its answer at once.
    const DUPLEX: bool;

    fn request(&self) -> &Request;
    fn request_mut(&mut self) -> &mut Request;
    fn method(&self) -> &[u8];
    fn peer(&self) -> SocketAddr;

    /// The last address of the request's `X-Forwarded-For` (see
    /// [`crate::client_limits::last_forwarded`]).
    fn forwarded_client(&self) -> Option<std::net::IpAddr>;
    fn listener(&self) -> &Listener;

    /// The client's address: the peer's, or on a trusted listener the forwarded one.
    fn client_ip(&self) -> std::net::IpAddr {
        let peer = self.peer().ip();
        if self.listener().trusted {
            self.forwarded_client().unwrap_or(peer)
        } else {
            peer
        }
    }

    /// Every value of the request header `name` (lower case), in order.
    fn field_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// Whether `name` may be answered on this connection (an HTTP/2 connection over TLS serves
    /// only the names its certificate covers, RFC 9113 §9.1.1).
    fn may_serve(&self, _name: &str) -> bool {
        true
    }

    /// Sends one of pier's own answers (redirect, static page, maintenance).
    fn answer(&mut self, resp: &LocalResponse<'_>) -> impl Future<Output = Outcome> + Send;

    /// Answers with an error. `body_read` says whether the request body (if any) was read whole.
    fn answer_error(
        &mut self,
        err: ProxyError,
        body_read: bool,
    ) -> impl Future<Output = Outcome> + Send;

    /// Answers with an error before any of the body was read (it is still pending if there is
    /// one).
    fn answer_unread(&mut self, err: ProxyError) -> impl Future<Output = Outcome> + Send {
        let in_sync = !self.body_pending();
        self.answer_error(err, in_sync)
    }

    /// The client failed while sending its body: answer `err` if there is one, and end the
    /// exchange (the connection or the stream).
    fn client_failed(&mut self, err: Option<ProxyError>) -> impl Future<Output = Outcome> + Send;

    /// The answer broke after its head went out (`status`, 0 for none).
    fn cut(&mut self, status: u16, why: Abort) -> Outcome;

    // An HTTP/1.1 backend.

    /// Gets the body ready before a backend is chosen (an HTTP/2 front end reads a small body
    /// whole). `Err`: the request was answered.
    fn prepare_body(&mut self) -> impl Future<Output = Result<(), Outcome>> + Send;

    /// Whether a request body is still unread (a local answer then closes an HTTP/1.1
    /// connection).
    fn body_pending(&self) -> bool;

    /// Whether the body (if any) can be sent again on another connection.
    fn body_replayable(&self) -> bool;

    /// Whether a `101 Switching Protocols` answer is expected (a WebSocket handshake).
    fn upgrading(&self) -> bool;

    /// Writes the canonical HTTP/1.1 request for a backend, with the body bytes in hand when
    /// they fit; returns it and whether the whole body is in it.
    fn write_request(&mut self) -> (&[u8], bool);

    /// The request body and the answer, apart, so that an exchange can use both at once.
    fn split(&mut self) -> (Self::Body<'_>, Self::Sink<'_>);

    /// Resolves when the client is known to have gone (its connection closed, its stream
    /// reset) while its request waits; never otherwise.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;

    // An h2c backend.

    /// The request head for an h2c backend, and whether a body follows.
    fn h2_request(&self) -> Result<(http::Request<()>, bool), ProxyError>;
}

/// The request body still to come.
pub trait RequestBody: Send {
    type Reader: AsyncRead + Unpin + Send;

    /// Streams the rest of the body to an HTTP/1.1 backend (in the framing the request head
    /// written by [`Downstream::write_request`] announced).
    fn send_h1<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut W,
        limits: RelayLimits,
    ) -> impl Future<Output = Result<u64, RelayError>> + Send;

    /// Streams the body, trailers included, to an h2c backend's stream, and ends it.
    fn send_h2(
        &mut self,
        up: h2::SendStream<Bytes>,
        limits: RelayLimits,
    ) -> impl Future<Output = Result<u64, RelayError>> + Send;

    /// The client's bytes for a tunnel, and what was already read of them.
    fn tunnel(&mut self) -> Option<(&mut Self::Reader, &mut BytesMut)>;

    /// Once the whole body was read: ready when the client closed its connection (or it
    /// failed), so that a request nobody waits for any more is not waited on. What the client
    /// sends meanwhile (a pipelined request) is kept for later. Never ready where the sink's
    /// [`ResponseSink::wait`] sees the client go by itself (an HTTP/2 stream). A poll, not a
    /// future: it is polled beside the wait for the backend on every request.
    fn poll_closed(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Pending
    }
}

/// The client's side of an answer from a backend.
pub trait ResponseSink: Send {
    type Writer: AsyncWrite + Unpin + Send;

    /// The field list to parse response heads into (kept between requests where it can be).
    fn take_fields(&mut self) -> HeaderList;
    fn put_fields(&mut self, fields: HeaderList);

    /// Waits for `f` until `deadline`, or until the client goes away.
    fn wait<F: Future + Send>(
        &mut self,
        deadline: Instant,
        f: F,
    ) -> impl Future<Output = Result<F::Output, Waited>> + Send;

    /// Adds `Server-Timing` with these timings to the response head sent next.
    fn timing(&mut self, timing: RouterTiming);

    /// Passes on a `1xx` interim answer (HTTP/1.1 clients; HTTP/2 gets the final one only).
    fn interim(&mut self, head: &ResponseHead) -> impl Future<Output = io::Result<()>> + Send;

    /// Sends an HTTP/1.1 backend's response head; the body goes with it when it is all in
    /// `up_buf` and small. `early`: the backend answered before the request body was sent.
    fn head(
        &mut self,
        head: &ResponseHead,
        framing: &ResponseFraming,
        up_buf: &mut BytesMut,
        early: bool,
        hsts: Option<&str>,
    ) -> impl Future<Output = Result<HeadSent, Abort>> + Send;

    /// Relays the rest of the response body (of kind `kind`; bytes already read are in
    /// `up_buf`) and ends the answer, trailers included where the client takes them.
    fn body<R: AsyncRead + Unpin + Send>(
        &mut self,
        up: &mut R,
        up_buf: &mut BytesMut,
        kind: BodyKind,
        read_idle: Duration,
    ) -> impl Future<Output = Result<u64, Abort>> + Send;

    /// Sends an h2c backend's answer, head and body (its trailers where the client takes
    /// them). Returns the status, the body bytes and whether the client connection may carry
    /// another request, or the status and why the body broke.
    fn h2_answer(
        &mut self,
        resp: http::Response<h2::RecvStream>,
        read_idle: Duration,
        hsts: Option<&str>,
    ) -> impl Future<Output = Result<(u16, u64, bool), (u16, Abort)>> + Send;

    /// The backend switched protocols (`101`): tell the client, and give the writer of the
    /// tunnel.
    fn switch(
        &mut self,
        head: &ResponseHead,
    ) -> impl Future<Output = Result<&mut Self::Writer, Abort>> + Send;
}

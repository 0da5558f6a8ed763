//! One HTTP/2 request stream as the pipeline sees it ([`Downstream`]): pier's own answers as
//! an h2 head and DATA, the canonical HTTP/1.1 request for a backend (cookies joined, the body
//! read ahead when small so that it goes with its head under a `Content-Length`, chunked with
//! its trailers otherwise), the answer as h2 frames with its trailers, and a WebSocket over
//! extended CONNECT (RFC 8441) as an HTTP/1.1 handshake whose `101` becomes a `200`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};

use pier_h1::framing::{is_hop_by_hop, BodyKind, ResponseFraming};
use pier_h1::head::{HeaderList, ResponseHead};
use pier_h1::rewrite::{put_u64, write_upstream_head, Forwarding};
use pier_routes::RequestHost;

use super::ConnInfo;
use crate::config::Listener;
use crate::downstream::{
    is_idempotent, Downstream, HeadSent, Request, RequestBody, ResponseSink, RouterTiming,
    RoutingName, Waited,
};
use crate::error::{Abort, ProxyError};
use crate::h2io::{pump, relay_chunked, RecvBody, SendBody};
use crate::outcome::Outcome;
use crate::pipeline;
use crate::relay::{put_last_chunk, relay_body, OutCoding, RelayError, RelayLimits};
use crate::respond::{error_body, LocalResponse};
use crate::shared::{Shared, Worker};
use crate::upstream::h2c::h2_request;
use crate::util::{is_sane_request_id, new_request_id, wall_ms};

/// Request bodies up to this size are read whole before the backend is asked.
const SMALL_BODY: usize = 64 * 1024;

/// One request stream, from its head to the end of its response.
pub(super) async fn handle(
    w: Arc<Worker>,
    info: Arc<ConnInfo>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let start = Instant::now();
    let start_ms = wall_ms(start);
    let (parts, body) = req.into_parts();
    let mut request_id = SmallVec::<[u8; 64]>::new();
    match parts.headers.get("x-request-id") {
        Some(v) if is_sane_request_id(v.as_bytes()) => request_id.extend_from_slice(v.as_bytes()),
        _ if w.shared.config.headers.request_id => {
            request_id.extend_from_slice(&new_request_id());
        }
        _ => {}
    }
    let checked = check(&parts).map(|(host, target, length)| {
        let name = RequestHost::parse(&host)
            .map(|n| RoutingName::of(&host, &n))
            .map_err(|_| ProxyError::BadHost);
        (host, target, length, name)
    });
    let (host, target, length, name, refused) = match checked {
        Ok((host, target, length, Ok(name))) => (host, target, length, name, None),
        Ok((host, target, length, Err(e))) => (host, target, length, RoutingName::None, Some(e)),
        Err(e) => (Bytes::new(), Bytes::new(), None, RoutingName::None, Some(e)),
    };
    let request = Request {
        host,
        name,
        target,
        request_id,
        start,
        start_ms,
        head_request: parts.method == http::Method::HEAD,
        idempotent: is_idempotent(parts.method.as_str().as_bytes()),
        length,
        tunnel: parts.method == http::Method::CONNECT,
        max_body: w.shared.config.limits.max_body,
        queue_us: 0,
        connect_us: 0,
    };
    let mut d = H2Stream {
        w: Arc::clone(&w),
        info,
        parts,
        body: Some(RecvBody::new(body, Bytes::new())),
        plan: BodyPlan::default(),
        respond,
        req: request,
        out: Vec::new(),
    };
    match refused {
        Some(err) => pipeline::refused(&w, &mut d, err).await,
        None => pipeline::run(&w, &mut d).await,
    };
}

/// The checks RFC 9113 leaves to the application: a request target and authority that make
/// sense, `Host` agreeing with `:authority`, no surrounding whitespace in field values.
/// Returns the host (authority), the origin-form target and the declared body length.
fn check(parts: &Parts) -> Result<(Bytes, Bytes, Option<u64>), ProxyError> {
    if parts.method == http::Method::CONNECT && websocket_protocol(parts).is_none() {
        // Plain CONNECT (a TCP tunnel to anywhere) is not offered; extended CONNECT for
        // WebSocket (RFC 8441) is.
        return Err(ProxyError::ConnectNotSupported);
    }
    for (_, v) in &parts.headers {
        let b = v.as_bytes();
        if matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t')) {
            return Err(ProxyError::BadH2Request("bad-header-value"));
        }
    }
    let authority = parts.uri.authority().map(|a| a.as_str());
    let host_field = match parts.headers.get_all(http::header::HOST).iter().count() {
        0 => None,
        1 => parts.headers.get(http::header::HOST),
        _ => return Err(ProxyError::BadH2Request("duplicate-host")),
    };
    let host = match (authority, host_field) {
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(ProxyError::BadH2Request("host-authority-mismatch"))
        }
        (Some(a), _) => Bytes::copy_from_slice(a.as_bytes()),
        (None, Some(h)) => Bytes::copy_from_slice(h.as_bytes()),
        (None, None) => return Err(ProxyError::BadH2Request("missing-authority")),
    };
    if parts
        .uri
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err(ProxyError::BadH2Request("userinfo-in-authority"));
    }
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let target = if path.starts_with('/') || (path == "*" && parts.method == http::Method::OPTIONS)
    {
        Bytes::copy_from_slice(path.as_bytes())
    } else {
        return Err(ProxyError::BadTarget);
    };
    let length = match parts.headers.get(http::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ProxyError::BadH2Request("bad-content-length"))?,
        ),
    };
    Ok((host, target, length))
}

/// The `:protocol` of an extended CONNECT asking for a WebSocket (RFC 8441 §4).
fn websocket_protocol(parts: &Parts) -> Option<&h2::ext::Protocol> {
    parts
        .extensions
        .get::<h2::ext::Protocol>()
        .filter(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// One request stream of an HTTP/2 connection.
///
/// It holds no borrowed lifetime, so that the generic request path's future is provably
/// `Send` where the stream's task is spawned.
pub struct H2Stream {
    w: Arc<Worker>,
    info: Arc<ConnInfo>,
    parts: Parts,
    /// The request body (`None` once it went to a backend that cannot get it again).
    body: Option<RecvBody>,
    plan: BodyPlan,
    respond: SendResponse<Bytes>,
    req: Request,
    /// The request for an HTTP/1.1 backend.
    out: Vec<u8>,
}

impl H2Stream {
    /// The forwarding facts of this stream for an upstream head without a body.
    fn forwarding<'a>(&'a self, upgrade: Option<&'a [u8]>) -> Forwarding<'a> {
        let cfg = &self.w.shared.config;
        let listener = &self.info.listener;
        Forwarding {
            client_ip: &self.info.peer_ip,
            listener_port: listener.addr.port(),
            trusted: listener.trusted,
            target: &self.req.target,
            host: &self.req.host,
            request_id: &self.req.request_id,
            body: BodyKind::None,
            explicit_zero_length: false,
            request_start_ms: cfg.headers.request_start.then_some(self.req.start_ms),
            via: &cfg.headers.via,
            proto: if listener.tls { "https" } else { "http" },
            upgrade,
        }
    }

    /// Sends one of pier's own answers on the stream.
    fn send_local(&mut self, resp: &LocalResponse<'_>) -> Outcome {
        let empty = self.req.head_request || resp.body.is_empty();
        let sent = match self.respond.send_response(resp.h2_head(), empty) {
            Ok(mut s) if !empty => s.send_data(Bytes::copy_from_slice(resp.body), true).is_ok(),
            Ok(_) => true,
            Err(_) => false,
        };
        Outcome {
            bytes_out: if empty { 0 } else { resp.body.len() as u64 },
            aborted: (!sent).then_some(Abort::ClientReset),
            ..Outcome::local(resp.status, None, true)
        }
    }

    /// Writes the upstream HTTP/1.1 head for the request: its fields (cookies joined back
    /// into one field, RFC 9113 §8.2.3), minus those pier writes itself.
    fn upstream_head(&self, out: &mut Vec<u8>) {
        let headers = &self.parts.headers;
        let mut cookie = Vec::new();
        for (i, v) in headers.get_all(http::header::COOKIE).iter().enumerate() {
            if i > 0 {
                cookie.extend_from_slice(b"; ");
            }
            cookie.extend_from_slice(v.as_bytes());
        }
        let fields = headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str().as_bytes();
                !(is_hop_by_hop(n) || n == b"host" || n == b"cookie" || n == b"expect")
            })
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .chain((!cookie.is_empty()).then_some((&b"cookie"[..], &cookie[..])));
        write_upstream_head(
            out,
            self.parts.method.as_str().as_bytes(),
            fields,
            &Forwarding {
                body: self.plan.kind,
                explicit_zero_length: self.plan.explicit_zero,
                ..self.forwarding(None)
            },
        );
    }

    /// The HTTP/1.1 handshake for a WebSocket asked for by extended CONNECT: a fresh
    /// `Sec-WebSocket-Key`, the client's version, subprotocols and extensions.
    fn websocket_head(&self, out: &mut Vec<u8>) {
        let key = crate::util::websocket_key();
        let fields = self
            .parts
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str().as_bytes();
                !(is_hop_by_hop(n)
                    || n == b"host"
                    || n == b"sec-websocket-key"
                    || n == b"content-length")
            })
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .chain(std::iter::once((&b"sec-websocket-key"[..], key.as_bytes())));
        write_upstream_head(out, b"GET", fields, &self.forwarding(Some(b"websocket")));
    }
}

impl Downstream for H2Stream {
    type Body<'a>
        = H2Body<'a>
    where
        Self: 'a;
    type Sink<'a>
        = H2Sink<'a>
    where
        Self: 'a;

    const PROTOCOL: &'static str = "h2";
    const DUPLEX: bool = true;

    fn request(&self) -> &Request {
        &self.req
    }

    fn request_mut(&mut self) -> &mut Request {
        &mut self.req
    }

    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }

    fn forwarded_client(&self) -> Option<std::net::IpAddr> {
        let values = self.parts.headers.get_all("x-forwarded-for");
        crate::client_limits::last_forwarded(values.iter().map(|v| v.as_bytes()))
    }

    fn peer(&self) -> SocketAddr {
        self.info.peer
    }

    fn field_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.parts
            .headers
            .get_all(name)
            .into_iter()
            .map(|v| v.as_bytes())
    }

    fn listener(&self) -> &Listener {
        &self.info.listener
    }

    fn may_serve(&self, name: &str) -> bool {
        let (Some(sni), Some(resolver)) = (&self.info.sni, &self.w.shared.tls_resolver) else {
            return true;
        };
        // A client may reuse a connection for every name its certificate covers (RFC 9113
        // §9.1.1); a name that gets another certificate belongs on another connection. Both
        // are asked of the table in use, so a renewed certificate does not strand connections
        // opened before the renewal.
        let conn_cert = resolver.for_name(sni.as_deref());
        let want = resolver.for_name(Some(name));
        matches!((&conn_cert, &want), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    async fn answer(&mut self, resp: &LocalResponse<'_>) -> Outcome {
        self.send_local(resp)
    }

    async fn answer_error(&mut self, err: ProxyError, _in_sync: bool) -> Outcome {
        let body = error_body(err);
        let id = self.req.request_id.clone();
        let resp = LocalResponse::error(err, &body, &id);
        let o = Outcome {
            error: Some(err),
            ..self.send_local(&resp)
        };
        if err == ProxyError::BodyTooLarge {
            // The answer is complete: the client may stop sending (RFC 9113 §8.1).
            self.respond.send_reset(Reason::NO_ERROR);
        }
        o
    }

    async fn client_failed(&mut self, err: Option<ProxyError>) -> Outcome {
        let o = match err {
            Some(e) => self.answer_error(e, false).await,
            None => Outcome::cut(0, Abort::ClientReset, true),
        };
        self.respond.send_reset(Reason::CANCEL);
        o
    }

    fn cut(&mut self, status: u16, why: Abort) -> Outcome {
        self.respond.send_reset(Reason::INTERNAL_ERROR);
        Outcome::cut(status, why, true)
    }

    async fn prepare_body(&mut self) -> Result<(), Outcome> {
        if self.req.tunnel {
            // The stream's DATA are the tunnel's bytes, not a body.
            self.plan = BodyPlan {
                ended: true,
                ..BodyPlan::default()
            };
            return Ok(());
        }
        let Some(body) = self.body.as_mut() else {
            return Err(Outcome::cut(0, Abort::ClientReset, true));
        };
        match plan_body(self.req.length, body, self.req.max_body).await {
            Ok(plan) => {
                self.plan = plan;
                Ok(())
            }
            Err(Some(err)) => {
                let o = self.answer_error(err, false).await;
                self.respond.send_reset(Reason::NO_ERROR);
                Err(o)
            }
            Err(None) => Err(Outcome::cut(0, Abort::ClientReset, true)),
        }
    }

    fn body_pending(&self) -> bool {
        !self.plan.ended && self.body.as_ref().is_some_and(|b| !b.is_end_stream())
    }

    fn body_replayable(&self) -> bool {
        // A body held whole can be sent again; one still streaming cannot.
        self.plan.ended
    }

    fn upgrading(&self) -> bool {
        self.req.tunnel
    }

    fn write_request(&mut self) -> (&[u8], bool) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if self.req.tunnel {
            self.websocket_head(&mut out);
            self.out = out;
            return (&self.out, true);
        }
        self.upstream_head(&mut out);
        let plan = &self.plan;
        if plan.kind == BodyKind::Chunked {
            // What was read ahead is the first chunk; a body that ended with trailers is all
            // here, and ends with them.
            if !plan.first.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", plan.first.len()).as_bytes());
                out.extend_from_slice(&plan.first);
                out.extend_from_slice(b"\r\n");
            }
            if plan.ended {
                put_last_chunk(&mut out, plan.trailers.as_ref());
            }
        } else {
            out.extend_from_slice(&plan.first);
        }
        self.out = out;
        (&self.out, self.plan.ended)
    }

    fn split(&mut self) -> (H2Body<'_>, H2Sink<'_>) {
        (
            H2Body {
                body: &mut self.body,
                plan: &self.plan,
                client_body: self.w.shared.config.timeouts.client_body,
                scratch: Vec::new(),
                empty: BytesMut::new(),
            },
            H2Sink {
                shared: &self.w.shared,
                respond: &mut self.respond,
                send: None,
                scratch: Vec::new(),
                timing: None,
            },
        )
    }

    async fn gone(&mut self) {
        // A reset stream; poll_reset's error (a connection gone) means as much.
        let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
    }

    fn h2_request(&self) -> Result<(http::Request<()>, bool), ProxyError> {
        let headers = &self.parts.headers;
        let fields = headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str().as_bytes();
                !(is_hop_by_hop(n) || n == b"host" || n == b"expect")
            })
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        let mut request = h2_request(
            self.parts.method.as_str().as_bytes(),
            fields,
            &self.forwarding(None),
            self.req.length,
        )?;
        if headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            request
                .headers_mut()
                .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        }
        let has_body = self.body.as_ref().is_some_and(|b| !b.is_end_stream());
        Ok((request, has_body))
    }
}

/// How an h2 request body goes upstream.
struct BodyPlan {
    /// Bytes read before the backend was asked (the whole body when `ended`).
    first: Bytes,
    ended: bool,
    /// The trailers of a body that `ended` with them (it then goes chunked, to carry them).
    trailers: Option<http::HeaderMap>,
    kind: BodyKind,
    explicit_zero: bool,
}

impl Default for BodyPlan {
    fn default() -> Self {
        BodyPlan {
            first: Bytes::new(),
            ended: false,
            trailers: None,
            kind: BodyKind::None,
            explicit_zero: false,
        }
    }
}

/// Reads a small body whole (so that it goes with its head under a `Content-Length`), or
/// its first bytes; `declared` is its `Content-Length`. `Err(None)`: the client reset.
async fn plan_body(
    declared: Option<u64>,
    body: &mut RecvBody,
    max_body: u64,
) -> Result<BodyPlan, Option<ProxyError>> {
    let over = |n: u64| max_body != 0 && n > max_body;
    if declared.is_some_and(over) {
        return Err(Some(ProxyError::BodyTooLarge));
    }
    let (first, ended, trailers) = if body.inner().is_end_stream() {
        (Bytes::new(), true, None)
    } else {
        let (first, ended) = RecvBody::read_upto(body.inner(), SMALL_BODY)
            .await
            .map_err(|_| None)?;
        // A body that ended may have ended with trailers.
        let trailers = if ended {
            crate::h2io::trailers(body.inner())
                .await
                .map_err(|_| None)?
                .filter(|t| !t.is_empty())
        } else {
            None
        };
        (first, ended, trailers)
    };
    if over(first.len() as u64) {
        return Err(Some(ProxyError::BodyTooLarge));
    }
    let kind = if trailers.is_some() {
        BodyKind::Chunked
    } else if ended {
        // h2 has already checked the DATA against any Content-Length (RFC 9113 §8.1.1).
        if first.is_empty() {
            BodyKind::None
        } else {
            BodyKind::Length(first.len() as u64)
        }
    } else {
        match declared {
            Some(n) => BodyKind::Length(n),
            None => BodyKind::Chunked,
        }
    };
    Ok(BodyPlan {
        first,
        ended,
        trailers,
        kind,
        explicit_zero: declared == Some(0),
    })
}

/// The rest of an HTTP/2 request body.
pub struct H2Body<'a> {
    body: &'a mut Option<RecvBody>,
    plan: &'a BodyPlan,
    client_body: Duration,
    scratch: Vec<u8>,
    /// The (empty) buffer of what was read ahead: the plan holds it.
    empty: BytesMut,
}

impl RequestBody for H2Body<'_> {
    type Reader = RecvBody;

    async fn send_h1<W: AsyncWrite + Unpin + Send>(
        &mut self,
        up: &mut W,
        limits: RelayLimits,
    ) -> Result<u64, RelayError> {
        // The request body is spent either way: no retry can resend it.
        let Some(mut src) = self.body.take() else {
            return Err(RelayError::DstWrite(io::ErrorKind::BrokenPipe.into()));
        };
        let plan = self.plan;
        if plan.kind == BodyKind::Chunked {
            // A chunked body ends with the client's trailers, once they are in.
            relay_chunked(&mut src, &mut self.empty, up, limits, &mut self.scratch).await
        } else {
            let kind = match plan.kind {
                BodyKind::Length(n) => BodyKind::Length(n.saturating_sub(plan.first.len() as u64)),
                _ => BodyKind::UntilClose,
            };
            let coding = OutCoding::Identity;
            relay_body(
                &mut src,
                &mut self.empty,
                up,
                kind,
                coding,
                limits,
                &mut self.scratch,
            )
            .await
        }
    }

    async fn send_h2(
        &mut self,
        mut up: h2::SendStream<Bytes>,
        _limits: RelayLimits,
    ) -> Result<u64, RelayError> {
        let Some(src) = self.body.as_mut() else {
            return Err(RelayError::SrcEof);
        };
        let r = pump(src.inner(), &mut up, self.client_body).await;
        r.map_err(|why| {
            // The client's body broke: the backend must not take a partial one as complete.
            up.send_reset(Reason::CANCEL);
            RelayError::SrcRead(io::Error::other(why.as_str()))
        })
    }

    fn tunnel(&mut self) -> Option<(&mut RecvBody, &mut BytesMut)> {
        Some((self.body.as_mut()?, &mut self.empty))
    }
}

/// The client's side of an answer on an HTTP/2 stream.
pub struct H2Sink<'a> {
    shared: &'a Shared,
    respond: &'a mut SendResponse<Bytes>,
    /// The response body, once the head is out.
    send: Option<SendBody>,
    /// A chunked answer's trailer lines.
    scratch: Vec<u8>,
    /// `Server-Timing` for the next head.
    timing: Option<RouterTiming>,
}

impl ResponseSink for H2Sink<'_> {
    type Writer = SendBody;

    fn take_fields(&mut self) -> HeaderList {
        HeaderList::new()
    }

    fn put_fields(&mut self, _fields: HeaderList) {}

    async fn wait<F: Future + Send>(
        &mut self,
        deadline: Instant,
        f: F,
    ) -> Result<F::Output, Waited> {
        let reset = std::future::poll_fn(|cx| self.respond.poll_reset(cx));
        tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), f) => r.map_err(|_| Waited::TimedOut),
            _ = reset => Err(Waited::ClientGone),
        }
    }

    fn timing(&mut self, timing: RouterTiming) {
        self.timing = Some(timing);
    }

    async fn interim(&mut self, _head: &ResponseHead) -> io::Result<()> {
        // h2 clients get the final answer only.
        Ok(())
    }

    async fn head(
        &mut self,
        head: &ResponseHead,
        framing: &ResponseFraming,
        up_buf: &mut BytesMut,
        _early: bool,
        hsts: Option<&str>,
    ) -> Result<HeadSent, Abort> {
        let no_body = framing.body == BodyKind::None;
        let mut response = h2_response(head, framing, &self.shared.config.headers.via, hsts);
        if let Some(t) = self.timing.take() {
            add_timing(response.headers_mut(), t);
        }
        let send = self
            .respond
            .send_response(response, no_body)
            .map_err(|_| Abort::ClientReset)?;
        let send = self.send.insert(SendBody::new(send));
        let mut body_sent = None;
        if let BodyKind::Length(n) = framing.body {
            if !no_body && up_buf.len() as u64 >= n && n <= SMALL_BODY as u64 {
                // The whole body is here (the common small answer): one DATA frame that ends
                // the stream, instead of the data and then an empty frame to end it.
                let body = up_buf.split_to(n as usize).freeze();
                send.send_last(body).map_err(|_| Abort::ClientWrite)?;
                body_sent = Some(n);
            }
        }
        Ok(HeadSent {
            body_sent,
            keep_alive: true,
        })
    }

    async fn body<R: AsyncRead + Unpin + Send>(
        &mut self,
        up: &mut R,
        up_buf: &mut BytesMut,
        kind: BodyKind,
        read_idle: Duration,
    ) -> Result<u64, Abort> {
        let Some(send) = self.send.as_mut() else {
            return Err(Abort::ClientReset);
        };
        let limits = RelayLimits {
            read_idle,
            write_idle: self.shared.config.timeouts.client_body,
            max_bytes: 0,
        };
        // A chunked answer's trailers come back in `scratch` and end the stream.
        self.scratch.clear();
        let coding = OutCoding::IdentityKeepTrailers;
        let n = relay_body(up, up_buf, send, kind, coding, limits, &mut self.scratch)
            .await
            .map_err(|e| e.response_abort())?;
        // An answer sent whole is done even if its stream can no longer be ended; one whose
        // trailers could not be sent is not.
        if send.end(&self.scratch).is_err() && !self.scratch.is_empty() {
            return Err(Abort::ClientWrite);
        }
        Ok(n)
    }

    async fn h2_answer(
        &mut self,
        resp: http::Response<RecvStream>,
        read_idle: Duration,
        hsts: Option<&str>,
    ) -> Result<(u16, u64, bool), (u16, Abort)> {
        let via = &self.shared.config.headers.via;
        let (parts, mut resp_body) = resp.into_parts();
        let status = parts.status.as_u16();
        let mut head = http::Response::new(());
        *head.status_mut() = parts.status;
        let h = head.headers_mut();
        for (n, v) in &parts.headers {
            if !is_hop_by_hop(n.as_str().as_bytes()) {
                h.append(n.clone(), v.clone());
            }
        }
        if let Some(n) = parts.headers.get(http::header::CONTENT_LENGTH) {
            h.insert(http::header::CONTENT_LENGTH, n.clone());
        }
        if !via.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&format!("2 {via}")) {
                h.append(http::header::VIA, v);
            }
        }
        if let Some(v) = hsts {
            if !h.contains_key(http::header::STRICT_TRANSPORT_SECURITY) {
                if let Ok(v) = http::HeaderValue::from_str(v) {
                    h.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
                }
            }
        }
        if let Some(t) = self.timing.take() {
            add_timing(h, t);
        }
        let no_body = resp_body.is_end_stream();
        let mut down = self
            .respond
            .send_response(head, no_body)
            .map_err(|_| (status, Abort::ClientReset))?;
        if no_body {
            return Ok((status, 0, true));
        }
        match pump(&mut resp_body, &mut down, read_idle).await {
            Ok(n) => Ok((status, n, true)),
            Err(why) => Err((status, why)),
        }
    }

    async fn switch(&mut self, head: &ResponseHead) -> Result<&mut SendBody, Abort> {
        // The backend's 101 becomes the client's 200 (RFC 8441 §5), with the subprotocol and
        // extensions it chose.
        let mut resp = http::Response::new(());
        *resp.status_mut() = http::StatusCode::OK;
        for f in &head.headers {
            let name = head.name(f);
            let pass = name.eq_ignore_ascii_case(b"sec-websocket-protocol")
                || name.eq_ignore_ascii_case(b"sec-websocket-extensions");
            if !pass {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(head.value(f)),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        let send = self
            .respond
            .send_response(resp, false)
            .map_err(|_| Abort::ClientReset)?;
        Ok(self.send.insert(SendBody::new(send)))
    }
}

/// Adds pier's `Server-Timing` to a response head.
fn add_timing(h: &mut http::HeaderMap, t: RouterTiming) {
    if let Ok(v) = http::HeaderValue::from_str(&t.value()) {
        h.append(http::header::HeaderName::from_static("server-timing"), v);
    }
}

/// The h2 response head for a backend's HTTP/1.1 response: its end-to-end fields (names
/// lower-cased as h2 requires), the length when known, `Via`, and HSTS when the app wants it.
fn h2_response(
    head: &ResponseHead,
    framing: &ResponseFraming,
    via: &str,
    hsts: Option<&str>,
) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() =
        http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    let listed = |name: &[u8]| {
        framing
            .conn
            .listed
            .iter()
            .any(|t| head.value(t).eq_ignore_ascii_case(name))
    };
    let mut has_hsts = false;
    for f in &head.headers {
        let name = head.name(f);
        if is_hop_by_hop(name) || listed(name) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(head.value(f)),
        ) else {
            continue;
        };
        has_hsts |= n == http::header::STRICT_TRANSPORT_SECURITY;
        h.append(n, v);
    }
    if let Some(n) = framing.length {
        let mut v = Vec::with_capacity(20);
        put_u64(&mut v, n);
        if let Ok(v) = http::HeaderValue::from_bytes(&v) {
            h.insert(http::header::CONTENT_LENGTH, v);
        }
    }
    if !via.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&format!("1.1 {via}")) {
            h.append(http::header::VIA, v);
        }
    }
    if let (Some(v), false) = (hsts, has_hsts) {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            h.insert(http::header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
    r
}

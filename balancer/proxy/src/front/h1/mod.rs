//! Front end `h1`: one HTTP/1.x client connection, request after request.
//!
//! For each request: read and parse the head ([`pier_h1::head`]), check its framing
//! ([`pier_h1::framing`]), its target and its Host, and hand it to the pipeline as an
//! [`H1Request`] ([`exchange`]). What cannot be read into a request is refused here, with the
//! right 4xx, and never reaches a backend. Pipelined requests are answered strictly in order
//! because the next head is parsed only once the previous response is written. A cleartext
//! connection that opens with the HTTP/2 preface is handed back to the accept layer.

mod exchange;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use pier_h1::framing::{BodyKind, RequestFraming};
use pier_h1::head::{recycle, HeadGate, HeadLimits, HeaderList, Known, RequestHead, Version};
use pier_routes::RequestHost;

use crate::config::Listener;
use crate::downstream::{is_idempotent, Request, RoutingName};
use crate::error::ProxyError;
use crate::pipeline;
use crate::respond::{error_body, LocalResponse};
use crate::shared::Worker;
use crate::stream::ClientStream;
use crate::util::{is_sane_request_id, new_request_id, wall_ms};
pub use exchange::H1Request;

/// How long an idle keep-alive connection is still read from once shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long a connection waits for its next request, buffers and request path at hand, before
/// it gives them back and waits idle (in `wait_idle`, woken by bytes, its deadline or a drain).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A client connection and its reusable buffers.
pub struct Client {
    pub stream: ClientStream,
    /// Bytes read from the client and not yet used.
    pub buf: BytesMut,
    /// Where heads are written before they are sent.
    pub out: Vec<u8>,
    /// Chunk framing while relaying bodies.
    pub scratch: Vec<u8>,
    pub peer: SocketAddr,
    /// `peer`'s address as written in `X-Forwarded-For`.
    pub peer_ip: Vec<u8>,
    pub listener: Listener,
    /// Deadlines of the waits for the next head and for the backend's first byte.
    pub timer: crate::util::LazyTimer,
    /// The field lists of the last request and response, reused for the next heads.
    pub fields: HeaderList,
    pub response_fields: HeaderList,
    /// When the last answer was complete: one reading of the clock shared by the upstream pool,
    /// the access record and the wait for the next head. `None` until read.
    pub last_done: Option<Instant>,
}

impl Client {
    /// Frees the read, head and chunk buffers of an idle connection (they are allocated again,
    /// small, when the next request arrives). Keeps anything not yet used.
    fn release_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.out = Vec::new();
        self.scratch = Vec::new();
        self.fields = HeaderList::new();
        self.response_fields = HeaderList::new();
    }

    /// A new client connection, boxed: the box moves into each request's exchange and back, a
    /// pointer instead of its bytes, and the connection task holds only that pointer.
    pub fn boxed(stream: ClientStream, peer: SocketAddr, listener: Listener) -> Box<Client> {
        Box::new(Client {
            stream,
            // Both start empty: the read loop takes 1 KiB when the first bytes are due (8 KiB
            // more if a head needs it) and `out` grows to the first head written.
            buf: BytesMut::new(),
            out: Vec::new(),
            scratch: Vec::new(),
            peer,
            peer_ip: pier_h1::rewrite::client_ip_text(peer),
            listener,
            timer: crate::util::LazyTimer::default(),
            fields: HeaderList::new(),
            response_fields: HeaderList::new(),
            last_done: None,
        })
    }
}

/// Serves one client connection until it closes, fails, idles out or the balancer drains.
/// Returns the connection when it turned out to speak HTTP/2 (the preface, with what was read
/// of it), for the accept layer to hand to the h2 front end. (A plain function returning an
/// `async move` block: it lives in every connection's task, and an `async fn` would keep its
/// arguments twice.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve(
    w: Arc<Worker>,
    mut client: Box<Client>,
) -> impl Future<Output = Option<(ClientStream, BytesMut)>> + Send {
    async move {
        let mut first = true;
        let mut idle_until = None;
        loop {
            if let Some(limit) = idle_until.take() {
                // Idle: only this small future waits for the next request; the request path's
                // state (several KiB) is not held by an idle connection.
                if !wait_idle(&w, &mut client, limit).await {
                    break;
                }
            }
            // Busy: requests one after another, in a future boxed for the busy period (allocated
            // when the connection wakes up, freed when it has been idle for IDLE_CHECK).
            let busy;
            (client, busy) = Box::pin(serve_busy(&w, client, &mut first)).await;
            match busy {
                Busy::Idle(limit) => idle_until = Some(limit),
                Busy::Close => break,
                Busy::H2Preface => {
                    let Client { stream, buf, .. } = *client;
                    return Some((stream, buf));
                }
            }
        }
        close(&mut client).await;
        None
    }
}

/// How a busy period of a connection ended.
enum Busy {
    /// Nothing came for IDLE_CHECK: wait idle, until this deadline at most.
    Idle(Instant),
    Close,
    /// The HTTP/2 preface (h2c with prior knowledge).
    H2Preface,
}

/// Serves requests until the connection closes or goes idle.
async fn serve_busy(
    w: &Arc<Worker>,
    mut client: Box<Client>,
    first: &mut bool,
) -> (Box<Client>, Busy) {
    loop {
        let head = match read_head(w, &mut client, *first).await {
            Ok(Some(Incoming::Head(h))) => h,
            Ok(Some(Incoming::H2Preface)) => return (client, Busy::H2Preface),
            Ok(Some(Incoming::Idle(limit))) => return (client, Busy::Idle(limit)),
            Ok(None) => return (client, Busy::Close),
            Err(err) => {
                refuse(w, &mut client, err, b"", false).await;
                return (client, Busy::Close);
            }
        };
        *first = false;
        let keep;
        (client, keep) = handle(w, client, head).await;
        if !keep {
            return (client, Busy::Close);
        }
    }
}

/// Waits while a connection is idle: until its first bytes come (`true`), or until `limit`,
/// the peer's close, or the balancer's drain (`false`). It sleeps until `limit` with no
/// periodic wake-up (the worker's `drain` wakes it when the balancer drains), and once draining
/// still waits DRAIN_GRACE: a request may already be on its way. Written as a poll function
/// over the socket's readiness, the drain notice and the connection's timer, this wait is the
/// whole of what an idle connection's task holds besides its [`Client`]: about a hundred bytes.
///
/// A plain function returning an `async move` block, so that its arguments are not kept twice.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn wait_idle<'a>(
    w: &'a Worker,
    client: &'a mut Client,
    limit: Instant,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        let drain = w.drain.notified();
        tokio::pin!(drain);
        // Registered before the flag is read: a drain that starts after the read still wakes it.
        drain.as_mut().enable();
        let mut draining = false;
        let mut until = limit;
        loop {
            if !draining && w.shared.is_shutting_down() {
                draining = true;
                until = limit.min(Instant::now() + DRAIN_GRACE);
            }
            let deadline = tokio::time::Instant::from(until);
            let Client { stream, timer, .. } = &mut *client;
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(ready) = stream.tcp().poll_read_ready(cx) {
                    return Poll::Ready(Idle::Readable(ready.is_ok()));
                }
                if !draining && drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Idle::Drain);
                }
                timer.poll_until(cx, deadline).map(|_| Idle::Deadline)
            })
            .await;
            match woke {
                Idle::Readable(ok) => return ok,
                Idle::Deadline => return false,
                // The flag is set before the notice: the loop turns to the drain's grace period.
                Idle::Drain => {}
            }
        }
    }
}

/// What ended an idle wait.
enum Idle {
    /// The socket became readable (`true`) or failed (`false`).
    Readable(bool),
    /// The keep-alive deadline (or the drain's grace period) passed.
    Deadline,
    Drain,
}

fn limits(w: &Worker) -> HeadLimits {
    let l = &w.shared.config.limits;
    HeadLimits {
        max_line: l.max_request_line,
        max_head: l.max_header_bytes,
        max_headers: l.max_headers,
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which a cleartext client with prior
/// knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What starts a connection or follows a response. (Not boxed: it is moved once per request,
/// and a box would be an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Incoming {
    Head(RequestHead),
    /// The h2 preface on a plain listener (h2c with prior knowledge).
    H2Preface,
    /// Nothing for IDLE_CHECK (buffers given back): wait idle until this deadline at most.
    Idle(Instant),
}

/// Reads until a whole request head is buffered. `Ok(None)` means the connection should
/// close quietly (peer closed, idle timeout, or the balancer is draining an idle connection).
async fn read_head(
    w: &Worker,
    client: &mut Client,
    first: bool,
) -> Result<Option<Incoming>, ProxyError> {
    let cfg = &w.shared.config;
    let limits = limits(w);
    // Idle time counts from the end of the last answer.
    let entered = match client.last_done {
        Some(t) if !first => t,
        _ => Instant::now(),
    };
    // The time of the last wake-up while idle (the idle deadlines are counted from it).
    let mut now = entered;
    let mut started: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    let h2c = first && cfg.http2.h2c && !client.listener.tls;
    let mut gate = HeadGate::default();
    loop {
        if h2c && client.buf.first() == Some(&b'P') {
            let n = client.buf.len().min(H2_PREFACE.len());
            if client.buf[..n] == H2_PREFACE[..n] {
                if n == H2_PREFACE.len() {
                    return Ok(Some(Incoming::H2Preface));
                }
                // A prefix of the preface: read on (it is not a complete HTTP/1 head either).
                started.get_or_insert_with(Instant::now);
            }
        }
        if !client.buf.is_empty() {
            match gate.request(&client.buf, &limits, &mut client.fields) {
                Ok(Some((len, parts))) => {
                    return Ok(Some(Incoming::Head(
                        parts.into_head(client.buf.split_to(len).freeze()),
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(ProxyError::Head(e)),
            }
            started.get_or_insert_with(Instant::now);
        }
        let idle = started.is_none();
        let limit = match started {
            Some(t) => t + cfg.timeouts.client_header,
            None if first => entered + cfg.timeouts.client_header,
            None => entered + cfg.timeouts.client_keepalive,
        };
        let draining = w.shared.is_shutting_down();
        let mut until = limit;
        if idle {
            until = if draining {
                // A request may already be on its way on this idle connection: closing at
                // once would lose it. Wait a moment; if one comes it is served with
                // Connection: close.
                until.min(*drain_deadline.get_or_insert(now + DRAIN_GRACE))
            } else {
                // After IDLE_CHECK the connection goes to `wait_idle`, which also notices a
                // drain that starts later (a shutdown watcher per request would cost more).
                until.min(now + IDLE_CHECK)
            };
        }
        if client.buf.capacity() == 0 {
            // Buffers were given back while idle: a small one takes the next head (most fit).
            client.buf.reserve(1024);
        } else if client.buf.capacity() - client.buf.len() < 1024 {
            client.buf.reserve(8 * 1024);
        }
        match client
            .timer
            .run(until.into(), client.stream.read_buf(&mut client.buf))
            .await
        {
            Err(_) if !idle => return Err(ProxyError::HeaderTimeout),
            Err(_) => {
                now = Instant::now();
                if draining || now >= limit {
                    return Ok(None);
                }
                // Idle for a while (IDLE_CHECK): give the buffers back (up to ~13 KiB), as
                // nginx does, and the busy period's state with them. A busy connection never
                // gets here between its requests.
                client.release_buffers();
                return Ok(Some(Incoming::Idle(limit)));
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// Splits an absolute-form target (`http://authority/path`) into authority and origin-form.
fn absolute_form(target: &Bytes) -> Option<(Bytes, Bytes)> {
    let lower_starts =
        |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let scheme_len = if lower_starts(b"http://") {
        7
    } else if lower_starts(b"https://") {
        8
    } else {
        return None;
    };
    let rest = target.slice(scheme_len..);
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let authority = rest.slice(..end);
    if authority.contains(&b'@') {
        // userinfo is deprecated for http(s) URIs and never forwarded.
        return None;
    }
    let path = rest.slice(end..);
    let origin = match path.first() {
        None => Bytes::from_static(b"/"),
        Some(b'/') => path,
        Some(_) => {
            let mut v = Vec::with_capacity(path.len() + 1);
            v.push(b'/');
            v.extend_from_slice(&path);
            Bytes::from(v)
        }
    };
    Some((authority, origin))
}

/// The `Upgrade` value when a request is a WebSocket handshake (RFC 6455 §4.1: an HTTP/1.1
/// GET without a body whose `Connection` lists `upgrade`). Other upgrades (h2c, TLS) are not
/// passed on: the request is served as plain HTTP/1.1.
fn websocket_upgrade(head: &RequestHead, framing: &RequestFraming) -> Option<Bytes> {
    if head.version != Version::Http11
        || !head.is_method(b"GET")
        || framing.body != BodyKind::None
        || !framing
            .conn
            .listed
            .iter()
            .any(|t| head.value(t).eq_ignore_ascii_case(b"upgrade"))
    {
        return None;
    }
    let value = head.first(Known::Upgrade)?;
    pier_h1::head::lists_websocket(value).then(|| head.buf.slice_ref(value))
}

/// Reads one request into a [`Request`], runs the pipeline on it; returns whether the
/// connection may carry another.
async fn handle(
    w: &Arc<Worker>,
    mut client: Box<Client>,
    head: RequestHead,
) -> (Box<Client>, bool) {
    let start = Instant::now();
    let start_ms = wall_ms(start);
    client.last_done = None;
    let cfg = &w.shared.config;
    let head_request = head.is_method(b"HEAD");
    let framing = match RequestFraming::of(&head) {
        Ok(f) => f,
        Err(e) => {
            refuse(w, &mut client, ProxyError::Framing(e), b"", head_request).await;
            return (client, false);
        }
    };
    let mut request_id = SmallVec::<[u8; 64]>::new();
    match head.first(Known::XRequestId) {
        Some(v) if is_sane_request_id(v) => request_id.extend_from_slice(v),
        _ if cfg.headers.request_id => {
            request_id.extend_from_slice(&new_request_id());
        }
        _ => {}
    }
    let raw_target = head.buf.slice_ref(head.target());
    let host_field = framing.host.map(|h| head.buf.slice_ref(head.value(&h)));
    let (host, target) = if head.is_method(b"CONNECT") {
        refuse(
            w,
            &mut client,
            ProxyError::ConnectNotSupported,
            &request_id,
            false,
        )
        .await;
        return (client, false);
    } else if raw_target.first() == Some(&b'/')
        || (&raw_target[..] == b"*" && head.is_method(b"OPTIONS"))
    {
        (host_field.unwrap_or_default(), raw_target)
    } else if let Some((authority, origin)) = absolute_form(&raw_target) {
        (authority, origin)
    } else {
        refuse(
            w,
            &mut client,
            ProxyError::BadTarget,
            &request_id,
            head_request,
        )
        .await;
        return (client, false);
    };
    let name = if host.is_empty() && head.version == Version::Http10 {
        RoutingName::None
    } else {
        match RequestHost::parse(&host) {
            Ok(h) => RoutingName::of(&host, &h),
            Err(_) => {
                refuse(
                    w,
                    &mut client,
                    ProxyError::BadHost,
                    &request_id,
                    head_request,
                )
                .await;
                return (client, false);
            }
        }
    };
    let keep_alive = framing.keep_alive(head.version) && !w.shared.is_shutting_down();
    let upgrade = websocket_upgrade(&head, &framing);
    let request = Request {
        host,
        name,
        target,
        request_id,
        start,
        start_ms,
        head_request,
        idempotent: is_idempotent(head.method()),
        length: match framing.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        },
        tunnel: false,
        max_body: cfg.limits.max_body,
        queue_us: 0,
        connect_us: 0,
    };
    let mut d = H1Request {
        w: Arc::clone(w),
        client,
        head,
        framing,
        req: request,
        keep_alive,
        upgrade,
    };
    let outcome = pipeline::run(w, &mut d).await;
    let (mut client, head) = d.into_parts();
    client.last_done = outcome.end;
    recycle(&mut client.fields, head.headers);
    (client, outcome.keep_alive && outcome.aborted.is_none())
}

/// Refuses what could not be read into a request: the error answer, then the connection
/// closes. Counted here (the pipeline never sees it).
async fn refuse(
    w: &Worker,
    client: &mut Client,
    err: ProxyError,
    request_id: &[u8],
    head_request: bool,
) {
    let body = error_body(err);
    let resp = LocalResponse::error(err, &body, request_id);
    let m = &w.shared.metrics;
    m.errors.with_label_values(&[err.reason()]).inc();
    m.response(err.status());
    send_local(client, &resp, false, Version::Http11, head_request).await;
    tracing::info!(
        target: "pier::access",
        client = %client.peer,
        status = err.status(),
        error = err.reason(),
        "refused"
    );
}

/// Writes one of pier's own answers; returns whether it was written.
pub(super) async fn send_local(
    client: &mut Client,
    resp: &LocalResponse<'_>,
    keep_alive: bool,
    version: Version,
    head_request: bool,
) -> bool {
    client.out.clear();
    resp.write(
        &mut client.out,
        keep_alive,
        version == Version::Http10,
        head_request,
    );
    let write = async {
        client.stream.write_all(&client.out).await?;
        client.stream.flush().await
    };
    matches!(timeout(Duration::from_secs(10), write).await, Ok(Ok(())))
}

/// Closes a connection without losing a response still in flight: half-close, then read and
/// discard what the client still sends (briefly), so the kernel does not answer with a reset.
async fn close(client: &mut Client) {
    let _ = client.stream.shutdown().await;
    // Drained into the connection's own buffer, in a poll function under the connection's own
    // timer: a stack array or a fresh timeout here would sit in the state of every
    // connection's task for its whole life.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let Client {
        stream, buf, timer, ..
    } = client;
    buf.clear();
    buf.resize(4096, 0);
    let mut drained = 0usize;
    std::future::poll_fn(|cx| loop {
        if drained >= 256 * 1024 {
            return Poll::Ready(());
        }
        let mut read = tokio::io::ReadBuf::new(&mut buf[..]);
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => drained += read.filled().len(),
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return timer.poll_until(cx, deadline).map(|_| ()),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_split() {
        let t = Bytes::from_static(b"http://Example.com:8080/a?b");
        let (a, o) = absolute_form(&t).unwrap();
        assert_eq!(&a[..], b"Example.com:8080");
        assert_eq!(&o[..], b"/a?b");
        let (a, o) = absolute_form(&Bytes::from_static(b"HTTPS://x.test")).unwrap();
        assert_eq!(&a[..], b"x.test");
        assert_eq!(&o[..], b"/");
        let (_, o) = absolute_form(&Bytes::from_static(b"http://x.test?q=1")).unwrap();
        assert_eq!(&o[..], b"/?q=1");
        assert!(absolute_form(&Bytes::from_static(b"ftp://x.test/")).is_none());
        assert!(absolute_form(&Bytes::from_static(b"http://u@x.test/")).is_none());
    }
}

//! Stage `serve`: one client connection, request after request.
//!
//! For each request: read and parse the head (stage `serve`), check its framing, find the
//! app (stage `route`), then answer locally (redirect, static page, maintenance, errors) or hand
//! over to stage `forward`. Pipelined requests are answered strictly in order because the next
//! head is parsed only once the previous response is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at};

use pier_routes::{Action, App, RequestHost};

use crate::config::Listener;
use crate::forward::{forward, Forwarded};
use crate::h1::framing::{BodyKind, RequestFraming};
use crate::h1::head::{recycle, HeadGate, HeadLimits, HeaderList, Known, RequestHead, Version};
use crate::headers::Forwarding;
use crate::respond::{
    action_response, error_body, https_redirect, AnswerScratch, LocalResponse, ProxyError,
};
use crate::server::Worker;
use crate::stream::ClientStream;
use crate::util::{is_sane_request_id, new_request_id, now_ms, wall_ms};

/// How long an idle keep-alive connection is still read from once shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How often an idle keep-alive connection checks whether the balancer is draining.
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
}

/// One request, parsed and checked.
pub struct Request {
    pub head: RequestHead,
    pub framing: RequestFraming,
    /// The origin-form target sent upstream.
    target: Bytes,
    /// The Host sent upstream (the Host field, or the authority of an absolute-form target).
    host: Bytes,
    pub request_id: SmallVec<[u8; 64]>,
    pub start: Instant,
    pub start_ms: u64,
    pub head_request: bool,
    /// Whether the client asked to keep the connection open.
    pub keep_alive: bool,
    /// Largest body accepted for this request (0 = no limit).
    pub max_body: u64,
    /// The `Upgrade` value of a WebSocket handshake (tunnelled once the backend says 101).
    pub upgrade: Option<Bytes>,
}

impl Request {
    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// The forwarding facts of this request for its upstream head, as it came from a client at
    /// `peer_ip` on `listener`.
    pub fn forwarding<'a>(
        &'a self,
        peer_ip: &'a [u8],
        listener: &Listener,
        headers: &'a crate::config::HeaderSettings,
    ) -> Forwarding<'a> {
        Forwarding {
            client_ip: peer_ip,
            listener_port: listener.addr.port(),
            trusted: listener.trusted,
            target: self.target(),
            host: self.host(),
            request_id: &self.request_id,
            body: self.framing.body,
            explicit_zero_length: self.framing.length == Some(0),
            request_start_ms: headers.request_start.then_some(self.start_ms),
            via: &headers.via,
            proto: if listener.tls { "https" } else { "http" },
            upgrade: self.upgrade.as_deref(),
        }
    }
    pub fn host(&self) -> &[u8] {
        &self.host
    }
}

/// Serves one client connection until it closes, fails, idles out or the balancer drains.
pub async fn serve_connection(
    w: Arc<Worker>,
    stream: ClientStream,
    peer: SocketAddr,
    listener: Listener,
) {
    let mut client = Client {
        stream,
        // Both start empty: the read loop takes 1 KiB when the first bytes are due (8 KiB
        // more if a head needs it) and `out` grows to the first head written.
        buf: BytesMut::new(),
        out: Vec::new(),
        scratch: Vec::new(),
        peer,
        peer_ip: crate::headers::client_ip_text(peer),
        listener,
        timer: crate::util::LazyTimer::default(),
        fields: HeaderList::new(),
        response_fields: HeaderList::new(),
        last_done: None,
    };
    let mut first = true;
    loop {
        let head = match read_head(&w, &mut client, first).await {
            Ok(Some(Incoming::Head(h))) => h,
            Ok(Some(Incoming::H2Preface)) => {
                let Client {
                    stream, buf, peer, ..
                } = client;
                Box::pin(crate::h2::serve_h2(w, stream, peer, listener, buf)).await;
                return;
            }
            Ok(None) => break,
            Err(err) => {
                answer_error(&w, &mut client, err, b"", false, false).await;
                log_refused(&client, err);
                break;
            }
        };
        first = false;
        if !handle(&w, &mut client, head).await {
            break;
        }
    }
    close(&mut client).await;
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
                // Idle connections wake up now and then to notice a shutdown; this costs a
                // timer per second of idleness instead of a shutdown watcher per request.
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
                // nginx does. A busy connection never gets here between its requests.
                client.release_buffers();
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
    crate::h1::head::lists_websocket(value).then(|| head.buf.slice_ref(value))
}

/// Handles one request; returns whether the connection may carry another.
async fn handle(w: &Worker, client: &mut Client, head: RequestHead) -> bool {
    let start = Instant::now();
    let start_ms = wall_ms(start);
    client.last_done = None;
    let cfg = &w.shared.config;
    let framing = match RequestFraming::of(&head) {
        Ok(f) => f,
        Err(e) => {
            let err = ProxyError::Framing(e);
            answer_error(w, client, err, b"", head.is_method(b"HEAD"), false).await;
            log_refused(client, err);
            return false;
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
    let head_request = head.is_method(b"HEAD");
    // A request whose body we did not read leaves the connection unusable after a local answer.
    let in_sync = framing.body == BodyKind::None;
    let raw_target = head.buf.slice_ref(head.target());
    let host_field = framing.host.map(|h| head.buf.slice_ref(head.value(&h)));
    let (host, target) = if head.is_method(b"CONNECT") {
        let err = ProxyError::ConnectNotSupported;
        answer_error(w, client, err, &request_id, false, false).await;
        log_refused(client, err);
        return false;
    } else if raw_target.first() == Some(&b'/')
        || (&raw_target[..] == b"*" && head.is_method(b"OPTIONS"))
    {
        (host_field.unwrap_or_default(), raw_target)
    } else if let Some((authority, origin)) = absolute_form(&raw_target) {
        (authority, origin)
    } else {
        let err = ProxyError::BadTarget;
        answer_error(w, client, err, &request_id, head_request, false).await;
        log_refused(client, err);
        return false;
    };
    let parsed_host = if host.is_empty() && head.version == Version::Http10 {
        None
    } else {
        match RequestHost::parse(&host) {
            Ok(h) => Some(h),
            Err(_) => {
                let err = ProxyError::BadHost;
                answer_error(w, client, err, &request_id, head_request, false).await;
                log_refused(client, err);
                return false;
            }
        }
    };
    let keep_alive = framing.keep_alive(head.version) && !w.shared.is_shutting_down();
    let upgrade = websocket_upgrade(&head, &framing);
    let app: Option<Arc<App>> = {
        let table = w.shared.routes.load();
        let name = parsed_host.as_ref().map_or("", |h| h.as_str());
        table.lookup(name).map(|m| Arc::clone(m.app))
    };
    let mut req = Request {
        head,
        framing,
        target,
        host,
        request_id,
        start,
        start_ms,
        head_request,
        keep_alive,
        max_body: cfg.limits.max_body,
        upgrade,
    };
    let Some(app) = app else {
        let err = ProxyError::UnknownHost;
        let ok = answer_error(
            w,
            client,
            err,
            &req.request_id,
            head_request,
            keep_alive && in_sync,
        )
        .await;
        finish(
            w,
            client,
            &req,
            None,
            &local_outcome(err.status(), Some(err), keep_alive && in_sync && ok),
        );
        return keep_alive && in_sync && ok;
    };
    let tls = client.listener.tls;
    let hsts = if tls {
        app.settings.hsts.as_deref()
    } else {
        None
    };
    let redirect_port = match &cfg.tls {
        Some(t) if app.settings.https_redirect && !tls => Some(t.https_port),
        _ => None,
    };
    let outcome = match &app.settings.action {
        _ if redirect_port.is_some() => {
            let mut scratch = AnswerScratch::default();
            let name = parsed_host.as_ref().map_or("", |h| h.as_str());
            let port = redirect_port.unwrap_or(443);
            let resp = https_redirect(name, port, req.target(), &req.request_id, &mut scratch);
            answer_local(
                client,
                &resp,
                keep_alive && in_sync,
                req.head.version,
                head_request,
            )
            .await
        }
        Action::Proxy => {
            req.max_body = app.settings.max_body.unwrap_or(cfg.limits.max_body);
            let mut app = Arc::clone(&app);
            let mut checked_at = w.shared.liveness_ms(req.start_ms);
            if !app.has_live_backend(checked_at) && app.settings.spin {
                if let Some(ready) = Box::pin(spin(w, &app.name)).await {
                    app = ready;
                }
                checked_at = w.shared.liveness_ms(now_ms());
            }
            if !app.has_live_backend(checked_at) {
                let err = ProxyError::NoBackend;
                let ka = keep_alive && in_sync;
                let ok = answer_error(w, client, err, &req.request_id, head_request, ka).await;
                local_outcome(err.status(), Some(err), ka && ok)
            } else if matches!(req.framing.body, BodyKind::Length(n) if req.max_body != 0 && n > req.max_body)
            {
                let err = ProxyError::BodyTooLarge;
                let _ = answer_error(w, client, err, &req.request_id, head_request, false).await;
                local_outcome(err.status(), Some(err), false)
            } else {
                let f = forward(w, client, &req, &app).await;
                if let Some(err) = f.error {
                    let ka = f.keep_alive && keep_alive && err.keeps_connection();
                    let ok = answer_error(w, client, err, &req.request_id, head_request, ka).await;
                    Forwarded {
                        keep_alive: ka && ok,
                        ..f
                    }
                } else {
                    f
                }
            }
        }
        action => {
            let mut scratch = AnswerScratch::default();
            match action_response(action, req.target(), &req.request_id, &mut scratch) {
                Some(mut resp) => {
                    resp.hsts = hsts;
                    answer_local(
                        client,
                        &resp,
                        keep_alive && in_sync,
                        req.head.version,
                        head_request,
                    )
                    .await
                }
                None => local_outcome(500, None, false),
            }
        }
    };
    app.record_response(outcome.status);
    finish(w, client, &req, Some(&app), &outcome);
    recycle(&mut client.fields, req.head.headers);
    outcome.keep_alive && outcome.aborted.is_none()
}

/// Sends an app's own answer (redirect, static page, maintenance) and describes the outcome.
async fn answer_local(
    client: &mut Client,
    resp: &LocalResponse<'_>,
    keep_alive: bool,
    version: Version,
    head_request: bool,
) -> Forwarded {
    let ok = send_local(client, resp, keep_alive, version, head_request).await;
    Forwarded {
        bytes_out: if head_request {
            0
        } else {
            resp.body.len() as u64
        },
        ..local_outcome(resp.status, None, keep_alive && ok)
    }
}

/// mantrid's `spin`: while an app boots it has no live backend; hold the request until one
/// registers (any table swap may bring it) or the spin timeout passes. Bounded in count: past
/// `max_held` held requests, the answer is an immediate 503.
pub(crate) async fn spin(w: &Worker, app: &str) -> Option<Arc<App>> {
    let shared = &w.shared;
    let limit = shared.config.spin;
    if shared
        .spin_held
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        >= limit.max_held
    {
        shared
            .spin_held
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    shared.metrics.spin_held.inc();
    let deadline = tokio::time::Instant::now() + limit.timeout;
    let found = loop {
        // Register for the next swap before looking, so a swap in between is not missed.
        let changed = shared.routes_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let current = shared.routes.load().app(app).cloned();
        match current {
            Some(a) if a.has_live_backend(shared.liveness_ms(now_ms())) => break Some(a),
            Some(_) => {}
            // The app is gone: stop waiting.
            None => break None,
        }
        if timeout_at(deadline, changed).await.is_err() {
            break None;
        }
    };
    shared
        .spin_held
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.spin_held.dec();
    if found.is_some() {
        shared.metrics.spin_released.inc();
    } else {
        shared.metrics.spin_timeouts.inc();
    }
    found
}

pub(crate) fn local_outcome(status: u16, error: Option<ProxyError>, keep_alive: bool) -> Forwarded {
    Forwarded {
        status,
        upstream: None,
        bytes_out: 0,
        first_byte: None,
        connect: None,
        keep_alive,
        error,
        aborted: None,
    }
}

/// Metrics and the access log line for one request.
fn finish(w: &Worker, client: &mut Client, req: &Request, app: Option<&Arc<App>>, o: &Forwarded) {
    let end = *client.last_done.get_or_insert_with(Instant::now);
    record(
        w,
        &Exchange {
            peer: client.peer,
            method: req.head.method(),
            host: req.host(),
            target: req.target(),
            request_id: &req.request_id,
            start: req.start,
            end,
            protocol: "http/1.1",
            bytes_in: match req.framing.body {
                BodyKind::Length(n) => n,
                _ => 0,
            },
        },
        app,
        o,
    );
}

/// What the access log says about a request, whatever protocol carried it.
pub(crate) struct Exchange<'a> {
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

/// Counts one answered request in the metrics and writes its access log line.
pub(crate) fn record(w: &Worker, x: &Exchange<'_>, app: Option<&Arc<App>>, o: &Forwarded) {
    let m = &w.shared.metrics;
    let elapsed = x.end.saturating_duration_since(x.start);
    if o.status != 0 {
        m.response(o.status);
    }
    m.duration.observe(elapsed.as_secs_f64());
    if let Some(err) = o.error {
        m.errors.with_label_values(&[err.reason()]).inc();
    }
    if let (Some(t), Some(app)) = (&w.shared.telemetry, app) {
        t.record(app, x, o, elapsed);
    }
    tracing::info!(
        target: "pier::access",
        client = %x.peer,
        protocol = x.protocol,
        method = %String::from_utf8_lossy(x.method),
        host = %String::from_utf8_lossy(x.host),
        path = %String::from_utf8_lossy(x.target),
        app = app.map_or("-", |a| &*a.name),
        status = o.status,
        upstream = %o.upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
        duration_us = elapsed.as_micros() as u64,
        first_byte_us = o.first_byte.map_or(0, |d| d.as_micros() as u64),
        bytes = o.bytes_out,
        request_id = %String::from_utf8_lossy(x.request_id),
        error = o.error.map_or("-", ProxyError::reason),
        aborted = o.aborted.unwrap_or("-"),
        "request"
    );
}

fn log_refused(client: &Client, err: ProxyError) {
    tracing::info!(
        target: "pier::access",
        client = %client.peer,
        status = err.status(),
        error = err.reason(),
        "refused"
    );
}

/// Writes an error answer; returns whether it was written.
async fn answer_error(
    w: &Worker,
    client: &mut Client,
    err: ProxyError,
    request_id: &[u8],
    head_request: bool,
    keep_alive: bool,
) -> bool {
    let body = error_body(err);
    let resp = LocalResponse::error(err, &body, request_id);
    if request_id.is_empty() {
        // Errors before a request id exists still count.
        w.shared
            .metrics
            .errors
            .with_label_values(&[err.reason()])
            .inc();
        w.shared.metrics.response(err.status());
    }
    send_local(client, &resp, keep_alive, Version::Http11, head_request).await
}

async fn send_local(
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
    // Drained into the connection's own buffer: a stack array here would sit in the state of
    // every connection's task for its whole life.
    let sink = &mut client.buf;
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut drained = 0usize;
    while drained < 256 * 1024 {
        sink.clear();
        sink.reserve(4096);
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.stream.read_buf(sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
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

//! HTTP/2 from clients (over TLS by ALPN, or cleartext with prior knowledge), proxied to
//! HTTP/1.1 backends.
//!
//! The `h2` crate speaks the protocol; [`guard`] bounds control-frame floods it does not. Each
//! request stream runs as its own task: it is checked (RFC 9113 §8.1.1, §8.2, §8.3 — what
//! `h2` leaves to the application), routed like an HTTP/1.1 request, and forwarded through the
//! same backend choice, pool, retries and ejection as HTTP/1.1, as a canonical HTTP/1.1
//! request. Small request bodies are read whole first and sent with the head under a
//! `Content-Length`; longer ones stream with their `Content-Length`, or chunked when the client
//! gave none. A body that ends with trailers goes chunked, the trailers in its last chunk; the
//! trailers of a chunked answer end the client's stream.

pub mod guard;
pub mod io;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use smallvec::SmallVec;
use tokio::time::timeout;

use pier_routes::app::BackendProtocol;
use pier_routes::app::MAX_TRIED;
use pier_routes::{Action, App, RequestHost};

use crate::config::Listener;
use crate::forward::{acquire, Forwarded, Timeouts, UPSTREAM_HEAD_LIMITS};
use crate::h1::framing::{is_hop_by_hop, BodyKind, ResponseFraming};
use crate::h1::head::{HeadGate, HeaderList, ResponseHead};
use crate::headers::{put_u64, write_upstream_head, Forwarding};
use crate::relay::{
    put_last_chunk, relay_body, write_all_timed, OutCoding, RelayError, RelayLimits,
};
use crate::respond::{
    action_response, error_body, https_redirect, AnswerScratch, LocalResponse, ProxyError,
};
use crate::serve::{local_outcome, record, spin, Exchange};
use crate::server::Worker;
use crate::stream::ClientStream;
use crate::upstream::UpstreamConn;
use crate::util::{is_sane_request_id, new_request_id, now_ms, wall_ms};
use guard::{Alarm, FrameCounter, FrameGuard};
use io::{RecvBody, SendBody};

/// Request bodies up to this size are read whole before the backend is asked.
const SMALL_BODY: usize = 64 * 1024;
/// How often an idle connection checks its keep-alive deadline.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long an idle connection told to go away (GOAWAY) may take to close.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every stream of one connection shares.
struct ConnInfo {
    peer: SocketAddr,
    peer_ip: Vec<u8>,
    listener: Listener,
    /// Over TLS: the name the client gave in SNI (`Some(None)` when it gave none).
    sni: Option<Option<Box<str>>>,
}

/// Serves one HTTP/2 connection until the client leaves, it idles out, it misbehaves, or the
/// balancer drains. `prefix` holds bytes already read (the h2c preface).
pub async fn serve_h2(
    w: Arc<Worker>,
    stream: ClientStream,
    peer: SocketAddr,
    listener: Listener,
    prefix: BytesMut,
) {
    let shared = Arc::clone(&w.shared);
    let cfg = &shared.config;
    let h = &cfg.http2;
    shared.metrics.h2_connections.inc();
    let sni = match &stream {
        ClientStream::Tls(t) => Some(t.get_ref().1.server_name().map(Box::from)),
        ClientStream::Plain(_) => None,
    };
    let alarm = Arc::new(Alarm::default());
    let io = FrameGuard::new(
        stream,
        prefix,
        FrameCounter::new(h.control_frame_rate, h.max_header_frames),
        Arc::clone(&alarm),
    );
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(h.max_concurrent_streams)
        .max_header_list_size(h.max_header_list_size)
        .initial_window_size(h.initial_window_size)
        .initial_connection_window_size(h.connection_window_size)
        .max_frame_size(h.max_frame_size)
        .max_send_buffer_size(256 * 1024)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256));
    if h.websocket {
        builder.enable_connect_protocol();
    }
    let mut conn = match timeout(
        cfg.timeouts.client_header,
        builder.handshake::<_, Bytes>(io),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "h2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        peer,
        peer_ip: crate::headers::client_ip_text(peer),
        listener,
        sni,
    });
    let mut shutdown = shared.shutdown_rx.clone();
    // While draining, the connection must be gone by this time: a graceful GOAWAY waits for
    // the client to answer a PING, which a dead or broken client never does.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let start_drain = |conn: &mut h2::server::Connection<_, Bytes>, within: Duration| {
        conn.graceful_shutdown();
        Some(tokio::time::Instant::now() + within)
    };
    if shared.is_shutting_down() {
        drain_deadline = start_drain(&mut conn, cfg.timeouts.shutdown);
    }
    let keepalive = cfg.timeouts.client_keepalive;
    let mut last_active = Instant::now();
    let mut cut = false;
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let draining = drain_deadline.is_some();
        let deadline = drain_deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            _ = alarm.notify.notified() => {
                if let Some(why) = alarm.raised() {
                    shared.metrics.h2_abuse.with_label_values(&[why.name()]).inc();
                    tracing::info!(client = %peer, abuse = why.name(), "h2 GOAWAY ENHANCE_YOUR_CALM");
                }
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                cut = true;
                break;
            }
            _ = shutdown.wait_for(|d| *d), if !draining => {
                drain_deadline = start_drain(&mut conn, cfg.timeouts.shutdown);
            }
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    last_active = Instant::now();
                    shared.metrics.h2_streams.inc();
                    tokio::spawn(handle_stream(Arc::clone(&w), Arc::clone(&info), req, respond));
                }
                Some(Err(e)) => {
                    if let Some(why) = alarm.raised() {
                        shared.metrics.h2_abuse.with_label_values(&[why.name()]).inc();
                    }
                    tracing::debug!(client = %peer, error = %e, "h2 connection error");
                    break;
                }
                None => return,
            },
            _ = tick.tick(), if !draining => {
                if conn.has_streams() {
                    last_active = Instant::now();
                } else if last_active.elapsed() >= keepalive {
                    drain_deadline = start_drain(&mut conn, IDLE_CLOSE_GRACE);
                }
            }
            _ = tokio::time::sleep_until(deadline), if draining => {
                // Whatever is still open is cut: the final GOAWAY says so.
                conn.abrupt_shutdown(Reason::NO_ERROR);
                cut = true;
                break;
            }
        }
    }
    // Send what is queued (a GOAWAY above all) and let the connection close.
    let grace = if cut {
        Duration::from_secs(1)
    } else {
        cfg.timeouts.shutdown
    };
    let _ = timeout(grace, std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
}

/// One request stream, from its head to the end of its response.
async fn handle_stream(
    w: Arc<Worker>,
    info: Arc<ConnInfo>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
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
    let mut host_text = Bytes::new();
    let mut target = Bytes::new();
    let (app, outcome) = match check(&parts) {
        Err(err) => (None, answer_error(&mut respond, err, &request_id, false)),
        Ok((host, path)) => {
            host_text = host;
            target = path;
            let mut ctx = StreamCtx {
                w: &w,
                info: &info,
                parts: &parts,
                request_id: &request_id,
                start_ms,
                start,
                host: &host_text,
                target: &target,
            };
            route_and_forward(&mut ctx, body, &mut respond).await
        }
    };
    if let Some(app) = &app {
        app.record_response(outcome.status);
    }
    record(
        &w,
        &Exchange {
            peer: info.peer,
            method: parts.method.as_str().as_bytes(),
            host: &host_text,
            target: &target,
            request_id: &request_id,
            start,
            end: Instant::now(),
            protocol: "h2",
            bytes_in: parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        },
        app.as_ref(),
        &outcome,
    );
}

/// The checks RFC 9113 leaves to the application: a request target and authority that make
/// sense, `Host` agreeing with `:authority`, no surrounding whitespace in field values.
/// Returns the host (authority) and the origin-form target.
fn check(parts: &Parts) -> Result<(Bytes, Bytes), ProxyError> {
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
    Ok((host, target))
}

/// The `:protocol` of an extended CONNECT asking for a WebSocket (RFC 8441 §4).
fn websocket_protocol(parts: &Parts) -> Option<&h2::ext::Protocol> {
    parts
        .extensions
        .get::<h2::ext::Protocol>()
        .filter(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

struct StreamCtx<'a> {
    w: &'a Worker,
    info: &'a ConnInfo,
    parts: &'a Parts,
    request_id: &'a [u8],
    start_ms: u64,
    /// When the request head arrived.
    start: Instant,
    host: &'a Bytes,
    target: &'a Bytes,
}

impl<'a> StreamCtx<'a> {
    /// The forwarding facts of this stream for an upstream head without a body.
    fn forwarding(&self, upgrade: Option<&'a [u8]>) -> Forwarding<'a> {
        let cfg = &self.w.shared.config;
        let listener = &self.info.listener;
        Forwarding {
            client_ip: &self.info.peer_ip,
            listener_port: listener.addr.port(),
            trusted: listener.trusted,
            target: self.target,
            host: self.host,
            request_id: self.request_id,
            body: BodyKind::None,
            explicit_zero_length: false,
            request_start_ms: cfg.headers.request_start.then_some(self.start_ms),
            via: &cfg.headers.via,
            proto: if listener.tls { "https" } else { "http" },
            upgrade,
        }
    }
}

/// Routes a checked request and answers it: locally, or through a backend.
async fn route_and_forward(
    ctx: &mut StreamCtx<'_>,
    body: RecvStream,
    respond: &mut SendResponse<Bytes>,
) -> (Option<Arc<App>>, Forwarded) {
    let w = ctx.w;
    let head_request = ctx.parts.method == http::Method::HEAD;
    let Ok(host) = RequestHost::parse(ctx.host) else {
        return (
            None,
            answer_error(respond, ProxyError::BadHost, ctx.request_id, head_request),
        );
    };
    if let (Some(sni), Some(resolver)) = (&ctx.info.sni, &w.shared.tls_resolver) {
        // A client may reuse a connection for every name its certificate covers (RFC 9113
        // §9.1.1); a name that gets another certificate belongs on another connection. Both
        // are asked of the table in use, so a renewed certificate does not strand connections
        // opened before the renewal.
        let conn_cert = resolver.for_name(sni.as_deref());
        let want = resolver.for_name(Some(host.as_str()));
        let same = matches!((&conn_cert, &want), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        if !same {
            return (
                None,
                answer_error(
                    respond,
                    ProxyError::Misdirected,
                    ctx.request_id,
                    head_request,
                ),
            );
        }
    }
    let app = w
        .shared
        .routes
        .load()
        .lookup(host.as_str())
        .map(|m| Arc::clone(m.app));
    let Some(mut app) = app else {
        return (
            None,
            answer_error(
                respond,
                ProxyError::UnknownHost,
                ctx.request_id,
                head_request,
            ),
        );
    };
    let tls = ctx.info.listener.tls;
    if app.settings.https_redirect && !tls {
        if let Some(t) = &w.shared.config.tls {
            let mut scratch = AnswerScratch::default();
            let resp = https_redirect(
                host.as_str(),
                t.https_port,
                ctx.target,
                ctx.request_id,
                &mut scratch,
            );
            let o = send_local(respond, &resp, head_request);
            return (Some(app), o);
        }
    }
    if !matches!(app.settings.action, Action::Proxy) {
        let mut scratch = AnswerScratch::default();
        let o = match action_response(
            &app.settings.action,
            ctx.target,
            ctx.request_id,
            &mut scratch,
        ) {
            Some(mut resp) => {
                resp.hsts = if tls {
                    app.settings.hsts.as_deref()
                } else {
                    None
                };
                send_local(respond, &resp, head_request)
            }
            None => local_outcome(500, None, false),
        };
        return (Some(app), o);
    }
    if !app.has_live_backend(w.shared.liveness_ms(ctx.start_ms)) && app.settings.spin {
        if let Some(ready) = spin(w, &app.name).await {
            app = ready;
        }
    }
    if !app.has_live_backend(w.shared.liveness_ms(now_ms())) {
        let o = answer_error(respond, ProxyError::NoBackend, ctx.request_id, head_request);
        return (Some(app), o);
    }
    if ctx.parts.method == http::Method::CONNECT {
        let o = websocket_h2(ctx, &app, body, respond).await;
        return (Some(app), o);
    }
    let hsts = if tls {
        app.settings.hsts.as_deref()
    } else {
        None
    };
    let o = forward_h2(ctx, &app, body, respond, hsts).await;
    (Some(app), o)
}

/// Sends one of pier's own answers on the stream.
fn send_local(
    respond: &mut SendResponse<Bytes>,
    resp: &LocalResponse<'_>,
    head_request: bool,
) -> Forwarded {
    let empty = head_request || resp.body.is_empty();
    let sent = match respond.send_response(resp.h2_head(), empty) {
        Ok(mut s) if !empty => s.send_data(Bytes::copy_from_slice(resp.body), true).is_ok(),
        Ok(_) => true,
        Err(_) => false,
    };
    Forwarded {
        bytes_out: if empty { 0 } else { resp.body.len() as u64 },
        aborted: (!sent).then_some("client-reset"),
        ..local_outcome(resp.status, None, true)
    }
}

fn answer_error(
    respond: &mut SendResponse<Bytes>,
    err: ProxyError,
    request_id: &[u8],
    head_request: bool,
) -> Forwarded {
    let body = error_body(err);
    let resp = LocalResponse::error(err, &body, request_id);
    Forwarded {
        error: Some(err),
        ..send_local(respond, &resp, head_request)
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
    /// Largest body accepted (0 = no limit).
    max_body: u64,
}

async fn plan_body(
    parts: &Parts,
    body: &mut RecvStream,
    max_body: u64,
) -> Result<BodyPlan, Option<ProxyError>> {
    let declared = match parts.headers.get(http::header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Some(ProxyError::BadH2Request("bad-content-length")))?,
        ),
    };
    let over = |n: u64| max_body != 0 && n > max_body;
    if declared.is_some_and(over) {
        return Err(Some(ProxyError::BodyTooLarge));
    }
    let (first, ended, trailers) = if body.is_end_stream() {
        (Bytes::new(), true, None)
    } else {
        let (first, ended) = RecvBody::read_upto(body, SMALL_BODY)
            .await
            .map_err(|_| None)?;
        // A body that ended may have ended with trailers.
        let trailers = if ended {
            io::trailers(body)
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
        max_body,
    })
}

/// Writes the upstream HTTP/1.1 head for an h2 request: its fields (cookies joined back into
/// one field, RFC 9113 §8.2.3), minus those pier writes itself.
fn upstream_head(ctx: &StreamCtx<'_>, plan: &BodyPlan, out: &mut Vec<u8>) {
    let headers = &ctx.parts.headers;
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
        ctx.parts.method.as_str().as_bytes(),
        fields,
        &Forwarding {
            body: plan.kind,
            explicit_zero_length: plan.explicit_zero,
            ..ctx.forwarding(None)
        },
    );
}

/// Forwards an h2 request to a backend of `app` and streams the answer back.
async fn forward_h2(
    ctx: &StreamCtx<'_>,
    app: &Arc<App>,
    mut body: RecvStream,
    respond: &mut SendResponse<Bytes>,
    hsts: Option<&str>,
) -> Forwarded {
    let w = ctx.w;
    let cfg = &w.shared.config;
    let head_request = ctx.parts.method == http::Method::HEAD;
    if app.settings.backend_protocol == BackendProtocol::H2c {
        return forward_h2_to_h2(ctx, app, body, respond, hsts).await;
    }
    let max_body = app.settings.max_body.unwrap_or(cfg.limits.max_body);
    let plan = match plan_body(ctx.parts, &mut body, max_body).await {
        Ok(p) => p,
        Err(Some(err)) => {
            let o = answer_error(respond, err, ctx.request_id, head_request);
            respond.send_reset(Reason::NO_ERROR);
            return o;
        }
        Err(None) => return aborted(None, "client-reset"),
    };
    let mut rest = Some(RecvBody::new(body, Bytes::new()));
    let timeouts = Timeouts::of(cfg, app);
    let retries = app.settings.retries.unwrap_or(cfg.upstream.retries) as usize;
    let idempotent = matches!(
        ctx.parts.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    );
    // A body held whole can be sent again; one still streaming cannot.
    let replayable = idempotent && plan.ended;
    let mut out = Vec::with_capacity(1024);
    upstream_head(ctx, &plan, &mut out);
    let head_len = out.len();
    let mut tried: SmallVec<[usize; MAX_TRIED]> = SmallVec::new();
    let mut skip_pool = false;
    let mut stale_retries = 0;
    loop {
        let (idx, mut conn) = match acquire(
            w,
            app,
            &mut tried,
            skip_pool,
            timeouts.connect,
            retries,
            ctx.start_ms,
            Instant::now(),
        )
        .await
        {
            Ok(c) => c,
            Err(err) => return answer_error(respond, err, ctx.request_id, head_request),
        };
        let connected = ctx.start.elapsed();
        let backend = &app.backends[idx];
        let _outstanding = app.begin(idx);
        out.truncate(head_len);
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
        let r = exchange_h2(
            ctx,
            &mut conn,
            &out,
            &plan,
            &mut rest,
            respond,
            &timeouts,
            head_request,
            hsts,
        )
        .await;
        match r {
            Ok(done) => {
                backend.state.record_success();
                if done.reusable && !w.shared.is_shutting_down() {
                    w.pool.put(conn, Instant::now());
                }
                return Forwarded {
                    upstream: Some(backend.addr),
                    connect: Some(connected),
                    ..done.outcome
                };
            }
            Err(H2Failure::Stale) if conn.reused && replayable && stale_retries < 2 => {
                stale_retries += 1;
                skip_pool = true;
                w.shared.metrics.upstream_retries.inc();
            }
            Err(H2Failure::Stale) => {
                let o = answer_error(
                    respond,
                    ProxyError::UpstreamClosed,
                    ctx.request_id,
                    head_request,
                );
                return Forwarded {
                    upstream: Some(backend.addr),
                    ..o
                };
            }
            Err(H2Failure::Upstream(err)) => {
                if backend.state.record_failure(
                    now_ms(),
                    cfg.upstream.eject_after,
                    cfg.upstream.eject_for,
                ) {
                    w.shared.metrics.upstream_ejections.inc();
                    tracing::warn!(backend = %backend.addr, app = %app.name, "backend ejected");
                }
                let o = answer_error(respond, err, ctx.request_id, head_request);
                return Forwarded {
                    upstream: Some(backend.addr),
                    ..o
                };
            }
            Err(H2Failure::Client(err)) => {
                let o = match err {
                    Some(e) => answer_error(respond, e, ctx.request_id, head_request),
                    None => aborted(None, "client-reset"),
                };
                respond.send_reset(Reason::CANCEL);
                return Forwarded {
                    upstream: Some(backend.addr),
                    ..o
                };
            }
            Err(H2Failure::Aborted(why)) => {
                respond.send_reset(Reason::INTERNAL_ERROR);
                return aborted(Some(backend.addr), why);
            }
        }
    }
}

fn aborted(upstream: Option<SocketAddr>, why: &'static str) -> Forwarded {
    Forwarded {
        status: 0,
        upstream,
        bytes_out: 0,
        first_byte: None,
        connect: None,
        keep_alive: true,
        error: None,
        aborted: Some(why),
    }
}

enum H2Failure {
    /// A pooled connection was closed before any response byte.
    Stale,
    /// The backend failed before a response head was sent on.
    Upstream(ProxyError),
    /// The client's body failed (with an answer to give, if any).
    Client(Option<ProxyError>),
    /// Broken after the response head went out.
    Aborted(&'static str),
}

struct H2Done {
    outcome: Forwarded,
    reusable: bool,
}

/// One attempt: send the head (and the body), read the response head, send it on, relay the
/// response body.
#[allow(clippy::too_many_arguments)]
async fn exchange_h2(
    ctx: &StreamCtx<'_>,
    conn: &mut UpstreamConn,
    head: &[u8],
    plan: &BodyPlan,
    rest: &mut Option<RecvBody>,
    respond: &mut SendResponse<Bytes>,
    t: &Timeouts,
    head_request: bool,
    hsts: Option<&str>,
) -> Result<H2Done, H2Failure> {
    let cfg = &ctx.w.shared.config;
    let reused = conn.reused;
    let (mut up_r, mut up_w) = conn.stream.split();
    if write_all_timed(&mut up_w, head, t.idle).await.is_err() {
        return Err(if reused {
            H2Failure::Stale
        } else {
            H2Failure::Upstream(ProxyError::UpstreamIo)
        });
    }
    let sent_at = Instant::now();
    let mut scratch = Vec::new();
    let mut early = false;
    let response = {
        let read_head = read_response_head(&mut up_r, &mut conn.buf, false);
        tokio::pin!(read_head);
        if plan.ended {
            let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
            tokio::select! {
                r = timeout(t.first_byte, &mut read_head) => r,
                _ = reset => return Err(H2Failure::Client(None)),
            }
        } else {
            // The request body is spent either way: no retry can resend it.
            let Some(mut src) = rest.take() else {
                return Err(H2Failure::Upstream(ProxyError::UpstreamIo));
            };
            let limits = RelayLimits {
                read_idle: cfg.timeouts.client_body,
                write_idle: t.idle,
                max_bytes: plan.max_body,
            };
            let kind = match plan.kind {
                BodyKind::Length(n) => BodyKind::Length(n.saturating_sub(plan.first.len() as u64)),
                _ => BodyKind::UntilClose,
            };
            let mut empty = BytesMut::new();
            let first = {
                // A chunked body ends with the client's trailers, once they are in.
                let send_body = async {
                    if plan.kind == BodyKind::Chunked {
                        io::relay_chunked(&mut src, &mut empty, &mut up_w, limits, &mut scratch)
                            .await
                    } else {
                        let out = OutCoding::Identity;
                        relay_body(
                            &mut src,
                            &mut empty,
                            &mut up_w,
                            kind,
                            out,
                            limits,
                            &mut scratch,
                        )
                        .await
                    }
                };
                tokio::pin!(send_body);
                tokio::select! {
                    biased;
                    h = &mut read_head => Err(h),
                    b = &mut send_body => Ok(b),
                }
            };
            match first {
                Err(h) => {
                    early = true;
                    Ok(h)
                }
                Ok(Err(e)) => {
                    return Err(match e {
                        RelayError::TooLarge => H2Failure::Client(Some(ProxyError::BodyTooLarge)),
                        RelayError::SrcTimeout => H2Failure::Client(Some(ProxyError::BodyTimeout)),
                        RelayError::SrcRead(_) | RelayError::SrcEof | RelayError::SrcChunk(_) => {
                            H2Failure::Client(None)
                        }
                        RelayError::DstWrite(_) => H2Failure::Upstream(ProxyError::UpstreamIo),
                        RelayError::DstTimeout => H2Failure::Upstream(ProxyError::UpstreamTimeout),
                    })
                }
                Ok(Ok(_)) => timeout(t.first_byte, &mut read_head).await,
            }
        }
    };
    let resp_head = match response {
        Err(_) => return Err(H2Failure::Upstream(ProxyError::UpstreamTimeout)),
        Ok(Err((e, got_nothing))) => {
            return Err(if got_nothing && reused && !early {
                H2Failure::Stale
            } else {
                H2Failure::Upstream(e)
            })
        }
        Ok(Ok(h)) => h,
    };
    let first_byte = sent_at.elapsed();
    let framing = ResponseFraming::of(&resp_head, head_request).map_err(|_| {
        H2Failure::Upstream(ProxyError::UpstreamBadResponse("bad-response-framing"))
    })?;
    let mut reusable = !early && framing.reusable(resp_head.version);
    let no_body = framing.body == BodyKind::None;
    let response = h2_response(&resp_head, &framing, &cfg.headers.via, hsts);
    let mut send = match respond.send_response(response, no_body) {
        Ok(s) => SendBody::new(s),
        Err(_) => return Err(H2Failure::Aborted("client-reset")),
    };
    let mut bytes_out = 0;
    let whole = match framing.body {
        BodyKind::Length(n) if !no_body && conn.buf.len() as u64 >= n && n <= 64 * 1024 => {
            Some(n as usize)
        }
        _ => None,
    };
    if let Some(n) = whole {
        // The whole body is here (the common small answer): one DATA frame that ends the
        // stream, instead of the data and then an empty frame to end it.
        let body = conn.buf.split_to(n).freeze();
        if send.send_last(body).is_err() {
            return Err(H2Failure::Aborted("client-write"));
        }
        bytes_out = n as u64;
    } else if !no_body {
        let limits = RelayLimits {
            read_idle: t.idle,
            write_idle: cfg.timeouts.client_body,
            max_bytes: 0,
        };
        // A chunked answer's trailers come back in `scratch` and end the stream.
        scratch.clear();
        match relay_body(
            &mut up_r,
            &mut conn.buf,
            &mut send,
            framing.body,
            OutCoding::IdentityKeepTrailers,
            limits,
            &mut scratch,
        )
        .await
        {
            Ok(n) => bytes_out = n,
            Err(RelayError::DstWrite(_) | RelayError::DstTimeout) => {
                return Err(H2Failure::Aborted("client-write"))
            }
            Err(RelayError::SrcTimeout) => return Err(H2Failure::Aborted("upstream-idle-timeout")),
            Err(RelayError::SrcChunk(_)) => return Err(H2Failure::Aborted("bad-response-chunk")),
            Err(_) => return Err(H2Failure::Aborted("upstream-closed-mid-body")),
        }
        // An answer sent whole is done even if its stream can no longer be ended; one whose
        // trailers could not be sent is not.
        if send.end(&scratch).is_err() && !scratch.is_empty() {
            return Err(H2Failure::Aborted("client-write"));
        }
    }
    if !conn.buf.is_empty() {
        reusable = false;
    }
    Ok(H2Done {
        outcome: Forwarded {
            status: resp_head.status,
            upstream: None,
            bytes_out,
            first_byte: Some(first_byte),
            connect: None,
            keep_alive: true,
            error: None,
            aborted: None,
        },
        reusable,
    })
}

/// Reads a final response head (1xx answers are dropped: h2 clients get the final one), or a
/// `101` when `switching` (the answer to a WebSocket handshake). `Err` carries whether nothing
/// at all arrived.
async fn read_response_head(
    up: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut BytesMut,
    switching: bool,
) -> Result<ResponseHead, (ProxyError, bool)> {
    use tokio::io::AsyncReadExt;
    let mut got_any = false;
    let mut gate = HeadGate::default();
    let mut fields = HeaderList::new();
    loop {
        match gate.response(buf, &UPSTREAM_HEAD_LIMITS, &mut fields) {
            Ok(Some((len, parts))) => {
                got_any = true;
                let head = parts.into_head(buf.split_to(len).freeze());
                match head.status {
                    101 if switching => return Ok(head),
                    101 => return Err((ProxyError::UpstreamBadResponse("unexpected-101"), false)),
                    100..=199 => continue,
                    _ => return Ok(head),
                }
            }
            Ok(None) => {}
            Err(_) => return Err((ProxyError::UpstreamBadResponse("bad-response-head"), false)),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match up.read_buf(buf).await {
            Ok(0) => {
                return Err((ProxyError::UpstreamClosed, !got_any && buf.is_empty()));
            }
            Ok(_) => {}
            Err(_) => return Err((ProxyError::UpstreamIo, !got_any && buf.is_empty())),
        }
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

/// Forwards an HTTP/2 request to an h2c backend stream to stream: both bodies stream at once
/// (bidirectional streaming works), trailers pass both ways, `te: trailers` is kept.
async fn forward_h2_to_h2(
    ctx: &StreamCtx<'_>,
    app: &Arc<App>,
    mut body: RecvStream,
    respond: &mut SendResponse<Bytes>,
    hsts: Option<&str>,
) -> Forwarded {
    let w = ctx.w;
    let cfg = &w.shared.config;
    let head_request = ctx.parts.method == http::Method::HEAD;
    let t = Timeouts::of(cfg, app);
    let retries = app.settings.retries.unwrap_or(cfg.upstream.retries) as usize;
    let mut tried: SmallVec<[usize; MAX_TRIED]> = SmallVec::new();
    let (idx, mut send) =
        match crate::upstream_h2::acquire_h2(w, app, &mut tried, t.connect, retries, ctx.start_ms)
            .await
        {
            Ok(s) => s,
            Err(err) => return answer_error(respond, err, ctx.request_id, head_request),
        };
    let connected = ctx.start.elapsed();
    let backend = &app.backends[idx];
    let _outstanding = app.begin(idx);
    let headers = &ctx.parts.headers;
    let fields = headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str().as_bytes();
            !(is_hop_by_hop(n) || n == b"host" || n == b"expect")
        })
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut request = match crate::upstream_h2::h2_request(
        ctx.parts.method.as_str().as_bytes(),
        fields,
        &ctx.forwarding(None),
        length,
    ) {
        Ok(r) => r,
        Err(err) => return answer_error(respond, err, ctx.request_id, head_request),
    };
    if headers
        .get(http::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        request
            .headers_mut()
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let end = body.is_end_stream();
    let (response, mut up_stream) = match send.send_request(request, end) {
        Ok(pair) => pair,
        Err(_) => {
            let o = answer_error(
                respond,
                ProxyError::UpstreamIo,
                ctx.request_id,
                head_request,
            );
            return Forwarded {
                upstream: Some(backend.addr),
                ..o
            };
        }
    };
    let sent_at = Instant::now();
    let upload = async {
        if end {
            return Ok(0);
        }
        let r = io::pump(&mut body, &mut up_stream, cfg.timeouts.client_body).await;
        if r.is_err() {
            // The client's body broke: the backend must not take a partial one as complete.
            up_stream.send_reset(Reason::CANCEL);
        }
        r
    };
    let download = async {
        let resp = match timeout(t.first_byte, response).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(_)) => return Err(ProxyError::UpstreamClosed),
            Ok(Ok(r)) => r,
        };
        backend.state.record_success();
        let first_byte = sent_at.elapsed();
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
        if !cfg.headers.via.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&format!("2 {}", cfg.headers.via)) {
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
        let no_body = resp_body.is_end_stream();
        let mut down = respond
            .send_response(head, no_body)
            .map_err(|_| ProxyError::UpstreamIo)?;
        let moved = if no_body {
            Ok(0)
        } else {
            io::pump(&mut resp_body, &mut down, t.idle).await
        };
        Ok((status, first_byte, moved))
    };
    let result = {
        tokio::pin!(upload, download);
        let mut uploading = !end;
        loop {
            tokio::select! {
                u = &mut upload, if uploading => {
                    uploading = false;
                    if let Err(why) = u {
                        tracing::debug!(reason = why, "h2 request body to the backend stopped");
                    }
                }
                d = &mut download => break d,
            }
        }
    };
    match result {
        Err(err) => {
            let o = answer_error(respond, err, ctx.request_id, head_request);
            Forwarded {
                upstream: Some(backend.addr),
                ..o
            }
        }
        Ok((status, first_byte, moved)) => Forwarded {
            status,
            upstream: Some(backend.addr),
            bytes_out: *moved.as_ref().unwrap_or(&0),
            first_byte: Some(first_byte),
            connect: Some(connected),
            keep_alive: true,
            error: None,
            aborted: moved.err(),
        },
    }
}

/// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol websocket` becomes an
/// HTTP/1.1 WebSocket handshake to a backend (a fresh `Sec-WebSocket-Key`, the client's
/// version, subprotocols and extensions passed on); once the backend answers `101`, the client
/// gets `200` and the stream's DATA frames and the backend connection are joined by the same
/// tunnel as HTTP/1.1 upgrades (idle timeout, close passed both ways). Any other answer is
/// passed to the client as its status, and the backend connection is closed.
async fn websocket_h2(
    ctx: &StreamCtx<'_>,
    app: &Arc<App>,
    body: RecvStream,
    respond: &mut SendResponse<Bytes>,
) -> Forwarded {
    let w = ctx.w;
    let cfg = &w.shared.config;
    let t = Timeouts::of(cfg, app);
    let retries = app.settings.retries.unwrap_or(cfg.upstream.retries) as usize;
    let mut tried: SmallVec<[usize; MAX_TRIED]> = SmallVec::new();
    // A connection of its own: it becomes the tunnel and is never pooled again.
    let (idx, mut conn) = match acquire(
        w,
        app,
        &mut tried,
        true,
        t.connect,
        retries,
        ctx.start_ms,
        Instant::now(),
    )
    .await
    {
        Ok(c) => c,
        Err(err) => return answer_error(respond, err, ctx.request_id, false),
    };
    let connected = ctx.start.elapsed();
    let backend = &app.backends[idx];
    let _outstanding = app.begin(idx);
    let key = crate::util::websocket_key();
    let headers = &ctx.parts.headers;
    let fields = headers
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
    let mut out = Vec::with_capacity(1024);
    write_upstream_head(
        &mut out,
        b"GET",
        fields,
        &ctx.forwarding(Some(b"websocket")),
    );
    let (mut up_r, mut up_w) = conn.stream.split();
    if write_all_timed(&mut up_w, &out, t.idle).await.is_err() {
        let o = answer_error(respond, ProxyError::UpstreamIo, ctx.request_id, false);
        return Forwarded {
            upstream: Some(backend.addr),
            ..o
        };
    }
    let sent_at = Instant::now();
    let switch = read_response_head(&mut up_r, &mut conn.buf, true);
    let head = match timeout(t.first_byte, switch).await {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(r) => r.map_err(|(e, _)| e),
    };
    let head = match head {
        Ok(h) => h,
        Err(err) => {
            let o = answer_error(respond, err, ctx.request_id, false);
            return Forwarded {
                upstream: Some(backend.addr),
                ..o
            };
        }
    };
    let first_byte = sent_at.elapsed();
    let upgraded = head.status == 101
        && head
            .first(crate::h1::head::Known::Upgrade)
            .is_some_and(crate::h1::head::lists_websocket);
    let mut resp = http::Response::new(());
    *resp.status_mut() = if upgraded {
        http::StatusCode::OK
    } else if head.status == 101 {
        http::StatusCode::BAD_GATEWAY
    } else {
        http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY)
    };
    for f in &head.headers {
        let name = head.name(f);
        let pass = name.eq_ignore_ascii_case(b"sec-websocket-protocol")
            || name.eq_ignore_ascii_case(b"sec-websocket-extensions")
            || (!upgraded && !is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"content-length"));
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
    if !upgraded {
        let status = resp.status().as_u16();
        let _ = respond.send_response(resp, true);
        return Forwarded {
            status,
            upstream: Some(backend.addr),
            bytes_out: 0,
            first_byte: Some(first_byte),
            connect: Some(connected),
            keep_alive: true,
            error: None,
            aborted: None,
        };
    }
    let send = match respond.send_response(resp, false) {
        Ok(s) => s,
        Err(_) => return aborted(Some(backend.addr), "client-reset"),
    };
    let m = &w.shared.metrics;
    m.tunnels_total.inc();
    m.tunnels_open.inc();
    let mut cl_r = RecvBody::new(body, Bytes::new());
    let mut cl_w = SendBody::new(send);
    let (down, why) = crate::relay::tunnel(
        &mut cl_r,
        &mut cl_w,
        &mut BytesMut::new(),
        &mut up_r,
        &mut up_w,
        &mut conn.buf,
        cfg.timeouts.tunnel_idle,
    )
    .await;
    m.tunnels_open.dec();
    Forwarded {
        status: 200,
        upstream: Some(backend.addr),
        bytes_out: down,
        first_byte: Some(first_byte),
        connect: Some(connected),
        keep_alive: true,
        error: None,
        aborted: why,
    }
}

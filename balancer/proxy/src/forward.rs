//! Stage `forward`: choose a backend, send the request, relay the response.
//!
//! Retries follow one rule: a request is sent again only when no byte of it can have been
//! processed — the connection to the backend failed — or when it is idempotent, has no body,
//! and failed on a pooled connection that the backend had already closed. Failures count
//! towards passive ejection of the backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::time::timeout;

use pier_routes::app::MAX_TRIED;
use pier_routes::App;

use crate::h1::framing::{BodyKind, ResponseFraming};
use crate::h1::head::{
    recycle, HeadError, HeadGate, HeadLimits, HeaderList, ResponseHead, Version,
};
use crate::headers::{
    client_framing, write_interim, write_request_head, write_response_head, ClientFraming,
};
use crate::relay::{relay_body, write_all_timed, OutCoding, RelayError, RelayLimits};
use crate::respond::ProxyError;
use crate::serve::{Client, Request};
use crate::server::Worker;
use crate::stream::ClientWrite;
use crate::upstream::{connect, ConnectError, UpstreamConn};
use crate::util::now_ms;

/// Limits for response heads from backends (they are trusted more than clients, not blindly).
const UPSTREAM_HEAD: HeadLimits = HeadLimits {
    max_line: 64 * 1024,
    max_head: 64 * 1024,
    max_headers: 256,
};

/// How a forwarded exchange ended, for the access log and the connection loop.
#[derive(Debug)]
pub struct Forwarded {
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub bytes_out: u64,
    pub first_byte: Option<Duration>,
    /// From the request head to the backend connection in hand (picked, connected or reused).
    pub connect: Option<Duration>,
    /// Whether the client connection may carry another request.
    pub keep_alive: bool,
    /// Set when pier answered the request itself.
    pub error: Option<ProxyError>,
    /// Set when the exchange broke after the response head was sent.
    pub aborted: Option<&'static str>,
}

/// Why one attempt failed.
enum Failure {
    /// A pooled connection turned out closed before any response byte.
    Stale,
    /// The backend failed before a response head reached the client. `in_sync` says whether the
    /// client's request was read completely (so its connection can carry another request).
    Upstream { err: ProxyError, in_sync: bool },
    /// The client failed while sending its body; answer with this error if any, then close.
    Client(Option<ProxyError>),
    /// The response was under way when something broke: nothing more can be sent.
    Aborted(&'static str),
}

/// The effective upstream timeouts for an app.
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub(crate) fn of(cfg: &crate::config::Config, app: &App) -> Self {
        let t = &app.settings.timeouts;
        Timeouts {
            connect: t.connect.unwrap_or(cfg.timeouts.connect),
            first_byte: t.first_byte.unwrap_or(cfg.timeouts.first_byte),
            idle: t.idle.unwrap_or(cfg.timeouts.upstream_idle),
        }
    }
}

/// Limits for response heads from backends (shared with the h2 path).
pub(crate) const UPSTREAM_HEAD_LIMITS: HeadLimits = UPSTREAM_HEAD;

/// Forwards `req` to one of `app`'s backends and relays the answer to the client.
pub async fn forward(w: &Worker, client: &mut Client, req: &Request, app: &Arc<App>) -> Forwarded {
    if app.settings.backend_protocol == pier_routes::app::BackendProtocol::H2c {
        // Boxed: a large future on a rare path would otherwise sit in every connection's task.
        return Box::pin(crate::upstream_h2::forward_h1_to_h2(w, client, req, app)).await;
    }
    let cfg = &w.shared.config;
    let timeouts = Timeouts::of(cfg, app);
    let retries = app.settings.retries.unwrap_or(cfg.upstream.retries) as usize;
    let idempotent = matches!(
        req.head.method(),
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    );
    let replayable = idempotent && req.framing.body == BodyKind::None;
    let metrics = &w.shared.metrics;
    let mut tried: SmallVec<[usize; MAX_TRIED]> = SmallVec::new();
    let last_error;
    let mut skip_pool = false;
    let mut stale_retries = 0;
    loop {
        // The request's start time is recent enough for liveness and ejection checks.
        let now = req.start_ms;
        let (idx, mut conn) = match acquire(
            w,
            app,
            &mut tried,
            skip_pool,
            timeouts.connect,
            retries,
            now,
            req.start,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                break;
            }
        };
        let connected = req.start.elapsed();
        let backend = &app.backends[idx];
        let _outstanding = app.begin(idx);
        let reused = conn.reused;
        let hsts = if client.listener.tls {
            app.settings.hsts.as_deref()
        } else {
            None
        };
        match exchange(w, client, req, &mut conn, &timeouts, hsts).await {
            Ok(done) => {
                backend.state.record_success();
                // One reading of the clock for the pool, the access record and the next
                // request's idle wait.
                let end = Instant::now();
                client.last_done = Some(end);
                if done.reusable && !w.shared.is_shutting_down() {
                    w.pool.put(conn, end);
                }
                return Forwarded {
                    status: done.status,
                    upstream: Some(backend.addr),
                    bytes_out: done.bytes_out,
                    first_byte: Some(done.first_byte),
                    connect: Some(connected),
                    keep_alive: done.client_keep_alive,
                    error: None,
                    aborted: done.aborted,
                };
            }
            Err(Failure::Stale) if reused && replayable && stale_retries < 2 => {
                stale_retries += 1;
                skip_pool = true;
                metrics.upstream_retries.inc();
                continue;
            }
            Err(Failure::Stale) => {
                return upstream_failed(ProxyError::UpstreamClosed, true, Some(backend.addr));
            }
            Err(Failure::Upstream { err, in_sync }) => {
                if backend.state.record_failure(
                    now_ms(),
                    cfg.upstream.eject_after,
                    cfg.upstream.eject_for,
                ) {
                    metrics.upstream_ejections.inc();
                    tracing::warn!(backend = %backend.addr, app = %app.name, "backend ejected");
                }
                return upstream_failed(err, in_sync, Some(backend.addr));
            }
            Err(Failure::Client(err)) => {
                return Forwarded {
                    status: err.map_or(499, ProxyError::status),
                    upstream: Some(backend.addr),
                    bytes_out: 0,
                    first_byte: None,
                    connect: None,
                    keep_alive: false,
                    error: err,
                    aborted: err.is_none().then_some("client-closed"),
                };
            }
            Err(Failure::Aborted(why)) => {
                return Forwarded {
                    status: 0,
                    upstream: Some(backend.addr),
                    bytes_out: 0,
                    first_byte: None,
                    connect: None,
                    keep_alive: false,
                    error: None,
                    aborted: Some(why),
                };
            }
        }
    }
    upstream_failed(last_error, true, None)
}

/// Picks a backend of `app` not in `tried` and gets a connection to it: a pooled one unless
/// `skip_pool`, else a new one. A backend that cannot be connected to counts a failure
/// (towards ejection), joins `tried`, and the next one is tried, `retries` times at most.
/// `now` and `at` are the request's start in wall-clock milliseconds (liveness, ejection) and as
/// a monotonic instant (the pool's idle check).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn acquire(
    w: &Worker,
    app: &App,
    tried: &mut SmallVec<[usize; MAX_TRIED]>,
    skip_pool: bool,
    connect_timeout: Duration,
    retries: usize,
    now: u64,
    at: Instant,
) -> Result<(usize, UpstreamConn), ProxyError> {
    let cfg = &w.shared.config;
    let metrics = &w.shared.metrics;
    let mut last_error = ProxyError::NoBackend;
    loop {
        let Some(idx) = app.pick(w.shared.liveness_ms(now), tried) else {
            return Err(last_error);
        };
        let backend = &app.backends[idx];
        if !skip_pool {
            if let Some(c) = w.pool.take(backend.addr, at) {
                metrics.upstream_reused.inc();
                return Ok((idx, c));
            }
        }
        match connect(backend.addr, connect_timeout).await {
            Ok(c) => {
                metrics.upstream_connects.inc();
                return Ok((idx, c));
            }
            Err(e) => {
                metrics.upstream_connect_errors.inc();
                last_error = match e {
                    ConnectError::Timeout => ProxyError::UpstreamConnectTimeout,
                    ConnectError::Io(_) => ProxyError::UpstreamConnect,
                };
                tracing::debug!(backend = %backend.addr, app = %app.name, error = ?e, "upstream connect failed");
                if backend.state.record_failure(
                    now,
                    cfg.upstream.eject_after,
                    cfg.upstream.eject_for,
                ) {
                    metrics.upstream_ejections.inc();
                    tracing::warn!(backend = %backend.addr, app = %app.name, "backend ejected");
                }
                tried.push(idx);
                if tried.len() > retries || tried.len() >= MAX_TRIED {
                    return Err(last_error);
                }
                metrics.upstream_retries.inc();
            }
        }
    }
}

/// pier's own answer to a failed exchange; `in_sync` says whether the client connection can
/// carry another request.
pub(crate) fn upstream_failed(
    err: ProxyError,
    in_sync: bool,
    addr: Option<SocketAddr>,
) -> Forwarded {
    Forwarded {
        status: err.status(),
        upstream: addr,
        bytes_out: 0,
        first_byte: None,
        connect: None,
        keep_alive: in_sync,
        error: Some(err),
        aborted: None,
    }
}

struct Exchanged {
    status: u16,
    bytes_out: u64,
    first_byte: Duration,
    reusable: bool,
    client_keep_alive: bool,
    aborted: Option<&'static str>,
}

fn io_failure(reused: bool, got_nothing: bool, in_sync: bool) -> Failure {
    if reused && got_nothing {
        Failure::Stale
    } else {
        Failure::Upstream {
            err: if got_nothing {
                ProxyError::UpstreamClosed
            } else {
                ProxyError::UpstreamIo
            },
            in_sync,
        }
    }
}

/// Reads response heads until a final (non-1xx) one, passing 1xx answers on to HTTP/1.1
/// clients. `Err` carries whether any byte of a response arrived.
async fn read_final_head(
    up: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    client: &mut ClientWrite<'_>,
    client_version: Version,
    interim: &mut Vec<u8>,
    upgrading: bool,
    fields: &mut HeaderList,
) -> Result<ResponseHead, (ProxyError, bool)> {
    let mut got_any = false;
    let mut gate = HeadGate::default();
    loop {
        match gate.response(buf, &UPSTREAM_HEAD, fields) {
            Ok(Some((len, parts))) => {
                let head = parts.into_head(buf.split_to(len).freeze());
                got_any = true;
                match head.status {
                    101 if upgrading => return Ok(head),
                    101 => return Err((ProxyError::UpstreamBadResponse("unexpected-101"), true)),
                    100..=199 => {
                        if client_version == Version::Http11 {
                            interim.clear();
                            write_interim(interim, &head);
                            let sent = async {
                                client.write_all(interim).await?;
                                client.flush().await
                            };
                            sent.await.map_err(|_| (ProxyError::UpstreamIo, true))?;
                        }
                        continue;
                    }
                    _ => return Ok(head),
                }
            }
            Ok(None) => {}
            Err(e) => {
                let reason = match e {
                    HeadError::HeadTooLarge | HeadError::TooManyHeaders => {
                        "upstream-head-too-large"
                    }
                    _ => "bad-response-head",
                };
                return Err((ProxyError::UpstreamBadResponse(reason), true));
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match up.read_buf(buf).await {
            Ok(0) => {
                let nothing = !got_any && buf.is_empty();
                return Err((ProxyError::UpstreamClosed, !nothing));
            }
            Ok(_) => {}
            Err(_) => {
                let nothing = !got_any && buf.is_empty();
                return Err((ProxyError::UpstreamIo, !nothing));
            }
        }
    }
}

async fn exchange(
    w: &Worker,
    client: &mut Client,
    req: &Request,
    conn: &mut UpstreamConn,
    t: &Timeouts,
    hsts: Option<&str>,
) -> Result<Exchanged, Failure> {
    let cfg = &w.shared.config;
    let reused = conn.reused;
    let Client {
        stream: client_stream,
        buf: client_buf,
        out,
        scratch,
        peer_ip,
        listener,
        timer,
        response_fields,
        ..
    } = client;
    out.clear();
    write_request_head(
        out,
        &req.head,
        &req.framing.conn,
        &req.forwarding(peer_ip, listener, &cfg.headers),
    );
    // A small Content-Length body already read goes out with the head in one write.
    let mut body_done = req.framing.body == BodyKind::None;
    if let BodyKind::Length(n) = req.framing.body {
        if client_buf.len() as u64 >= n && n <= 64 * 1024 {
            out.extend_from_slice(&client_buf[..n as usize]);
            client_buf.advance(n as usize);
            body_done = true;
        }
    }
    let (mut up_r, mut up_w) = conn.stream.split();
    match write_all_timed(&mut up_w, out, t.idle).await {
        Ok(()) => {}
        Err(RelayError::DstTimeout) => {
            return Err(Failure::Upstream {
                err: ProxyError::UpstreamTimeout,
                in_sync: body_done,
            })
        }
        Err(_) => return Err(io_failure(reused, true, body_done)),
    }
    let sent_at = Instant::now();
    let (mut cl_r, mut cl_w) = client_stream.split();
    let mut interim = Vec::new();
    let max_body = req.max_body;
    let mut early_response = false;
    let head = if body_done {
        match timer
            .run(
                (sent_at + t.first_byte).into(),
                read_final_head(
                    &mut up_r,
                    &mut conn.buf,
                    &mut cl_w,
                    req.head.version,
                    &mut interim,
                    req.upgrade.is_some(),
                    response_fields,
                ),
            )
            .await
        {
            Err(_) => {
                return Err(Failure::Upstream {
                    err: ProxyError::UpstreamTimeout,
                    in_sync: true,
                })
            }
            Ok(Err((e, got_some))) => {
                return Err(
                    if e == ProxyError::UpstreamClosed || e == ProxyError::UpstreamIo {
                        io_failure(reused, !got_some, true)
                    } else {
                        Failure::Upstream {
                            err: e,
                            in_sync: true,
                        }
                    },
                )
            }
            Ok(Ok(h)) => h,
        }
    } else {
        let out_coding = match req.framing.body {
            BodyKind::Chunked => OutCoding::Chunked,
            _ => OutCoding::Identity,
        };
        let limits = RelayLimits {
            read_idle: cfg.timeouts.client_body,
            write_idle: t.idle,
            max_bytes: max_body,
        };
        let body = relay_body(
            &mut cl_r,
            client_buf,
            &mut up_w,
            req.framing.body,
            out_coding,
            limits,
            scratch,
        );
        let head_read = read_final_head(
            &mut up_r,
            &mut conn.buf,
            &mut cl_w,
            req.head.version,
            &mut interim,
            false,
            response_fields,
        );
        tokio::pin!(body);
        tokio::pin!(head_read);
        let first = tokio::select! {
            biased;
            r = &mut head_read => Err(r),
            b = &mut body => Ok(b),
        };
        match first {
            // The backend answered before the whole body was sent (e.g. an early 413): stop
            // sending; neither connection can be reused.
            Err(Ok(h)) => {
                early_response = true;
                h
            }
            Err(Err((e, _))) => {
                return Err(Failure::Upstream {
                    err: e,
                    in_sync: false,
                })
            }
            Ok(Err(e)) => {
                return Err(match e {
                    RelayError::SrcChunk(c) => Failure::Client(Some(ProxyError::RequestChunk(c))),
                    RelayError::SrcTimeout => Failure::Client(Some(ProxyError::BodyTimeout)),
                    RelayError::TooLarge => Failure::Client(Some(ProxyError::BodyTooLarge)),
                    RelayError::SrcEof | RelayError::SrcRead(_) => Failure::Client(None),
                    RelayError::DstWrite(_) => Failure::Upstream {
                        err: ProxyError::UpstreamIo,
                        in_sync: false,
                    },
                    RelayError::DstTimeout => Failure::Upstream {
                        err: ProxyError::UpstreamTimeout,
                        in_sync: false,
                    },
                })
            }
            Ok(Ok(_)) => match timeout(t.first_byte, &mut head_read).await {
                Err(_) => {
                    return Err(Failure::Upstream {
                        err: ProxyError::UpstreamTimeout,
                        in_sync: true,
                    })
                }
                Ok(Err((e, _))) => {
                    return Err(Failure::Upstream {
                        err: e,
                        in_sync: true,
                    })
                }
                Ok(Ok(h)) => h,
            },
        }
    };
    let first_byte = sent_at.elapsed();
    if head.status == 101 {
        // Only a WebSocket handshake gets here (read_final_head refuses other 101s).
        return Box::pin(tunnel(
            w,
            &head,
            &mut up_r,
            &mut up_w,
            &mut conn.buf,
            &mut cl_r,
            &mut cl_w,
            client_buf,
            out,
            first_byte,
        ))
        .await;
    }
    let head_request = req.head_request;
    let framing = ResponseFraming::of(&head, head_request).map_err(|e| Failure::Upstream {
        err: ProxyError::UpstreamBadResponse(match e {
            crate::h1::framing::FramingError::BadContentLength => "bad-response-content-length",
            crate::h1::framing::FramingError::ContentLengthAndTransferEncoding => {
                "bad-response-framing"
            }
            _ => "bad-response-transfer-encoding",
        }),
        in_sync: !early_response,
    })?;
    let out_framing = client_framing(framing.body, req.head.version);
    let client_keep_alive = req.keep_alive
        && !early_response
        && out_framing != ClientFraming::Close
        && !w.shared.is_shutting_down();
    // A backend that refused an upgrade may still expect one on that connection: do not reuse.
    let mut reusable = !early_response && framing.reusable(head.version) && req.upgrade.is_none();
    out.clear();
    write_response_head(
        out,
        &head,
        &framing,
        out_framing,
        req.head.version,
        client_keep_alive,
        head_request,
        &cfg.headers.via,
        hsts,
    );
    // A body that is already here in full goes out with the head in one write.
    let mut body_written = false;
    if let BodyKind::Length(n) = framing.body {
        if conn.buf.len() as u64 >= n && n <= 64 * 1024 {
            out.extend_from_slice(&conn.buf[..n as usize]);
            conn.buf.advance(n as usize);
            body_written = true;
        }
    }
    if write_all_timed(&mut cl_w, out, cfg.timeouts.client_body)
        .await
        .is_err()
    {
        return Err(Failure::Aborted("client-write"));
    }
    let mut bytes_out = match framing.body {
        BodyKind::Length(n) if body_written => n,
        _ => 0,
    };
    if !body_written && framing.body != BodyKind::None {
        let coding = match out_framing {
            ClientFraming::Chunked => OutCoding::Chunked,
            _ => OutCoding::Identity,
        };
        let limits = RelayLimits {
            read_idle: t.idle,
            write_idle: cfg.timeouts.client_body,
            max_bytes: 0,
        };
        match relay_body(
            &mut up_r,
            &mut conn.buf,
            &mut cl_w,
            framing.body,
            coding,
            limits,
            scratch,
        )
        .await
        {
            Ok(n) => bytes_out = n,
            Err(RelayError::DstWrite(_) | RelayError::DstTimeout) => {
                return Err(Failure::Aborted("client-write"))
            }
            Err(RelayError::SrcTimeout) => return Err(Failure::Aborted("upstream-idle-timeout")),
            Err(RelayError::SrcChunk(_)) => return Err(Failure::Aborted("bad-response-chunk")),
            Err(_) => return Err(Failure::Aborted("upstream-closed-mid-body")),
        }
    }
    if !conn.buf.is_empty() {
        // Bytes after the response: the backend is confused; do not reuse it.
        reusable = false;
    }
    let status = head.status;
    recycle(response_fields, head.headers);
    Ok(Exchanged {
        status,
        bytes_out,
        first_byte,
        reusable,
        client_keep_alive,
        aborted: None,
    })
}

/// The backend agreed to switch protocols: pass its 101 on, then copy bytes both ways until
/// either side closes (the close is passed on) or nothing moves for `timeouts.tunnel_idle`.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    w: &Worker,
    head: &ResponseHead,
    up_r: &mut ReadHalf<'_>,
    up_w: &mut tokio::net::tcp::WriteHalf<'_>,
    up_buf: &mut BytesMut,
    cl_r: &mut crate::stream::ClientRead<'_>,
    cl_w: &mut ClientWrite<'_>,
    cl_buf: &mut BytesMut,
    out: &mut Vec<u8>,
    first_byte: Duration,
) -> Result<Exchanged, Failure> {
    let cfg = &w.shared.config;
    let accepted = head
        .first(crate::h1::head::Known::Upgrade)
        .is_some_and(crate::h1::head::lists_websocket);
    if !accepted {
        return Err(Failure::Upstream {
            err: ProxyError::UpstreamBadResponse("bad-upgrade-response"),
            in_sync: false,
        });
    }
    out.clear();
    crate::headers::write_switching_head(out, head, &cfg.headers.via);
    if write_all_timed(cl_w, out, cfg.timeouts.client_body)
        .await
        .is_err()
    {
        return Err(Failure::Aborted("client-write"));
    }
    let m = &w.shared.metrics;
    m.tunnels_total.inc();
    m.tunnels_open.inc();
    let (down, why) = crate::relay::tunnel(
        cl_r,
        cl_w,
        cl_buf,
        up_r,
        up_w,
        up_buf,
        cfg.timeouts.tunnel_idle,
    )
    .await;
    m.tunnels_open.dec();
    Ok(Exchanged {
        status: 101,
        bytes_out: down,
        first_byte,
        reusable: false,
        client_keep_alive: false,
        aborted: why,
    })
}

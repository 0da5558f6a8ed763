//! Backends that speak cleartext HTTP/2 (apps with `backend_protocol = "h2c"`).
//!
//! Each worker keeps one multiplexed connection per backend address ([`H2Pool`]); requests
//! become streams on it, so there is no per-request connection pool to manage. A connection
//! that fails is dropped and the next request opens a new one; one unused for
//! `[upstream] pool_idle_timeout` is let go (so backends that leave the table do not keep
//! connections open). Requests from HTTP/2 clients are
//! passed stream to stream, trailers included (gRPC); requests from HTTP/1.1 clients are
//! converted both ways (the body streams; HTTP/2 response trailers are dropped for them, as
//! RFC 9110 §6.5.1 allows).
//!
//! The forwarding fields (`X-Forwarded-*`, `X-Request-Id`, `X-Request-Start`, `Via`) are the
//! same as for HTTP/1.1 backends: they are written by the same code
//! ([`crate::headers::write_upstream_head`]) and read back as HTTP/2 fields.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use smallvec::SmallVec;
use tokio::time::timeout;

use pier_routes::app::MAX_TRIED;
use pier_routes::App;

use crate::forward::{upstream_failed, Forwarded, Timeouts};
use crate::h1::framing::{is_hop_by_hop, BodyKind};
use crate::h1::head::Version;
use crate::headers::{end_response_head, put_u64, write_upstream_head, Forwarding};
use crate::relay::{relay_body, write_all_timed, OutCoding, RelayError, RelayLimits};
use crate::respond::ProxyError;
use crate::serve::{Client, Request};
use crate::server::Worker;
use crate::upstream::ConnectError;

/// One shared connection to a backend.
struct H2Backend {
    send: SendRequest<Bytes>,
    /// Set by the connection's driver task when the connection ends.
    closed: Arc<AtomicBool>,
    /// When a request last took a stream on it.
    last_used: Instant,
}

/// Multiplexed connections to h2c backends, one per address.
#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<HashMap<SocketAddr, H2Backend>>,
}

impl H2Pool {
    /// A sender on the connection to `addr`, opening one if there is none (or it closed).
    /// The `bool` says whether the connection was already open.
    async fn sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<(SendRequest<Bytes>, bool), ConnectError> {
        {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = conns.get_mut(&addr) {
                if !b.closed.load(Ordering::Relaxed) {
                    b.last_used = Instant::now();
                    return Ok((b.send.clone(), true));
                }
            }
        }
        let conn = crate::upstream::connect(addr, connect_timeout).await?;
        let handshake = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(conn.stream);
        let (send, connection) = match timeout(connect_timeout, handshake).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Io(std::io::Error::other(e))),
            Ok(Ok(pair)) => pair,
        };
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %addr, error = %e, "h2c backend connection ended");
            }
            flag.store(true, Ordering::Relaxed);
        });
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.insert(
            addr,
            H2Backend {
                send: send.clone(),
                closed,
                last_used: Instant::now(),
            },
        );
        Ok((send, false))
    }

    /// Forgets connections that ended, and lets go of those no request has used for `idle`
    /// (a backend that left the table, or a quiet one): once its streams in flight finish, an
    /// h2 connection with no handle left sends GOAWAY and closes. Called periodically.
    pub fn reap(&self, idle: Duration) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|_, b| !b.closed.load(Ordering::Relaxed) && b.last_used.elapsed() < idle);
    }

    /// Forgets the connection to `addr` (after it failed a request).
    fn drop_conn(&self, addr: SocketAddr) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&addr);
    }
}

/// Picks a backend and gets a ready stream slot on its connection, trying other backends
/// (bounded by `retries`) when one cannot be connected to. Failures count towards ejection.
pub(crate) async fn acquire_h2(
    w: &Worker,
    app: &App,
    tried: &mut SmallVec<[usize; MAX_TRIED]>,
    connect_timeout: Duration,
    retries: usize,
    now: u64,
) -> Result<(usize, SendRequest<Bytes>), ProxyError> {
    let cfg = &w.shared.config;
    let m = &w.shared.metrics;
    let mut last_error = ProxyError::NoBackend;
    loop {
        let Some(idx) = app.pick(w.shared.liveness_ms(now), tried) else {
            return Err(last_error);
        };
        let backend = &app.backends[idx];
        let attempt = async {
            let (send, reused) = w.h2_pool.sender(backend.addr, connect_timeout).await?;
            if reused {
                m.upstream_reused.inc();
            } else {
                m.upstream_connects.inc();
            }
            match timeout(connect_timeout, send.ready()).await {
                Err(_) => Err(ConnectError::Timeout),
                Ok(Err(e)) => Err(ConnectError::Io(std::io::Error::other(e))),
                Ok(Ok(s)) => Ok(s),
            }
        };
        match attempt.await {
            Ok(send) => return Ok((idx, send)),
            Err(e) => {
                w.h2_pool.drop_conn(backend.addr);
                m.upstream_connect_errors.inc();
                last_error = match e {
                    ConnectError::Timeout => ProxyError::UpstreamConnectTimeout,
                    ConnectError::Io(_) => ProxyError::UpstreamConnect,
                };
                if backend.state.record_failure(
                    now,
                    cfg.upstream.eject_after,
                    cfg.upstream.eject_for,
                ) {
                    m.upstream_ejections.inc();
                    tracing::warn!(backend = %backend.addr, app = %app.name, "backend ejected");
                }
                tried.push(idx);
                if tried.len() > retries || tried.len() >= MAX_TRIED {
                    return Err(last_error);
                }
                m.upstream_retries.inc();
            }
        }
    }
}

/// The request head an h2c backend gets: method, `http://host/target`, and the fields an
/// HTTP/1.1 backend would get (`fields` end to end, plus the forwarding fields) except framing.
pub(crate) fn h2_request<'a>(
    method: &[u8],
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    f: &Forwarding<'_>,
    length: Option<u64>,
) -> Result<http::Request<()>, ProxyError> {
    let mut text = Vec::with_capacity(1024);
    write_upstream_head(&mut text, method, fields, f);
    let bad = || ProxyError::BadH2Request("unconvertible-request");
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next();
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::from_bytes(method).map_err(|_| bad())?;
    let target = if f.target == b"*" {
        &b"/"[..]
    } else {
        f.target
    };
    let mut uri = Vec::with_capacity(8 + f.host.len() + target.len());
    uri.extend_from_slice(b"http://");
    uri.extend_from_slice(f.host);
    uri.extend_from_slice(target);
    *req.uri_mut() = http::Uri::try_from(uri).map_err(|_| bad())?;
    let h = req.headers_mut();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if name.eq_ignore_ascii_case(b"host") {
            continue;
        }
        let n = http::HeaderName::from_bytes(name).map_err(|_| bad())?;
        let v = http::HeaderValue::from_bytes(value).map_err(|_| bad())?;
        h.append(n, v);
    }
    if let Some(n) = length {
        let mut v = Vec::with_capacity(20);
        put_u64(&mut v, n);
        if let Ok(v) = http::HeaderValue::from_bytes(&v) {
            h.insert(http::header::CONTENT_LENGTH, v);
        }
    }
    Ok(req)
}

/// Writes an HTTP/1.1 response head for an h2c backend's answer; returns the framing used.
fn write_h1_head(
    out: &mut Vec<u8>,
    resp: &http::response::Parts,
    client: Version,
    keep_alive: bool,
    no_body: bool,
    via: &str,
    hsts: Option<&str>,
) -> (BodyKind, OutCoding, bool) {
    let status = resp.status.as_u16();
    out.extend_from_slice(b"HTTP/1.1 ");
    put_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut has_hsts = false;
    for (n, v) in &resp.headers {
        let name = n.as_str().as_bytes();
        if name == b"content-length" {
            length = std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            continue;
        }
        if is_hop_by_hop(name) {
            continue;
        }
        has_hsts |= name == b"strict-transport-security";
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = no_body || status == 204 || status == 304 || status < 200;
    let (kind, coding, keep) = if bodiless {
        if let Some(n) = length.filter(|_| status != 204) {
            out.extend_from_slice(b"Content-Length: ");
            put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (BodyKind::None, OutCoding::Identity, keep_alive)
    } else if let Some(n) = length {
        out.extend_from_slice(b"Content-Length: ");
        put_u64(out, n);
        out.extend_from_slice(b"\r\n");
        (BodyKind::Length(n), OutCoding::Identity, keep_alive)
    } else if client == Version::Http11 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        (BodyKind::UntilClose, OutCoding::Chunked, keep_alive)
    } else {
        (BodyKind::UntilClose, OutCoding::Identity, false)
    };
    end_response_head(out, via, hsts.filter(|_| !has_hsts), keep, client);
    (kind, coding, keep)
}

/// Forwards an HTTP/1.1 client's request to an h2c backend of `app`.
pub(crate) async fn forward_h1_to_h2(
    w: &Worker,
    client: &mut Client,
    req: &Request,
    app: &Arc<App>,
) -> Forwarded {
    let cfg = &w.shared.config;
    let t = Timeouts::of(cfg, app);
    let retries = app.settings.retries.unwrap_or(cfg.upstream.retries) as usize;
    let mut tried: SmallVec<[usize; MAX_TRIED]> = SmallVec::new();
    let (idx, mut send) =
        match acquire_h2(w, app, &mut tried, t.connect, retries, req.start_ms).await {
            Ok(s) => s,
            Err(e) => return upstream_failed(e, true, None),
        };
    let connected = req.start.elapsed();
    let backend = &app.backends[idx];
    let _outstanding = app.begin(idx);
    let tls = client.listener.tls;
    let hsts = if tls {
        app.settings.hsts.as_deref()
    } else {
        None
    };
    let head = &req.head;
    let fields = head.headers.iter().filter_map(|h| {
        let name = head.name(h);
        let listed = req
            .framing
            .conn
            .listed
            .iter()
            .any(|t| head.value(t).eq_ignore_ascii_case(name));
        let skip = is_hop_by_hop(name)
            || listed
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect");
        (!skip).then(|| (name, head.value(h)))
    });
    let length = match req.framing.body {
        BodyKind::Length(n) => Some(n),
        _ if req.framing.length == Some(0) => Some(0),
        _ => None,
    };
    // Framing is the HTTP/2 layer's business: the head carries none.
    let forwarding = Forwarding {
        body: BodyKind::None,
        explicit_zero_length: false,
        upgrade: None,
        ..req.forwarding(&client.peer_ip, &client.listener, &cfg.headers)
    };
    let request = match h2_request(head.method(), fields, &forwarding, length) {
        Ok(r) => r,
        Err(e) => return upstream_failed(e, true, Some(backend.addr)),
    };
    let has_body = req.framing.body != BodyKind::None;
    let (response, stream) = match send.send_request(request, !has_body) {
        Ok(pair) => pair,
        Err(_) => {
            w.h2_pool.drop_conn(backend.addr);
            return upstream_failed(ProxyError::UpstreamIo, !has_body, Some(backend.addr));
        }
    };
    let Client {
        stream: client_stream,
        buf: client_buf,
        out,
        scratch,
        ..
    } = client;
    let (mut cl_r, mut cl_w) = client_stream.split();
    let sent_at = Instant::now();
    let upload = async {
        if !has_body {
            return Ok(());
        }
        let mut body = crate::h2::io::SendBody::new(stream);
        let limits = RelayLimits {
            read_idle: cfg.timeouts.client_body,
            write_idle: t.idle,
            max_bytes: req.max_body,
        };
        // A chunked upload's trailers come back in `scratch` and end the stream.
        scratch.clear();
        relay_body(
            &mut cl_r,
            client_buf,
            &mut body,
            req.framing.body,
            OutCoding::IdentityKeepTrailers,
            limits,
            scratch,
        )
        .await?;
        body.end(scratch)
            .map_err(|e| RelayError::DstWrite(std::io::Error::other(e)))
    };
    let answer = timeout(t.first_byte, response);
    let (up, answer) = tokio::join!(upload, answer);
    if let Err(e) = up {
        let err = match e {
            RelayError::TooLarge => ProxyError::BodyTooLarge,
            RelayError::SrcTimeout => ProxyError::BodyTimeout,
            RelayError::SrcChunk(c) => ProxyError::RequestChunk(c),
            RelayError::DstTimeout => ProxyError::UpstreamTimeout,
            RelayError::DstWrite(_) => ProxyError::UpstreamIo,
            RelayError::SrcRead(_) | RelayError::SrcEof => {
                return Forwarded {
                    status: 499,
                    upstream: Some(backend.addr),
                    bytes_out: 0,
                    first_byte: None,
                    connect: None,
                    keep_alive: false,
                    error: None,
                    aborted: Some("client-closed"),
                }
            }
        };
        return upstream_failed(err, false, Some(backend.addr));
    }
    let response = match answer {
        Err(_) => return upstream_failed(ProxyError::UpstreamTimeout, true, Some(backend.addr)),
        Ok(Err(e)) => {
            if e.is_io() || e.is_go_away() {
                w.h2_pool.drop_conn(backend.addr);
            }
            return upstream_failed(ProxyError::UpstreamClosed, true, Some(backend.addr));
        }
        Ok(Ok(r)) => r,
    };
    backend.state.record_success();
    let first_byte = sent_at.elapsed();
    let (parts, body) = response.into_parts();
    let keep_alive = req.keep_alive && !w.shared.is_shutting_down();
    out.clear();
    let (kind, coding, keep) = write_h1_head(
        out,
        &parts,
        req.head.version,
        keep_alive,
        req.head_request,
        &cfg.headers.via,
        hsts,
    );
    let status = parts.status.as_u16();
    if write_all_timed(&mut cl_w, out, cfg.timeouts.client_body)
        .await
        .is_err()
    {
        return aborted(status, backend.addr, first_byte, "client-write");
    }
    let mut bytes_out = 0;
    if kind != BodyKind::None {
        let mut src = crate::h2::io::RecvBody::new(body, Bytes::new());
        let limits = RelayLimits {
            read_idle: t.idle,
            write_idle: cfg.timeouts.client_body,
            max_bytes: 0,
        };
        let mut buf = BytesMut::new();
        // A chunked answer ends with the backend's trailers, once they are in.
        let relayed = if coding == OutCoding::Chunked {
            crate::h2::io::relay_chunked(&mut src, &mut buf, &mut cl_w, limits, scratch).await
        } else {
            relay_body(&mut src, &mut buf, &mut cl_w, kind, coding, limits, scratch).await
        };
        match relayed {
            Ok(n) => bytes_out = n,
            Err(RelayError::DstWrite(_) | RelayError::DstTimeout) => {
                return aborted(status, backend.addr, first_byte, "client-write")
            }
            Err(RelayError::SrcTimeout) => {
                return aborted(status, backend.addr, first_byte, "upstream-idle-timeout")
            }
            Err(_) => return aborted(status, backend.addr, first_byte, "upstream-closed-mid-body"),
        }
    }
    Forwarded {
        status,
        upstream: Some(backend.addr),
        bytes_out,
        first_byte: Some(first_byte),
        connect: Some(connected),
        keep_alive: keep,
        error: None,
        aborted: None,
    }
}

fn aborted(status: u16, addr: SocketAddr, first_byte: Duration, why: &'static str) -> Forwarded {
    Forwarded {
        status,
        upstream: Some(addr),
        bytes_out: 0,
        first_byte: Some(first_byte),
        connect: None,
        keep_alive: false,
        error: None,
        aborted: Some(why),
    }
}

//! The exchange with an HTTP/1.1 backend, for any front end.
//!
//! One attempt: write the canonical request head (with a small body in hand in the same
//! write), stream the rest of the body while watching for an early answer, read the response
//! head (passing `1xx` on where the client takes them), send it on, relay the body, and give
//! the connection back to the pool when both sides ended cleanly. A `101` to a WebSocket
//! handshake turns the exchange into a tunnel. Failures count towards passive ejection; a
//! stale pooled connection is retried on a new one when the request is replayable.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use pier_h1::framing::{BodyKind, FramingError, ResponseFraming};
use pier_h1::head::{recycle, HeadError, HeadGate, HeadLimits, HeaderList, Known, ResponseHead};
use pier_routes::App;

use crate::downstream::{micros, Downstream, RequestBody, ResponseSink, RouterTiming, Waited};
use crate::error::{Abort, Failure, ProxyError};
use crate::outcome::Outcome;
use crate::relay::{write_all_timed, RelayError, RelayLimits};
use crate::shared::Worker;
use crate::stream::{UpstreamRead, UpstreamWrite};
use crate::upstream::pool::UpstreamConn;
use crate::upstream::{Attempts, Timeouts};

/// Limits for response heads from backends (they are trusted more than clients, not blindly).
pub const UPSTREAM_HEAD: HeadLimits = HeadLimits {
    max_line: 64 * 1024,
    max_head: 64 * 1024,
    max_headers: 256,
};

/// Proxies the request of `d` to one of `app`'s HTTP/1.1 backends and relays the answer.
pub async fn proxy<D: Downstream>(
    w: &Worker,
    d: &mut D,
    app: &Arc<App>,
    hsts: Option<&str>,
) -> Outcome {
    if let Err(answered) = d.prepare_body().await {
        return answered;
    }
    let replayable = d.request().idempotent && d.body_replayable();
    let start = d.request().start;
    let mut attempts = Attempts::new(w, app, d.request().start_ms).key_from(d);
    let mut fresh = false;
    let mut stale_retries = 0;
    loop {
        let (idx, mut conn) = match attempts.h1(fresh, start).await {
            Ok(c) => c,
            Err(err) => {
                return d.answer_unread(err).await;
            }
        };
        let connected = start.elapsed();
        d.request_mut().connect_us = crate::downstream::micros(connected);
        let backend = &app.backends[idx];
        let _outstanding = app.begin(idx);
        let reused = conn.reused;
        match exchange(w, d, &mut conn, &attempts.timeouts, hsts).await {
            Ok(done) => {
                backend.state.record_success();
                // One reading of the clock for the pool, the access record and the next
                // request's idle wait.
                let end = Instant::now();
                if done.reusable && !w.shared.is_shutting_down() {
                    w.pool.put(conn, end);
                }
                return Outcome {
                    status: done.status,
                    upstream: Some(backend.addr),
                    bytes_out: done.bytes_out,
                    first_byte: Some(done.first_byte),
                    connect: Some(connected),
                    keep_alive: done.keep_alive,
                    error: None,
                    aborted: done.aborted,
                    end: Some(end),
                    queue_us: 0,
                };
            }
            Err(Failure::Stale) if reused && replayable && stale_retries < 2 => {
                stale_retries += 1;
                fresh = true;
                w.shared.metrics.upstream_retries.inc();
            }
            Err(Failure::Stale) => {
                let o = d.answer_unread(ProxyError::UpstreamClosed).await;
                return o.via(backend.addr);
            }
            Err(Failure::Upstream { err, in_sync }) => {
                attempts.failed(idx);
                if let ProxyError::UpstreamTls(reason) = err {
                    tracing::warn!(backend = %backend.addr, app = %app.name, reason, "upstream TLS failed after the handshake");
                }
                return d.answer_error(err, in_sync).await.via(backend.addr);
            }
            Err(Failure::Client(err)) => return d.client_failed(err).await.via(backend.addr),
            Err(Failure::Aborted(why)) => return d.cut(0, why).via(backend.addr),
        }
    }
}

/// How one successful attempt ended.
struct Exchanged {
    status: u16,
    bytes_out: u64,
    first_byte: Duration,
    /// Whether the backend connection can be pooled.
    reusable: bool,
    /// Whether the client connection can carry another request.
    keep_alive: bool,
    aborted: Option<Abort>,
}

/// An I/O failure before a response head: stale when a pooled connection gave nothing back.
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

/// What a response head means for the exchange.
pub enum Read {
    Final(ResponseHead),
    Interim(ResponseHead),
}

/// Reads one response head and sorts it: final, interim (`1xx`), or a `101` nobody asked for
/// (refused). `Err` carries whether any byte of a response arrived.
pub async fn read_head(
    up: &mut UpstreamRead<'_>,
    buf: &mut BytesMut,
    fields: &mut HeaderList,
    upgrading: bool,
) -> Result<Read, (ProxyError, bool)> {
    let mut gate = HeadGate::default();
    loop {
        match gate.response(buf, &UPSTREAM_HEAD, fields) {
            Ok(Some((len, parts))) => {
                let head = parts.into_head(buf.split_to(len).freeze());
                return match head.status {
                    101 if upgrading => Ok(Read::Final(head)),
                    101 => Err((ProxyError::UpstreamBadResponse("unexpected-101"), true)),
                    100..=199 => Ok(Read::Interim(head)),
                    _ => Ok(Read::Final(head)),
                };
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
            Ok(0) => return Err((ProxyError::UpstreamClosed, !buf.is_empty())),
            Ok(_) => {}
            Err(e) => {
                // A TLS backend may refuse pier's client certificate only now (TLS 1.3).
                let err = crate::tls::failure_reason(&e)
                    .map_or(ProxyError::UpstreamIo, ProxyError::UpstreamTls);
                return Err((err, !buf.is_empty()));
            }
        }
    }
}

/// Passes an interim (`1xx`) answer on to the client and takes its fields back; `in_sync`:
/// whether the backend connection is still in step if that fails.
async fn pass_interim<S: ResponseSink>(
    sink: &mut S,
    fields: &mut HeaderList,
    h: ResponseHead,
    in_sync: bool,
) -> Result<(), Failure> {
    sink.interim(&h).await.map_err(|_| Failure::Upstream {
        err: ProxyError::UpstreamIo,
        in_sync,
    })?;
    recycle(fields, h.headers);
    Ok(())
}

/// The failure for a response head that did not come.
fn head_failure(e: ProxyError, got_some: bool, reused: bool, early: bool) -> Failure {
    if (e == ProxyError::UpstreamClosed || e == ProxyError::UpstreamIo) && !early {
        io_failure(reused, !got_some, true)
    } else {
        Failure::Upstream {
            err: e,
            in_sync: !early,
        }
    }
}

async fn exchange<D: Downstream>(
    w: &Worker,
    d: &mut D,
    conn: &mut UpstreamConn,
    t: &Timeouts,
    hsts: Option<&str>,
) -> Result<Exchanged, Failure> {
    let cfg = &w.shared.config;
    let reused = conn.reused;
    let upgrading = d.upgrading();
    let max_body = d.request().max_body;
    let head_request = d.request().head_request;
    let timing = cfg.headers.server_timing.then(|| {
        let r = d.request();
        RouterTiming {
            queue_us: r.queue_us,
            connect_us: r.connect_us,
            service_us: 0,
        }
    });
    let (mut up_r, mut up_w) = conn.stream.split();
    let (request, body_done) = d.write_request();
    match write_all_timed(&mut up_w, request, t.idle).await {
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
    let (mut body, mut sink) = d.split();
    let mut fields = sink.take_fields();
    let mut early_head = None;
    let mut got_any = false;
    if !body_done {
        let limits = RelayLimits {
            read_idle: cfg.timeouts.client_body,
            write_idle: t.idle,
            max_bytes: max_body,
        };
        // Boxed so that it can be dropped once the body is sent, giving the body back for the
        // watch on the client while the backend thinks.
        let mut upload = Box::pin(body.send_h1(&mut up_w, limits));
        // The backend may answer while the body goes up: interim heads are passed on (the
        // upload resumes after each), a final one ends the upload (e.g. an early 413).
        let sent = loop {
            let first = tokio::select! {
                biased;
                r = read_head(&mut up_r, &mut conn.buf, &mut fields, upgrading) => Err(r),
                b = &mut upload => Ok(b),
            };
            match first {
                Err(Ok(Read::Interim(h))) => {
                    got_any = true;
                    pass_interim(&mut sink, &mut fields, h, false).await?;
                }
                Err(Ok(Read::Final(h))) => break Err(Ok(h)),
                Err(Err(e)) => break Err(Err(e)),
                Ok(b) => break Ok(b),
            }
        };
        drop(upload);
        match sent {
            // Neither connection can be reused after an answer that came before the body.
            Err(Ok(h)) => early_head = Some(h),
            Err(Err((e, _))) => {
                return Err(Failure::Upstream {
                    err: e,
                    in_sync: false,
                })
            }
            Ok(Err(e)) => return Err(e.request_failure()),
            // The body is up: wait for the answer as for a request sent whole.
            Ok(Ok(_)) => {}
        }
    }
    let early = early_head.is_some();
    let head = match early_head {
        Some(h) => h,
        None => {
            // From the end of the request: its head, or the last byte of a streamed body.
            let sent_whole = if body_done { sent_at } else { Instant::now() };
            let deadline = sent_whole + t.first_byte;
            loop {
                // A client that leaves (its connection closed, its h2 stream reset) stops the
                // wait (and the backend's work: its connection is closed) instead of holding
                // both sockets until the first-byte timeout.
                let got = {
                    let read = read_head(&mut up_r, &mut conn.buf, &mut fields, upgrading);
                    let mut read = std::pin::pin!(read);
                    let watched = std::future::poll_fn(|cx| {
                        if let Poll::Ready(r) = read.as_mut().poll(cx) {
                            return Poll::Ready(Ok(r));
                        }
                        body.poll_closed(cx).map(|()| Err(Waited::ClientGone))
                    });
                    sink.wait(deadline, watched).await.and_then(|r| r)
                };
                match got {
                    Ok(Ok(Read::Final(h))) => break h,
                    Ok(Ok(Read::Interim(h))) => {
                        got_any = true;
                        pass_interim(&mut sink, &mut fields, h, true).await?;
                    }
                    // A streamed body cannot be sent again: no retry on another connection.
                    Ok(Err((e, _))) if !body_done => {
                        return Err(Failure::Upstream {
                            err: e,
                            in_sync: true,
                        })
                    }
                    Ok(Err((e, some))) => {
                        return Err(head_failure(e, some || got_any, reused, false))
                    }
                    Err(Waited::TimedOut) => {
                        return Err(Failure::Upstream {
                            err: ProxyError::UpstreamTimeout,
                            in_sync: true,
                        })
                    }
                    Err(Waited::ClientGone) => return Err(Failure::Client(None)),
                }
            }
        }
    };
    let first_byte = sent_at.elapsed();
    if let Some(t) = timing {
        sink.timing(RouterTiming {
            service_us: micros(first_byte),
            ..t
        });
    }
    if head.status == 101 {
        // Only a WebSocket handshake gets here (`read_head` refuses other 101s).
        let r = tunnel(
            w,
            &head,
            &mut body,
            &mut sink,
            &mut up_r,
            &mut up_w,
            &mut conn.buf,
        )
        .await;
        return r.map(|(bytes_out, aborted)| Exchanged {
            status: 101,
            bytes_out,
            first_byte,
            reusable: false,
            keep_alive: false,
            aborted,
        });
    }
    let framing = ResponseFraming::of(&head, head_request).map_err(|e| Failure::Upstream {
        err: ProxyError::UpstreamBadResponse(match e {
            FramingError::BadContentLength => "bad-response-content-length",
            FramingError::ContentLengthAndTransferEncoding => "bad-response-framing",
            _ => "bad-response-transfer-encoding",
        }),
        in_sync: !early,
    })?;
    // A backend that refused an upgrade may still expect one on that connection: do not reuse.
    let mut reusable = !early && framing.reusable(head.version) && !upgrading;
    let sent = sink
        .head(&head, &framing, &mut conn.buf, early, hsts)
        .await
        .map_err(Failure::Aborted)?;
    // The head's bytes share the backend connection's buffer: let them go before the body is
    // relayed, so the buffer, once drained, is refilled in place. (Kept, they made the relay
    // allocate a second 16 KiB buffer for every body longer than the first read, and a slow
    // download hold both.)
    let status = head.status;
    let ResponseHead {
        buf: raw, headers, ..
    } = head;
    drop(raw);
    recycle(&mut fields, headers);
    sink.put_fields(fields);
    let bytes_out = match sent.body_sent {
        Some(n) => n,
        None if framing.body == BodyKind::None => 0,
        None => sink
            .body(&mut up_r, &mut conn.buf, framing.body, t.idle)
            .await
            .map_err(Failure::Aborted)?,
    };
    if !conn.buf.is_empty() {
        // Bytes after the response: the backend is confused; do not reuse it.
        reusable = false;
    }
    Ok(Exchanged {
        status,
        bytes_out,
        first_byte,
        reusable,
        keep_alive: sent.keep_alive,
        aborted: None,
    })
}

/// The backend agreed to switch protocols: pass its answer on, then copy bytes both ways until
/// either side closes (the close is passed on) or nothing moves for `timeouts.tunnel_idle`.
/// Returns the bytes sent to the client and why the tunnel was cut, if it was.
async fn tunnel<B: RequestBody, S: ResponseSink>(
    w: &Worker,
    head: &ResponseHead,
    body: &mut B,
    sink: &mut S,
    up_r: &mut UpstreamRead<'_>,
    up_w: &mut UpstreamWrite<'_>,
    up_buf: &mut BytesMut,
) -> Result<(u64, Option<Abort>), Failure> {
    let accepted = head
        .first(Known::Upgrade)
        .is_some_and(pier_h1::head::lists_websocket);
    let Some((cl_r, cl_buf)) = body.tunnel().filter(|_| accepted) else {
        return Err(Failure::Upstream {
            err: ProxyError::UpstreamBadResponse("bad-upgrade-response"),
            in_sync: false,
        });
    };
    let cl_w = sink.switch(head).await.map_err(Failure::Aborted)?;
    let m = &w.shared.metrics;
    m.tunnels_total.inc();
    m.tunnels_open.inc();
    let idle = w.shared.config.timeouts.tunnel_idle;
    let r = crate::relay::tunnel(cl_r, cl_w, cl_buf, up_r, up_w, up_buf, idle).await;
    m.tunnels_open.dec();
    Ok(r)
}

//! Backends that speak cleartext HTTP/2 (apps with `backend_protocol = "h2c"`).
//!
//! Each worker keeps one multiplexed connection per backend address ([`super::pool::H2Pool`]); requests
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
//! ([`pier_h1::rewrite::write_upstream_head`]) and read back as HTTP/2 fields.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::time::timeout;

use pier_h1::rewrite::{put_u64, write_upstream_head, Forwarding};
use pier_routes::App;

use crate::downstream::{micros, Downstream, RequestBody, ResponseSink, RouterTiming, Waited};
use crate::error::ProxyError;
use crate::outcome::Outcome;
use crate::relay::RelayLimits;
use crate::shared::Worker;
use crate::upstream::Attempts;

/// The request head an h2c backend gets: method, `http://host/target`, and the fields an
/// HTTP/1.1 backend would get (`fields` end to end, plus the forwarding fields) except framing.
pub fn h2_request<'a>(
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

/// Proxies the request of `d` to one of `app`'s h2c backends and relays the answer. An
/// HTTP/2 client's body and the answer stream at once (bidirectional streaming works); an
/// HTTP/1.1 client's body is sent whole before its answer is relayed.
pub async fn proxy<D: Downstream>(
    w: &Worker,
    d: &mut D,
    app: &Arc<App>,
    hsts: Option<&str>,
) -> Outcome {
    let cfg = &w.shared.config;
    let start = d.request().start;
    let mut attempts = Attempts::new(w, app, d.request().start_ms).key_from(d);
    let (first_byte_limit, idle, write_idle) = (
        attempts.timeouts.first_byte,
        attempts.timeouts.idle,
        attempts.timeouts.idle,
    );
    let (idx, mut send) = match attempts.h2().await {
        Ok(s) => s,
        Err(err) => {
            return d.answer_unread(err).await;
        }
    };
    let connected = start.elapsed();
    let timing = cfg.headers.server_timing.then(|| RouterTiming {
        queue_us: d.request().queue_us,
        connect_us: micros(connected),
        service_us: 0,
    });
    let backend = &app.backends[idx];
    let addr = backend.addr;
    let _outstanding = app.begin(idx);
    let (request, has_body) = match d.h2_request() {
        Ok(r) => r,
        Err(err) => return d.answer_unread(err).await.via(addr),
    };
    let (response, stream) = match send.send_request(request, !has_body) {
        Ok(pair) => pair,
        Err(_) => {
            w.h2_pool.drop_conn(addr);
            return d.answer_unread(ProxyError::UpstreamIo).await.via(addr);
        }
    };
    let sent_at = Instant::now();
    let limits = RelayLimits {
        read_idle: cfg.timeouts.client_body,
        write_idle,
        max_bytes: d.request().max_body,
    };
    let (mut body, mut sink) = d.split();
    let upload = async {
        if !has_body {
            return Ok(0);
        }
        body.send_h2(stream, limits).await
    };
    let answer = async {
        match timeout(first_byte_limit, response).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => {
                if e.is_io() || e.is_go_away() {
                    w.h2_pool.drop_conn(addr);
                }
                Err(ProxyError::UpstreamClosed)
            }
            Ok(Ok(r)) => {
                backend.state.record_success();
                Ok((r, sent_at.elapsed()))
            }
        }
    };
    let result = if D::DUPLEX {
        // The answer streams while the body still goes up (bidirectional streaming). A client
        // that resets its stream meanwhile ends the wait (and the backend's stream with it).
        let download = async {
            let deadline = sent_at + first_byte_limit;
            let (resp, first_byte) = match sink.wait(deadline, answer).await {
                Ok(answered) => answered.map_err(Failed::Backend)?,
                Err(Waited::TimedOut) => return Err(Failed::Backend(ProxyError::UpstreamTimeout)),
                Err(Waited::ClientGone) => return Err(Failed::Client(None)),
            };
            if let Some(t) = timing {
                sink.timing(RouterTiming {
                    service_us: micros(first_byte),
                    ..t
                });
            }
            Ok((first_byte, sink.h2_answer(resp, idle, hsts).await))
        };
        tokio::pin!(upload, download);
        let mut uploading = has_body;
        loop {
            tokio::select! {
                u = &mut upload, if uploading => {
                    uploading = false;
                    if let Err(why) = u {
                        tracing::debug!(reason = ?why, "request body to the h2c backend stopped");
                    }
                }
                d = &mut download => break d,
            }
        }
    } else {
        // The body goes up whole before the answer is relayed (its failure is answered); then,
        // as with an HTTP/1.1 backend, a client that leaves ends the wait. The upload is boxed
        // so that it can be dropped once done, giving the body back for that watch.
        let mut upload = Box::pin(upload);
        let mut answer = std::pin::pin!(answer);
        let mut early = None;
        let up = loop {
            tokio::select! {
                u = &mut upload => break u,
                a = &mut answer, if early.is_none() => early = Some(a),
            }
        };
        drop(upload);
        let answered = match (&up, early) {
            (Err(_), _) => None,
            (Ok(_), Some(a)) => Some(a),
            (Ok(_), None) => {
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(a) = answer.as_mut().poll(cx) {
                        return Poll::Ready(Some(a));
                    }
                    body.poll_closed(cx).map(|()| None)
                })
                .await
            }
        };
        match (up, answered) {
            (Err(e), _) => Err(Failed::Client(e.client_error())),
            (Ok(_), None) => Err(Failed::Client(None)),
            (Ok(_), Some(Err(err))) => Err(Failed::Backend(err)),
            (Ok(_), Some(Ok((resp, first_byte)))) => {
                if let Some(t) = timing {
                    sink.timing(RouterTiming {
                        service_us: micros(first_byte),
                        ..t
                    });
                }
                Ok((first_byte, sink.h2_answer(resp, idle, hsts).await))
            }
        }
    };
    drop(body);
    drop(sink);
    let (first_byte, sent) = match result {
        Ok(r) => r,
        Err(Failed::Client(err)) => return d.client_failed(err).await.via(addr),
        Err(Failed::Backend(err)) => return d.answer_error(err, true).await.via(addr),
    };
    let o = match sent {
        Ok((status, bytes_out, keep_alive)) => Outcome {
            bytes_out,
            upstream: Some(addr),
            ..Outcome::local(status, None, keep_alive)
        },
        Err((status, why)) => d.cut(status, why).via(addr),
    };
    Outcome {
        first_byte: Some(first_byte),
        connect: Some(connected),
        ..o
    }
}

/// Why no answer came from an h2c backend.
enum Failed {
    /// The client's body broke (with the answer to give, if any).
    Client(Option<ProxyError>),
    Backend(ProxyError),
}

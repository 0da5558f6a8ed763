//! HTTP/2 over the `h2` crate: one connection task per connection slot, and up to `-m`
//! stream workers on it, each issuing requests one after the other (closed model) or at
//! their due times (open model). Every stream is counted on its own.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

use crate::engine::{connect, Conn, ThreadCtx};
use crate::schedule::SEND_SLACK;
use crate::stats::ErrorKind;
use crate::target::Target;

/// Request parts prepared once per run.
#[derive(Debug)]
pub struct H2Templates {
    method: Method,
    uris: Vec<Uri>,
    headers: HeaderMap,
    body: Option<Bytes>,
}

/// A request that `http` would not accept.
#[derive(Debug, thiserror::Error)]
#[error("cannot build an HTTP/2 request: {0}")]
pub struct H2TemplateError(String);

impl H2Templates {
    pub fn build(
        method: &str,
        target: &Target,
        hosts: &[crate::hosts::HostEntry],
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Result<H2Templates, H2TemplateError> {
        let err = |e: &dyn std::fmt::Display| H2TemplateError(e.to_string());
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| err(&e))?;
        let scheme = match target.scheme {
            crate::target::Scheme::Http => "http",
            crate::target::Scheme::Https => "https",
        };
        let uris = hosts
            .iter()
            .map(|h| {
                let s = format!(
                    "{scheme}://{}{}",
                    target.authority_for(&h.name),
                    target.path
                );
                Uri::try_from(s).map_err(|e| err(&e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            // Connection-specific headers are forbidden in h2 (RFC 9113 §8.2.2); Host
            // becomes :authority.
            let lower = n.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "host"
                    | "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "transfer-encoding"
                    | "upgrade"
            ) {
                continue;
            }
            let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|e| err(&e))?;
            let value = HeaderValue::from_str(v).map_err(|e| err(&e))?;
            map.append(name, value);
        }
        Ok(H2Templates {
            method,
            uris,
            headers: map,
            body: body.map(Bytes::copy_from_slice),
        })
    }

    fn request(&self, host: usize) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uris.get(host).cloned().unwrap_or_default();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// How a stream worker stopped.
enum StreamEnd {
    /// The run ended; `true` if a request was in flight.
    Ended(bool),
    /// The connection failed; the worker's request (if any) was already counted.
    Broken,
}

/// Runs one h2 connection slot until the end of the run; returns streams in flight at the end.
pub(crate) async fn run(ctx: Rc<ThreadCtx>, conn: usize, max_streams: usize) -> u64 {
    let sh = ctx.sh.clone();
    let retry: RetryQueue = Rc::new(RefCell::new(Vec::new()));
    let mut backoff = Duration::from_millis(5);
    loop {
        if Instant::now() >= sh.end {
            return retry.borrow().len() as u64;
        }
        let handshake = match connect(&ctx, ctx.sni_host(conn)).await {
            Ok(Conn::Plain(tcp)) => builder()
                .handshake::<_, Bytes>(tcp)
                .await
                .map(|(s, c)| (s, tokio::task::spawn_local(async move { c.await.is_ok() }))),
            Ok(Conn::Tls(tls)) => {
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    ctx.connect_failed(&"server did not negotiate h2 via ALPN");
                    wait(&mut backoff, sh.end).await;
                    continue;
                }
                builder()
                    .handshake::<_, Bytes>(*tls)
                    .await
                    .map(|(s, c)| (s, tokio::task::spawn_local(async move { c.await.is_ok() })))
            }
            Ok(Conn::Ended) => return retry.borrow().len() as u64,
            Err(e) => {
                ctx.connect_failed(&e);
                wait(&mut backoff, sh.end).await;
                continue;
            }
        };
        let (send, driver) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                ctx.connect_failed(&e);
                wait(&mut backoff, sh.end).await;
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let workers: Vec<_> = (0..max_streams)
            .map(|_| {
                tokio::task::spawn_local(stream_worker(
                    ctx.clone(),
                    conn,
                    send.clone(),
                    retry.clone(),
                ))
            })
            .collect();
        drop(send);
        let mut in_flight = 0;
        let mut ended = false;
        for w in workers {
            match w.await {
                Ok(StreamEnd::Ended(busy)) => {
                    ended = true;
                    in_flight += u64::from(busy);
                }
                Ok(StreamEnd::Broken) | Err(_) => {}
            }
        }
        driver.abort();
        if ended || Instant::now() >= sh.end {
            return in_flight + retry.borrow().len() as u64;
        }
        ctx.recorder.borrow_mut().reconnect(Instant::now());
    }
}

fn builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    // Large windows so flow control does not throttle a load test on loopback.
    b.initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .enable_push(false);
    b
}

async fn wait(backoff: &mut Duration, end: Instant) {
    let wake = (Instant::now() + *backoff).min(end);
    tokio::time::sleep_until(wake.into()).await;
    *backoff = (*backoff * 2).min(Duration::from_millis(500));
}

/// The response facts one stream yields.
struct StreamResponse {
    status: u16,
    matched: Option<bool>,
    bytes: usize,
}

/// A request the server refused unprocessed, to be sent again on the next connection.
#[derive(Debug, Clone, Copy)]
struct Refused {
    due: Instant,
    start: Instant,
    host: usize,
}

type RetryQueue = Rc<RefCell<Vec<Refused>>>;

/// The server says the stream was not processed: REFUSED_STREAM, or cut off by a graceful
/// GOAWAY (RFC 9113 §8.7), so sending it again is safe.
fn refused_unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
}

async fn stream_worker(
    ctx: Rc<ThreadCtx>,
    conn: usize,
    mut send: SendRequest<Bytes>,
    retry: RetryQueue,
) -> StreamEnd {
    let sh = ctx.sh.clone();
    let Some(templates) = sh.h2.as_ref() else {
        return StreamEnd::Broken;
    };
    // One timer per stream worker, moved only when it fires early (it was set for an older
    // request) instead of a timer registered and dropped per request.
    let timer = tokio::time::sleep_until(sh.end.into());
    tokio::pin!(timer);
    let mut timer_at = sh.end;
    loop {
        let mut now = Instant::now();
        if now >= sh.end {
            return StreamEnd::Ended(false);
        }
        let again = retry.borrow_mut().pop();
        let (due, start) = match (&ctx.schedule, again) {
            (_, Some(r)) => (r.due, r.start),
            (None, None) => (now, now),
            (Some(s), None) => {
                let Some(due) = s.claim() else {
                    tokio::time::sleep_until(sh.end.into()).await;
                    return StreamEnd::Ended(false);
                };
                if due > now + SEND_SLACK {
                    tokio::time::sleep_until((due - SEND_SLACK).into()).await;
                    now = Instant::now();
                }
                s.mark_sent(due);
                (due, due.min(now))
            }
        };
        let host = match again {
            Some(r) => r.host,
            None => ctx.next_host(conn),
        };
        let expect = sh
            .expect
            .as_ref()
            .map(|e| (&e.h2_name, e.values[host].as_slice()));
        let sent = Instant::now();
        let deadline = match sh.cfg.timeout {
            Some(t) => (sent + t).min(sh.end),
            None => sh.end,
        };
        if deadline < timer_at {
            timer.as_mut().reset(deadline.into());
            timer_at = deadline;
        }
        let request = one_request(&mut send, templates, host, expect);
        tokio::pin!(request);
        let result = poll_fn(|cx| {
            if let Poll::Ready(r) = request.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            while timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                timer.as_mut().reset(deadline.into());
                timer_at = deadline;
            }
            Poll::Pending
        })
        .await;
        let now = Instant::now();
        if now >= sh.end {
            // Finished or not, this stream was still open when the run ended.
            return StreamEnd::Ended(true);
        }
        match result {
            Some(Ok(r)) => {
                let mut rec = ctx.recorder.borrow_mut();
                // h2 byte counts are DATA payloads only (headers are HPACK-compressed).
                rec.bytes_read(now, r.bytes);
                rec.bytes_written(now, templates.body.as_ref().map_or(0, Bytes::len));
                rec.response(now, due, start, sent, r.status, host, r.matched);
            }
            Some(Err(e)) if refused_unprocessed(&e) => {
                ctx.recorder.borrow_mut().retried += 1;
                retry.borrow_mut().push(Refused { due, start, host });
                if e.is_go_away() {
                    return StreamEnd::Broken;
                }
            }
            Some(Err(e)) => {
                let connection_gone = e.is_io() || e.is_go_away() || e.reason().is_none();
                let kind = if e.is_io() {
                    ErrorKind::Read
                } else {
                    ErrorKind::Protocol
                };
                ctx.recorder.borrow_mut().error(due, kind, Some(host));
                if connection_gone {
                    return StreamEnd::Broken;
                }
            }
            None => {
                if now >= sh.end {
                    return StreamEnd::Ended(true);
                }
                ctx.recorder
                    .borrow_mut()
                    .error(due, ErrorKind::Timeout, Some(host));
            }
        }
    }
}

async fn one_request(
    send: &mut SendRequest<Bytes>,
    templates: &H2Templates,
    host: usize,
    expect: Option<(&HeaderName, &[u8])>,
) -> Result<StreamResponse, h2::Error> {
    poll_fn(|cx| send.poll_ready(cx)).await?;
    let req = templates.request(host);
    let (response, mut stream) = send.send_request(req, templates.body.is_none())?;
    if let Some(body) = &templates.body {
        stream.send_data(body.clone(), true)?;
    }
    let response = response.await?;
    let status = response.status().as_u16();
    let matched = expect.map(|(name, want)| {
        response
            .headers()
            .get(name)
            .is_some_and(|v| v.as_bytes() == want)
    });
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        bytes += chunk.len();
        // Returning the window lets the server keep sending; failure means the stream is
        // already gone, which the next data() call reports.
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(StreamResponse {
        status,
        matched,
        bytes,
    })
}

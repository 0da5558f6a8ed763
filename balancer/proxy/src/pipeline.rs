//! Stage `pipeline`: what happens to a request once its front end has read and checked it,
//! written once for every protocol. The phases, named as pingora names them:
//!
//! 0. `acme` — an ACME HTTP-01 challenge of a certificate the platform is ordering is
//!    answered from the table (the registry's pending challenges), whatever the app;
//! 1. `route` — the connection may serve the name (HTTP/2 over TLS), the route table knows it;
//! 2. `action` — an app that answers itself: the redirect to HTTPS, a redirect, a static page,
//!    maintenance;
//! 3. `upstream_peer` — a live backend (holding the request while the app spins up), the body
//!    within the app's limit, a slot among the app's requests in flight ([`crate::admission`]);
//! 4. `proxy` — the exchange with an HTTP/1.1 or h2c backend ([`crate::upstream`]);
//! 5. `logging` — metrics, the access log line, the router line and usage counts.
//!
//! The front end gives the request through [`Downstream`] and gets the [`Outcome`] back (it
//! says whether the connection may carry another request).

use std::sync::Arc;
use std::time::Instant;

use tokio::time::timeout_at;

use pier_routes::app::BackendProtocol;
use pier_routes::{Action, App};

use crate::admission;
use crate::downstream::{Downstream, Request};
use crate::error::ProxyError;
use crate::outcome::{Access, Outcome};
use crate::respond::{action_response, https_redirect, AnswerScratch, LocalResponse};
use crate::shared::Worker;
use crate::upstream;
use crate::util::now_ms;

/// Answers one request and records it; returns how it ended.
pub async fn run<D: Downstream>(w: &Worker, d: &mut D) -> Outcome {
    let (app, mut outcome) = answer(w, d).await;
    let end = *outcome.end.get_or_insert_with(Instant::now);
    if let Some(app) = &app {
        app.record_response(outcome.status);
        let limits = &w.shared.config.limits;
        if admission::is_adaptive(app, limits) {
            // The backend's latency: its time to first byte, or the whole wait when it never
            // answered in time.
            let latency = match (outcome.first_byte, outcome.error) {
                (Some(t), _) => Some(t),
                (None, Some(ProxyError::UpstreamTimeout)) => {
                    Some(end.saturating_duration_since(d.request().start))
                }
                _ => None,
            };
            if let Some(t) = latency {
                admission::sample(app, limits, t, end);
            }
        }
    }
    record(w, d, end, app.as_ref(), &outcome);
    outcome
}

/// Answers a request its front end could not accept (an HTTP/2 stream the RFC calls
/// malformed, a bad Host) with `err`, and records it.
pub async fn refused<D: Downstream>(w: &Worker, d: &mut D, err: ProxyError) -> Outcome {
    let mut outcome = d.answer_error(err, false).await;
    let end = *outcome.end.get_or_insert_with(Instant::now);
    record(w, d, end, None, &outcome);
    outcome
}

/// Phases 1–4.
async fn answer<D: Downstream>(w: &Worker, d: &mut D) -> (Option<Arc<App>>, Outcome) {
    let cfg = &w.shared.config;
    // acme: an HTTP-01 challenge of a certificate being ordered, before routing and before
    // any redirect to HTTPS (the CA asks over plain HTTP)
    let target = &d.request().target;
    // (The second byte first: a path that is not /.well-known/… is turned away in one compare.)
    if target.get(1) == Some(&b'.') && target.starts_with(ACME_CHALLENGE_PATH) {
        if let Some(key_authorization) = acme_challenge(w, d.request()) {
            let resp = LocalResponse {
                status: 200,
                content_type: "application/octet-stream",
                body: key_authorization.as_bytes(),
                error: None,
                location: None,
                retry_after: None,
                request_id: &[],
                hsts: None,
            };
            return (None, d.answer(&resp).await);
        }
    }
    // the client's request rate (before routing: a flood costs no lookup)
    if let Some(limits) = &w.shared.client_limits {
        if !limits.allow(d.client_ip(), d.request().start_ms) {
            return (None, d.answer_unread(ProxyError::RateLimited).await);
        }
    }
    // route
    let app = {
        let name = d.request().name();
        if !d.may_serve(name) {
            None
        } else {
            let table = w.shared.routes.load();
            Some(table.lookup(name).map(|m| Arc::clone(m.app)))
        }
    };
    let Some(app) = app else {
        return (None, d.answer_error(ProxyError::Misdirected, false).await);
    };
    let Some(mut app) = app else {
        return (None, d.answer_unread(ProxyError::UnknownHost).await);
    };
    // action
    let redirect_port = match &cfg.tls {
        Some(t) if app.settings.https_redirect && !d.listener().tls => Some(t.https_port),
        _ => None,
    };
    if redirect_port.is_some() || !matches!(app.settings.action, Action::Proxy) {
        let mut scratch = AnswerScratch::default();
        let req = d.request();
        let (target, request_id) = (req.target.clone(), req.request_id.clone());
        let o = if let Some(port) = redirect_port {
            let name = req.name().to_owned();
            let resp = https_redirect(&name, port, &target, &request_id, &mut scratch);
            d.answer(&resp).await
        } else {
            match action_response(&app.settings.action, &target, &request_id, &mut scratch) {
                Some(mut resp) => {
                    if d.listener().tls {
                        resp.hsts = app.settings.hsts.as_deref();
                    }
                    d.answer(&resp).await
                }
                None => Outcome::local(500, None, false),
            }
        };
        return (Some(app), o);
    }
    // upstream_peer
    let max_body = app.settings.max_body.unwrap_or(cfg.limits.max_body);
    d.request_mut().max_body = max_body;
    let mut checked_at = w.shared.liveness_ms(d.request().start_ms);
    if !app.has_live_backend(checked_at) && app.settings.spin {
        if let Some(ready) = Box::pin(spin(w, &app.name)).await {
            app = ready;
        }
        checked_at = w.shared.liveness_ms(now_ms());
    }
    if !app.has_live_backend(checked_at) {
        return (Some(app), d.answer_unread(ProxyError::NoBackend).await);
    }
    if d.request()
        .length
        .is_some_and(|n| max_body != 0 && n > max_body)
    {
        return (
            Some(app),
            d.answer_error(ProxyError::BodyTooLarge, false).await,
        );
    }
    // The worker is saturated: an app taking well over an equal share is shed, in part
    // (crate::overload).
    if w.overload.shedding()
        && !d.upgrading()
        && w.shared.fair.is_heavy(app.counters().gate.in_flight())
        && w.overload.shed_this()
    {
        return (Some(app), d.answer_unread(ProxyError::Overloaded).await);
    }
    // The app's limit on requests in flight (WebSocket handshakes are not counted: a tunnel
    // lives as long as its connection, bounded by the connection limits).
    let mut queue_us = 0;
    let _permit = if d.upgrading() {
        None
    } else {
        match admission::enter(&app, &cfg.limits, &w.shared.fair) {
            Ok(p) => Some(p),
            // Boxed: the wait is the rare path, and its future should not sit in every
            // request's.
            Err(queued) => {
                let since = Instant::now();
                // A client that leaves the queue gives its place up at once.
                let waited = Box::pin(async {
                    tokio::select! {
                        biased;
                        p = queued.wait(&cfg.limits, &w.shared.fair) => Some(p),
                        () = d.gone() => None,
                    }
                })
                .await;
                // At least 1: 0 says it did not wait.
                queue_us = crate::downstream::micros(since.elapsed()).max(1);
                match waited {
                    Some(Ok(p)) => Some(p),
                    None => {
                        let o = d.client_failed(None).await;
                        return (Some(app), Outcome { queue_us, ..o });
                    }
                    Some(Err(e)) => {
                        let o = d.answer_unread(e).await;
                        return (Some(app), Outcome { queue_us, ..o });
                    }
                }
            }
        }
    };
    d.request_mut().queue_us = queue_us;
    // proxy
    let hsts = if d.listener().tls {
        app.settings.hsts.as_deref()
    } else {
        None
    };
    let o = match app.settings.backend_protocol {
        // A WebSocket over HTTP/2 becomes an HTTP/1.1 handshake whatever the backend protocol.
        BackendProtocol::H2c if !d.request().tunnel => {
            // Boxed: a large future on a rarer path would otherwise sit in every connection's
            // task.
            Box::pin(upstream::h2c::proxy(w, d, &app, hsts)).await
        }
        _ => upstream::h1::proxy(w, d, &app, hsts).await,
    };
    (Some(app), Outcome { queue_us, ..o })
}

/// Where the ACME HTTP-01 challenges are asked for (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &[u8] = b"/.well-known/acme-challenge/";

/// The key authorization of the pending challenge the request asks for, if it is one: a `GET`
/// of `/.well-known/acme-challenge/<token>` on the name the challenge is for.
fn acme_challenge(w: &Worker, req: &Request) -> Option<String> {
    let token = req.target.strip_prefix(ACME_CHALLENGE_PATH)?;
    let token = std::str::from_utf8(token).ok()?;
    let table = w.shared.routes.load();
    let c = table.acme_challenge(token)?;
    (*c.domain == *req.name()).then(|| c.key_authorization.to_string())
}

/// mantrid's `spin`: while an app boots it has no live backend; hold the request until one
/// registers (any table swap may bring it) or the spin timeout passes. Bounded in count: past
/// `max_held` held requests, the answer is an immediate 503.
async fn spin(w: &Worker, app: &str) -> Option<Arc<App>> {
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

/// Phase 5: counts one answered request in the metrics and writes its access log line (and,
/// with a registry, its router line and usage).
fn record<D: Downstream>(w: &Worker, d: &D, end: Instant, app: Option<&Arc<App>>, o: &Outcome) {
    let req = d.request();
    let x = Access {
        peer: d.peer(),
        method: d.method(),
        host: &req.host,
        target: &req.target,
        request_id: &req.request_id,
        start: req.start,
        end,
        protocol: D::PROTOCOL,
        bytes_in: req.length.unwrap_or(0),
    };
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
        t.record(app, &x, o, elapsed);
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
        connect_us = o.connect.map_or(0, |d| d.as_micros() as u64),
        queue_us = o.queue_us,
        bytes = o.bytes_out,
        request_id = %String::from_utf8_lossy(x.request_id),
        error = o.error.map_or("-", ProxyError::reason),
        aborted = o.aborted.map_or("-", |a| a.as_str()),
        "request"
    );
}

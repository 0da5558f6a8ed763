//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/routes` (JSON dump).
//!
//! It is a separate, small HTTP/1.1 server on its own address, using the same strict parser as
//! the proxy; every answer closes the connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use pier_routes::{Action, DomainPattern, RouteTable};

use crate::shared::Shared;
use crate::util::now_ms;
use pier_h1::head::{parse_request, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_line: 4096,
    max_head: 16 * 1024,
    max_headers: 64,
};

pub async fn serve_admin(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let s = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), handle(s, stream)).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(4096);
    let path = loop {
        match parse_request(&buf, &LIMITS) {
            Ok(Some((len, parts))) => {
                let head = parts.into_head(buf.split_to(len).freeze());
                let target = head.target();
                let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
                break Some((head.method().to_vec(), path.to_vec()));
            }
            Ok(None) => {}
            Err(_) => break None,
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    let (status, ctype, body) = match path.as_ref().map(|(m, p)| (m.as_slice(), p.as_slice())) {
        None => (400, "text/plain", "bad request\n".to_string()),
        Some((m, _)) if m != b"GET" && m != b"HEAD" => (405, "text/plain", "GET only\n".into()),
        Some((_, b"/metrics")) => {
            let contact = shared
                .registry_contact_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if contact > 0 {
                let age = now_ms().saturating_sub(contact) as f64 / 1000.0;
                shared.metrics.registry_contact_age.set(age);
            }
            let table = shared.routes.load();
            (
                200,
                "text/plain; version=0.0.4",
                shared.metrics.render(&table),
            )
        }
        Some((_, b"/healthz")) => {
            if shared.is_shutting_down() {
                (503, "text/plain", "draining\n".into())
            } else {
                (200, "text/plain", "ok\n".into())
            }
        }
        Some((_, b"/routes")) => {
            let table = shared.routes.load();
            (200, "application/json", routes_json(&table).to_string())
        }
        Some((_, b"/certs")) => {
            let table = shared.routes.load();
            (200, "application/json", certs_json(&table).to_string())
        }
        Some(_) => (
            404,
            "text/plain",
            "not found (try /metrics, /healthz, /routes, /certs)\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::respond::status_text(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if !matches!(&path, Some((m, _)) if m == b"HEAD") {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// The certificates in the table, soonest expiry first: domain pattern, where it came from,
/// the leaf's names, notAfter and SHA-256 fingerprint. Private keys are never shown.
pub fn certs_json(table: &RouteTable) -> serde_json::Value {
    let mut certs: Vec<_> = table.certs().collect();
    certs.sort_by_key(|(p, e)| (e.not_after_ms, p.to_string()));
    let list: Vec<serde_json::Value> = certs
        .iter()
        .map(|(pattern, e)| {
            let leaf = e.key.cert.first();
            let fingerprint = leaf.map(|c| pier_routes::cert::fingerprint_sha256(c));
            json!({
                "domain": pattern.to_string(),
                "source": if e.source.is_some() { "registry" } else { "routes-file" },
                "not_after": (e.not_after_ms != i64::MAX).then(|| pier_routes::cert::rfc3339(e.not_after_ms)),
                "chain_length": e.key.cert.len(),
                "fingerprint_sha256": fingerprint,
            })
        })
        .collect();
    json!({ "count": list.len(), "certificates": list })
}

/// The whole table as JSON (apps sorted by name, domains sorted).
pub fn routes_json(table: &RouteTable) -> serde_json::Value {
    let mut domains: std::collections::HashMap<&str, Vec<String>> =
        std::collections::HashMap::new();
    for (pattern, app) in table.domains() {
        let text = match &pattern {
            DomainPattern::CatchAll => "*".to_string(),
            p => p.to_string(),
        };
        domains.entry(&*app.name).or_default().push(text);
    }
    let now = now_ms();
    let mut apps: Vec<_> = table.apps().collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    let apps: Vec<_> = apps
        .into_iter()
        .map(|app| {
            let mut d = domains.remove(&*app.name).unwrap_or_default();
            d.sort();
            let s = &app.settings;
            let gate = app.counters_if_used();
            let action = match &s.action {
                Action::Proxy => json!({"type": "proxy"}),
                Action::Redirect { status, location, keep_path } => {
                    json!({"type": "redirect", "status": status, "location": &**location, "keep_path": keep_path})
                }
                Action::Static { status, body, content_type } => {
                    json!({"type": "static", "status": status, "bytes": body.len(), "content_type": &**content_type})
                }
                Action::Maintenance { retry_after, .. } => {
                    json!({"type": "maintenance", "retry_after": retry_after})
                }
            };
            json!({
                "name": &*app.name,
                "domains": d,
                "action": action,
                "policy": s.policy.name(),
                "hash_on": s.hash.as_ref().filter(|_| s.policy == pier_routes::Policy::ConsistentHash).map(|h| h.on.to_text()),
                "hash_balance": s.hash.as_ref().filter(|_| s.policy == pier_routes::Policy::ConsistentHash).map(|h| h.balance),
                "max_body": s.max_body,
                "max_in_flight": s.max_in_flight,
                "adaptive_limit": gate.as_ref().and_then(|c| c.adaptive.current()),
                "in_flight": gate.as_ref().map_or(0, |c| c.gate.in_flight()),
                "queued": gate.as_ref().map_or(0, |c| c.gate.waiting()),
                "backends": app.backends.iter().map(|b| json!({
                    "id": b.id(),
                    "address": pier_routes::spec::backend_address(b.addr, b.tls.is_some()),
                    "server_name": b.tls.as_ref().and_then(|t| t.server_name.as_deref()),
                    "weight": b.weight,
                    "outstanding": b.state.outstanding(),
                    "ejected": b.state.is_ejected(now),
                    "health": s.health_check.as_ref().map(|_| if b.state.is_check_down() { "down" } else { "up" }),
                    "expires_at_ms": (b.expires_at_ms != 0).then_some(b.expires_at_ms),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": table.version(),
        "domains": table.len(),
        "app_domains": table.app_domains().iter().map(|d| &**d).collect::<Vec<_>>(),
        "apps": apps,
    })
}

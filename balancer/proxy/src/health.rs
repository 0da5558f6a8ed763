//! Active health checks (beside the request path): each backend of an app with a
//! `health_check` is probed every `interval` — `GET path` on a new connection (TLS for an
//! `https://` backend) expecting its status, or a bare TCP connect — and leaves rotation after
//! `fall` failed probes in a row, coming back after `rise` passes
//! ([`pier_routes::BackendState::record_probe`]). Passive ejection works beside it.
//!
//! One task on the control runtime runs them all. It keeps the list of apps with checks from
//! the table in use, rebuilt when the table's version changes, so the apps without checks (most
//! of a million) cost nothing per round; probes run concurrently, each bounded by its timeout.
//! When every backend of an app is down, requests still go to them (trying beats refusing
//! every request), as with ejection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use pier_routes::app::{HealthCheck, Probe};
use pier_routes::{App, BackendTls};

use crate::shared::Shared;
use crate::upstream::pool;

/// How often the schedule is looked at: the finest interval a check may have.
const TICK: Duration = Duration::from_millis(50);
/// Most bytes of an answer read for its status line.
const STATUS_LINE_MAX: usize = 1024;

/// An app with a health check, and when each of its backends is due.
struct Checked {
    app: Arc<App>,
    due: Vec<Instant>,
}

/// Runs the checks until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let mut version = None;
    let mut checked: Vec<Checked> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let table = shared.routes.load();
        if version != Some(table.version()) {
            version = Some(table.version());
            checked = schedule(&table, &checked, now);
        }
        let mut down = 0;
        for c in &mut checked {
            let Some(check) = &c.app.settings.health_check else {
                continue;
            };
            for (i, due) in c.due.iter_mut().enumerate() {
                down += usize::from(c.app.backends[i].state.is_check_down());
                if *due > now {
                    continue;
                }
                *due = now + check.interval;
                let app = Arc::clone(&c.app);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { probe_and_record(&shared, &app, i).await });
            }
        }
        shared.metrics.backends_check_down.set(down as i64);
    }
}

/// The apps with checks in `table`, each backend keeping the time it was due at in `old` (so
/// a table change neither rushes nor delays probes); new ones are due `now`.
fn schedule(table: &pier_routes::RouteTable, old: &[Checked], now: Instant) -> Vec<Checked> {
    let before: HashMap<(&str, std::borrow::Cow<'_, str>), Instant> = old
        .iter()
        .flat_map(|c| {
            c.app
                .backends
                .iter()
                .zip(&c.due)
                .map(|(b, due)| ((c.app.name.as_str(), b.id()), *due))
        })
        .collect();
    table
        .apps()
        .filter(|a| a.settings.health_check.is_some())
        .map(|a| Checked {
            due: a
                .backends
                .iter()
                .map(|b| *before.get(&(a.name.as_str(), b.id())).unwrap_or(&now))
                .collect(),
            app: Arc::clone(a),
        })
        .collect()
}

async fn probe_and_record(shared: &Shared, app: &App, i: usize) {
    let (Some(check), Some(b)) = (&app.settings.health_check, app.backends.get(i)) else {
        return;
    };
    let result = probe(shared, b.addr, b.tls.as_ref(), check).await;
    let m = &shared.metrics;
    m.health_checks
        .with_label_values(&[if result.is_ok() { "pass" } else { "fail" }])
        .inc();
    match b
        .state
        .record_probe(result.is_ok(), check, crate::util::now_ms())
    {
        Some(false) => {
            tracing::warn!(app = %app.name, backend = %b.addr, reason = %result.err().unwrap_or_default(), "backend failed its health check: out of rotation");
        }
        Some(true) => {
            tracing::info!(app = %app.name, backend = %b.addr, "backend passed its health check: back in rotation");
        }
        None => {}
    }
}

/// One probe: `Ok` when it passed, else why not.
async fn probe(
    shared: &Shared,
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    check: &HealthCheck,
) -> Result<(), String> {
    let attempt = async {
        let mut conn = pool::connect(addr, tls, &shared.upstream_tls, check.timeout)
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let Probe::Http { path, expect } = &check.probe else {
            return Ok(());
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pier-health-check\r\nConnection: close\r\n\r\n"
        );
        conn.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        conn.stream
            .flush()
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
            let mut chunk = [0u8; 512];
            match conn.stream.read(&mut chunk).await {
                Ok(0) => return Err("closed before a status line".to_string()),
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let status = status_of(&head).ok_or("no HTTP/1.x status line")?;
        if status == *expect {
            Ok(())
        } else {
            Err(format!("status {status}, expected {expect}"))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        Ok(r) => r,
    }
}

/// The status code of an `HTTP/1.x NNN …` line at the start of `head`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(status_of(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}

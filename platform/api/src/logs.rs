//! An app's log: its instances' output (shipped by runners) and, later, balancers' router lines,
//! read from the app's capped log stream; `tail` streams new lines as they are written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use pier_model::api::LogList;
use pier_model::platform::LogLine;
use tokio::sync::mpsc;

use crate::api::{existing_app, json, ApiState, Reply};
use crate::auth::Caller;
use crate::error::ApiError;

/// Most lines one request returns.
pub const MAX_LINES: usize = 10_000;
/// How long one blocking read of the stream waits before the tail checks its client is there.
const BLOCK: Duration = Duration::from_secs(5);

/// What a request asks for, from its query string.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub n: usize,
    pub tail: bool,
    /// Only this instance's (`web.1`) lines.
    pub process: Option<String>,
    /// Only `app` or `router` lines.
    pub source: Option<String>,
}

impl LogQuery {
    /// Parses `n=100&tail=1&ps=web.1&source=app` (percent-encoded values).
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = LogQuery {
            n: 100,
            tail: false,
            process: None,
            source: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::router::percent_decode(&v.replace('+', " "))?;
            match k {
                "n" => {
                    q.n = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LINES).contains(n))
                        .ok_or_else(|| {
                            ApiError::Unprocessable(format!("n must be 1 to {MAX_LINES}"))
                        })?
                }
                "tail" => q.tail = matches!(v.as_str(), "1" | "true" | ""),
                "ps" if v.chars().count() > 64 => {
                    return Err(ApiError::Unprocessable(
                        "ps is a process (web.1) or process type (web), at most 64 characters"
                            .into(),
                    ))
                }
                "ps" => q.process = Some(v),
                "source" => match v.as_str() {
                    "app" | "router" => q.source = Some(v),
                    _ => return Err(ApiError::Unprocessable("source is app or router".into())),
                },
                other => {
                    return Err(ApiError::Unprocessable(format!(
                        "unknown parameter {other:?}: n, tail, ps, source"
                    )))
                }
            }
        }
        Ok(q)
    }

    fn wants(&self, l: &LogLine) -> bool {
        self.process.as_ref().is_none_or(|p| &l.process == p)
            && self.source.as_ref().is_none_or(|s| &l.source == s)
    }
}

/// The last `q.n` lines that match, oldest first.
async fn recent(state: &ApiState, app: &str, q: &LogQuery) -> Result<Vec<LogLine>, ApiError> {
    let p = crate::platform::platform(state)?;
    let filtered = q.process.is_some() || q.source.is_some();
    let fetch = if filtered { MAX_LINES } else { q.n };
    let mut lines: Vec<LogLine> = p
        .store
        .recent_logs(app, fetch)
        .await?
        .into_iter()
        .filter(|l| q.wants(l))
        .collect();
    let skip = lines.len().saturating_sub(q.n);
    lines.drain(..skip);
    Ok(lines)
}

pub async fn show(state: &ApiState, caller: &Caller, app: &str, q: &LogQuery) -> Reply {
    caller.may_act_on(app)?;
    existing_app(state, app).await?;
    let lines = recent(state, app, q).await?;
    json(StatusCode::OK, &LogList { lines })
}

/// Checks a tail before it starts streaming.
pub async fn tail_allowed(state: &ApiState, caller: &Caller, app: &str) -> Result<(), ApiError> {
    caller.may_act_on(app)?;
    crate::platform::platform(state)?;
    existing_app(state, app).await?;
    Ok(())
}

/// Streams the last lines, then every new one, as NDJSON `LogLine`s, until the client goes.
pub async fn tail(state: Arc<ApiState>, app: String, q: LogQuery, out: mpsc::Sender<Bytes>) {
    let line = |l: &LogLine| {
        let mut t = serde_json::to_string(l).unwrap_or_default();
        t.push('\n');
        Bytes::from(t)
    };
    let Ok(p) = crate::platform::platform(&state) else {
        return;
    };
    let mut after = "$".to_string();
    match recent(&state, &app, &q).await {
        Ok(lines) => {
            for l in &lines {
                if out.send(line(l)).await.is_err() {
                    return;
                }
            }
            // Resume after the newest line of the stream, matching or not.
            if let Ok(newest) = p.store.recent_logs(&app, 1).await {
                if let Some(last) = newest.last() {
                    after.clone_from(&last.id);
                }
            }
        }
        Err(e) => {
            tracing::debug!(app, error = %e, "log tail: no history");
        }
    }
    let mut reader = None;
    loop {
        if out.is_closed() {
            return;
        }
        if reader.is_none() {
            reader = p.store.log_reader().await.ok();
        }
        let Some(r) = reader.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        match p.store.logs_after(r, &app, &after, BLOCK).await {
            Ok(lines) => {
                for l in &lines {
                    after.clone_from(&l.id);
                    if q.wants(l) && out.send(line(l)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // Redis went away: connect again and resume after the last line seen.
                tracing::debug!(app, error = %e, "log tail: read failed");
                reader = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

//! One-off processes (`pier run`): made, listed, stopped, and attached to. The API records a
//! run; the coordinator places it on a runner; the runner runs it. An attached client's
//! WebSocket ([`pier_model::runproto`]) is relayed here to the runner's attach listener, one
//! message at a time each way, so neither side is buffered for without bound.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pier_model::api::{NewRun, RunList, RunView};
use pier_model::platform::{RunSpec, RunState, RUN_PTYPE};
use pier_model::runproto::{self, Status};
use pier_store::runs::CreateRun;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;

use crate::api::{existing_app, json, now_ms, parse_body, ApiState, Reply};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::platform::platform;
use crate::server::Body;

/// Default of [`RunLimits::max_active`]: one-off processes at once per app.
pub const DEFAULT_MAX_RUNS: usize = 5;
/// Default of [`RunLimits::lifetime`]: as Heroku's one-off dynos, a day.
pub const DEFAULT_RUN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// An attached run not placed on a runner within this is given up.
const PLACE_WAIT: Duration = Duration::from_secs(120);
/// A message to a side that does not read for this long ends the relay.
const SEND_TIMEOUT: Duration = Duration::from_secs(300);

/// The operator's limits on one-off processes (`pier api --max-runs`, `--run-lifetime`).
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    pub max_active: usize,
    pub lifetime: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_active: DEFAULT_MAX_RUNS,
            lifetime: DEFAULT_RUN_LIFETIME,
        }
    }
}

fn view(run: &RunState) -> RunView {
    let s = &run.spec;
    let state = if run.exit.is_some() {
        "ended"
    } else if run.stop_ms.is_some() {
        "stopping"
    } else if run.placed.is_some() {
        "running"
    } else {
        "pending"
    };
    RunView {
        app: s.app.clone(),
        name: format!("{RUN_PTYPE}.{}", s.number),
        number: s.number,
        command: s.command.clone(),
        release: s.release,
        detach: !s.attach,
        tty: s.tty,
        by: s.by.clone(),
        state: state.to_string(),
        runner: run.placed.as_ref().map(|p| p.runner.clone()),
        created_ms: s.created_ms,
        deadline_ms: s.deadline_ms,
        exit: run.exit.clone(),
        attach_url: s.attach.then(|| {
            format!(
                "/v1/apps/{}/runs/{}/attach",
                pier_model::client::encode_segment(&s.app),
                s.number
            )
        }),
    }
}

/// `run.7` or `7` → 7.
pub(crate) fn parse_number(run: &str) -> Result<u64, ApiError> {
    let digits = run
        .strip_prefix(RUN_PTYPE)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(run);
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && !digits.starts_with('0') && digits.len() <= 15)
        .ok_or_else(|| ApiError::NotFound(format!("no one-off process {run:?} (run.N)")))
}

/// `POST /v1/apps/{app}/runs`.
pub async fn create(state: &ApiState, caller: &Caller, app: &str, body: &[u8]) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let req: NewRun = parse_body(body)?;
    // The schema's rule: white space is ASCII's (as JSON Schema's clients read it), not Unicode's.
    if req
        .command
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .is_empty()
    {
        return Err(ApiError::Unprocessable("the command is empty".into()));
    }
    if req.command.contains('\0') {
        return Err(ApiError::Unprocessable(
            "the command contains a NUL byte".into(),
        ));
    }
    existing_app(state, app).await?;
    let current = p.store.current(app).await?;
    let release = match current {
        Some(v) => p.store.release(app, v).await?,
        None => None,
    };
    let Some(release) = release.filter(|r| r.slug.is_some()) else {
        return Err(ApiError::Conflict(format!(
            "{app} has nothing deployed yet: deploy it first (pier deploy)"
        )));
    };
    let now = now_ms();
    let lifetime = u64::try_from(p.runs.lifetime.as_millis()).unwrap_or(u64::MAX);
    let attach = !req.detach;
    let spec = RunSpec {
        app: app.to_string(),
        number: 0,
        command: req.command.clone(),
        release: release.version,
        attach,
        tty: attach && req.tty,
        cols: req.cols.unwrap_or(80).clamp(1, 1000),
        rows: req.rows.unwrap_or(24).clamp(1, 1000),
        term: if attach && req.tty {
            req.term.clone().unwrap_or_default()
        } else {
            String::new()
        },
        by: caller.to_string(),
        created_ms: now,
        deadline_ms: now.saturating_add(lifetime),
        secret: if attach {
            crate::auth::random_hex(32)?
        } else {
            String::new()
        },
    };
    let spec = match p.store.create_run(&spec, p.runs.max_active).await? {
        CreateRun::Created(s) => s,
        CreateRun::AtLimit(n) => {
            return Err(ApiError::Conflict(format!(
                "{app} has {n} one-off processes that have not ended, the most allowed \
                 (pier api --max-runs): end one with `pier stop {app} run.N`"
            )))
        }
    };
    // The command line is in the run's record (who ran what); the log says who and which.
    tracing::info!(app, by = %caller, run = spec.number, detach = req.detach, tty = spec.tty, "one-off process requested");
    let run = RunState {
        spec,
        placed: None,
        attached_ms: None,
        stop_ms: None,
        exit: None,
    };
    json(StatusCode::CREATED, &view(&run))
}

/// `GET /v1/apps/{app}/runs`.
pub async fn list(state: &ApiState, caller: &Caller, app: &str) -> Reply {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    existing_app(state, app).await?;
    let runs = p.store.runs(app).await?;
    json(
        StatusCode::OK,
        &RunList {
            runs: runs.iter().map(view).collect(),
        },
    )
}

async fn find(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    run: &str,
) -> Result<RunState, ApiError> {
    caller.may_act_on(app)?;
    let p = platform(state)?;
    let n = parse_number(run)?;
    existing_app(state, app).await?;
    p.store
        .run(app, n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{app} has no {RUN_PTYPE}.{n}")))
}

/// `GET /v1/apps/{app}/runs/{run}`.
pub async fn show(state: &ApiState, caller: &Caller, app: &str, run: &str) -> Reply {
    let r = find(state, caller, app, run).await?;
    json(StatusCode::OK, &view(&r))
}

/// `DELETE /v1/apps/{app}/runs/{run}`: the coordinator takes it from its runner, which ends
/// it (SIGTERM, then SIGKILL after the runner's grace).
pub async fn stop(state: &ApiState, caller: &Caller, app: &str, run: &str) -> Reply {
    let mut r = find(state, caller, app, run).await?;
    if r.exit.is_none() {
        let now = now_ms();
        platform(state)?
            .store
            .stop_run(app, r.spec.number, now)
            .await?;
        r.stop_ms.get_or_insert(now);
        tracing::info!(app, by = %caller, run = r.spec.number, "one-off process stop requested");
    }
    json(StatusCode::ACCEPTED, &view(&r))
}

/// `GET /v1/apps/{app}/runs/{run}/attach`: upgrades to the run's WebSocket.
pub async fn attach(
    state: &Arc<ApiState>,
    caller: &Caller,
    app: &str,
    run: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let r = find(state, caller, app, run).await?;
    let name = format!("{RUN_PTYPE}.{}", r.spec.number);
    if !r.spec.attach {
        return Err(ApiError::Conflict(format!(
            "{name} is detached: its output is in `pier logs {app} --ps {name}`"
        )));
    }
    if let Some(exit) = &r.exit {
        return Err(ApiError::Conflict(format!(
            "{name} has ended: {}",
            exit.reason
        )));
    }
    let accept = websocket_accept(&req)?;
    let store = &platform(state)?.store;
    if !store.attach_run(app, r.spec.number, now_ms()).await? {
        return Err(ApiError::Conflict(format!(
            "a client attached to {name} already (a run attaches once)"
        )));
    }
    tracing::info!(app, by = %caller, run = r.spec.number, "client attached to a one-off process");
    let state = state.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "run attach: the upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws_config()),
        )
        .await;
        relay(&state, r, ws).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(runproto::SUBPROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(runproto::MAX_MESSAGE + 16),
        max_frame_size: Some(runproto::MAX_MESSAGE + 16),
        max_write_buffer_size: 4 * runproto::MAX_MESSAGE,
        ..WebSocketConfig::default()
    }
}

/// Checks the WebSocket upgrade request (RFC 6455 §4.2.1) and answers its accept key.
fn websocket_accept(req: &Request<Incoming>) -> Result<String, ApiError> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::UpgradeRequired(
            "attach with a WebSocket (Connection: Upgrade, Upgrade: websocket); pier run does"
                .into(),
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::UpgradeRequired(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or_else(|| ApiError::BadRequest("Sec-WebSocket-Key is missing or malformed".into()))?;
    Ok(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

type ClientWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Waits for the run's runner, connects to it and relays until either side ends.
async fn relay(state: &ApiState, run: RunState, mut client: ClientWs) {
    let app = run.spec.app.clone();
    let n = run.spec.number;
    let runner = match connect_runner(state, run, &mut client).await {
        Ok(r) => r,
        Err(why) => {
            tracing::info!(app, run = n, reason = %why, "one-off process not attached");
            if let Some(s) = platform(state).ok().map(|p| &p.store) {
                // Nobody will attach to it now: it must not wait for a client.
                let _ = s.stop_run(&app, n, now_ms()).await;
            }
            let _ = client
                .send(Message::Binary(runproto::status(&Status::Error(why))))
                .await;
            let _ = client.close(None).await;
            return;
        }
    };
    let (mut csink, mut cstream) = client.split();
    let (mut rsink, mut rstream) = runner.split();
    let up = async {
        while let Some(Ok(m)) = cstream.next().await {
            match m {
                Message::Binary(b)
                    if matches!(
                        b.first(),
                        Some(&runproto::STDIN | &runproto::RESIZE | &runproto::EOF)
                    ) =>
                {
                    match tokio::time::timeout(SEND_TIMEOUT, rsink.send(Message::Binary(b))).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = rsink.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = rstream.next().await {
            match m {
                Message::Binary(b) => {
                    match tokio::time::timeout(SEND_TIMEOUT, csink.send(Message::Binary(b))).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = csink.close().await;
    };
    tokio::join!(up, down);
    tracing::debug!(app, run = n, "one-off process detached");
}

type RunnerWs = WebSocketStream<tokio::net::TcpStream>;

async fn connect_runner(
    state: &ApiState,
    run: RunState,
    client: &mut ClientWs,
) -> Result<RunnerWs, String> {
    let store = &platform(state).map_err(|e| e.to_string())?.store;
    let (app, n) = (run.spec.app.clone(), run.spec.number);
    let say = |state: &str, runner: Option<String>| {
        Message::Binary(runproto::status(&Status::State {
            state: state.to_string(),
            runner,
        }))
    };
    client
        .send(say("pending", None))
        .await
        .map_err(|e| format!("client gone: {e}"))?;
    let started = tokio::time::Instant::now();
    let placed = loop {
        let now = store
            .run(&app, n)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the run's record is gone")?;
        if let Some(exit) = now.exit {
            return Err(format!("it ended: {}", exit.reason));
        }
        if let Some(p) = now.placed {
            break p;
        }
        if started.elapsed() > PLACE_WAIT {
            return Err(format!(
                "no runner had room for it within {}s (see pier runners)",
                PLACE_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client
        .send(say("starting", Some(placed.runner.clone())))
        .await
        .map_err(|e| format!("client gone: {e}"))?;
    let record = store
        .runner(&placed.runner)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("runner {} is gone", placed.runner))?;
    let exec = record
        .exec
        .ok_or_else(|| format!("runner {} cannot attach clients", placed.runner))?;
    // The runner expects the client from its next tick on; until then it answers 404.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = format!("ws://{exec}/runs/{}", placed.instance)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", run.spec.secret)) {
            h.insert(header::AUTHORIZATION, v);
        }
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(runproto::SUBPROTOCOL),
        );
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(&exec)
                .await
                .map_err(|e| format!("cannot reach runner {} at {exec}: {e}", placed.runner))?;
            let _ = tcp.set_nodelay(true);
            tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config()))
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| format!("runner {} refused the attach: {e}", placed.runner))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("runner {} did not answer", placed.runner))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

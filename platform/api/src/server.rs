//! The HTTP server: accept loop, one task per connection (hyper, HTTP/1.1), request body
//! limits, dispatch through [`crate::router`] to [`crate::api`], JSON responses.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::api::{self, ApiState};
use crate::error::ApiError;
use crate::openapi;
use crate::router::{self, Match, RouteId};
use crate::{addons, backups, body, domains, drains, logs, platform};
use pier_model::api::ErrorBody;

/// Largest request body accepted: app settings with a static page fit well within it.
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time a deploy's upload gets to arrive, whatever `--body-timeout` says.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long in-flight requests get to finish after shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown` completes, then lets open connections finish
/// their request (for at most [`DRAIN_DEADLINE`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually out of file descriptors: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                // pier run's WebSocket (crate::runs).
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every connection task holds a permit: when all are back, all connections are done.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_DEADLINE, limit.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with connections still open");
    }
    Ok(())
}

/// A response body: whole, or streamed (a deploy's build output).
pub type Body = BoxBody<Bytes, Infallible>;

/// Serves one request: never fails, every error becomes a JSON error response.
pub async fn handle(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if crate::ui::is_ui(&path) {
        return crate::ui::serve(&method, &path);
    }
    if crate::git::is_git(&path) {
        return crate::git::serve(state, req, peer).await;
    }
    let resp = match dispatch(state, req, peer).await {
        Ok(Answer::Json(status, Some(body))) => json_response(status, body.to_string()),
        Ok(Answer::Json(status, None)) => empty_response(status),
        Ok(Answer::Raw(resp)) => resp,
        Ok(Answer::Stream(rx)) => {
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            r
        }
        Err(Rejection::WrongMethod(allowed, e)) => {
            let mut r = error_response(&e);
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
        Err(Rejection::Error(e)) => {
            if matches!(e, ApiError::Unavailable(_)) {
                state.registry_failed().await;
            }
            error_response(&e)
        }
    };
    tracing::debug!(%method, path, status = resp.status().as_u16(), "request");
    resp
}

/// What a handler answered: JSON (or nothing), or lines streamed as they come.
enum Answer {
    Json(StatusCode, Option<serde_json::Value>),
    Stream(mpsc::Receiver<Bytes>),
    /// A response made whole by its handler (a WebSocket upgrade).
    Raw(Response<Body>),
}

impl From<(StatusCode, Option<serde_json::Value>)> for Answer {
    fn from((status, body): (StatusCode, Option<serde_json::Value>)) -> Self {
        Answer::Json(status, body)
    }
}

/// A body made of the chunks a task sends; it ends when the task drops its sender.
pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

enum Rejection {
    WrongMethod(Vec<Method>, ApiError),
    Error(ApiError),
}

impl From<ApiError> for Rejection {
    fn from(e: ApiError) -> Self {
        Rejection::Error(e)
    }
}

async fn dispatch(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
) -> Result<Answer, Rejection> {
    let (route, params) = match router::match_route(req.method(), req.uri().path())? {
        Match::Found(r, p) => (r, p),
        Match::WrongMethod(allowed) => {
            let e = ApiError::MethodNotAllowed(format!(
                "{} is not allowed on {}",
                req.method(),
                req.uri().path()
            ));
            return Err(Rejection::WrongMethod(allowed, e));
        }
        Match::NotFound => {
            return Err(ApiError::NotFound(format!("no route for {}", req.uri().path())).into())
        }
    };
    let p = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    match route.id {
        RouteId::Healthz => return Ok(api::healthz(state).await?.into()),
        RouteId::OpenApi => return Ok(Answer::Json(StatusCode::OK, Some(openapi::document()))),
        _ => {}
    }
    if let Some(wait) = state.auth_failures.blocked(peer) {
        return Err(ApiError::TooManyRequests(
            format!("too many failed token attempts from {peer}: try again in {wait} s"),
            wait,
        )
        .into());
    }
    let caller = match state
        .auth
        .caller(
            &state.registry(),
            req.headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, ApiError::Unauthorized(_)) {
                state.auth_failures.failed(peer);
            }
            return Err(e.into());
        }
    };
    if route.id == RouteId::Logs {
        let q = logs::LogQuery::parse(req.uri().query().unwrap_or(""))?;
        if !q.tail {
            return Ok(logs::show(state, &caller, p(0), &q).await?.into());
        }
        logs::tail_allowed(state, &caller, p(0)).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(logs::tail(state.clone(), p(0).to_string(), q, tx));
        return Ok(Answer::Stream(rx));
    }
    if matches!(route.id, RouteId::AppUsage | RouteId::AllUsage) {
        let query = req.uri().query().unwrap_or("");
        return Ok(match route.id {
            RouteId::AppUsage => crate::usage::show_app(state, &caller, p(0), query).await?,
            _ => crate::usage::show_all(state, &caller, query).await?,
        }
        .into());
    }
    if route.id == RouteId::Metrics {
        return Ok(Answer::Raw(crate::metrics::render(state, &caller).await?));
    }
    if route.id == RouteId::AttachRun {
        let resp = crate::runs::attach(state, &caller, p(0), p(1), req).await?;
        return Ok(Answer::Raw(resp));
    }
    if route.id == RouteId::DownloadBackup {
        let resp = crate::backups::download(state, &caller, p(0), p(1)).await?;
        return Ok(Answer::Raw(resp));
    }
    if route.id == RouteId::Deploy {
        // The upload is checked before it is read, and read under its own, larger limit.
        platform::deploy_allowed(state, &caller, p(0)).await?;
        let limit = state.platform.as_ref().map_or(0, |p| p.max_upload) as u64;
        body::check_declared_length(
            req.headers(),
            limit,
            "the upload (pier api --max-upload-mb)",
        )?;
        // An upload is larger than a JSON body: it gets at least UPLOAD_TIMEOUT.
        let deadline = state.body_timeout.max(UPLOAD_TIMEOUT);
        let upload =
            tokio::time::timeout(deadline, platform::receive_upload(req.into_body(), limit))
                .await
                .map_err(|_| {
                    ApiError::Timeout(format!(
                        "the upload did not arrive within {} s",
                        deadline.as_secs()
                    ))
                })??;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(platform::deploy(
            state.clone(),
            caller,
            p(0).to_string(),
            upload,
            tx,
        ));
        return Ok(Answer::Stream(rx));
    }
    body::check_declared_length(req.headers(), MAX_BODY as u64, "the request body")?;
    body::check_json_type(req.headers())?;
    let (method, pattern) = (req.method().clone(), route.pattern);
    let body = body::read(req.into_body(), MAX_BODY, state.body_timeout).await?;
    check_against_contract(pattern, &method, &body)?;
    let reply = match route.id {
        RouteId::Healthz
        | RouteId::OpenApi
        | RouteId::Metrics
        | RouteId::Deploy
        | RouteId::Logs
        | RouteId::AttachRun
        | RouteId::AppUsage
        | RouteId::AllUsage
        | RouteId::DownloadBackup => unreachable_route(),
        RouteId::ListApps => api::list_apps(state, &caller).await,
        RouteId::CreateApp => api::create_app(state, &caller, &body).await,
        RouteId::ShowApp => api::show_app(state, &caller, p(0)).await,
        RouteId::UpdateApp => api::update_app(state, &caller, p(0), &body).await,
        RouteId::DeleteApp => api::delete_app(state, &caller, p(0)).await,
        RouteId::ListDomains => domains::list(state, &caller, p(0)).await,
        RouteId::AddDomain => domains::add(state, &caller, p(0), &body).await,
        RouteId::RemoveDomain => domains::remove(state, &caller, p(0), p(1)).await,
        RouteId::VerifyDomain => domains::verify(state, &caller, p(0), p(1), &body).await,
        RouteId::PutCert => domains::put_cert(state, &caller, p(0), p(1), &body).await,
        RouteId::ShowCert => domains::show_cert(state, &caller, p(0), p(1)).await,
        RouteId::RemoveCert => domains::remove_cert(state, &caller, p(0), p(1)).await,
        RouteId::RenewCert => domains::renew_cert(state, &caller, p(0), p(1)).await,
        RouteId::ListBackends => api::list_backends(state, &caller, p(0)).await,
        RouteId::AddBackend => api::add_backend(state, &caller, p(0), &body).await,
        RouteId::Heartbeat => api::heartbeat(state, &caller, p(0), p(1), &body).await,
        RouteId::RemoveBackend => api::remove_backend(state, &caller, p(0), p(1)).await,
        RouteId::CreateToken => api::create_token(state, &caller, &body).await,
        RouteId::ListReleases => platform::list_releases(state, &caller, p(0)).await,
        RouteId::ShowRelease => platform::show_release(state, &caller, p(0), p(1)).await,
        RouteId::Rollback => platform::rollback(state, &caller, p(0), &body).await,
        RouteId::ShowConfig => platform::show_config(state, &caller, p(0)).await,
        RouteId::UpdateConfig => platform::update_config(state, &caller, p(0), &body).await,
        RouteId::ShowFormation => platform::show_formation(state, &caller, p(0)).await,
        RouteId::Scale => platform::scale(state, &caller, p(0), &body).await,
        RouteId::ListInstances => platform::list_instances(state, &caller, p(0)).await,
        RouteId::Restart => platform::restart(state, &caller, p(0), &body).await,
        RouteId::ListRunners => platform::list_runners(state, &caller).await,
        RouteId::ListBalancers => crate::balancers::list(state, &caller).await,
        RouteId::ListAddons => addons::list(state, &caller, p(0)).await,
        RouteId::Stats => crate::stats::show(state, &caller, p(0)).await,
        RouteId::CreateAddon => addons::create(state, &caller, p(0), &body).await,
        RouteId::DestroyAddon => addons::destroy(state, &caller, p(0), p(1), &body).await,
        RouteId::ListDrains => drains::list(state, &caller, p(0)).await,
        RouteId::AddDrain => drains::add(state, &caller, p(0), &body).await,
        RouteId::RemoveDrain => drains::remove(state, &caller, p(0), p(1)).await,
        RouteId::CreateRun => crate::runs::create(state, &caller, p(0), &body).await,
        RouteId::ListRuns => crate::runs::list(state, &caller, p(0)).await,
        RouteId::ShowRun => crate::runs::show(state, &caller, p(0), p(1)).await,
        RouteId::StopRun => crate::runs::stop(state, &caller, p(0), p(1)).await,
        RouteId::ListBackups => backups::list(state, &caller, p(0)).await,
        RouteId::CaptureBackup => backups::capture(state, &caller, p(0)).await,
        RouteId::ShowBackup => backups::show(state, &caller, p(0), p(1)).await,
        RouteId::DeleteBackup => backups::delete(state, &caller, p(0), p(1)).await,
        RouteId::RestoreBackup => backups::restore(state, &caller, p(0), p(1), &body).await,
        RouteId::ShowBackupSchedule => backups::show_schedule(state, &caller, p(0)).await,
        RouteId::PutBackupSchedule => backups::put_schedule(state, &caller, p(0), &body).await,
        RouteId::DeleteBackupSchedule => backups::delete_schedule(state, &caller, p(0)).await,
    };
    Ok(reply?.into())
}

/// A body the operation takes must be what the OpenAPI document says (its shape and the
/// server's rules, [`crate::contract`]): `422` naming the field otherwise. An optional body
/// left out is not checked.
fn check_against_contract(pattern: &str, method: &Method, body: &[u8]) -> Result<(), ApiError> {
    let Some((schema, required)) = openapi::request_schema(pattern, method) else {
        return Ok(());
    };
    if !required && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value = body::parse_value(body)?;
    if !value.is_object() {
        // Every body the API takes is an object.
        return Err(ApiError::Unprocessable(format!(
            "the body must be a JSON object, not {}",
            body::kind(&value)
        )));
    }
    crate::schema::validate(openapi::cached(), schema, &value, "body")
        .map_err(ApiError::Unprocessable)
}

fn unreachable_route() -> api::Reply {
    Err(ApiError::Internal(
        "route handled before authentication".into(),
    ))
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let (status, code) = e.status_and_code();
    if matches!(e, ApiError::NoCapacity(_)) {
        // A condition of the platform, not a fault of the API: the runners tell why.
        tracing::info!(error = %e, "request refused for now");
    } else if status.is_server_error() {
        tracing::warn!(error = %e, "request failed");
    }
    let body = serde_json::to_string(&ErrorBody {
        error: code.to_string(),
        reason: e.reason().to_string(),
    })
    .unwrap_or_else(|_| format!("{{\"error\":\"{code}\",\"reason\":\"\"}}"));
    let mut r = json_response(status, body);
    if let ApiError::TooManyRequests(_, wait) = e {
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
        // The rest of the body was not read: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pier\""),
        );
    }
    r
}

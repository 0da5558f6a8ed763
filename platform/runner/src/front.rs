//! A web instance's front: when its release declares static directories (`pier.toml`), the
//! runner listens on a second port for the instance, answers static paths itself and passes
//! every other request to the app's own `PORT`. Balancers are sent to the front; the health
//! check still goes to the app.
//!
//! A request's life: accept (a connection slot, one task per connection) → route
//! ([`StaticSite::route`]) → static: respond from memory when the file was seen before and is
//! small, else from the files off the async threads (large bodies streamed); app: forward on a kept-alive connection to the app (the request and the answer
//! streamed, every header kept but the hop-by-hop ones), an `Upgrade` (WebSocket) tunnelled both
//! ways once the app answers `101`. Dropping the [`Front`] closes the port and every connection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper_util::rt::TokioIo;
use pier_slug::manifest::Manifest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::statics::{Reply, ReplyBody, Route, StaticSite};

/// Connections one front serves at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 2048;
/// Idle connections to the app kept for the next requests.
const MAX_IDLE_UPSTREAM: usize = 32;
/// An idle connection to the app older than this is closed rather than reused (the app may
/// have closed it already; and a threaded app keeps a thread per connection).
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);
/// Chunks a large static file is sent in.
const CHUNK: usize = 64 * 1024;

/// Why a front was not started.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// `pier.toml` cannot be used (the build checks it, so only an older or damaged slug).
    #[error("{0}")]
    Manifest(String),
    #[error("cannot listen for static files on {ip}: {source}")]
    Bind { ip: IpAddr, source: std::io::Error },
}

/// A running front; dropping it closes its port and its connections.
#[derive(Debug)]
pub struct Front {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    /// The front of a web instance of the release unpacked at `slug_dir` whose app listens on
    /// `app`: `None` when the release declares no static directory. It listens on a free port
    /// of `ip`. With `world_readable_only`, files others cannot read are not served.
    pub async fn for_release(
        slug_dir: &Path,
        ip: IpAddr,
        app: SocketAddr,
        world_readable_only: bool,
    ) -> Result<Option<Front>, FrontError> {
        let dir = slug_dir.to_path_buf();
        let site = tokio::task::spawn_blocking(move || -> Result<Option<StaticSite>, String> {
            match Manifest::read(&dir).map_err(|e| e.to_string())? {
                Some(m) if !m.statics.is_empty() => {
                    StaticSite::new(&dir, &m, world_readable_only).map(Some)
                }
                _ => Ok(None),
            }
        })
        .await
        .map_err(|e| FrontError::Manifest(format!("reading pier.toml: {e}")))?
        .map_err(FrontError::Manifest)?;
        match site {
            Some(site) => Front::start(site, ip, app).await.map(Some),
            None => Ok(None),
        }
    }

    /// Serves `site` on a free port of `ip`, passing the rest to `app`.
    pub async fn start(site: StaticSite, ip: IpAddr, app: SocketAddr) -> Result<Front, FrontError> {
        raise_open_files_limit();
        let listener = TcpListener::bind((ip, 0))
            .await
            .map_err(|source| FrontError::Bind { ip, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| FrontError::Bind { ip, source })?;
        let shared = Arc::new(Shared {
            site,
            upstream: Upstream {
                addr: app,
                idle: Arc::new(Mutex::new(Vec::new())),
            },
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(Front { addr, task })
    }

    /// Where balancers send the instance's requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Each front holds two descriptors per proxied connection: the runner takes the hard limit
/// of open files as its own, once.
fn raise_open_files_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::debug!(error = %e, "open files limit not raised");
                }
            }
        }
    });
}

struct Shared {
    site: StaticSite,
    upstream: Upstream,
}

/// Accepts connections, one task each, at most [`MAX_CONNECTIONS`] at once; the tasks go when
/// this future is dropped (the front's task aborted).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    let mut prune = tokio::time::interval(UPSTREAM_IDLE / 3);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = prune.tick() => {
                shared.upstream.prune();
                continue;
            }
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    serve_connection(stream, shared).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors, most likely: wait for some to be freed.
                tracing::warn!(error = %e, retry_in = ?backoff, "front: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let conn = server::Builder::new()
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "front: connection ended with an error");
    }
}

/// Routes one request: a static file, a refusal, or the app.
async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<FrontBody> {
    match shared.site.route(req.uri().path()) {
        Route::App => forward(shared, req).await,
        Route::Refused(status) => reply(crate::statics::refusal(status)),
        Route::Static(target) => {
            // A file seen before and small: from memory, on this thread.
            if let Some(r) = shared
                .site
                .respond_from_memory(&target, req.method(), req.headers())
            {
                return reply(r);
            }
            let (parts, _body) = req.into_parts();
            let s = shared.clone();
            let answer = tokio::task::spawn_blocking(move || {
                s.site
                    .respond(&target, &parts.method, &parts.headers, parts.uri.query())
            })
            .await;
            match answer {
                Ok(r) => reply(r),
                Err(_) => reply(crate::statics::refusal(StatusCode::INTERNAL_SERVER_ERROR)),
            }
        }
    }
}

fn reply(r: Reply) -> Response<FrontBody> {
    let body = match r.body {
        ReplyBody::Empty => FrontBody::Empty,
        ReplyBody::Bytes(b) => FrontBody::Bytes(Some(b)),
        ReplyBody::File { file, len, .. } => FrontBody::File(FileStream {
            // The file is positioned at the range's start already.
            file: tokio::fs::File::from_std(file),
            left: len,
        }),
    };
    let mut res = Response::new(body);
    *res.status_mut() = r.status;
    *res.headers_mut() = r.headers;
    res
}

// ------------------------------------------------------------------ forwarding to the app

/// Why a request could not be passed to the app; every case is the app's fault and answered
/// `502` (the balancer counts it as the backend's answer).
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("cannot connect to the app: {0}")]
    Connect(std::io::Error),
    #[error("the app's connection failed: {0}")]
    Http(hyper::Error),
}

impl ForwardError {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_GATEWAY
    }
}

async fn forward(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<FrontBody> {
    let upgrade = is_upgrade(req.headers());
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    // Origin form to the app, as a balancer sends it.
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = pq.as_str().parse().unwrap_or_else(|_| req.uri().clone());
    }
    let req = req.map(UpstreamBody::Incoming);
    match shared.upstream.send(req).await {
        Ok(mut res) => {
            match client_side {
                Some(client_side) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let app_side = hyper::upgrade::on(&mut res);
                    tokio::spawn(async move {
                        let (Ok(c), Ok(a)) = tokio::join!(client_side, app_side) else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(a),
                        )
                        .await;
                    });
                }
                _ => strip_hop_by_hop(res.headers_mut(), false),
            }
            res.map(FrontBody::App)
        }
        Err(e) => {
            tracing::debug!(error = %e, app = %shared.upstream.addr, "front: request not passed to the app");
            let mut res = Response::new(FrontBody::Bytes(Some(Bytes::from_static(
                b"502 Bad Gateway: the app did not answer\n",
            ))));
            *res.status_mut() = e.status();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            res
        }
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes the headers about this one connection (RFC 9110 §7.6.1), keeping `Connection` and
/// `Upgrade` of an upgrade. Framing (`Content-Length`, `Transfer-Encoding`) stays as it came.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| {
            !(upgrade && n == header::UPGRADE)
                && n != header::CONTENT_LENGTH
                && n != header::TRANSFER_ENCODING
        })
        .collect();
    for n in listed {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

type IdleConnections = Vec<(client::SendRequest<UpstreamBody>, Instant)>;

/// Kept-alive connections to the app.
struct Upstream {
    addr: SocketAddr,
    idle: Arc<Mutex<IdleConnections>>,
}

impl Upstream {
    /// Sends `req` on an idle connection, else a new one. A request a reused connection could
    /// not take (the app had closed it) is sent again on a new one; so is one without a body
    /// whose reused connection failed before any answer.
    async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        while let Some(mut sender) = self.checkout() {
            let replay = replayable(&req);
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin_when_idle(sender, &res);
                    return Ok(res);
                }
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(back), _) => req = back,
                    (None, Some(again)) => req = again,
                    (None, None) => return Err(ForwardError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let res = sender.send_request(req).await.map_err(ForwardError::Http)?;
        self.checkin_when_idle(sender, &res);
        Ok(res)
    }

    /// Closes idle connections to the app that are too old to reuse.
    fn prune(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < UPSTREAM_IDLE);
        }
    }

    fn checkout(&self) -> Option<client::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && s.is_ready() && since.elapsed() < UPSTREAM_IDLE {
                return Some(s);
            }
        }
        None
    }

    /// Puts the connection back once the answer has been read whole (not after an upgrade:
    /// the connection is the tunnel's).
    fn checkin_when_idle<B>(
        &self,
        mut sender: client::SendRequest<UpstreamBody>,
        res: &Response<B>,
    ) {
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                if let Ok(mut idle) = idle.lock() {
                    if idle.len() < MAX_IDLE_UPSTREAM {
                        idle.push((sender, Instant::now()));
                    }
                }
            }
        });
    }

    async fn connect(&self) -> Result<client::SendRequest<UpstreamBody>, ForwardError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(ForwardError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = client::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ForwardError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "front: connection to the app ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A copy of a request without a body, to send again when a reused connection fails before
/// answering (its body cannot be replayed otherwise).
fn replayable(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if !req.body().is_end_stream()
        || !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT
        )
    {
        return None;
    }
    let mut again = Request::new(UpstreamBody::Empty);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

// ------------------------------------------------------------------ bodies

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to the app.
enum UpstreamBody {
    Incoming(Incoming),
    Empty,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Incoming(b) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Incoming(b) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An answer's body: a static file's (whole, or streamed) or the app's.
pub enum FrontBody {
    Empty,
    Bytes(Option<Bytes>),
    File(FileStream),
    App(Incoming),
}

/// The rest of a large static file, read in [`CHUNK`]s.
pub struct FileStream {
    file: tokio::fs::File,
    left: u64,
}

impl Body for FrontBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FrontBody::Empty => Poll::Ready(None),
            FrontBody::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FrontBody::App(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            FrontBody::File(f) => {
                if f.left == 0 {
                    return Poll::Ready(None);
                }
                let want = usize::try_from(f.left).unwrap_or(CHUNK).min(CHUNK);
                let mut buf = BytesMut::zeroed(want);
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                match tokio::io::AsyncRead::poll_read(Pin::new(&mut f.file), cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            // Shorter than it was: end the body early (the client sees it cut).
                            f.left = 0;
                            return Poll::Ready(Some(Err("static file shrank".into())));
                        }
                        f.left -= n as u64;
                        buf.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FrontBody::Empty => true,
            FrontBody::Bytes(b) => b.is_none(),
            FrontBody::File(f) => f.left == 0,
            FrontBody::App(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FrontBody::Empty => SizeHint::with_exact(0),
            FrontBody::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            FrontBody::File(f) => SizeHint::with_exact(f.left),
            FrontBody::App(b) => b.size_hint(),
        }
    }
}

//! The apps' git repositories over HTTP (`/git/APP.git`): `git push` deploys, `git clone` and
//! `git fetch` read; both with the app's token as the password.
//!
//! The protocol is spoken by the real `git http-backend`, run as a CGI program
//! ([`backend`]); this module decides who may do what before it runs. A push is built by the
//! repository's `pre-receive` hook, which is the `pier` binary itself (`pier git-hook
//! pre-receive`): it packs the pushed commit with `git archive` and deploys it through this
//! API's own deploy route, as `pier deploy` does, so the build is the same and its lines reach
//! the pusher as `remote:` lines. A failed build or rollout declines the push: no ref moves.
//!
//! A request, top to bottom:
//! 1. [`Target::parse`]: which app, which service (`git-upload-pack` reads, `git-receive-pack`
//!    writes) and which step (the ref advertisement or the exchange); anything else is a 404.
//! 2. Credentials: HTTP Basic (any user name, the token as the password) or a bearer token. A
//!    401 with `WWW-Authenticate: Basic` makes git ask for them. Bad tokens count towards
//!    `--auth-failures` like the JSON API's.
//! 3. Rights, as on the app's other routes: the operator or the app's owner (403 otherwise),
//!    and an app that exists (404).
//! 4. [`repo::Repos::ensure`]: the repository, made on first use, with the platform's hooks.
//! 5. [`backend::run`]: a push first takes the app's lock, so pushes to one app run one after
//!    the other; then `git http-backend` runs with the request streamed to it and its answer
//!    streamed back.
//!
//! Modules: [`repo`] (repositories, their hooks and push locks), [`backend`] (the CGI
//! program), [`pkt`] (the few pkt-lines the server reads or writes itself).

pub mod backend;
pub mod pkt;
pub mod repo;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::api::{existing_app, ApiState};
use crate::error::ApiError;
use crate::server::Body;

/// How long a push waits for its release to run before it is accepted anyway (as `pier
/// deploy --wait`).
pub const DEFAULT_ROLLOUT_WAIT: Duration = Duration::from_secs(300);
/// Longest a Basic `Authorization` value is read.
const MAX_CREDENTIALS: usize = 4096;

/// What the git routes need beside the registry.
pub struct GitState {
    /// Where the repositories are kept.
    pub repos: repo::Repos,
    /// The `git` program (`git http-backend`, `git init`).
    pub git: PathBuf,
    /// The `pier` binary the repositories' hooks run.
    pub hook_exe: PathBuf,
    /// This API's URL as the hooks reach it (loopback when it listens on every address).
    pub api_url: String,
    /// How long a push waits for its release to run.
    pub rollout_wait: Duration,
    /// Longest a git request may take, from its head to the end of its answer: a push's
    /// build and rollout included.
    pub timeout: Duration,
    /// Largest request body (a push's pack), bytes.
    pub max_request: u64,
}

impl GitState {
    /// Repositories in `repos`, hooks running `hook_exe` against the API at `api_url`; a build
    /// may take `build_timeout`, an upload `max_request` bytes.
    pub fn new(
        repos: repo::Repos,
        hook_exe: PathBuf,
        api_url: String,
        build_timeout: Duration,
        max_request: u64,
    ) -> Self {
        GitState {
            repos,
            git: PathBuf::from("git"),
            hook_exe,
            api_url,
            rollout_wait: DEFAULT_ROLLOUT_WAIT,
            // The pack's upload and the archive's, the build, the rollout, and slack.
            timeout: build_timeout + DEFAULT_ROLLOUT_WAIT + Duration::from_secs(600),
            max_request,
        }
    }

    /// Removes a deleted app's repository, so an app made later under the same name starts
    /// empty (its code is not handed to a new owner). Failures are logged.
    pub async fn forget(&self, app: &str) {
        let repos = self.repos.clone();
        let name = app.to_string();
        match tokio::task::spawn_blocking(move || repos.remove(&name)).await {
            Ok(Ok(true)) => tracing::info!(app, "git repository removed"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(app, error = %e, "cannot remove the git repository"),
            Err(e) => tracing::warn!(app, error = %e, "cannot remove the git repository"),
        }
    }
}

/// The URL the hooks reach an API listening on `addr` at: the address itself, or loopback
/// when it listens on every address.
pub fn hook_api_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Whether `path` is the git server's.
pub fn is_git(path: &str) -> bool {
    path == "/git" || path.starts_with("/git/")
}

/// Which side of the protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Clone and fetch.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    fn from_name(name: &str) -> Option<Service> {
        match name {
            "git-upload-pack" => Some(Service::UploadPack),
            "git-receive-pack" => Some(Service::ReceivePack),
            _ => None,
        }
    }
}

/// Which step of the smart HTTP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `GET info/refs?service=...`: the refs, and what the server can do.
    Refs,
    /// `POST git-upload-pack` or `POST git-receive-pack`: the exchange itself.
    Exchange,
}

/// What a request under `/git/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub app: String,
    pub service: Service,
    pub step: Step,
}

impl Target {
    /// `/git/APP.git/info/refs?service=S` (GET) or `/git/APP.git/S` (POST), `.git` optional;
    /// 404 for anything else (the dumb protocol's files included), 405 for another method.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Target, ApiError> {
        let not_found = || {
            ApiError::NotFound(format!(
                "no git route {path}: repositories are /git/APP.git, spoken to by git (smart HTTP)"
            ))
        };
        let rest = path.strip_prefix("/git/").ok_or_else(not_found)?;
        let (repo, tail) = rest.split_once('/').ok_or_else(not_found)?;
        let app = repo.strip_suffix(".git").unwrap_or(repo);
        pier_routes::file::check_app_name(app).map_err(|_| not_found())?;
        let (service, step, allowed) = match tail {
            "info/refs" => {
                let service = query
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("service="))
                    .and_then(Service::from_name)
                    .ok_or_else(|| {
                        ApiError::NotFound(format!(
                            "{path} is served to git's smart HTTP protocol only \
                             (?service=git-upload-pack or git-receive-pack)"
                        ))
                    })?;
                (service, Step::Refs, Method::GET)
            }
            "git-upload-pack" => (Service::UploadPack, Step::Exchange, Method::POST),
            "git-receive-pack" => (Service::ReceivePack, Step::Exchange, Method::POST),
            _ => return Err(not_found()),
        };
        if *method != allowed {
            return Err(ApiError::MethodNotAllowed(format!(
                "{method} is not allowed on {path} (only {allowed})"
            )));
        }
        Ok(Target {
            app: app.to_string(),
            service,
            step,
        })
    }

    /// The path `git http-backend` is given under the repositories' root.
    fn path_info(&self) -> String {
        match self.step {
            Step::Refs => format!("/{}.git/info/refs", self.app),
            Step::Exchange => format!("/{}.git/{}", self.app, self.service.name()),
        }
    }
}

/// The token a git client sent: the password of HTTP Basic credentials (the user name when the
/// password is empty, as GitHub takes tokens), or a bearer token. `Ok(None)`: none was sent.
pub fn token_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::Unauthorized(
            "Authorization must be Basic credentials (the token as the password) or Bearer".into(),
        )
    };
    let raw = raw.to_str().map_err(|_| bad())?;
    let (scheme, value) = raw.split_once(' ').ok_or_else(bad)?;
    let value = value.trim_matches(' ');
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value)
            .filter(|t| !t.is_empty() && !t.contains(' '))
            .map(|t| Some(t.to_string()))
            .ok_or_else(bad);
    }
    if !scheme.eq_ignore_ascii_case("basic") || value.len() > MAX_CREDENTIALS {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    let token = if password.is_empty() { user } else { password };
    if token.is_empty() {
        return Err(bad());
    }
    Ok(Some(token.to_string()))
}

/// The environment every `git` the server runs starts from: nothing of the API's own but
/// `PATH` and `TMPDIR`, and no system or user git config (the repositories' own is the
/// platform's).
pub(crate) fn base_env() -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        (
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
    ];
    if let Some(tmp) = std::env::var_os("TMPDIR") {
        env.push(("TMPDIR", tmp));
    }
    env
}

/// Serves one request under `/git/`: never fails, every refusal is a short text git shows.
pub async fn serve(state: &Arc<ApiState>, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match admit(state, req, peer).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ApiError::Unavailable(_)) {
                state.registry_failed().await;
            }
            refusal(&e, &path)
        }
    };
    tracing::debug!(%method, path, status = resp.status().as_u16(), "git request");
    resp
}

/// Checks the request (steps 1 to 4 above), then hands it to `git http-backend`.
async fn admit(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, ApiError> {
    let git = state.git.as_ref().ok_or_else(|| {
        ApiError::NotFound("this API keeps no git repositories (pier api --git-dir)".into())
    })?;
    let target = Target::parse(req.method(), req.uri().path(), req.uri().query())?;
    if let Some(wait) = state.auth_failures.blocked(peer) {
        return Err(ApiError::TooManyRequests(
            format!("too many failed token attempts from {peer}: try again in {wait} s"),
            wait,
        ));
    }
    let token = match token_of(req.headers()) {
        Ok(Some(t)) => t,
        // Git asks without credentials first: that is no failed attempt.
        Ok(None) => {
            return Err(ApiError::Unauthorized(
                "give the app's token as the password (`pier git remote APP` sets git up)".into(),
            ))
        }
        Err(e) => {
            state.auth_failures.failed(peer);
            return Err(e);
        }
    };
    let caller = match state.auth.caller_of_token(&state.registry(), &token).await {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, ApiError::Unauthorized(_)) {
                state.auth_failures.failed(peer);
            }
            return Err(e);
        }
    };
    caller.may_act_on(&target.app)?;
    existing_app(state, &target.app).await?;
    if target.service == Service::ReceivePack {
        // A push deploys: without the platform there is nothing to deploy to.
        crate::platform::platform(state)?;
    }
    crate::body::check_declared_length(
        req.headers(),
        git.max_request,
        "the request (pier api --max-upload-mb)",
    )?;
    let repos = git.repos.clone();
    let (program, app) = (git.git.clone(), target.app.clone());
    let repo = tokio::task::spawn_blocking(move || repos.ensure(&program, &app))
        .await
        .map_err(|e| ApiError::Internal(format!("repository task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("repository of {:?}: {e}", target.app)))?;
    let push = target.service == Service::ReceivePack;
    let mut env = base_env();
    env.extend([
        ("GIT_PROJECT_ROOT", git.repos.root().as_os_str().to_owned()),
        ("GIT_HTTP_EXPORT_ALL", "1".into()),
        ("PATH_INFO", target.path_info().into()),
        ("REMOTE_USER", caller.to_string().into()),
        ("REMOTE_ADDR", peer.to_string().into()),
    ]);
    if push {
        // What the hooks need to deploy through this API as the pusher.
        env.extend([
            ("PIER_GIT_HOOK", git.hook_exe.as_os_str().to_owned()),
            ("PIER_GIT_APP", target.app.clone().into()),
            ("PIER_API_URL", git.api_url.clone().into()),
            ("PIER_TOKEN", token.into()),
            (
                "PIER_GIT_WAIT",
                git.rollout_wait.as_secs().to_string().into(),
            ),
        ]);
    }
    let job = backend::Job {
        git: git.git.clone(),
        root: git.repos.root().to_path_buf(),
        app: target.app.clone(),
        caller: caller.to_string(),
        lock: (push && target.step == Step::Exchange).then(|| git.repos.push_lock(&repo)),
        env,
        deadline: tokio::time::Instant::now() + git.timeout,
        first_line_within: state.body_timeout,
        max_request: git.max_request,
    };
    Ok(backend::run(job, req).await)
}

/// A short text answer git shows the user (`remote: ...` on errors it reports).
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to a refused request: its status and reason as text, with what the status needs.
fn refusal(e: &ApiError, path: &str) -> Response<Body> {
    let (status, _) = e.status_and_code();
    if status.is_server_error() {
        tracing::warn!(error = %e, path, "git request failed");
    }
    let mut r = text_response(status, e.reason());
    let headers = r.headers_mut();
    match e {
        ApiError::Unauthorized(_) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pier\""),
            );
        }
        ApiError::TooManyRequests(_, wait) => {
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        ApiError::MethodNotAllowed(_) => {
            let allow = if path.ends_with("/info/refs") {
                "GET"
            } else {
                "POST"
            };
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::TooLarge(_) => {
            // The body was not read: the connection cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse(
            &Method::GET,
            "/git/blog.git/info/refs",
            Some("service=git-receive-pack"),
        )
        .unwrap();
        assert_eq!(
            t,
            Target {
                app: "blog".into(),
                service: Service::ReceivePack,
                step: Step::Refs
            }
        );
        assert_eq!(t.path_info(), "/blog.git/info/refs");
        let t = Target::parse(&Method::POST, "/git/blog/git-upload-pack", None).unwrap();
        assert_eq!((t.service, t.step), (Service::UploadPack, Step::Exchange));
        assert_eq!(t.path_info(), "/blog.git/git-upload-pack");
        for (method, path, query) in [
            (Method::GET, "/git/blog.git/info/refs", None),
            (Method::GET, "/git/blog.git/HEAD", None),
            (Method::GET, "/git/blog.git/objects/info/packs", None),
            (
                Method::GET,
                "/git/Blog.git/info/refs",
                Some("service=git-upload-pack"),
            ),
            (
                Method::GET,
                "/git/../x.git/info/refs",
                Some("service=git-upload-pack"),
            ),
            (Method::POST, "/git/blog.git/git-upload-archive", None),
            (Method::POST, "/git/blog.git", None),
            (Method::GET, "/git", None),
        ] {
            let e = Target::parse(&method, path, query).unwrap_err();
            assert!(matches!(e, ApiError::NotFound(_)), "{path}: {e}");
        }
        let e = Target::parse(&Method::GET, "/git/blog.git/git-receive-pack", None).unwrap_err();
        assert!(matches!(e, ApiError::MethodNotAllowed(_)), "{e}");
    }

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn tokens_from_basic_or_bearer() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(token_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            token_of(&auth(&basic("pier:pier_abc"))).unwrap().as_deref(),
            Some("pier_abc")
        );
        assert_eq!(
            token_of(&auth(&basic("pier_abc:"))).unwrap().as_deref(),
            Some("pier_abc")
        );
        assert_eq!(
            token_of(&auth("bearer pier_abc")).unwrap().as_deref(),
            Some("pier_abc")
        );
        for bad in [
            "Basic !!!",
            "Basic",
            "Digest x",
            &basic("nocolon"),
            &basic(":"),
        ] {
            assert!(token_of(&auth(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn hooks_reach_loopback_when_listening_everywhere() {
        assert_eq!(
            hook_api_url("0.0.0.0:7070".parse().unwrap()),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            hook_api_url("[::]:7070".parse().unwrap()),
            "http://[::1]:7070"
        );
        assert_eq!(
            hook_api_url("10.0.0.5:7070".parse().unwrap()),
            "http://10.0.0.5:7070"
        );
    }
}

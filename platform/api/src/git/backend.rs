//! `git http-backend`, run as a CGI program for one request.
//!
//! A request's life:
//! 1. a push's first pkt-line is read ([`super::pkt`]): a push that updates refs takes the
//!    app's lock, and while another push holds it, says so as a `remote:` line when the
//!    client takes progress messages;
//! 2. `git http-backend` starts in a process group of its own, with the CGI variables and the
//!    hooks' environment ([`super::admit`] made it);
//! 3. the request body is streamed to its stdin (at most `--max-upload-mb`; chunked bodies
//!    too), while its stdout is read: the CGI header block becomes the response head, the rest
//!    is streamed as the body;
//! 4. it runs to its end even when the client goes away (a push half done would leave a
//!    release without its ref); past the request's deadline its whole process group is
//!    killed. The lock is released when it has exited, ref update included.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::pkt::{self, FirstLine};
use super::repo::{Held, PushLock};
use crate::error::ApiError;
use crate::server::{Body, ChannelBody};

/// Largest CGI header block read from `git http-backend`.
const MAX_HEAD: usize = 16 << 10;
/// Error output kept for the log.
const MAX_STDERR: usize = 8 << 10;
/// How long the rest of a request body is fed once `git http-backend` has exited.
const PUMP_GRACE: Duration = Duration::from_secs(1);
/// Pieces of the answer buffered for a slow client.
const BUFFERED: usize = 16;
/// The CGI headers passed on to the client; the others are the server's.
const PASSED: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
];

/// One request for `git http-backend`, checked and ready.
pub struct Job {
    pub git: PathBuf,
    /// The repositories' root (`GIT_PROJECT_ROOT`, and the working directory).
    pub root: PathBuf,
    pub app: String,
    /// Who asks (`operator`, `owner:<app>`), for the log.
    pub caller: String,
    /// A push's lock (`None`: the request changes nothing).
    pub lock: Option<PushLock>,
    /// The environment: the CGI variables of the target and caller, the hooks' variables.
    pub env: Vec<(&'static str, OsString)>,
    /// When the whole request must be done by.
    pub deadline: Instant,
    /// How long a push's first pkt-line may take to arrive.
    pub first_line_within: Duration,
    /// Largest request body, bytes.
    pub max_request: u64,
}

/// Runs `job` for `req`: answers as soon as `git http-backend` has written its header block
/// (or as soon as a push starts waiting for its lock), the rest streamed.
pub async fn run(mut job: Job, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    job.env
        .push(("REQUEST_METHOD", parts.method.as_str().into()));
    job.env
        .push(("QUERY_STRING", parts.uri.query().unwrap_or_default().into()));
    for (name, var) in [
        (header::CONTENT_TYPE, "CONTENT_TYPE"),
        (header::CONTENT_LENGTH, "CONTENT_LENGTH"),
        (header::CONTENT_ENCODING, "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            job.env.push((var, v.into()));
        }
    }
    // Protocol v2 (`version=2`): passed on when it is a short printable value.
    if let Some(v) = parts
        .headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
    {
        job.env.push(("HTTP_GIT_PROTOCOL", v.into()));
        job.env.push(("GIT_PROTOCOL", v.into()));
    }
    let compressed = parts.headers.contains_key(header::CONTENT_ENCODING);
    let (head_tx, head_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(BUFFERED);
    tokio::spawn(serve(job, body, compressed, head_tx, tx));
    match head_rx.await {
        Ok(head) => head.map(|()| ChannelBody(rx).boxed()),
        Err(_) => super::text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the git request ended without an answer",
        ),
    }
}

/// Where the answer goes: its head once, then its body; a client that went away stops
/// nothing.
struct Answer {
    head: Option<oneshot::Sender<Response<()>>>,
    body: mpsc::Sender<Bytes>,
    open: bool,
}

impl Answer {
    fn head(&mut self, head: Response<()>) {
        if let Some(tx) = self.head.take() {
            let _ = tx.send(head);
        }
    }

    async fn send(&mut self, data: Bytes) {
        if self.open && self.body.send(data).await.is_err() {
            self.open = false;
        }
    }

    /// A refusal before `git http-backend` answered; once the head is sent, only the log
    /// sees it.
    async fn refuse(&mut self, e: &ApiError) {
        if self.head.is_none() {
            return;
        }
        let (status, _) = e.status_and_code();
        self.head(plain_head(status));
        self.send(Bytes::from(format!("{}\n", e.reason()))).await;
    }
}

fn plain_head(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The head `git http-backend` gives a push's result, for an answer that starts before it
/// runs.
fn push_head() -> Response<()> {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-receive-pack-result"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// The process group of a running `git http-backend` (its `receive-pack` and hooks too):
/// killed whole if dropped before the backend was reaped (a deadline passed).
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

async fn serve(
    job: Job,
    body: Incoming,
    compressed: bool,
    head: oneshot::Sender<Response<()>>,
    body_tx: mpsc::Sender<Bytes>,
) {
    let mut answer = Answer {
        head: Some(head),
        body: body_tx,
        open: true,
    };
    let mut held = None;
    let mut group = Group(None);
    let app = job.app.clone();
    let result = tokio::time::timeout_at(
        job.deadline,
        serve_within(&job, body, compressed, &mut answer, &mut held, &mut group),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::Timeout(format!(
            "the git request of {app:?} passed its deadline and was stopped"
        )))
    });
    // A push past its deadline is killed before its lock lets the next one in.
    drop(group);
    drop(held);
    if let Err(e) = result {
        tracing::warn!(app, error = %e, "git request failed");
        answer.refuse(&e).await;
    }
}

async fn serve_within(
    job: &Job,
    mut body: Incoming,
    compressed: bool,
    answer: &mut Answer,
    held: &mut Option<Held>,
    group: &mut Group,
) -> Result<(), ApiError> {
    let mut prefix = Vec::new();
    if let Some(lock) = &job.lock {
        let first = if compressed {
            FirstLine::Unknown
        } else {
            tokio::time::timeout(
                job.first_line_within,
                pkt::read_first(&mut body, &mut prefix),
            )
            .await
            .map_err(|_| {
                ApiError::Timeout(format!(
                    "the push did not start within {} s",
                    job.first_line_within.as_secs()
                ))
            })??
        };
        if first != FirstLine::Flush {
            tracing::info!(app = job.app, by = job.caller, "git push");
            let lock_held = match lock.try_acquire() {
                Ok(Some(h)) => Ok(h),
                Ok(None) => {
                    if first == (FirstLine::Updates { sideband: true }) {
                        answer.head(push_head());
                        let text =
                            format!("-----> Waiting for another push to {} to finish", job.app);
                        answer.send(pkt::progress(&text)).await;
                    }
                    tracing::info!(app = job.app, "git push waits for another");
                    lock.acquire().await
                }
                Err(e) => Err(e),
            }
            .map_err(|e| ApiError::Internal(format!("cannot lock the repository: {e}")))?;
            *held = Some(lock_held);
        }
    }
    let mut child = Command::new(&job.git)
        .arg("http-backend")
        .current_dir(&job.root)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            ApiError::Internal(format!(
                "cannot run {} http-backend: {e} (is git installed?)",
                job.git.display()
            ))
        })?;
    group.0 = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let (Some(stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ApiError::Internal("git http-backend without pipes".into()));
    };
    let mut pump = tokio::spawn(feed(body, prefix, stdin, job.max_request));
    let errors = tokio::spawn(keep_some(stderr, MAX_STDERR));
    let (head, rest) = read_head(&mut stdout).await?;
    if answer.head.is_some() {
        answer.head(head);
    } else if head.status() != StatusCode::OK {
        // The answer began while the push waited for its lock: it can only go on.
        tracing::warn!(app = job.app, status = %head.status(), "git http-backend refused a push that had waited");
    }
    if !rest.is_empty() {
        answer.send(Bytes::from(rest)).await;
    }
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot read git http-backend: {e}")))?;
        if n == 0 {
            break;
        }
        answer
            .send(Bytes::copy_from_slice(buf.get(..n).unwrap_or_default()))
            .await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot wait for git http-backend: {e}")))?;
    group.0 = None;
    // Done with a body git stopped reading early, unless the client stalls: then it is
    // dropped rather than keeping the push's lock.
    let fed = match tokio::time::timeout(PUMP_GRACE, &mut pump).await {
        Ok(fed) => fed.unwrap_or(Ok(0)),
        Err(_) => {
            pump.abort();
            Err(ApiError::Timeout(
                "git answered before the request's body ended".into(),
            ))
        }
    };
    let errors = errors.await.unwrap_or_default();
    let errors = String::from_utf8_lossy(&errors);
    match fed {
        Ok(bytes) => tracing::debug!(app = job.app, bytes, %status, "git http-backend done"),
        Err(e) => tracing::info!(app = job.app, error = %e, "git request body cut short"),
    }
    if !status.success() {
        tracing::warn!(app = job.app, %status, stderr = %errors.trim(), "git http-backend failed");
    }
    Ok(())
}

/// Streams the request body (after `prefix`, read already) to `stdin`, closing it at the end.
/// Stops at `limit` bytes: `git` then sees a cut pack and refuses it.
async fn feed(
    mut body: Incoming,
    prefix: Vec<u8>,
    mut stdin: ChildStdin,
    limit: u64,
) -> Result<u64, ApiError> {
    let broken = |e: std::io::Error| ApiError::Internal(format!("git stopped reading: {e}"));
    let mut sent = prefix.len() as u64;
    stdin.write_all(&prefix).await.map_err(broken)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("cannot read: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > limit {
            return Err(ApiError::TooLarge(format!(
                "the request is over the limit of {limit} bytes (pier api --max-upload-mb)"
            )));
        }
        stdin.write_all(&data).await.map_err(broken)?;
    }
    stdin.flush().await.map_err(broken)?;
    Ok(sent)
}

/// The first `max` bytes `r` writes; the rest is read and dropped (a full pipe would stop
/// the writer).
async fn keep_some(mut r: impl AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = max.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(buf.get(..room).unwrap_or_default());
    }
    kept
}

/// Reads the CGI header block; returns the response head and the body bytes read with it.
async fn read_head(r: &mut (impl AsyncRead + Unpin)) -> Result<(Response<()>, Vec<u8>), ApiError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((end, next)) = head_end(&buf) {
            let head = parse_head(buf.get(..end).unwrap_or_default())?;
            return Ok((head, buf.split_off(next)));
        }
        if buf.len() > MAX_HEAD {
            return Err(ApiError::Internal(
                "git http-backend wrote a header block over 16 KiB".into(),
            ));
        }
        let n = r
            .read(&mut chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot read git http-backend: {e}")))?;
        if n == 0 {
            return Err(ApiError::Internal(
                "git http-backend ended without an answer".into(),
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Where the header block ends (before its blank line) and the body starts.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A CGI header block (`Status: 404 Not Found`, `Content-Type: ...`) as a response head.
fn parse_head(block: &[u8]) -> Result<Response<()>, ApiError> {
    let bad = |what: &str| ApiError::Internal(format!("git http-backend wrote {what}"));
    let text = std::str::from_utf8(block).map_err(|_| bad("a header block that is not text"))?;
    let mut head = Response::new(());
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("the header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or_default();
            *head.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| bad(&format!("the status {value:?}")))?;
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if !PASSED.contains(&name) {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(value) {
            head.headers_mut().append(name, v);
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn cgi_heads() {
        let mut out: &[u8] = b"Expires: Fri, 01 Jan 1980 00:00:00 GMT\r\nPragma: no-cache\r\nCache-Control: no-cache, max-age=0, must-revalidate\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n\r\n001e# service=git-upload-pack\n";
        let (head, rest) = read_head(&mut out).await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()[header::CONTENT_TYPE],
            "application/x-git-upload-pack-advertisement"
        );
        assert_eq!(head.headers()[header::PRAGMA], "no-cache");
        assert_eq!(rest, b"001e# service=git-upload-pack\n");
        let mut out: &[u8] =
            b"Status: 403 Forbidden\nSet-Cookie: x=1\nContent-Type: text/plain\n\nno\n";
        let (head, rest) = read_head(&mut out).await.unwrap();
        assert_eq!(head.status(), StatusCode::FORBIDDEN);
        assert!(head.headers().get(header::SET_COOKIE).is_none());
        assert_eq!(rest, b"no\n");
        for bad in [&b"Status: x\n\n"[..], b"no colon\n\n", b"Content-Type: a\n"] {
            let mut out = bad;
            assert!(read_head(&mut out).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn error_output_is_bounded_and_drained() {
        let big = vec![b'x'; 100_000];
        let kept = keep_some(&big[..], 10).await;
        assert_eq!(kept.len(), 10);
    }
}

//! A small HTTP/1.1 client over hyper: one request per connection, with a deadline and a cap
//! on the response body. Used by the CLI verbs ([`ApiClient`]) and by the domain verifier.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad API URL {0:?}: use http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("HTTP error talking to {0}: {1}")]
    Http(String, String),
    #[error("response from {0} is larger than {1} bytes")]
    TooLarge(String, usize),
    #[error("cannot build request: {0}")]
    Request(String),
}

/// Sends `req` to `addr` (`host:port`) and returns the status and the whole body.
pub async fn send(
    addr: &str,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<(StatusCode, Bytes), ClientError> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(addr.to_string(), e.to_string()))?;
        // The connection task ends when the response is read and `sender` is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(addr.to_string(), e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ClientError::TooLarge(addr.to_string(), max_body)
                } else {
                    ClientError::Http(addr.to_string(), e.to_string())
                }
            })?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(addr.to_string(), timeout)),
    }
}

/// An answer from the API: its status and its JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub text: String,
}

impl ApiResponse {
    /// The `reason` of an error body, or the raw text.
    pub fn reason(&self) -> String {
        match self.body.get("reason").and_then(|r| r.as_str()) {
            Some(r) => r.to_string(),
            None => self.text.clone(),
        }
    }
}

/// A client of the registry API at one base URL, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    authority: String,
    base_path: String,
    token: Option<String>,
    timeout: Duration,
}

impl ApiClient {
    /// `url` is `http://host:port` with an optional path prefix (`http://host/pier`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(ApiClient {
            authority,
            base_path: path.trim_end_matches('/').to_string(),
            token,
            timeout: Duration::from_secs(30),
        })
    }

    /// `host:port` of the API.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target of `path` (`/` first) under the base URL's path.
    pub fn target(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// The bearer token, when there is one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends one request; `path` starts with `/` and is appended to the base URL's path.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, ClientError> {
        self.call_bytes(method, path, body.map(|v| Bytes::from(v.to_string())))
            .await
    }

    /// Sends `body` as it is (labelled JSON): for bodies a [`serde_json::Value`] cannot hold,
    /// such as repeated keys.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<ApiResponse, ClientError> {
        self.call_bytes(method, path, Some(Bytes::from(body))).await
    }

    async fn call_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<ApiResponse, ClientError> {
        let mut req = self
            .request(method, path)
            .header(header::ACCEPT, "application/json");
        let payload = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let (status, bytes) = send(&self.authority, req, self.timeout, 16 << 20).await?;
        Ok(ApiResponse::of(status, &bytes))
    }

    /// A request to `path` with the API's host and this client's token.
    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(header::HOST, &self.authority);
        match &self.token {
            Some(t) => req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    /// Sends `req` on a new connection (connecting within the client's timeout) and waits at
    /// most `idle` for the answer's head; its body is left to the caller.
    async fn open<B>(
        &self,
        req: Request<B>,
        idle: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let addr = &self.authority;
        let http = |e: hyper::Error| ClientError::Http(addr.clone(), e.to_string());
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(addr.clone(), self.timeout))?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        tokio::time::timeout(idle, sender.send_request(req))
            .await
            .map_err(|_| ClientError::Timeout(addr.clone(), idle))?
            .map_err(http)
    }
}

impl ApiResponse {
    /// An answer of `status` whose body is `bytes` (as text, and as JSON when it is).
    fn of(status: StatusCode, bytes: &[u8]) -> ApiResponse {
        ApiResponse {
            status,
            body: serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null),
            text: String::from_utf8_lossy(bytes).into_owned(),
        }
    }
}

/// A request body sent by [`ApiClient::stream_lines`]: bytes in memory, or a file read in
/// 64 KiB pieces with a callback told how much has been sent (an upload's progress).
pub enum UploadBody {
    Whole(Option<Bytes>),
    File {
        file: tokio::fs::File,
        size: u64,
        sent: u64,
        progress: Box<dyn FnMut(u64, u64) + Send>,
    },
}

impl From<Bytes> for UploadBody {
    fn from(b: Bytes) -> Self {
        UploadBody::Whole(Some(b))
    }
}

impl From<Vec<u8>> for UploadBody {
    fn from(b: Vec<u8>) -> Self {
        UploadBody::Whole(Some(Bytes::from(b)))
    }
}

impl UploadBody {
    /// The file at `path`, with `progress(sent, total)` called after each piece.
    pub async fn file(
        path: &std::path::Path,
        progress: Box<dyn FnMut(u64, u64) + Send>,
    ) -> std::io::Result<Self> {
        let file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        Ok(UploadBody::File {
            file,
            size,
            sent: 0,
            progress,
        })
    }
}

impl hyper::body::Body for UploadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            UploadBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            UploadBody::File {
                file,
                size,
                sent,
                progress,
            } => {
                let mut buf = vec![0u8; 64 * 1024];
                let mut rb = tokio::io::ReadBuf::new(&mut buf);
                match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(file), cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(None);
                        }
                        *sent += n as u64;
                        progress(*sent, *size);
                        buf.truncate(n);
                        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(buf)))))
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UploadBody::Whole(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            UploadBody::Whole(None) => hyper::body::SizeHint::with_exact(0),
            UploadBody::File { size, sent, .. } => {
                hyper::body::SizeHint::with_exact(size.saturating_sub(*sent))
            }
        }
    }
}

impl ApiClient {
    /// Sends `body` (of `content_type`) and hands each line of a successful answer to
    /// `on_line` as it arrives (a deploy's build output). An error status is returned whole,
    /// as [`ApiClient::call`] returns it. Waits at most `idle` for each piece of the answer.
    pub async fn stream_lines(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: UploadBody,
        idle: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<ApiResponse, ClientError> {
        let addr = self.authority.clone();
        let req = self
            .request(method, path)
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let http = |e: hyper::Error| ClientError::Http(addr.clone(), e.to_string());
        let mut resp = self.open(req, idle).await?;
        let status = resp.status();
        let mut pending = Vec::new();
        let mut whole = Vec::new();
        loop {
            let frame = tokio::time::timeout(idle, resp.body_mut().frame())
                .await
                .map_err(|_| ClientError::Timeout(addr.clone(), idle))?;
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(http)?.into_data() else {
                continue;
            };
            if !status.is_success() {
                whole.extend_from_slice(&data);
                if whole.len() > 1 << 20 {
                    return Err(ClientError::TooLarge(addr, 1 << 20));
                }
                continue;
            }
            pending.extend_from_slice(&data);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                on_line(String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'));
            }
        }
        if !pending.is_empty() {
            on_line(&String::from_utf8_lossy(&pending));
        }
        Ok(ApiResponse::of(status, &whole))
    }

    /// `GET path` of a file (a backup's archive): each piece of a successful answer goes to
    /// `sink` as it arrives, never held whole; an error status is returned as
    /// [`ApiClient::call`] returns it. Returns the answer (its body empty on success) and its
    /// headers. Waits at most `idle` for each piece; a body cut short of its length is an
    /// error.
    pub async fn download(
        &self,
        path: &str,
        idle: Duration,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(ApiResponse, http::HeaderMap), ClientError> {
        let addr = self.authority.clone();
        let req = self
            .request(Method::GET, path)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let http = |e: hyper::Error| ClientError::Http(addr.clone(), e.to_string());
        let mut resp = self.open(req, idle).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut whole = Vec::new();
        loop {
            let frame = tokio::time::timeout(idle, resp.body_mut().frame())
                .await
                .map_err(|_| ClientError::Timeout(addr.clone(), idle))?;
            let Some(frame) = frame else { break };
            let Ok(data) = frame.map_err(http)?.into_data() else {
                continue;
            };
            if status.is_success() {
                sink(&data)
                    .map_err(|e| ClientError::Request(format!("writing the download: {e}")))?;
            } else {
                whole.extend_from_slice(&data);
                if whole.len() > 1 << 20 {
                    return Err(ClientError::TooLarge(addr, 1 << 20));
                }
            }
        }
        Ok((ApiResponse::of(status, &whole), headers))
    }

    /// Sets how long [`ApiClient::call`] waits for a whole answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Percent-encodes one path segment (a domain such as `*.example.com` or a Unicode name).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let c = ApiClient::new("http://127.0.0.1:7070", None).unwrap();
        assert_eq!(c.authority, "127.0.0.1:7070");
        assert_eq!(c.base_path, "");
        let c = ApiClient::new("http://api.local/pier/", None).unwrap();
        assert_eq!(c.authority, "api.local:80");
        assert_eq!(c.base_path, "/pier");
        assert!(ApiClient::new("https://x", None).is_err());
        assert!(ApiClient::new("http://", None).is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("*.example.com"), "%2A.example.com");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
    }
}

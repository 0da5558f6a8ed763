//! HTTPS (and HTTP) drains: each batch POSTed in Heroku's logplex format over one kept-alive
//! connection (hyper): `Content-Type: application/logplex-1`, `Logplex-Msg-Count`,
//! `Logplex-Drain-Token` (the drain's id), `Logplex-Frame-Id` (the batch's last stream id, the
//! same when a batch is sent again), and a body of octet-counted RFC 5424 frames. A 2xx answer
//! delivers the batch; anything else is a failure and the batch is sent again later.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pier_model::drain::DrainUrl;
use pier_model::platform::LogLine;

use crate::connect::{Connector, DeliveryError};
use crate::format;
use crate::syslog::WRITE_TIMEOUT;

/// Most of an answer's body read (and ignored).
const MAX_ANSWER: usize = 64 * 1024;

/// One HTTP drain's connection.
pub struct HttpSink {
    url: DrainUrl,
    drain_id: String,
    authorization: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpSink {
    pub fn new(url: DrainUrl, drain_id: &str) -> Self {
        let authorization = url.userinfo.as_deref().and_then(|u| {
            HeaderValue::from_str(&format!("Basic {}", base64(&percent_decode(u)))).ok()
        });
        HttpSink {
            url,
            drain_id: drain_id.to_string(),
            authorization,
            sender: None,
        }
    }

    /// POSTs `lines` of `app`'s log as one logplex batch.
    pub async fn send(
        &mut self,
        connector: &Connector,
        app: &str,
        lines: &[LogLine],
    ) -> Result<(), DeliveryError> {
        let body = Bytes::from(format::frames(app, lines));
        let frame_id = lines.last().map(|l| l.id.as_str()).unwrap_or_default();
        // A kept-alive connection the server closed meanwhile is replaced, once.
        let mut sender = match self.sender.take() {
            Some(mut s) => match tokio::time::timeout(WRITE_TIMEOUT, s.ready()).await {
                Ok(Ok(())) => s,
                _ => self.open(connector).await?,
            },
            None => self.open(connector).await?,
        };
        let req = self.request(body, lines.len(), frame_id)?;
        let resp = match tokio::time::timeout(WRITE_TIMEOUT, sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(DeliveryError::Http(e.to_string())),
            Err(_) => return Err(DeliveryError::Timeout(WRITE_TIMEOUT, "posting a batch")),
        };
        let status = resp.status();
        // Read the answer whole, so the connection can carry the next batch.
        let read = tokio::time::timeout(
            WRITE_TIMEOUT,
            Limited::new(resp.into_body(), MAX_ANSWER).collect(),
        )
        .await;
        if matches!(read, Ok(Ok(_))) {
            self.sender = Some(sender);
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.to_string()))
        }
    }

    async fn open(&self, connector: &Connector) -> Result<SendRequest<Full<Bytes>>, DeliveryError> {
        let io = connector.connect(&self.url).await?;
        let (sender, conn) = tokio::time::timeout(
            WRITE_TIMEOUT,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| DeliveryError::Timeout(WRITE_TIMEOUT, "starting HTTP"))?
        .map_err(|e| DeliveryError::Http(e.to_string()))?;
        // Ends when the server closes the connection or the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(
        &self,
        body: Bytes,
        count: usize,
        frame_id: &str,
    ) -> Result<Request<Full<Bytes>>, DeliveryError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.target.as_str())
            .header(header::HOST, self.url.authority())
            .header(header::CONTENT_TYPE, "application/logplex-1")
            .header(
                header::USER_AGENT,
                concat!("pier-drain/", env!("CARGO_PKG_VERSION")),
            )
            .header("Logplex-Msg-Count", count.to_string())
            .header("Logplex-Drain-Token", self.drain_id.as_str())
            .header("Logplex-Frame-Id", frame_id);
        if let Some(a) = &self.authorization {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        req.body(Full::new(body))
            .map_err(|e| DeliveryError::Http(format!("cannot build the request: {e}")))
    }
}

/// `%XX` escapes decoded (the URL's user and password); others kept as written.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:p@ss"), "dXNlcjpwQHNz");
        assert_eq!(percent_decode("user:p%40ss%"), b"user:p@ss%");
    }
}

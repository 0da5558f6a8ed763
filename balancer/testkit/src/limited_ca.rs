//! An ACME server that is over its rate limit: its directory, nonces, and a `429` with a
//! `Retry-After` and an `urn:ietf:params:acme:error:rateLimited` problem for every new account
//! or order (RFC 8555 §6.6). pebble, the real test CA the ACME tests use, has no rate limits,
//! so this is the one part of those tests that is a stand-in; it speaks HTTPS over loopback
//! like a CA does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::certs::TestCa;

pub struct LimitedCa {
    pub addr: SocketAddr,
    /// The CA's root (PEM), for `--acme-ca-file`.
    pub ca: TestCa,
    /// Requests refused with the rate limit.
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LimitedCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LimitedCa {
    /// Refuses with `Retry-After: <retry_after>` (seconds or an HTTP-date, as given).
    pub async fn start(retry_after: &str) -> LimitedCa {
        let ca = TestCa::new("limited test CA");
        let cert = ca.server(&["127.0.0.1"]);
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused: Arc<AtomicUsize> = Arc::default();
        let (counter, retry_after) = (Arc::clone(&refused), retry_after.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, counter, retry_after) =
                    (acceptor.clone(), Arc::clone(&counter), retry_after.clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        serve(&mut tls, addr, &retry_after, &counter).await;
                    }
                });
            }
        });
        LimitedCa {
            addr,
            ca,
            refused,
            task,
        }
    }

    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.addr)
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    addr: SocketAddr,
    retry_after: &str,
    refused: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = crate::net::read_request(s, &mut buf).await else {
            return;
        };
        let mut parts = head.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let nonce = format!("nonce-{}", refused.load(Ordering::SeqCst));
        let answer = match (method, path) {
            ("GET", "/dir") => {
                let base = format!("https://{addr}");
                let body = serde_json::json!({
                    "newNonce": format!("{base}/nonce"),
                    "newAccount": format!("{base}/account"),
                    "newOrder": format!("{base}/order"),
                })
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            ("HEAD" | "GET", "/nonce") => {
                format!("HTTP/1.1 200 OK\r\nReplay-Nonce: {nonce}\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n")
            }
            ("POST", "/account" | "/order") => {
                refused.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::json!({
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "too many new orders recently: see https://ca.test/rate-limits",
                    "status": 429,
                })
                .to_string();
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\nReplay-Nonce: {nonce}\r\nRetry-After: {retry_after}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
        };
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

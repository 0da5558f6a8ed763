//! Custom-domain ownership checks.
//!
//! A domain an owner adds starts pending with a random token. It is verified when the app,
//! asked for that hostname, serves the token at `/.well-known/pier-challenge/<token>`: this
//! proves the owner controls what answers for the name on pier.
//!
//! The balancer routes only verified domains, so the challenge cannot go through it for a
//! pending domain. [`HttpVerifier`] therefore connects to the app's own live backends directly
//! and sends `Host: <domain>` (the request the app would get through the balancer). With
//! `via` set it connects there instead, for setups where a front end answers challenges for
//! pending names. Whether the public DNS of the name points at pier is not checked here (it
//! cannot be reached from every deployment); an operator can also verify by override.
//!
//! [`Verifier`] is a trait so the API can be given another check (DNS TXT, ACME) later.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;

use pier_model::client;

/// Path prefix the challenge is served under.
pub const CHALLENGE_PREFIX: &str = "/.well-known/pier-challenge/";

/// How many backends are asked before giving up: enough to ride over one dead instance.
const MAX_ATTEMPTS: usize = 3;

/// One ownership check to run.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The normalised exact domain (never a wildcard).
    pub domain: String,
    pub token: String,
    /// The app's live backend addresses (`IP:port`).
    pub backends: Vec<String>,
}

/// Why a domain could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the app has no live backend to answer the challenge")]
    NoBackend,
    #[error("challenge not answered: {0}")]
    NotServed(String),
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifyError>> + Send + 'a>>;

/// An ownership check.
pub trait Verifier: Send + Sync {
    fn verify<'a>(&'a self, challenge: &'a Challenge) -> VerifyFuture<'a>;
}

/// The HTTP challenge, fetched from the app's backends (or from `via`).
#[derive(Debug, Clone)]
pub struct HttpVerifier {
    pub via: Option<SocketAddr>,
    pub timeout: Duration,
}

impl Default for HttpVerifier {
    fn default() -> Self {
        HttpVerifier {
            via: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl HttpVerifier {
    async fn fetch(&self, addr: &str, c: &Challenge) -> Result<(), String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("{CHALLENGE_PREFIX}{}", c.token))
            .header(header::HOST, &c.domain)
            .header(header::USER_AGENT, "pier-verifier")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        // The answer is the token and maybe a newline: anything longer is not an answer.
        let (status, body) = client::send(addr, req, self.timeout, 1024)
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("{addr} answered {status}"));
        }
        if body.trim_ascii() != c.token.as_bytes() {
            return Err(format!("{addr} answered 200 without the token"));
        }
        Ok(())
    }
}

impl Verifier for HttpVerifier {
    fn verify<'a>(&'a self, c: &'a Challenge) -> VerifyFuture<'a> {
        Box::pin(async move {
            let targets: Vec<String> = match self.via {
                Some(via) => vec![via.to_string()],
                None => c.backends.iter().take(MAX_ATTEMPTS).cloned().collect(),
            };
            if targets.is_empty() {
                return Err(VerifyError::NoBackend);
            }
            let mut failures = Vec::new();
            for addr in &targets {
                match self.fetch(addr, c).await {
                    Ok(()) => return Ok(()),
                    Err(e) => failures.push(e),
                }
            }
            Err(VerifyError::NotServed(failures.join("; ")))
        })
    }
}

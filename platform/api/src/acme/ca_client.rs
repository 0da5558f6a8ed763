//! The orderer's HTTPS client to the CA: instant-acme's own client (hyper with rustls) with one
//! addition, the CA's `Retry-After` on an error answer (RFC 8555 §6.6: a rate limit is a `429`
//! that says when to come back), which instant-acme reads for polling but does not hand back
//! with an error. The value is kept for the order that got it, in a task-local slot that
//! [`with_retry_after`] opens around the order, so orders running at once never see each
//! other's.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::Request;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

tokio::task_local! {
    /// When the CA last asked this order to come back (ms since the epoch).
    static RETRY_AFTER_MS: Cell<Option<u64>>;
}

/// Runs `order` with its own Retry-After slot; returns its output and what the CA asked for.
pub async fn with_retry_after<F: Future>(order: F) -> (F::Output, Option<u64>) {
    RETRY_AFTER_MS
        .scope(Cell::new(None), async move {
            let out = order.await;
            (out, RETRY_AFTER_MS.with(Cell::take))
        })
        .await
}

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// The client the ACME account talks through.
pub struct CaClient(Inner);

impl CaClient {
    /// Trusts the platform's roots, or, with `--acme-ca-file`, the public roots and the file's.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let builder = match ca_file {
            None => HttpsConnectorBuilder::new()
                .try_with_platform_verifier()
                .map_err(|e| format!("the system's roots: {e}"))?,
            Some(path) => {
                let shown = path.display();
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                let mut added = 0;
                for der in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--acme-ca-file {shown}: {e}"))?
                {
                    let der = der.map_err(|e| format!("--acme-ca-file {shown}: {e}"))?;
                    roots
                        .add(der)
                        .map_err(|e| format!("--acme-ca-file {shown}: {e}"))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(format!("--acme-ca-file {shown}: no certificate in it"));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(CaClient(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = HttpClient::request(&self.0, req);
        Box::pin(async move {
            let rsp = sent.await?;
            if rsp.parts.status.is_client_error() || rsp.parts.status.is_server_error() {
                let asked = rsp
                    .parts
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after_ms(v, SystemTime::now()));
                if asked.is_some() {
                    // Outside an order's scope (no slot) there is no one to tell.
                    let _ = RETRY_AFTER_MS.try_with(|slot| slot.set(asked));
                }
            }
            Ok(rsp)
        })
    }
}

/// A `Retry-After` value (delay-seconds or an HTTP-date, RFC 9110 §10.2.3) as a time in ms
/// since the epoch; `None` when it is neither.
pub fn retry_after_ms(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    let at = match value.parse::<u64>() {
        Ok(secs) => now.checked_add(Duration::from_secs(secs))?,
        Err(_) => httpdate::parse_http_date(value).ok()?,
    };
    u64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates_and_refuses_the_rest() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(retry_after_ms("120", now), Some(1_000_120_000));
        assert_eq!(retry_after_ms(" 0 ", now), Some(1_000_000_000));
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(784_111_777_000)
        );
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("-5", now), None);
        assert_eq!(retry_after_ms("", now), None);
    }
}

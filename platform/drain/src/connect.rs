//! Connecting to a drain: the host resolved and every address checked against the drain policy
//! at each connection (a name that now resolves to an internal address is refused, whatever it
//! resolved to when the drain was added), then TCP, then TLS for `syslog+tls` and `https`
//! (rustls, the webpki roots plus the operator's extra CA certificates).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pier_model::drain::{DrainPolicy, DrainUrl};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Longest a resolution, a TCP connect or a TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a drain: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Why a batch was not delivered; its text becomes the drain's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("no answer within {0:?} while {1}")]
    Timeout(Duration, &'static str),
    #[error("write failed: {0}")]
    Write(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(String),
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {0} holds no certificate")]
    NoCa(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Opens connections to drains under one policy and one set of trusted roots.
pub struct Connector {
    policy: DrainPolicy,
    /// For syslog+tls (no ALPN).
    tls_syslog: Arc<ClientConfig>,
    /// For https (ALPN http/1.1).
    tls_http: Arc<ClientConfig>,
}

impl Connector {
    /// Trusts the webpki roots and the PEM certificates in `extra_ca`, if given.
    pub fn new(policy: DrainPolicy, extra_ca: Option<&Path>) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let shown = path.display().to_string();
            let bad = |e: &dyn std::fmt::Display| TlsSetupError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            };
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?)?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsSetupError::NoCa(shown));
            }
        }
        let config = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TlsSetupError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        Ok(Connector {
            policy,
            tls_syslog: config(&[])?,
            tls_http: config(&[b"http/1.1"])?,
        })
    }

    /// The addresses of `url`'s host, each allowed by the policy (or the refusal).
    pub async fn resolve(&self, url: &DrainUrl) -> Result<Vec<SocketAddr>, DeliveryError> {
        let addrs: Vec<SocketAddr> = match url.ip() {
            Some(ip) => vec![SocketAddr::new(ip, url.port)],
            None => tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::lookup_host((url.host.as_str(), url.port)),
            )
            .await
            .map_err(|_| DeliveryError::Timeout(CONNECT_TIMEOUT, "resolving the host"))?
            .map_err(|e| DeliveryError::Resolve {
                host: url.host.clone(),
                reason: e.to_string(),
            })?
            .collect(),
        };
        if addrs.is_empty() {
            return Err(DeliveryError::Resolve {
                host: url.host.clone(),
                reason: "no address".into(),
            });
        }
        for a in &addrs {
            if let Some(why) = self.policy.refusal(a.ip()) {
                return Err(DeliveryError::Refused(why));
            }
        }
        Ok(addrs)
    }

    /// A connection to `url`: its checked addresses tried in turn, then TLS if its scheme
    /// says so.
    pub async fn connect(&self, url: &DrainUrl) -> Result<Box<dyn Io>, DeliveryError> {
        let mut last = None;
        let mut tcp = None;
        for addr in self.resolve(url).await? {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => {
                    last = Some(DeliveryError::Connect {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })
                }
                Err(_) => last = Some(DeliveryError::Timeout(CONNECT_TIMEOUT, "connecting")),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last.unwrap_or(DeliveryError::Resolve {
                host: url.host.clone(),
                reason: "no address".into(),
            }));
        };
        let _ = tcp.set_nodelay(true);
        if !url.kind.tls() {
            return Ok(Box::new(tcp));
        }
        let config = if url.kind.http() {
            self.tls_http.clone()
        } else {
            self.tls_syslog.clone()
        };
        let name = ServerName::try_from(url.host.clone()).map_err(|e| DeliveryError::Tls {
            host: url.host.clone(),
            reason: e.to_string(),
        })?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| DeliveryError::Timeout(CONNECT_TIMEOUT, "in the TLS handshake"))?
        .map_err(|e| DeliveryError::Tls {
            host: url.host.clone(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(tls))
    }
}

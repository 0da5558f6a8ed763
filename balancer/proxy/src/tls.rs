//! TLS for the `https` listeners — the rustls server configuration, certificate choice by
//! SNI — and the client configuration pier uses towards `https://` backends.
//!
//! Listener posture: with `[tls] min_version = "1.2"` (the default) Mozilla's "intermediate"
//! profile: TLS 1.2 and 1.3 only; ECDHE key exchange (X25519, P-256, P-384); AEAD ciphers only
//! (AES-GCM and ChaCha20-Poly1305) — which is what rustls offers at all, so there is nothing
//! weaker to switch off. With `"1.3"`, TLS 1.3 alone with its three AEAD suites: Mozilla's
//! "modern" profile, whatever the certificate's key type. Certificates are chosen per
//! handshake from the route table snapshot in use (one atomic load): the certificate of the
//! exact name, else of the nearest wildcard, else the default certificate from `[tls]`.
//!
//! Backends: one [`rustls::ClientConfig`] per process ([`upstream_client_config`]), verifying
//! against the public roots (Mozilla's list, built in) plus `[upstream_tls] ca_file`, showing
//! the `[upstream_tls]` client certificate to backends that ask for one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use pier_routes::RouteTable;

use crate::config::{Http2Settings, MinTlsVersion, TlsSettings, UnknownSni, UpstreamTlsSettings};

/// Picks the certificate for a ClientHello.
#[derive(Debug)]
pub struct SniResolver {
    routes: Arc<ArcSwap<RouteTable>>,
    /// The `[tls]` certificate; replaced on SIGHUP when its files change.
    default: ArcSwap<CertifiedKey>,
    unknown: UnknownSni,
}

impl SniResolver {
    pub fn new(routes: Arc<ArcSwap<RouteTable>>, tls: &TlsSettings) -> Self {
        SniResolver {
            routes,
            default: ArcSwap::new(Arc::clone(&tls.default_cert)),
            unknown: tls.unknown_sni,
        }
    }

    /// Serves `key` as the default certificate from the next handshake on.
    pub fn set_default(&self, key: Arc<CertifiedKey>) {
        self.default.store(key);
    }

    /// The certificate served for `sni` (`None`: the handshake is refused).
    pub fn for_name(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.routes.load();
        if let Some(name) = sni {
            if let Some(k) = table.cert_for(name) {
                return Some(Arc::clone(k));
            }
            if self.unknown == UnknownSni::Reject && table.lookup(name).is_none() {
                return None;
            }
        } else if self.unknown == UnknownSni::Reject {
            return None;
        }
        Some(self.default.load_full())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands over the SNI name already checked as a DNS name and lowercased.
        self.for_name(hello.server_name())
    }
}

/// The rustls configuration of the TLS listeners.
pub fn server_config(
    resolver: Arc<SniResolver>,
    http2: &Http2Settings,
    min_version: MinTlsVersion,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http2.enabled {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    // TLS 1.3 tickets sent after the handshake; two lets a browser open two resumed
    // connections.
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}

/// Whether the handshake settled on h2.
pub fn negotiated_h2(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(b"h2")
}

/// The rustls configuration for `https://` backends: TLS 1.2 and 1.3, the public roots plus
/// `ca_file`, the client certificate when one is configured, HTTP/1.1 in ALPN, and the default
/// in-memory session cache (a new connection to a backend resumes its session).
pub fn upstream_client_config(
    settings: &UpstreamTlsSettings,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &settings.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut cfg = match &settings.client_cert {
        Some(key) => builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::clone(key)))),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The one client certificate of `[upstream_tls]`, shown to every backend that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // rustls checks the key against the schemes the backend accepts; a backend that
        // accepts none of them gets no certificate (and says so with its alert).
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The short reason for a TLS failure with a backend, from the handshake or from a read on a
/// TLS connection (a TLS 1.3 server refuses a client certificate after the client's side of the
/// handshake is done): `None` when `error` is not rustls's. Stable texts: they end up in router
/// lines and docs/configuration.md lists them.
pub fn failure_reason(error: &std::io::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let tls = error.get_ref()?.downcast_ref::<E>()?;
    Some(match tls {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown-issuer",
            C::NotValidForName | C::NotValidForNameContext { .. } => "name-mismatch",
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not-yet-valid",
            C::Revoked => "revoked",
            _ => "bad-certificate",
        },
        E::AlertReceived(A::CertificateRequired) => "client-certificate-required",
        E::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied,
        ) => "client-certificate-refused",
        E::AlertReceived(_) => "alert",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "not-tls",
        _ => "handshake-failed",
    })
}

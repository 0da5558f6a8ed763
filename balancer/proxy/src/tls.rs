//! TLS for the `https` listeners: the rustls server configuration, certificate choice by SNI,
//! and the handshake with its deadline.
//!
//! Posture is Mozilla's "intermediate" profile: TLS 1.2 and 1.3 only; ECDHE key exchange
//! (X25519, P-256, P-384); AEAD ciphers only (AES-GCM and ChaCha20-Poly1305) — which is what
//! rustls offers at all, so there is nothing weaker to switch off. Certificates are chosen per
//! handshake from the route table snapshot in use (one atomic load): the certificate of the
//! exact name, else of the nearest wildcard, else the default certificate from `[tls]`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use pier_routes::RouteTable;

use crate::config::{Http2Settings, TlsSettings, UnknownSni};

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
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
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

//! TLS for the floor programs (`idle_floor.rs`, `floor_relay.rs`), included by both with
//! `#[path]`: one certificate whatever the SNI name, with pier-balancer's settings (the same
//! provider and versions, a 64Ki-entry session cache, a ticketer and two TLS 1.3 tickets per
//! handshake; ALPN `http/1.1` only).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// Serves one certificate whatever the SNI name.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// An acceptor for the certificate and key in the PEM files `cert` and `key`.
pub fn tls_acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, Box<dyn std::error::Error>> {
    let key = pier_balancer::config::certified_key(
        &std::fs::read_to_string(cert)?,
        &std::fs::read_to_string(key)?,
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(key)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.send_tls13_tickets = 2;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

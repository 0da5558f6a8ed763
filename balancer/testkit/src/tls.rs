//! TLS in front of the balancer: a balancer with an https listener ([`tls_balancer`]), rustls
//! clients that trust given certificates ([`client_config`], [`tls_connect`]), and the
//! certificate a listener presents for a name ([`served_cert`]).

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::certs::{make_cert, TestCert};
use crate::net::free_port;
use crate::proxy::Balancer;

/// A TLS balancer: `http` on the harness port, `https` on `tls_port`, default certificate for
/// `default.test`.
pub struct TlsSetup {
    pub b: Balancer,
    pub tls_port: u16,
    pub default: TestCert,
    pub certs: tempfile::TempDir,
}

/// Starts a [`Balancer`] with `routes` and an https listener on a free port; `extra` is
/// appended to its `[tls]` table (more tables may follow).
pub async fn tls_balancer(routes: &str, extra: &str) -> TlsSetup {
    let certs = tempfile::tempdir().unwrap();
    let default = make_cert(certs.path(), "default", &["default.test"]);
    let tls_port = free_port();
    let config = format!(
        "[listen]\nhttp = [\"127.0.0.1:{{port}}\"]\nhttps = [\"127.0.0.1:{tls_port}\"]\n\
         [tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"500ms\"\n{extra}",
        default.cert_path, default.key_path
    );
    let b = Balancer::start(routes, &config).await;
    TlsSetup {
        b,
        tls_port,
        default,
        certs,
    }
}

/// A rustls client that trusts `roots` and offers `alpn`.
pub fn client_config(
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection to the loopback `port`, asking for the name `sni`.
pub async fn tls_connect(
    port: u16,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The leaf certificate a TLS listener presents for `sni` (verification off: we look at what
/// is served, not whether it is trusted).
pub async fn served_cert(port: u16, sni: &str) -> Option<Vec<u8>> {
    let tls = tls_connect(port, sni, accept_any()).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs[0].to_vec())
}

/// A rustls client that accepts any certificate (to look at what is served).
pub fn accept_any() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Arc::new(cfg)
}

//! TLS around the balancer: a balancer with an https listener ([`tls_balancer`]), rustls
//! clients that trust given certificates ([`client_config`], [`client_config_versions`],
//! [`tls_connect`]), the certificate a listener presents for a name ([`served_cert`]), and an
//! HTTPS backend behind it ([`TlsBackend`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

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

/// A rustls client that trusts `roots` and speaks only the TLS `versions` given.
pub fn client_config_versions(
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
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

/// What an HTTPS backend saw of one TLS connection it accepted.
#[derive(Debug, Clone)]
pub struct TlsConnSeen {
    /// Numbered from 1 in the order of acceptance.
    pub id: usize,
    /// The server name the client sent (SNI), if any.
    pub sni: Option<String>,
    /// The client certificate's leaf (DER), when the client showed one.
    pub client_cert: Option<Vec<u8>>,
}

/// An HTTP/1.1 backend over TLS (tokio-rustls) on a loopback port: every request is answered
/// `200` with the body `<name> <path> conn=<connection id>` on keep-alive connections. It
/// keeps what each connection's handshake showed ([`TlsConnSeen`]) and counts handshakes that
/// failed. With a `client_ca`, it requires a client certificate issued by it (mutual TLS).
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Completed handshakes, in order.
    pub conns: Arc<Mutex<Vec<TlsConnSeen>>>,
    /// TCP connections whose handshake failed.
    pub failed_handshakes: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    /// Serves with the certificate `cert` (see [`crate::certs::TestCa::server`]).
    pub async fn start(
        name: &str,
        cert: &crate::certs::Issued,
        client_ca: Option<&crate::certs::TestCa>,
    ) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der.clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let cfg = builder
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<TlsConnSeen>>> = Arc::default();
        let failed_handshakes: Arc<AtomicUsize> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let accepted = AtomicUsize::new(0);
        let (c, f, r, me) = (
            Arc::clone(&conns),
            Arc::clone(&failed_handshakes),
            Arc::clone(&requests),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let id = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let (acceptor, c, f, r, me) = (
                    acceptor.clone(),
                    Arc::clone(&c),
                    Arc::clone(&f),
                    Arc::clone(&r),
                    me.clone(),
                );
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(_) => {
                            f.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let session = tls.get_ref().1;
                    c.lock().unwrap().push(TlsConnSeen {
                        id,
                        sni: session.server_name().map(str::to_string),
                        client_cert: session.peer_certificates().map(|certs| certs[0].to_vec()),
                    });
                    serve_h1(&mut tls, &me, id, &r).await;
                });
            }
        });
        TlsBackend {
            addr,
            name: name.to_string(),
            conns,
            failed_handshakes,
            requests,
            task,
        }
    }

    pub fn seen(&self) -> Vec<TlsConnSeen> {
        self.conns.lock().unwrap().clone()
    }
}

/// Answers GET-style requests (a body announced by Content-Length is read and dropped) until
/// the client closes.
async fn serve_h1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    name: &str,
    conn_id: usize,
    requests: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = crate::net::read_request(s, &mut buf).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let path = head.split(' ').nth(1).unwrap_or("/");
        let body = format!("{name} {path} conn={conn_id}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(answer.as_bytes()).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

//! Certificates for tests: self-signed ones as PEM strings ([`cert_pair`]) or as PEM files with
//! the DER a client trusts ([`make_cert`]), and a private certificate authority that issues
//! server and client certificates ([`TestCa`]).

/// A self-signed certificate for `names`, valid from January 1st of `from` to January 1st of
/// `to`, and its private key, both PEM.
pub fn cert_pair(names: &[&str], from: i32, to: i32) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A self-signed certificate for `names`, written as PEM files into `dir`.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

/// Makes a self-signed certificate for `names` and writes it to `dir` as `<label>.crt` and
/// `<label>.key` (an existing pair of that label is replaced).
pub fn make_cert(dir: &std::path::Path, label: &str, names: &[&str]) -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert_pem = ck.cert.pem();
    let key_pem = ck.key_pair.serialize_pem();
    let cert_path = dir.join(format!("{label}.crt"));
    let key_path = dir.join(format!("{label}.key"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    TestCert {
        cert_pem,
        key_pem,
        der: ck.cert.der().clone(),
        cert_path,
        key_path,
    }
}

/// A private certificate authority for tests: it issues server certificates (for DNS names
/// and IP addresses) and client certificates (for mutual TLS).
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM (what a `ca_file` holds).
    pub pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// A certificate issued by a [`TestCa`]: PEM, and ready for rustls.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl Issued {
    /// Writes the pair to `dir` as `<label>.crt` and `<label>.key`; returns their paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        label: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{label}.crt"));
        let key = dir.join(format!("{label}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            cert,
            key,
        }
    }

    /// Writes the CA certificate to `dir` as `<label>.pem`; returns its path.
    pub fn write(&self, dir: &std::path::Path, label: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{label}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (for mutual TLS) with common name `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

//! Self-signed certificates for tests: PEM strings ([`cert_pair`]), or PEM files with the DER
//! a client trusts ([`make_cert`]).

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

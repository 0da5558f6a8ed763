//! Self-signed certificates for tests.

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

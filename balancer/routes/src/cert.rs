//! TLS certificates: a PEM chain and its private key, checked and turned into the
//! [`CertifiedKey`] rustls serves, with the facts an operator wants to see (names, validity,
//! fingerprint, issuer, subject).
//!
//! Both sources of certificates use this: the routes file (`[[cert]]`, read in [`crate::file`])
//! and the registry (re-exported as `pier_registry::cert`), so a pair is judged the same way
//! wherever it comes from. Signing keys are loaded with rustls' *ring* provider.
//!
//! [`parse_pair`] refuses a certificate outside its validity window (for uploads: tell the
//! owner now). [`load_pair`] does every other check but not that one: a table built from stored
//! or configured certificates must not depend on the balancer's clock, or a certificate issued a
//! second ago would be skipped by a balancer whose clock is behind, and one that has just
//! expired would vanish at the next resync (watch expiry with `not_after` instead).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::host::DomainPattern;

/// Why a certificate and key were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the PEM text (expected a -----BEGIN CERTIFICATE----- block)")]
    NoCertificate,
    #[error("bad PEM: {0}")]
    BadPem(String),
    #[error("certificate {index} of the chain cannot be parsed: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error(
        "no private key in the PEM text (expected a -----BEGIN PRIVATE KEY-----, \
         RSA PRIVATE KEY or EC PRIVATE KEY block)"
    )]
    NoKey,
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the certificate expired at {}", rfc3339(*not_after_ms))]
    Expired { not_after_ms: i64 },
    #[error("the certificate is not valid before {}", rfc3339(*not_before_ms))]
    NotYetValid { not_before_ms: i64 },
}

/// A checked certificate chain with its key, and what it says about itself.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    /// What rustls serves: the chain (leaf first) and the signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS names (subjectAltName), lower-case, in certificate order; wildcards as
    /// written (`*.example.com`).
    pub names: Vec<String>,
    /// Validity window of the leaf, milliseconds since the Unix epoch.
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// SHA-256 of the leaf certificate (DER), lower-case hex.
    pub fingerprint_sha256: String,
    /// The leaf's issuer and subject distinguished names, as text (`CN=..., O=...`).
    pub issuer: String,
    pub subject: String,
}

impl ParsedCert {
    /// Whether the certificate's names cover the domain pattern (see [`covers`]).
    pub fn covers_pattern(&self, pattern: &DomainPattern) -> bool {
        match pattern {
            DomainPattern::CatchAll => false,
            DomainPattern::Exact(name) => self.names.iter().any(|n| name_matches(n, name)),
            // A wildcard domain needs a wildcard certificate for the same suffix; no exact name
            // can cover every name below it.
            DomainPattern::Wildcard(suffix) => self
                .names
                .iter()
                .any(|n| n.strip_prefix("*.") == Some(&**suffix)),
        }
    }

    /// Checks the validity window against `now_ms` (milliseconds since the Unix epoch).
    pub fn check_validity(&self, now_ms: i64) -> Result<(), CertError> {
        if now_ms < self.not_before_ms {
            return Err(CertError::NotYetValid {
                not_before_ms: self.not_before_ms,
            });
        }
        if now_ms > self.not_after_ms {
            return Err(CertError::Expired {
                not_after_ms: self.not_after_ms,
            });
        }
        Ok(())
    }
}

/// A certificate name (`shop.example.com` or `*.example.com`) against a host name: equal, or a
/// wildcard standing for exactly one non-empty leftmost label (RFC 6125 §6.4.3).
fn name_matches(cert_name: &str, host: &str) -> bool {
    if cert_name == host {
        return true;
    }
    match cert_name.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => false,
    }
}

/// Whether `cert` covers the domain `pattern` (normalised first, as the table does): an exact
/// domain by an equal certificate name or a wildcard name one label above it
/// (`*.example.com` covers `shop.example.com`, not `a.shop.example.com`); a wildcard domain
/// `*.example.com` by the certificate name `*.example.com`. Nothing covers the catch-all `*`,
/// and a pattern that is not a valid domain is covered by nothing.
pub fn covers(cert: &ParsedCert, pattern: &str) -> bool {
    DomainPattern::parse(pattern).is_ok_and(|p| cert.covers_pattern(&p))
}

/// Parses and checks a PEM certificate chain (leaf first, then intermediates) and its PEM
/// private key, refusing a certificate outside its validity window now.
pub fn parse_pair(cert_pem: &str, key_pem: &str) -> Result<ParsedCert, CertError> {
    parse_pair_at(cert_pem, key_pem, now_ms())
}

/// [`parse_pair`] at a given time (milliseconds since the Unix epoch).
pub fn parse_pair_at(cert_pem: &str, key_pem: &str, now_ms: i64) -> Result<ParsedCert, CertError> {
    let parsed = load_pair(cert_pem, key_pem)?;
    parsed.check_validity(now_ms)?;
    Ok(parsed)
}

/// [`parse_pair`] without the validity-window check (see the module documentation).
pub fn load_pair(cert_pem: &str, key_pem: &str) -> Result<ParsedCert, CertError> {
    let pem_error = |e: rustls::pki_types::pem::Error| CertError::BadPem(e.to_string());
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    // A key pasted along with the certificate would be stored as certificate text, which is
    // not treated as a secret: refuse it.
    if PrivateKeyDer::from_pem_slice(cert_pem.as_bytes()).is_ok() {
        return Err(CertError::BadPem(
            "the certificate text also holds a private key: send the key separately".into(),
        ));
    }
    let mut leaf = None;
    for (index, der) in chain.iter().enumerate() {
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CertError::BadCertificate {
                index,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(CertError::BadCertificate {
                index,
                reason: "trailing bytes after the certificate".into(),
            });
        }
        if index == 0 {
            leaf = Some(describe(der, &cert)?);
        }
    }
    let Some((names, not_before_ms, not_after_ms, fingerprint_sha256, issuer, subject)) = leaf
    else {
        return Err(CertError::NoCertificate);
    };
    let key_der = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(k) => k,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(CertError::NoKey),
        Err(e) => return Err(pem_error(e)),
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| CertError::UnsupportedKey(e.to_string()))?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::KeyMismatch)
        }
        Err(e) => {
            return Err(CertError::UnsupportedKey(format!(
                "cannot check that the key matches the certificate: {e}"
            )))
        }
    }
    Ok(ParsedCert {
        key: Arc::new(key),
        names,
        not_before_ms,
        not_after_ms,
        fingerprint_sha256,
        issuer,
        subject,
    })
}

/// The SHA-256 fingerprint of a certificate (lower-case hex), as the API shows it.
pub fn fingerprint_sha256(der: &CertificateDer<'_>) -> String {
    hex(&Sha256::digest(der.as_ref()))
}

/// The notAfter of a served key's leaf certificate, in milliseconds since the Unix epoch.
pub fn leaf_not_after_ms(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.validity().not_after.timestamp().saturating_mul(1000))
}

type LeafFacts = (Vec<String>, i64, i64, String, String, String);

fn describe(
    der: &CertificateDer<'_>,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<LeafFacts, CertError> {
    use x509_parser::extensions::GeneralName;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::BadCertificate {
            index: 0,
            reason: format!("subjectAltName: {e}"),
        })?;
    let names = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(n) => {
                        let n = n.trim_end_matches('.').to_ascii_lowercase();
                        (!n.is_empty()).then_some(n)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    let ms = |secs: i64| secs.saturating_mul(1000);
    Ok((
        names,
        ms(validity.not_before.timestamp()),
        ms(validity.not_after.timestamp()),
        hex(&Sha256::digest(der.as_ref())),
        cert.issuer().to_string(),
        cert.subject().to_string(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A time in milliseconds since the Unix epoch as RFC 3339 in UTC, to the second
/// (`2025-03-01T12:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, KeyPair};

    /// A self-signed certificate for `names` valid from `from` to `to` (years), and its key.
    fn pair(names: &[&str], from: i32, to: i32) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_good_pair_parses_with_its_facts() {
        let (cert, key) = pair(&["Shop.Example.com", "*.example.org"], 2020, 2090);
        let p = parse_pair(&cert, &key).unwrap();
        assert_eq!(p.names, ["shop.example.com", "*.example.org"]);
        assert_eq!(p.not_before_ms, 1_577_836_800_000);
        assert_eq!(rfc3339(p.not_after_ms), "2090-01-01T00:00:00Z");
        assert_eq!(p.fingerprint_sha256.len(), 64);
        assert!(p.subject.contains("CN="), "{}", p.subject);
        assert_eq!(p.issuer, p.subject);
        assert_eq!(p.key.cert.len(), 1);
    }

    #[test]
    fn chains_keep_their_order() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pier test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .unwrap();
        let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
        let p = parse_pair(&chain, &leaf_key.serialize_pem()).unwrap();
        assert_eq!(p.key.cert.len(), 2);
        assert!(p.issuer.contains("pier test CA"), "{}", p.issuer);
        assert_eq!(p.names, ["a.test"]);
    }

    #[test]
    fn bad_pairs_are_refused_with_their_reason() {
        let (cert, key) = pair(&["a.test"], 2020, 2090);
        let (_, other_key) = pair(&["a.test"], 2020, 2090);
        assert_eq!(
            parse_pair(&cert, &other_key).unwrap_err(),
            CertError::KeyMismatch
        );
        assert_eq!(parse_pair("", &key).unwrap_err(), CertError::NoCertificate);
        assert_eq!(
            parse_pair(&key, &key).unwrap_err(),
            CertError::NoCertificate
        );
        assert_eq!(parse_pair(&cert, &cert).unwrap_err(), CertError::NoKey);
        assert_eq!(parse_pair(&cert, "junk").unwrap_err(), CertError::NoKey);
        let broken = cert.replacen("MII", "M!I", 1);
        assert!(matches!(
            parse_pair(&broken, &key).unwrap_err(),
            CertError::BadPem(_)
        ));
        let truncated: String = cert.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(matches!(
            parse_pair(&truncated, &key).unwrap_err(),
            CertError::BadPem(_)
        ));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_pair(not_der, &key).unwrap_err(),
            CertError::BadCertificate { index: 0, .. }
        ));
        let with_key = format!("{cert}{key}");
        assert!(matches!(
            parse_pair(&with_key, &key).unwrap_err(),
            CertError::BadPem(r) if r.contains("private key")
        ));
        let bad_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse_pair(&cert, bad_key).unwrap_err(),
            CertError::UnsupportedKey(_)
        ));
    }

    #[test]
    fn validity_window_is_checked_by_parse_not_load() {
        let (old, old_key) = pair(&["a.test"], 2000, 2001);
        let e = parse_pair(&old, &old_key).unwrap_err();
        assert_eq!(
            e,
            CertError::Expired {
                not_after_ms: 978_307_200_000
            }
        );
        assert_eq!(
            e.to_string(),
            "the certificate expired at 2001-01-01T00:00:00Z"
        );
        let (new, new_key) = pair(&["a.test"], 2990, 2999);
        assert!(matches!(
            parse_pair(&new, &new_key).unwrap_err(),
            CertError::NotYetValid { .. }
        ));
        assert!(load_pair(&old, &old_key).is_ok());
        assert!(load_pair(&new, &new_key).is_ok());
        assert!(parse_pair_at(&old, &old_key, 978_307_100_000).is_ok());
    }

    #[test]
    fn coverage_follows_certificate_name_rules() {
        let (cert, key) = pair(&["shop.example.com", "*.example.org"], 2020, 2090);
        let p = load_pair(&cert, &key).unwrap();
        assert!(covers(&p, "shop.example.com"));
        assert!(covers(&p, "SHOP.example.com."));
        assert!(!covers(&p, "www.shop.example.com"));
        assert!(!covers(&p, "example.com"));
        assert!(!covers(&p, "*.example.com"));
        assert!(covers(&p, "a.example.org"));
        assert!(!covers(&p, "a.b.example.org"));
        assert!(!covers(&p, "example.org"));
        assert!(covers(&p, "*.example.org"));
        assert!(!covers(&p, "*.a.example.org"));
        assert!(!covers(&p, "*"));
        assert!(!covers(&p, "not a domain"));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599_999), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799_000), "9999-12-31T23:59:59Z");
    }
}

//! What a table is built from: apps with their domains, backends and settings, however they were
//! read (a routes file, the registry).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::app::AppSettings;
use crate::host::DomainPattern;

/// The whole input of a [`crate::RouteTable`].
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Bases for `{app}.{base}` routing, normalised.
    pub app_domains: Vec<Box<str>>,
    pub apps: Vec<AppSpec>,
    /// TLS certificates and the domain patterns each one is served for.
    pub certs: Vec<CertSpec>,
}

/// One certificate (chain and key) and the domain patterns it serves.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub domains: Vec<DomainPattern>,
    pub key: Arc<CertifiedKey>,
}

/// One app.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub name: Box<str>,
    pub domains: Vec<DomainPattern>,
    pub backends: Vec<BackendSpec>,
    pub settings: Arc<AppSettings>,
}

/// One backend of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Instance id; `None` when the address is the identity.
    pub id: Option<Box<str>>,
    pub addr: SocketAddr,
    /// Set for an `https://` address: the backend is spoken to over TLS.
    pub tls: Option<BackendTls>,
    /// Liveness deadline, milliseconds since the Unix epoch; 0 = none.
    pub expires_at_ms: u64,
    /// Share of the app's requests, relative to its other backends ([`check_weight`]).
    pub weight: u32,
}

/// Most a backend's weight may be.
pub const MAX_WEIGHT: u32 = 1000;

/// Checks a backend weight: 1 to [`MAX_WEIGHT`].
pub fn check_weight(weight: u32) -> Result<u32, String> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(format!(
            "weight {weight} must be between 1 and {MAX_WEIGHT}"
        ))
    }
}

impl BackendSpec {
    /// The address as written: `IP:port`, or `https://IP:port` for TLS.
    pub fn address(&self) -> String {
        backend_address(self.addr, self.tls.is_some())
    }
}

/// TLS to a backend (an `https://` address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// The `server_name` given with the backend (a DNS name, lower-case ASCII, or an IP
    /// address): the name its certificate must be valid for, sent as SNI when it is a DNS
    /// name. `None`: the address's IP, checked against the certificate's IP addresses, and no
    /// SNI (RFC 6066 SNI cannot carry an IP address).
    pub server_name: Option<Arc<str>>,
}

/// `IP:port`, or `https://IP:port` when `tls`.
pub fn backend_address(addr: SocketAddr, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        addr.to_string()
    }
}

/// The scheme that asks for TLS to a backend.
const HTTPS: &str = "https://";

/// Parses a backend address: `IP:port` (cleartext) or `https://IP:port` (TLS), with a port
/// above zero. Returns the socket address and whether it asks for TLS.
pub fn parse_backend_address(text: &str) -> Result<(SocketAddr, bool), String> {
    let (rest, tls) = match text.get(..HTTPS.len()) {
        Some(p) if p.eq_ignore_ascii_case(HTTPS) => (&text[HTTPS.len()..], true),
        _ => (text, false),
    };
    match rest.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok((addr, tls)),
        Ok(_) => Err(format!("{text:?} has port 0")),
        Err(_) => Err(format!(
            "{text:?} is not IP:port or https://IP:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\", \"https://10.0.0.5:8443\")"
        )),
    }
}

/// Checks a backend's `server_name`: a DNS name (IDNA converted, lower-cased, a trailing dot
/// dropped) or an IP address. Returns it as it will be used.
pub fn check_server_name(name: &str) -> Result<Arc<str>, String> {
    if let Ok(ip) = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Arc::from(ip.to_string()));
    }
    let normalised = crate::host::normalise_name(name)
        .map_err(|e| format!("server_name {name:?} is not a host name: {e}"))?;
    rustls::pki_types::ServerName::try_from(&*normalised)
        .map_err(|e| format!("server_name {name:?} is not a host name: {e}"))?;
    Ok(Arc::from(normalised))
}

/// A backend's address and optional `server_name`, checked: the socket address and, for an
/// `https://` address, its TLS settings. A `server_name` needs an `https://` address.
pub fn parse_backend(
    address: &str,
    server_name: Option<&str>,
) -> Result<(SocketAddr, Option<BackendTls>), String> {
    let (addr, tls) = parse_backend_address(address)?;
    let server_name = server_name.map(check_server_name).transpose()?;
    match (tls, server_name) {
        (false, Some(_)) => Err(format!(
            "server_name is for https:// backends; {address:?} is cleartext"
        )),
        (false, None) => Ok((addr, None)),
        (true, server_name) => Ok((addr, Some(BackendTls { server_name }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_are_plain_or_https() {
        let (a, tls) = parse_backend("127.0.0.1:9001", None).unwrap();
        assert_eq!((a.port(), tls), (9001, None));
        let (a, tls) = parse_backend("HTTPS://[::1]:8443", None).unwrap();
        assert_eq!(a, "[::1]:8443".parse().unwrap());
        assert_eq!(tls, Some(BackendTls { server_name: None }));
        assert_eq!(backend_address(a, true), "https://[::1]:8443");
        let (_, tls) = parse_backend("https://10.0.0.5:443", Some("API.Internal.")).unwrap();
        assert_eq!(tls.unwrap().server_name.as_deref(), Some("api.internal"));
        let (_, tls) = parse_backend("https://10.0.0.5:443", Some("10.0.0.9")).unwrap();
        assert_eq!(tls.unwrap().server_name.as_deref(), Some("10.0.0.9"));
        for (address, name, why) in [
            (
                "http://10.0.0.5:80",
                None,
                "is not IP:port or https://IP:port",
            ),
            ("https://backend.internal:443", None, "is not IP:port"),
            ("https://10.0.0.5", None, "is not IP:port"),
            ("https://10.0.0.5:0", None, "port 0"),
            ("10.0.0.5:80", Some("a.test"), "server_name is for https://"),
            ("https://10.0.0.5:443", Some("bad name"), "not a host name"),
            ("https://10.0.0.5:443", Some("*.a.test"), "not a host name"),
        ] {
            let e = parse_backend(address, name).unwrap_err();
            assert!(e.contains(why), "{address} {name:?}: {e}");
        }
    }
}

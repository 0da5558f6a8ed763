//! What a table is built from: apps with their domains, backends and settings, however they were
//! read (a routes file, the registry).

use std::net::SocketAddr;
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
    /// Liveness deadline, milliseconds since the Unix epoch; 0 = none.
    pub expires_at_ms: u64,
}

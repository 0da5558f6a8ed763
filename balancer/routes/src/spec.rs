//! What a table is built from: apps with their domains, backends and settings, however they were
//! read (a routes file, the registry).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app::AppSettings;
use crate::host::DomainPattern;

/// The whole input of a [`crate::RouteTable`].
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Bases for `{app}.{base}` routing, normalised.
    pub app_domains: Vec<Box<str>>,
    pub apps: Vec<AppSpec>,
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
    pub id: Box<str>,
    pub addr: SocketAddr,
    pub expires_at_ms: Option<u64>,
}

//! The routes file (TOML): its on-disk shape, and its validation into a [`RouteSpec`].
//!
//! The pipeline is TOML → [`RoutesFile`] (unknown keys refused) → [`RoutesFile::validate`] →
//! [`RouteSpec`]. Validation reports every problem with the key it is about, e.g.
//! `app[2] (blog).backends[0]: "10.0.0.1" is not IP:port or https://IP:port`. Reading the files a `static` or
//! `maintenance` page or a `[[cert]]` names is left to the caller through a loader, so this
//! crate does no I/O.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::app::{check_hsts, Action, AppSettings, BackendProtocol, Policy, Timeouts};
use crate::cert::{load_pair, CertError};
use crate::host::{normalise_name, DomainPattern};
use crate::spec::{parse_backend, AppSpec, BackendSpec, CertSpec, RouteSpec};
use crate::units::{parse_duration, SizeValue};

/// One problem in a routes file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FileError {
    pub key: String,
    pub reason: String,
}

impl FileError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        FileError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Loads a file named by the routes file (a static or maintenance page, a certificate or key),
/// relative to it.
pub type FileLoader<'a> = &'a dyn Fn(&str) -> Result<Bytes, String>;

/// The routes file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Bases for `{app}.{base}` routing.
    #[serde(default)]
    pub app_domains: Vec<String>,
    #[serde(default, rename = "app")]
    pub apps: Vec<AppFile>,
    /// TLS certificates, `[[cert]]`.
    #[serde(default, rename = "cert")]
    pub certs: Vec<CertFile>,
}

/// A `[[cert]]` table: a PEM certificate chain, its key, and the domains it serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM file: the certificate, then its intermediates.
    pub cert: String,
    /// PEM file: the private key.
    pub key: String,
    /// Domain patterns to serve it for; default: the certificate's DNS names.
    pub domains: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub backends: Vec<BackendFile>,
    pub policy: Option<String>,
    pub hash_on: Option<String>,
    pub hash_balance: Option<u64>,
    pub max_body: Option<SizeValue>,
    pub retries: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub adaptive_limit: Option<bool>,
    #[serde(default)]
    pub spin: bool,
    #[serde(default)]
    pub https_redirect: bool,
    pub hsts: Option<String>,
    pub backend_protocol: Option<String>,
    pub health_check: Option<HealthCheckFile>,
    pub slow_start: Option<String>,
    pub timeouts: Option<TimeoutsFile>,
    pub redirect: Option<RedirectFile>,
    #[serde(rename = "static")]
    pub static_page: Option<StaticFile>,
    pub maintenance: Option<MaintenanceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendFile {
    Address(String),
    Full(BackendTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    pub address: String,
    pub id: Option<String>,
    /// For an `https://` address: the name the backend's certificate is checked for and sent
    /// as SNI (default: the address's IP).
    pub server_name: Option<String>,
    /// Share of the app's requests relative to its other backends (default 1).
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
}

/// `health_check = { path = "/healthz", interval = "2s", ... }` or `{ tcp = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    pub expect: Option<u16>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    pub location: String,
    pub status: Option<u16>,
    #[serde(default)]
    pub keep_path: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub file: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceFile {
    pub body: Option<String>,
    pub file: Option<String>,
    pub content_type: Option<String>,
    pub retry_after: Option<u32>,
}

const DEFAULT_MAINTENANCE: &str = "<!doctype html><title>Down for maintenance</title>\
<h1>Down for maintenance</h1><p>This site is being worked on and will be back shortly.</p>\n";

/// Parses and validates a routes file's text.
pub fn parse(text: &str, load: FileLoader<'_>) -> Result<RouteSpec, Vec<FileError>> {
    let file: RoutesFile =
        toml::from_str(text).map_err(|e| vec![FileError::new("(syntax)", toml_reason(&e))])?;
    file.validate(load)
}

/// A one-line description of a TOML error: its message and where it is.
pub fn toml_reason(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

impl RoutesFile {
    /// Checks every key; all problems are returned together.
    pub fn validate(&self, load: FileLoader<'_>) -> Result<RouteSpec, Vec<FileError>> {
        let mut errors = Vec::new();
        let mut app_domains = Vec::new();
        for (i, base) in self.app_domains.iter().enumerate() {
            match normalise_name(base) {
                Ok(n) => app_domains.push(n),
                Err(e) => errors.push(FileError::new(format!("app_domains[{i}]"), e.to_string())),
            }
        }
        let mut names = HashSet::new();
        let mut claimed: BTreeMap<DomainPattern, String> = BTreeMap::new();
        let mut apps = Vec::with_capacity(self.apps.len());
        for (i, app) in self.apps.iter().enumerate() {
            let key = format!("app[{i}] ({})", app.name);
            if let Err(reason) = check_app_name(&app.name) {
                errors.push(FileError::new(format!("app[{i}].name"), reason));
            } else if !names.insert(app.name.as_str()) {
                errors.push(FileError::new(
                    format!("app[{i}].name"),
                    format!("app {:?} is defined twice", app.name),
                ));
            }
            if let Some(spec) = app.validate(&key, load, &mut errors) {
                for (j, d) in spec.domains.iter().enumerate() {
                    if let Some(other) = claimed.insert(d.clone(), app.name.clone()) {
                        errors.push(FileError::new(
                            format!("{key}.domains[{j}]"),
                            format!("domain {d} is already claimed by app {other:?}"),
                        ));
                    }
                }
                apps.push(spec);
            }
        }
        let mut certs = Vec::with_capacity(self.certs.len());
        let mut served: BTreeMap<DomainPattern, usize> = BTreeMap::new();
        for (i, c) in self.certs.iter().enumerate() {
            if let Some(spec) = c.validate(i, load, &mut errors) {
                for (j, d) in spec.domains.iter().enumerate() {
                    if let Some(other) = served.insert(d.clone(), i) {
                        let key = match c.domains {
                            Some(_) => format!("cert[{i}].domains[{j}]"),
                            None => format!("cert[{i}]"),
                        };
                        errors.push(FileError::new(
                            key,
                            format!("domain {d} already has a certificate (cert[{other}])"),
                        ));
                    }
                }
                certs.push(spec);
            }
        }
        if errors.is_empty() {
            Ok(RouteSpec {
                app_domains,
                apps,
                certs,
            })
        } else {
            Err(errors)
        }
    }
}

/// App names are used as `{app}` labels and in metrics: one DNS label.
pub fn check_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "app name {name:?} must be 1-63 lower-case letters, digits or '-', not starting or ending with '-'"
        ))
    }
}

fn check_status(status: u16, allowed: std::ops::RangeInclusive<u16>) -> Result<u16, String> {
    if allowed.contains(&status) {
        Ok(status)
    } else {
        Err(format!(
            "status {status} is outside {}..={}",
            allowed.start(),
            allowed.end()
        ))
    }
}

/// A header value we will write verbatim: visible ASCII and spaces only.
fn check_header_text(text: &str) -> Result<(), String> {
    if text
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{text:?} contains characters not allowed in a header"
        ))
    }
}

impl AppFile {
    fn validate(
        &self,
        key: &str,
        load: FileLoader<'_>,
        errors: &mut Vec<FileError>,
    ) -> Option<AppSpec> {
        let before = errors.len();
        let mut err = |k: String, r: String| errors.push(FileError::new(k, r));
        let mut domains = Vec::with_capacity(self.domains.len());
        for (j, d) in self.domains.iter().enumerate() {
            match DomainPattern::parse(d) {
                Ok(p) => {
                    if domains.contains(&p) {
                        err(format!("{key}.domains[{j}]"), format!("{d:?} listed twice"));
                    } else {
                        domains.push(p);
                    }
                }
                Err(e) => err(format!("{key}.domains[{j}]"), format!("{d:?}: {e}")),
            }
        }
        let mut backends: Vec<BackendSpec> = Vec::with_capacity(self.backends.len());
        for (j, b) in self.backends.iter().enumerate() {
            let (address, id, server_name, weight) = match b {
                BackendFile::Address(a) => (a.as_str(), None, None, None),
                BackendFile::Full(t) => (
                    t.address.as_str(),
                    t.id.as_deref(),
                    t.server_name.as_deref(),
                    t.weight,
                ),
            };
            let weight = crate::spec::check_weight(weight.unwrap_or(1)).unwrap_or_else(|r| {
                err(format!("{key}.backends[{j}].weight"), r);
                1
            });
            match parse_backend(address, server_name) {
                Ok((addr, tls)) => {
                    let same = |o: &BackendSpec| match (&o.id, id) {
                        (Some(a), Some(b)) => &**a == b,
                        (None, None) => o.addr == addr,
                        _ => false,
                    };
                    if backends.iter().any(same) {
                        err(
                            format!("{key}.backends[{j}]"),
                            format!("backend {} is listed twice", id.unwrap_or(address)),
                        );
                    }
                    backends.push(BackendSpec {
                        id: id.map(Into::into),
                        addr,
                        tls,
                        expires_at_ms: 0,
                        weight,
                    });
                }
                Err(e) => err(format!("{key}.backends[{j}]"), e),
            }
        }
        let policy = match self.policy.as_deref().map(Policy::parse) {
            None => Policy::RoundRobin,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                err(format!("{key}.policy"), e);
                Policy::RoundRobin
            }
        };
        let hash = crate::hash::hash_policy(policy, self.hash_on.as_deref(), self.hash_balance)
            .unwrap_or_else(|(field, e)| {
                err(format!("{key}.{field}"), e);
                None
            });
        if policy != Policy::ConsistentHash {
            // In a file, a setting that does nothing is a mistake worth refusing.
            for (field, given) in [
                ("hash_on", self.hash_on.is_some()),
                ("hash_balance", self.hash_balance.is_some()),
            ] {
                if given {
                    err(
                        format!("{key}.{field}"),
                        crate::hash::NEEDS_HASH_POLICY.to_string(),
                    );
                }
            }
        }
        let max_body = match &self.max_body {
            None => None,
            Some(v) => match v.bytes() {
                Ok(n) => Some(n),
                Err(r) => {
                    err(format!("{key}.max_body"), r);
                    None
                }
            },
        };
        let mut timeouts = Timeouts::default();
        if let Some(t) = &self.timeouts {
            for (name, value, slot) in [
                ("connect", &t.connect, &mut timeouts.connect),
                ("first_byte", &t.first_byte, &mut timeouts.first_byte),
                ("idle", &t.idle, &mut timeouts.idle),
            ] {
                if let Some(v) = value {
                    match parse_duration(v) {
                        Ok(d) if !d.is_zero() => *slot = Some(d),
                        Ok(_) => err(
                            format!("{key}.timeouts.{name}"),
                            "must be above zero".into(),
                        ),
                        Err(r) => err(format!("{key}.timeouts.{name}"), r),
                    }
                }
            }
        }
        let actions = [
            self.redirect.is_some(),
            self.static_page.is_some(),
            self.maintenance.is_some(),
        ];
        let action = if actions.iter().filter(|&&a| a).count() > 1 {
            err(
                key.to_owned(),
                "only one of [redirect], [static] and [maintenance] may be set".into(),
            );
            Action::Proxy
        } else if let Some(r) = &self.redirect {
            let status = check_status(r.status.unwrap_or(302), 300..=308)
                .and_then(|s| {
                    if [301, 302, 303, 307, 308].contains(&s) {
                        Ok(s)
                    } else {
                        Err(format!(
                            "redirect status {s} must be 301, 302, 303, 307 or 308"
                        ))
                    }
                })
                .unwrap_or_else(|r| {
                    err(format!("{key}.redirect.status"), r);
                    302
                });
            if let Err(r) = crate::app::check_redirect_location(&r.location) {
                err(format!("{key}.redirect.location"), r);
            }
            Action::Redirect {
                status,
                location: r.location.as_str().into(),
                keep_path: r.keep_path,
            }
        } else if let Some(s) = &self.static_page {
            let status = check_status(s.status.unwrap_or(200), 200..=599).unwrap_or_else(|r| {
                err(format!("{key}.static.status"), r);
                200
            });
            let body = page(key, "static", &s.body, &s.file, load, &mut err).unwrap_or_default();
            let content_type = s
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".into());
            if let Err(r) = check_header_text(&content_type) {
                err(format!("{key}.static.content_type"), r);
            }
            Action::Static {
                status,
                body,
                content_type: content_type.into(),
            }
        } else if let Some(m) = &self.maintenance {
            let body = if m.body.is_none() && m.file.is_none() {
                Bytes::from_static(DEFAULT_MAINTENANCE.as_bytes())
            } else {
                page(key, "maintenance", &m.body, &m.file, load, &mut err).unwrap_or_default()
            };
            let content_type = m
                .content_type
                .clone()
                .unwrap_or_else(|| "text/html; charset=utf-8".into());
            if let Err(r) = check_header_text(&content_type) {
                err(format!("{key}.maintenance.content_type"), r);
            }
            Action::Maintenance {
                body,
                content_type: content_type.into(),
                retry_after: m.retry_after,
            }
        } else {
            Action::Proxy
        };
        if let Some(h) = &self.hsts {
            if let Err(r) = check_hsts(h) {
                err(format!("{key}.hsts"), r);
            }
        }
        let backend_protocol = match self.backend_protocol.as_deref().map(BackendProtocol::parse) {
            None => BackendProtocol::Http1,
            Some(Ok(p)) => p,
            Some(Err(r)) => {
                err(format!("{key}.backend_protocol"), r);
                BackendProtocol::Http1
            }
        };
        if backend_protocol == BackendProtocol::H2c {
            // h2c is HTTP/2 in cleartext by definition; HTTP/2 over TLS to backends is not
            // offered, so an https:// backend of an h2c app is refused rather than guessed at.
            for (j, b) in backends.iter().enumerate().filter(|(_, b)| b.tls.is_some()) {
                err(
                    format!("{key}.backends[{j}]"),
                    format!(
                        "{:?}: https:// backends speak HTTP/1.1 over TLS; backend_protocol = \"h2c\" is cleartext only",
                        b.address()
                    ),
                );
            }
        }
        let health_check = self.health_check.as_ref().and_then(|h| {
            let mut duration =
                |name: &str, v: &Option<String>| match v.as_deref().map(parse_duration) {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(r)) => {
                        err(format!("{key}.health_check.{name}"), r);
                        None
                    }
                };
            let interval = duration("interval", &h.interval);
            let timeout = duration("timeout", &h.timeout);
            crate::app::HealthCheck::new(crate::app::HealthCheckSpec {
                path: h.path.as_deref(),
                tcp: h.tcp,
                expect: h.expect,
                interval,
                timeout,
                rise: h.rise,
                fall: h.fall,
            })
            .map_err(|r| err(format!("{key}.health_check"), r))
            .ok()
        });
        let slow_start = self.slow_start.as_deref().and_then(|v| {
            match parse_duration(v).and_then(crate::app::check_slow_start) {
                Ok(d) => d,
                Err(r) => {
                    err(format!("{key}.slow_start"), r);
                    None
                }
            }
        });
        if errors.len() > before {
            return None;
        }
        Some(AppSpec {
            name: self.name.as_str().into(),
            domains,
            backends,
            settings: Arc::new(AppSettings {
                action,
                policy,
                hash,
                timeouts,
                max_body,
                retries: self.retries,
                max_in_flight: self.max_in_flight,
                adaptive_limit: self.adaptive_limit,
                spin: self.spin,
                https_redirect: self.https_redirect,
                hsts: self.hsts.as_deref().map(Box::from),
                backend_protocol,
                health_check,
                slow_start,
            }),
        })
    }
}

impl CertFile {
    /// Reads and checks one `[[cert]]` (its index is `i`). An expired certificate is loaded:
    /// refusing it would refuse the whole routes file, every app with it.
    fn validate(
        &self,
        i: usize,
        load: FileLoader<'_>,
        errors: &mut Vec<FileError>,
    ) -> Option<CertSpec> {
        let read = |field: &str, file: &str, errors: &mut Vec<FileError>| {
            let text = load(file).and_then(|b| {
                String::from_utf8(b.to_vec()).map_err(|_| "not PEM text (not UTF-8)".to_string())
            });
            text.map_err(|r| {
                errors.push(FileError::new(
                    format!("cert[{i}].{field}"),
                    format!("{file:?}: {r}"),
                ))
            })
            .ok()
        };
        let cert_pem = read("cert", &self.cert, errors);
        let key_pem = read("key", &self.key, errors);
        let (cert_pem, key_pem) = (cert_pem?, key_pem?);
        let parsed = match load_pair(&cert_pem, &key_pem) {
            Ok(p) => p,
            Err(e) => {
                // Say which file the problem is in.
                let field = match e {
                    CertError::NoKey | CertError::UnsupportedKey(_) | CertError::KeyMismatch => {
                        "key"
                    }
                    _ => "cert",
                };
                let file = if field == "key" {
                    &self.key
                } else {
                    &self.cert
                };
                errors.push(FileError::new(
                    format!("cert[{i}].{field}"),
                    format!("{file:?}: {e}"),
                ));
                return None;
            }
        };
        let before = errors.len();
        let mut domains: Vec<DomainPattern> = Vec::new();
        match &self.domains {
            Some(list) => {
                if list.is_empty() {
                    errors.push(FileError::new(
                        format!("cert[{i}].domains"),
                        "is empty (leave it out to serve the certificate's own names)",
                    ));
                }
                for (j, d) in list.iter().enumerate() {
                    let key = format!("cert[{i}].domains[{j}]");
                    match DomainPattern::parse(d) {
                        Ok(p) if domains.contains(&p) => {
                            errors.push(FileError::new(key, format!("{d:?} listed twice")))
                        }
                        Ok(p) if !parsed.covers_pattern(&p) => errors.push(FileError::new(
                            key,
                            format!(
                                "{p} is not covered by the certificate {:?} (its names: {})",
                                self.cert,
                                names_text(&parsed.names)
                            ),
                        )),
                        Ok(p) => domains.push(p),
                        Err(e) => errors.push(FileError::new(key, format!("{d:?}: {e}"))),
                    }
                }
            }
            None => {
                if parsed.names.is_empty() {
                    errors.push(FileError::new(
                        format!("cert[{i}]"),
                        format!(
                            "the certificate {:?} names no DNS names (subjectAltName): list its domains",
                            self.cert
                        ),
                    ));
                }
                for n in &parsed.names {
                    match DomainPattern::parse(n) {
                        Ok(p) if !domains.contains(&p) => domains.push(p),
                        Ok(_) => {}
                        Err(e) => errors.push(FileError::new(
                            format!("cert[{i}]"),
                            format!(
                                "the certificate name {n:?} is not a domain pattern ({e}): list its domains"
                            ),
                        )),
                    }
                }
            }
        }
        (errors.len() == before).then(|| CertSpec {
            domains,
            key: parsed.key,
        })
    }
}

fn names_text(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn page(
    key: &str,
    table: &str,
    body: &Option<String>,
    file: &Option<String>,
    load: FileLoader<'_>,
    err: &mut impl FnMut(String, String),
) -> Option<Bytes> {
    match (body, file) {
        (Some(_), Some(_)) => {
            err(
                format!("{key}.{table}"),
                "set either body or file, not both".into(),
            );
            None
        }
        (Some(b), None) => Some(Bytes::from(b.clone())),
        (None, Some(f)) => match load(f) {
            Ok(b) => Some(b),
            Err(r) => {
                err(format!("{key}.{table}.file"), format!("{f:?}: {r}"));
                None
            }
        },
        (None, None) => {
            err(format!("{key}.{table}"), "needs a body or a file".into());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(_: &str) -> Result<Bytes, String> {
        Err("no such file".into())
    }

    #[test]
    fn example_from_the_issue_parses() {
        let spec = parse(
            r#"
            [[app]]
            name = "blog"
            domains = ["blog.example.com", "*.blog.example.com"]
            backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
            "#,
            &no_files,
        )
        .unwrap();
        assert_eq!(spec.apps.len(), 1);
        assert_eq!(spec.apps[0].domains.len(), 2);
        assert_eq!(spec.apps[0].backends.len(), 2);
        assert_eq!(spec.apps[0].settings.action, Action::Proxy);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let errs = parse(
            r#"
            [[app]]
            name = "blog"
            domains = ["a..b", "ok.test"]
            backends = ["10.0.0.1", { address = "127.0.0.1:1", id = "x" }]
            policy = "random"
            timeouts = { connect = "5" }
            [app.redirect]
            location = "https://x.test"
            status = 200
            [[app]]
            name = "Bad Name"
            domains = ["ok.test"]
            "#,
            &no_files,
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"app[0] (blog).domains[0]"), "{keys:?}");
        assert!(keys.contains(&"app[0] (blog).backends[0]"), "{keys:?}");
        assert!(keys.contains(&"app[0] (blog).policy"), "{keys:?}");
        assert!(keys.contains(&"app[0] (blog).timeouts.connect"), "{keys:?}");
        assert!(keys.contains(&"app[0] (blog).redirect.status"), "{keys:?}");
        assert!(keys.contains(&"app[1].name"), "{keys:?}");
    }

    #[test]
    fn consistent_hash_settings_are_read_and_checked() {
        let spec = parse(
            r#"
            [[app]]
            name = "shop"
            domains = ["shop.test"]
            backends = ["127.0.0.1:1"]
            policy = "consistent-hash"
            hash_on = "cookie:session"
            [[app]]
            name = "plain"
            domains = ["plain.test"]
            backends = ["127.0.0.1:2"]
            policy = "consistent-hash"
            "#,
            &no_files,
        )
        .unwrap();
        let hash = |i: usize| spec.apps[i].settings.hash.clone().unwrap();
        assert_eq!(hash(0).on, crate::HashOn::Cookie("session".into()));
        assert_eq!(hash(0).balance, crate::hash::DEFAULT_HASH_BALANCE);
        assert_eq!(hash(1).on, crate::HashOn::ClientIp);
        let errs = parse(
            r#"
            [[app]]
            name = "a"
            domains = ["a.test"]
            backends = ["127.0.0.1:1"]
            policy = "consistent-hash"
            hash_on = "query:id"
            hash_balance = 50
            [[app]]
            name = "b"
            domains = ["b.test"]
            backends = ["127.0.0.1:1"]
            hash_on = "client-ip"
            "#,
            &no_files,
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"app[0] (a).hash_on"), "{keys:?}");
        assert!(keys.contains(&"app[1] (b).hash_on"), "{keys:?}");
        let errs = parse(
            r#"
            [[app]]
            name = "a"
            domains = ["a.test"]
            backends = ["127.0.0.1:1"]
            policy = "consistent-hash"
            hash_balance = 50
            "#,
            &no_files,
        )
        .unwrap_err();
        assert_eq!(errs[0].key, "app[0] (a).hash_balance", "{errs:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errs = parse("[[app]]\nname = \"a\"\nbackend = []\n", &no_files).unwrap_err();
        assert!(
            errs[0].reason.contains("unknown field `backend`"),
            "{errs:?}"
        );
    }

    #[test]
    fn domain_claimed_twice_is_refused() {
        let errs = parse(
            "[[app]]\nname = \"a\"\ndomains = [\"x.test\"]\n[[app]]\nname = \"b\"\ndomains = [\"X.test.\"]\n",
            &no_files,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].reason.contains("already claimed by app \"a\""));
    }

    #[test]
    fn actions_parse() {
        let load = |f: &str| -> Result<Bytes, String> {
            assert_eq!(f, "page.html");
            Ok(Bytes::from_static(b"<p>hi</p>"))
        };
        let spec = parse(
            r#"
            [[app]]
            name = "r"
            redirect = { location = "https://example.com", status = 301, keep_path = true }
            [[app]]
            name = "s"
            static = { file = "page.html", content_type = "text/html" }
            [[app]]
            name = "m"
            maintenance = { retry_after = 120 }
            "#,
            &load,
        )
        .unwrap();
        assert!(matches!(
            spec.apps[0].settings.action,
            Action::Redirect {
                status: 301,
                keep_path: true,
                ..
            }
        ));
        assert!(
            matches!(&spec.apps[1].settings.action, Action::Static { body, .. } if &body[..] == b"<p>hi</p>")
        );
        assert!(matches!(
            spec.apps[2].settings.action,
            Action::Maintenance {
                retry_after: Some(120),
                ..
            }
        ));
    }

    #[test]
    fn tls_settings_parse_and_are_checked() {
        let spec = parse(
            r#"
            [[app]]
            name = "a"
            https_redirect = true
            hsts = "max-age=31536000; includeSubDomains"
            [[app]]
            name = "b"
            "#,
            &no_files,
        )
        .unwrap();
        assert!(spec.apps[0].settings.https_redirect);
        assert_eq!(
            spec.apps[0].settings.hsts.as_deref(),
            Some("max-age=31536000; includeSubDomains")
        );
        assert!(!spec.apps[1].settings.https_redirect);
        assert_eq!(spec.apps[1].settings.hsts, None);
        let errs = parse(
            "[[app]]\nname = \"a\"\nhsts = \"includeSubDomains\"\n",
            &no_files,
        )
        .unwrap_err();
        assert_eq!(errs[0].key, "app[0] (a).hsts", "{errs:?}");
        assert!(errs[0].reason.contains("max-age"), "{errs:?}");
        let errs = parse(
            "[[app]]\nname = \"a\"\nhttps_redirect = \"yes\"\n",
            &no_files,
        )
        .unwrap_err();
        assert_eq!(errs[0].key, "(syntax)", "{errs:?}");
        let spec = parse(
            "[[app]]\nname = \"g\"\nbackend_protocol = \"h2c\"\n[[app]]\nname = \"h\"\n",
            &no_files,
        )
        .unwrap();
        assert_eq!(spec.apps[0].settings.backend_protocol, BackendProtocol::H2c);
        assert_eq!(
            spec.apps[1].settings.backend_protocol,
            BackendProtocol::Http1
        );
        let errs = parse(
            "[[app]]\nname = \"g\"\nbackend_protocol = \"h3\"\n",
            &no_files,
        )
        .unwrap_err();
        assert_eq!(errs[0].key, "app[0] (g).backend_protocol", "{errs:?}");
    }

    #[test]
    fn https_backends_carry_their_server_name_and_are_refused_for_h2c() {
        let spec = parse(
            r#"
            [[app]]
            name = "api"
            backends = ["https://10.0.0.5:8443", { address = "https://10.0.0.6:8443", server_name = "API.internal" }, "10.0.0.7:80"]
            "#,
            &no_files,
        )
        .unwrap();
        let b = &spec.apps[0].backends;
        assert_eq!(b[0].tls, Some(crate::BackendTls { server_name: None }));
        assert_eq!(b[0].address(), "https://10.0.0.5:8443");
        assert_eq!(
            b[1].tls.as_ref().and_then(|t| t.server_name.as_deref()),
            Some("api.internal")
        );
        assert_eq!(b[2].tls, None);
        let errs = parse(
            r#"
            [[app]]
            name = "grpc"
            backend_protocol = "h2c"
            backends = ["10.0.0.7:80", "https://10.0.0.5:8443"]
            [[app]]
            name = "plain"
            backends = [{ address = "10.0.0.8:80", server_name = "x.test" }, "10.0.0.8:80", "https://10.0.0.8:80"]
            "#,
            &no_files,
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.key.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "app[0] (grpc).backends[1]");
        assert!(got[0].1.contains("cleartext only"), "{got:?}");
        assert_eq!(got[1].0, "app[1] (plain).backends[0]");
        assert!(got[1].1.contains("server_name is for https://"), "{got:?}");
        assert_eq!(got[2].0, "app[1] (plain).backends[2]");
        assert!(got[2].1.contains("listed twice"), "{got:?}");
    }

    /// Writes a certificate for `names` (valid `from`..`to`, years) and its key into `dir` as
    /// `<stem>.crt` and `<stem>.key`.
    fn write_pair(dir: &std::path::Path, stem: &str, names: &[&str], from: i32, to: i32) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    /// Parses `text` with files read from `dir`, as the balancer does.
    fn parse_in(dir: &std::path::Path, text: &str) -> Result<RouteSpec, Vec<FileError>> {
        let base = dir.to_path_buf();
        let load = move |f: &str| -> Result<Bytes, String> {
            std::fs::read(base.join(f))
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        };
        parse(text, &load)
    }

    #[test]
    fn certs_load_from_files_relative_to_the_routes_file() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(
            dir.path(),
            "shop",
            &["shop.example.com", "*.shop.example.com"],
            2020,
            2090,
        );
        write_pair(dir.path(), "old", &["old.example.com"], 2000, 2001);
        let spec = parse_in(
            dir.path(),
            r#"
            [[app]]
            name = "shop"
            domains = ["shop.example.com", "*.shop.example.com", "old.example.com"]
            [[cert]]
            cert = "shop.crt"
            key = "shop.key"
            [[cert]]
            cert = "old.crt"
            key = "old.key"
            domains = ["Old.Example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(spec.certs.len(), 2);
        // Default: the certificate's own names; an expired certificate still loads.
        assert_eq!(
            spec.certs[0].domains,
            vec![
                DomainPattern::parse("shop.example.com").unwrap(),
                DomainPattern::parse("*.shop.example.com").unwrap()
            ]
        );
        assert_eq!(
            spec.certs[1].domains,
            vec![DomainPattern::parse("old.example.com").unwrap()]
        );
        let t = crate::RouteTable::build(&spec, None).unwrap();
        assert_eq!(t.cert_count(), 3);
        assert!(Arc::ptr_eq(
            t.cert_for("www.shop.example.com").unwrap(),
            &spec.certs[0].key
        ));
        assert!(Arc::ptr_eq(
            t.cert_for("old.example.com").unwrap(),
            &spec.certs[1].key
        ));
        assert!(t.cert_for("example.com").is_none());
    }

    #[test]
    fn every_cert_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "a", &["a.test"], 2020, 2090);
        write_pair(dir.path(), "b", &["b.test"], 2020, 2090);
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        std::fs::write(dir.path().join("binary.pem"), [0xff, 0xfe, 0]).unwrap();
        let errs = parse_in(
            dir.path(),
            r#"
            [[cert]]
            cert = "missing.crt"
            key = "a.key"
            [[cert]]
            cert = "a.crt"
            key = "b.key"
            [[cert]]
            cert = "a.crt"
            key = "a.key"
            domains = ["a.test", "www.a.test", "*.a.test", "a..test", "A.test"]
            [[cert]]
            cert = "junk.pem"
            key = "a.key"
            [[cert]]
            cert = "a.crt"
            key = "junk.pem"
            [[cert]]
            cert = "binary.pem"
            key = "a.key"
            [[cert]]
            cert = "b.crt"
            key = "b.key"
            [[cert]]
            cert = "b.crt"
            key = "b.key"
            domains = ["b.test"]
            [[cert]]
            cert = "b.crt"
            key = "b.key"
            domains = []
            "#,
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.key.as_str(), e.reason.as_str()))
            .collect();
        let has = |key: &str, words: &str| {
            assert!(
                got.iter().any(|(k, r)| *k == key && r.contains(words)),
                "no {key}: ...{words}... in {got:#?}"
            )
        };
        has("cert[0].cert", "\"missing.crt\"");
        has("cert[1].key", "does not match");
        has("cert[2].domains[1]", "www.a.test is not covered");
        has("cert[2].domains[2]", "*.a.test is not covered");
        has("cert[2].domains[3]", "\"a..test\"");
        has("cert[2].domains[4]", "listed twice");
        has("cert[3].cert", "no certificate");
        has("cert[4].key", "no private key");
        has("cert[5].cert", "UTF-8");
        has(
            "cert[7].domains[0]",
            "b.test already has a certificate (cert[6])",
        );
        has("cert[8].domains", "is empty");
        assert_eq!(got.len(), 11, "{got:#?}");
    }
}

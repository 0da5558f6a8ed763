//! The routes file (TOML): its on-disk shape, and its validation into a [`RouteSpec`].
//!
//! The pipeline is TOML → [`RoutesFile`] (unknown keys refused) → [`RoutesFile::validate`] →
//! [`RouteSpec`]. Validation reports every problem with the key it is about, e.g.
//! `app[2] (blog).backends[0]: "10.0.0.1" is not IP:port`. Reading the files a `static` or
//! `maintenance` page names is left to the caller through a loader, so this crate does no I/O.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::app::{Action, AppSettings, Policy, Timeouts};
use crate::host::{normalise_name, DomainPattern};
use crate::spec::{AppSpec, BackendSpec, RouteSpec};
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

/// Loads a file named by the routes file (a static or maintenance page), relative to it.
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
    pub max_body: Option<SizeValue>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub spin: bool,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
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
        if errors.is_empty() {
            Ok(RouteSpec { app_domains, apps })
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
            let (address, id) = match b {
                BackendFile::Address(a) => (a.as_str(), None),
                BackendFile::Full(t) => (t.address.as_str(), t.id.as_deref()),
            };
            match address.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => {
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
                        expires_at_ms: 0,
                    });
                }
                _ => err(
                    format!("{key}.backends[{j}]"),
                    format!("{address:?} is not IP:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\")"),
                ),
            }
        }
        let policy = match self.policy.as_deref() {
            None | Some("round-robin") => Policy::RoundRobin,
            Some("least-outstanding") => Policy::LeastOutstanding,
            Some(other) => {
                err(
                    format!("{key}.policy"),
                    format!(
                        "unknown policy {other:?} (use \"round-robin\" or \"least-outstanding\")"
                    ),
                );
                Policy::RoundRobin
            }
        };
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
            if r.location.is_empty() {
                err(
                    format!("{key}.redirect.location"),
                    "must not be empty".into(),
                );
            }
            if let Err(r) = check_header_text(&r.location) {
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
                timeouts,
                max_body,
                retries: self.retries,
                spin: self.spin,
            }),
        })
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
}

//! What the registry stores (JSON values in Redis hashes) and what its change log carries.

use std::sync::Arc;
use std::time::Duration;

use pier_routes::app::{check_hsts, BackendProtocol, HealthCheck, HealthCheckSpec, Probe};
use pier_routes::hash::{hash_policy, DEFAULT_HASH_BALANCE};
use pier_routes::{Action, AppSettings, HashOn, Policy, Timeouts};
use serde::{Deserialize, Serialize};

/// An app's settings as stored under `apps` (every field optional; defaults as in the routes
/// file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = AppSettings))]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    /// `round-robin` (default), `least-outstanding` or `consistent-hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub policy: Option<String>,
    /// What a `consistent-hash` app hashes: `client-ip` (default), `header:NAME` or
    /// `cookie:NAME`. Kept, unused, under another policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub hash_on: Option<String>,
    /// A `consistent-hash` app's bound on a backend's load, in percent of its fair share of
    /// the requests in flight (100 to 1000, default 125); 0: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false, maximum = 1000))]
    pub hash_balance: Option<u64>,
    /// Largest request body, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max_body: Option<u64>,
    /// Attempts on other backends after a failure that is safe to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub retries: Option<u32>,
    /// Requests proxied to the app at once (default: the balancer's `[limits]
    /// app_max_in_flight`; 0: no limit). Past it, a short queue, then `503 app-overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max_in_flight: Option<u32>,
    /// Whether the app's limit on requests in flight follows its backends' latency (under
    /// `max_in_flight`; default: the balancer's `[limits] app_adaptive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub adaptive_limit: Option<bool>,
    #[serde(default, skip_serializing_if = "TimeoutsRecord::is_empty")]
    pub timeouts: TimeoutsRecord,
    #[serde(default)]
    pub action: ActionRecord,
    /// Hold requests while the app has no live backend (mantrid's `spin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spin: bool,
    /// Answer plain-HTTP requests with a 308 to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// `Strict-Transport-Security` value for HTTPS responses: `max-age=<seconds>[; directives]`,
    /// visible ASCII.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub hsts: Option<String>,
    /// `http1` (default) or `h2c`: what the app's backends speak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub backend_protocol: Option<String>,
    /// Active health checks of the app's backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub health_check: Option<HealthCheckRecord>,
    /// Milliseconds over which a backend joining (or back from ejection or a failed health
    /// check) ramps up to its full share; 0 or absent: at once. At most an hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false, maximum = 3600000))]
    pub slow_start_ms: Option<u64>,
}

/// An app's active health check: an HTTP `path` (answered with `expect`, default 200) or `tcp`;
/// every `interval_ms` (default 5000), each probe within `timeout_ms` (default 2000); a backend
/// failing `fall` (3) in a row leaves rotation until it passes `rise` (2) in a row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = HealthCheck))]
#[serde(deny_unknown_fields)]
pub struct HealthCheckRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub expect: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub fall: Option<u32>,
}

impl HealthCheckRecord {
    pub fn to_check(&self) -> Result<HealthCheck, String> {
        HealthCheck::new(HealthCheckSpec {
            path: self.path.as_deref(),
            tcp: self.tcp,
            expect: self.expect,
            interval: self.interval_ms.map(Duration::from_millis),
            timeout: self.timeout_ms.map(Duration::from_millis),
            rise: self.rise,
            fall: self.fall,
        })
    }

    pub fn from_check(c: &HealthCheck) -> HealthCheckRecord {
        let (path, tcp, expect) = match &c.probe {
            Probe::Http { path, expect } => (Some(path.to_string()), false, Some(*expect)),
            Probe::Tcp => (None, true, None),
        };
        HealthCheckRecord {
            path,
            tcp,
            expect,
            interval_ms: Some(c.interval.as_millis() as u64),
            timeout_ms: Some(c.timeout.as_millis() as u64),
            rise: Some(c.rise),
            fall: Some(c.fall),
        }
    }
}

/// Per-app upstream timeouts, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Timeouts))]
#[serde(deny_unknown_fields)]
pub struct TimeoutsRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub first_byte_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub idle_ms: Option<u64>,
}

impl TimeoutsRecord {
    fn is_empty(&self) -> bool {
        self == &TimeoutsRecord::default()
    }
}

/// What the balancer does with an app's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Action))]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActionRecord {
    #[default]
    Proxy,
    Redirect {
        location: String,
        #[serde(default = "default_redirect")]
        status: u16,
        #[serde(default)]
        keep_path: bool,
    },
    Static {
        #[serde(default = "default_static")]
        status: u16,
        body: String,
        #[serde(default = "default_text")]
        content_type: String,
    },
    Maintenance {
        #[serde(default)]
        body: Option<String>,
        #[serde(default = "default_html")]
        content_type: String,
        #[serde(default)]
        retry_after: Option<u32>,
    },
}

fn default_redirect() -> u16 {
    302
}
fn default_static() -> u16 {
    200
}
fn default_text() -> String {
    "text/plain; charset=utf-8".into()
}
fn default_html() -> String {
    "text/html; charset=utf-8".into()
}

const MAINTENANCE_PAGE: &str = "<!doctype html><title>Down for maintenance</title>\
<h1>Down for maintenance</h1><p>This site is being worked on and will be back shortly.</p>\n";

fn header_safe(text: &str) -> bool {
    text.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

impl AppRecord {
    /// The record that gives these settings (the inverse of [`AppRecord::to_settings`]).
    pub fn from_settings(s: &AppSettings) -> AppRecord {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        AppRecord {
            policy: match s.policy {
                Policy::RoundRobin => None,
                p => Some(p.name().to_string()),
            },
            // Written only where they differ from the defaults they are read back with.
            hash_on: s
                .hash
                .as_ref()
                .filter(|h| h.on != HashOn::default())
                .map(|h| h.on.to_text()),
            hash_balance: s
                .hash
                .as_ref()
                .filter(|h| h.balance != DEFAULT_HASH_BALANCE)
                .map(|h| u64::from(h.balance)),
            max_body: s.max_body,
            retries: s.retries,
            max_in_flight: s.max_in_flight,
            adaptive_limit: s.adaptive_limit,
            health_check: s.health_check.as_ref().map(HealthCheckRecord::from_check),
            slow_start_ms: s.slow_start.map(|d| d.as_millis() as u64),
            timeouts: TimeoutsRecord {
                connect_ms: ms(s.timeouts.connect),
                first_byte_ms: ms(s.timeouts.first_byte),
                idle_ms: ms(s.timeouts.idle),
            },
            action: match &s.action {
                Action::Proxy => ActionRecord::Proxy,
                Action::Redirect {
                    status,
                    location,
                    keep_path,
                } => ActionRecord::Redirect {
                    location: location.to_string(),
                    status: *status,
                    keep_path: *keep_path,
                },
                Action::Static {
                    status,
                    body,
                    content_type,
                } => ActionRecord::Static {
                    status: *status,
                    body: String::from_utf8_lossy(body).into_owned(),
                    content_type: content_type.to_string(),
                },
                Action::Maintenance {
                    body,
                    content_type,
                    retry_after,
                } => ActionRecord::Maintenance {
                    body: Some(String::from_utf8_lossy(body).into_owned()),
                    content_type: content_type.to_string(),
                    retry_after: *retry_after,
                },
            },
            spin: s.spin,
            https_redirect: s.https_redirect,
            backend_protocol: match s.backend_protocol {
                BackendProtocol::Http1 => None,
                p => Some(p.name().to_string()),
            },
            hsts: s.hsts.as_deref().map(str::to_string),
        }
    }

    /// Checks the record and turns it into the route table's settings.
    pub fn to_settings(&self) -> Result<Arc<AppSettings>, String> {
        let policy = match self.policy.as_deref() {
            None => Policy::RoundRobin,
            Some(p) => Policy::parse(p)?,
        };
        let hash =
            hash_policy(policy, self.hash_on.as_deref(), self.hash_balance).map_err(|(_, e)| e)?;
        let ms = |v: Option<u64>, what: &str| -> Result<Option<Duration>, String> {
            match v {
                Some(0) => Err(format!("timeouts.{what} must be above zero")),
                v => Ok(v.map(Duration::from_millis)),
            }
        };
        let timeouts = Timeouts {
            connect: ms(self.timeouts.connect_ms, "connect_ms")?,
            first_byte: ms(self.timeouts.first_byte_ms, "first_byte_ms")?,
            idle: ms(self.timeouts.idle_ms, "idle_ms")?,
        };
        let action = match &self.action {
            ActionRecord::Proxy => Action::Proxy,
            ActionRecord::Redirect {
                location,
                status,
                keep_path,
            } => {
                if ![301, 302, 303, 307, 308].contains(status) {
                    return Err(format!(
                        "redirect status {status} must be 301, 302, 303, 307 or 308"
                    ));
                }
                pier_routes::app::check_redirect_location(location)?;
                Action::Redirect {
                    status: *status,
                    location: location.as_str().into(),
                    keep_path: *keep_path,
                }
            }
            ActionRecord::Static {
                status,
                body,
                content_type,
            } => {
                if !(200..=599).contains(status) {
                    return Err(format!("static status {status} is outside 200..=599"));
                }
                if !header_safe(content_type) {
                    return Err("content_type has characters not allowed in a header".into());
                }
                Action::Static {
                    status: *status,
                    body: body.clone().into(),
                    content_type: content_type.as_str().into(),
                }
            }
            ActionRecord::Maintenance {
                body,
                content_type,
                retry_after,
            } => {
                if !header_safe(content_type) {
                    return Err("content_type has characters not allowed in a header".into());
                }
                Action::Maintenance {
                    body: body
                        .clone()
                        .unwrap_or_else(|| MAINTENANCE_PAGE.into())
                        .into(),
                    content_type: content_type.as_str().into(),
                    retry_after: *retry_after,
                }
            }
        };
        if let Some(h) = &self.hsts {
            check_hsts(h)?;
        }
        let backend_protocol = match self.backend_protocol.as_deref() {
            None => BackendProtocol::Http1,
            Some(p) => BackendProtocol::parse(p)?,
        };
        Ok(Arc::new(AppSettings {
            action,
            policy,
            hash,
            timeouts,
            max_body: self.max_body,
            retries: self.retries,
            max_in_flight: self.max_in_flight,
            adaptive_limit: self.adaptive_limit,
            spin: self.spin,
            https_redirect: self.https_redirect,
            hsts: self.hsts.as_deref().map(Box::from),
            backend_protocol,
            health_check: self
                .health_check
                .as_ref()
                .map(HealthCheckRecord::to_check)
                .transpose()?,
            slow_start: match self.slow_start_ms {
                None => None,
                Some(ms) => pier_routes::app::check_slow_start(Duration::from_millis(ms))?,
            },
        }))
    }
}

/// A domain's owner and verification state, stored under `domains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRecord {
    pub app: String,
    /// Only verified domains are routed.
    pub verified: bool,
    /// The token a pending domain must serve at
    /// `/.well-known/pier-challenge/<token>` to be verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When a pending claim was made, in milliseconds since the Unix epoch (0: verified, or a
    /// claim recorded before this field existed). A pending claim older than the API's
    /// `--claim-ttl-hours` no longer holds the name against other apps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claimed_ms: u64,
}

impl DomainRecord {
    /// A verified domain of `app` (routed; no token, no claim time).
    pub fn verified(app: impl Into<String>) -> Self {
        DomainRecord {
            app: app.into(),
            verified: true,
            token: None,
            claimed_ms: 0,
        }
    }
}

/// An app's pending claim on a domain pattern, stored under `claims:<domain>` (field: the app).
/// It routes nothing and reserves nothing: several apps may hold claims on one name, and the
/// first to prove it (the TXT record `_pier-challenge.<name>` holding its token) gets the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The value the TXT record must hold.
    pub token: String,
    /// When the claim was made or last renewed, milliseconds since the Unix epoch.
    pub claimed_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One backend instance, stored under `backends` as `app/id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRecord {
    /// `IP:port`, or `https://IP:port` for a backend spoken to over TLS.
    pub address: String,
    /// Liveness deadline in milliseconds since the Unix epoch; 0 = no deadline.
    #[serde(default)]
    pub expires_at_ms: u64,
    /// For an `https://` address: the name its certificate is checked for and sent as SNI
    /// (default: the address's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Share of the app's requests relative to its other backends (1 to 1000; absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A domain's TLS certificate, stored under `certs` by domain pattern. The domain must be a
/// verified domain of `app`; deleting or un-verifying the domain, or deleting the app, deletes
/// the certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRecord {
    pub app: String,
    /// PEM: the certificate, then its intermediates.
    pub cert: String,
    /// PEM: the private key.
    pub key: String,
    /// When it was stored, milliseconds since the Unix epoch.
    #[serde(default)]
    pub added_ms: u64,
    /// Who provided it: the owner (uploaded) or the platform's ACME orderer. An uploaded
    /// certificate wins over an issued one for the same name.
    #[serde(default, skip_serializing_if = "CertSource::is_uploaded")]
    pub source: CertSource,
}

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSource {
    /// Uploaded by the app's owner or the operator (`pier certs add`).
    #[default]
    Uploaded,
    /// Issued and renewed by the platform over ACME.
    Acme,
}

impl CertSource {
    pub fn is_uploaded(&self) -> bool {
        *self == CertSource::Uploaded
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Uploaded => "uploaded",
            CertSource::Acme => "acme",
        }
    }
}

/// A pending ACME HTTP-01 challenge, stored under `acme:challenges` by token: every balancer
/// answers `GET /.well-known/acme-challenge/<token>` on `domain` with `key_authorization`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRecord {
    pub domain: String,
    pub key_authorization: String,
}

impl std::fmt::Debug for CertRecord {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("app", &self.app)
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &format_args!("<redacted>"))
            .field("added_ms", &self.added_ms)
            .field("source", &self.source)
            .finish()
    }
}

/// A token's rights, stored under `tokens` by the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// `operator` or `owner`.
    pub role: String,
    /// The app an owner token acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default)]
    pub created_ms: u64,
}

/// What a change-log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    App,
    Domain,
    Backend,
    /// A domain's TLS certificate ([`CertRecord`]), keyed by domain pattern.
    Cert,
    /// A pending ACME HTTP-01 challenge ([`ChallengeRecord`]), keyed by token.
    Challenge,
}

/// One change-log entry: after version `version`, `key` of `kind` has `value` (JSON), or is
/// gone when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The stream entry id (the feed position).
    pub id: String,
    pub version: u64,
    pub kind: ChangeKind,
    pub key: String,
    pub value: Option<String>,
}

/// Everything route-affecting in the registry at one version (raw JSON values). Also the
/// format of a balancer's local snapshot file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// Feed position to tail from after this snapshot.
    pub feed_id: String,
    pub apps: Vec<(String, String)>,
    pub domains: Vec<(String, String)>,
    pub backends: Vec<(String, String)>,
    /// Absent from snapshots written before certificates existed.
    #[serde(default)]
    pub certs: Vec<(String, String)>,
    /// Pending ACME challenges (absent from local snapshot files: they are short-lived).
    #[serde(default)]
    pub challenges: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_round_trip_and_are_checked() {
        let rec: AppRecord = serde_json::from_str(
            r#"{"https_redirect": true, "hsts": "max-age=600; includeSubDomains"}"#,
        )
        .unwrap();
        let s = rec.to_settings().unwrap();
        assert!(s.https_redirect);
        assert_eq!(s.hsts.as_deref(), Some("max-age=600; includeSubDomains"));
        assert_eq!(AppRecord::from_settings(&s), rec);
        // Defaults are left out of the JSON.
        let plain = AppRecord::from_settings(&AppSettings::default());
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("https_redirect") && !json.contains("hsts"),
            "{json}"
        );
        let bad = AppRecord {
            hsts: Some("preload".into()),
            ..AppRecord::default()
        };
        assert!(bad.to_settings().unwrap_err().contains("max-age"));
        let h2c: AppRecord = serde_json::from_str(r#"{"backend_protocol": "h2c"}"#).unwrap();
        let s = h2c.to_settings().unwrap();
        assert_eq!(s.backend_protocol, BackendProtocol::H2c);
        assert_eq!(AppRecord::from_settings(&s), h2c);
        assert!(!json.contains("backend_protocol"), "{json}");
        let bad: AppRecord = serde_json::from_str(r#"{"backend_protocol": "h3"}"#).unwrap();
        assert!(bad.to_settings().unwrap_err().contains("backend_protocol"));
    }
}

//! The registry API's request and response bodies: one Rust type per wire shape, used by the
//! server to answer, by clients to read, and by the OpenAPI document (`ToSchema`) to describe.

use std::collections::BTreeMap;

use pier_registry::model::{AppRecord, TimeoutsRecord};
use pier_registry::BalancerStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::platform::{AddonRecord, AddonState, InstanceStatus, Release, RunExit, RunnerRecord};

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// Short code: bad-request, unauthorized, forbidden, not-found, method-not-allowed,
    /// conflict, too-large, unprocessable, verification-failed, registry-unavailable, internal.
    pub error: String,
    /// What was wrong, for a human.
    pub reason: String,
}

/// Liveness, with the registry's version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub registry_version: u64,
}

/// An app: its settings, and in `GET /v1/apps/{app}` its domains and backends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = App)]
pub struct AppView {
    pub name: String,
    pub settings: AppRecord,
    /// Only in `GET /v1/apps/{app}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub domains: Option<Vec<DomainView>>,
    /// Only in `GET /v1/apps/{app}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub backends: Option<Vec<BackendView>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppView>,
}

/// AppSettings fields to replace; `null` resets a field to its default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1000)]
    pub hash_balance: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_limit: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Option<TimeoutsRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Option<pier_registry::model::ActionRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spin: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Option<pier_registry::model::HealthCheckRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 3600000)]
    pub slow_start_ms: Option<Option<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    pub name: String,
    #[serde(default)]
    #[schema(nullable = false)]
    pub settings: Option<AppRecord>,
}

/// While a domain is pending: the DNS record that proves it. Publish it in the name's zone,
/// then verify.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChallengeView {
    /// Always `TXT`.
    #[serde(rename = "type")]
    #[schema(example = "TXT")]
    pub kind: String,
    /// The record's name: `_pier-challenge.<domain>` (for `*.<base>`, `_pier-challenge.<base>`).
    #[schema(example = "_pier-challenge.www.example.com")]
    pub name: String,
    /// The value the TXT record must hold (other TXT records may sit beside it).
    pub value: String,
}

/// Where a domain points in DNS, compared with the platform's DNS target (for information:
/// routing does not depend on it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DnsCheck {
    /// The name the domain should point at (`pier api --dns-target`).
    pub target: String,
    /// `true`: a CNAME to the target, or addresses all among the target's; `false`: not yet;
    /// absent when the lookup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub points_at_target: Option<bool>,
    /// What the lookup found, as `CNAME name`, `A address` or `AAAA address`.
    pub found: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// When a domain's certificate expires and which one it is (in the app view).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertSummary {
    pub not_after: String,
    pub fingerprint_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Domain)]
pub struct DomainView {
    pub domain: String,
    pub app: String,
    /// Only verified domains are routed.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub challenge: Option<ChallengeView>,
    /// While pending: when the claim lapses (RFC 3339; `pier api --claim-ttl-hours`, 72 by
    /// default). A lapsed claim is no longer verified; adding the domain again renews it with
    /// the same token. A claim reserves nothing: the first app to prove a name gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub claim_expires_at: Option<String>,
    /// The name this domain should point at (CNAME, or the same addresses at an apex), when
    /// the operator set one (`pier api --dns-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dns_target: Option<String>,
    /// In the domain list only, with a DNS target: where the name points now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dns: Option<DnsCheck>,
    /// In the app view only: the domain's certificate, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub certificate: Option<CertSummary>,
    /// In the domain list, with ACME on: where the platform's certificate for the name stands
    /// (see `Cert.state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cert_state: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub domains: Vec<DomainView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    pub domain: String,
    /// Operator only: add the domain as verified, skipping the ownership check.
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Operator only: mark verified without running the check.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Backend)]
pub struct BackendView {
    pub id: String,
    /// `IP:port`, or `https://IP:port` for a backend spoken to over TLS.
    pub address: String,
    /// The name an `https://` backend's certificate is checked for (absent: its IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub server_name: Option<String>,
    /// Share of the app's requests relative to its other backends.
    #[serde(default = "one")]
    pub weight: u32,
    /// Liveness deadline, ms since the epoch; 0 = none.
    pub expires_at_ms: u64,
    /// Whether the balancer considers it now (its deadline is not past).
    pub live: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackendList {
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    /// `IP:port`, or `https://IP:port` to speak to the backend over TLS (its certificate is
    /// verified).
    pub address: String,
    /// For an `https://` address: the name the certificate is checked for and sent as SNI
    /// (default: the address's IP).
    #[serde(default)]
    #[schema(nullable = false)]
    pub server_name: Option<String>,
    /// Instance id (default: generated).
    #[serde(default)]
    #[schema(nullable = false)]
    pub id: Option<String>,
    /// Seconds until the backend expires unless a heartbeat extends it; absent = never.
    #[serde(default)]
    #[schema(nullable = false, minimum = 1)]
    pub ttl_s: Option<u64>,
    /// Share of the app's requests relative to its other backends (default 1).
    #[serde(default)]
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    pub weight: Option<u32>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Heartbeat)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    #[schema(minimum = 1)]
    pub ttl_s: u64,
}

/// A certificate upload. No `Debug`: it holds a private key.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCert {
    /// PEM: the certificate, then its intermediates.
    pub cert: String,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1); never returned.
    pub key: String,
}

/// A domain's certificate, without its private key, and where the platform's issued
/// certificate for it stands (ACME). The certificate's fields are absent while none is served.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Cert)]
pub struct CertView {
    pub domain: String,
    /// The certificate's DNS names (subjectAltName); empty while none is served.
    pub names: Vec<String>,
    /// Validity window, RFC 3339 (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub not_after: Option<String>,
    /// SHA-256 of the leaf certificate (DER), lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub fingerprint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub subject: Option<String>,
    /// Who provided the certificate served: `uploaded` (an owner or the operator) or `acme`
    /// (issued by the platform). Absent while none is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub source: Option<String>,
    /// The platform's issued certificate for the name: `off` (ACME is not configured, or a
    /// wildcard name: upload a certificate), `waiting for verification`, `waiting for DNS`,
    /// `ordering`, `issued`, `failed`.
    pub state: String,
    /// Why the last order failed (the CA's words), or why the name waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// When the name is ordered again (after a failure, or its renewal), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_attempt: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub app: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Token)]
pub struct TokenView {
    /// Shown once; only its SHA-256 is stored.
    pub token: String,
    pub role: String,
    pub app: String,
}

// ------------------------------------------------------------------- platform

/// One line of a deploy's answer (`application/x-ndjson`): the build's output as it runs, then
/// the release made or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeployEvent {
    Log {
        log: String,
    },
    Release {
        release: Box<Release>,
        /// Where the app answers (`pier api --apps-url`).
        url: Option<String>,
    },
    Error {
        error: String,
    },
}

impl DeployEvent {
    /// The event as one NDJSON line.
    pub fn line(&self) -> bytes::Bytes {
        let mut text = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        text.push('\n');
        bytes::Bytes::from(text)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    /// The release that should run.
    pub current: Option<u64>,
    /// Newest first.
    pub releases: Vec<Release>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[schema(as = Rollback)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to (default: the newest earlier one that did not fail).
    #[serde(default)]
    #[schema(nullable = false, minimum = 1)]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Config)]
pub struct ConfigView {
    pub config: BTreeMap<String, String>,
    /// The release the change made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub release: Option<u64>,
}

/// Config vars to set (a string) or unset (`null`). Names match `[A-Z_][A-Z0-9_]*`; `PORT` and
/// `PIER_*` are the platform's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct ConfigPatch(pub BTreeMap<String, Option<String>>);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Formation)]
pub struct FormationView {
    /// Instances per process type of the current release.
    pub formation: BTreeMap<String, u32>,
}

/// Instances wanted per process type, e.g. `{"web": 3}` (0 to 100).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct FormationPatch(pub BTreeMap<String, u32>);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    /// One instance (`web.1`); absent: all of them.
    #[serde(default)]
    #[schema(nullable = false)]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Restarted {
    pub generation: u64,
    pub instance: Option<String>,
}

/// A runner as the operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunnerView {
    #[serde(flatten)]
    pub runner: RunnerRecord,
    /// Its heartbeat is recent enough for the coordinator to use it.
    pub live: bool,
    pub heartbeat_age_ms: u64,
    /// Instances assigned to it.
    pub instances: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunnerList {
    pub runners: Vec<RunnerView>,
}

/// A balancer as the operator sees it: its last report and how current it is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BalancerView {
    #[serde(flatten)]
    pub status: BalancerStatus,
    /// Age of its last report, ms.
    pub report_age_ms: u64,
    /// It reported recently (it writes every 5 s).
    pub live: bool,
    /// Registry versions its table lags behind the registry's current one (0: current).
    pub versions_behind: u64,
}

/// `GET /v1/balancers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BalancerList {
    /// The registry's version now.
    pub registry_version: u64,
    pub balancers: Vec<BalancerView>,
}

/// An app's add-on, with the config vars (credentials) it set on the app.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Addon)]
pub struct AddonView {
    /// `postgres` or `redis`.
    pub kind: String,
    /// `standard` (postgres), `shared` (redis).
    pub plan: String,
    pub state: AddonState,
    /// The database, or the Redis user, made for the app.
    pub resource: String,
    /// The config vars it set: `DATABASE_URL`; `REDIS_URL` and `REDIS_PREFIX`.
    pub config: BTreeMap<String, String>,
    pub created_ms: u64,
}

impl From<&AddonRecord> for AddonView {
    fn from(r: &AddonRecord) -> Self {
        AddonView {
            kind: r.kind.clone(),
            plan: r.plan.clone(),
            state: r.state,
            resource: r.resource.clone(),
            config: r.config.clone(),
            created_ms: r.created_ms,
        }
    }
}

/// An app's log lines, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogList {
    pub lines: Vec<crate::platform::LogLine>,
}

/// What an app served and used over the last minute, hour and day (`GET /v1/apps/{app}/stats`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppStats {
    pub app: String,
    /// When this was read, ms since the epoch.
    pub at_ms: u64,
    /// Requests through the balancers, merged across them: `1m`, `1h`, `1d`.
    pub requests: Vec<RequestStats>,
    /// Each instance's CPU and memory (`web.1@runner`), with the same windows.
    pub instances: Vec<InstanceStats>,
    /// Requests in 10-second buckets over the last two minutes, oldest first; the last one is
    /// the current bucket, still filling (its `seconds` says how much of it has passed). For a
    /// live chart: read again every few seconds.
    #[serde(default)]
    pub series: Vec<StatsPoint>,
}

/// One bucket of [`AppStats::series`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatsPoint {
    /// Start of the bucket, seconds since the epoch.
    pub start_s: u64,
    /// Seconds of the bucket that have passed (10, or fewer for the current one).
    pub seconds: u64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub errors_5xx: u64,
    /// Milliseconds; none without requests.
    pub p99_ms: Option<f64>,
}

/// Requests over one window. The window is made of whole buckets (10 s for `1m`, a minute for
/// `1h`, an hour for `1d`), the current one included: `seconds` says how long it covers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestStats {
    pub window: String,
    pub seconds: u64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub errors_5xx: u64,
    /// Share of answers with a 5xx status, 0 to 1.
    pub share_5xx: f64,
    /// Latency from the request head to the end of the response, milliseconds (none without
    /// requests).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceStats {
    /// `web.1@runner-id`.
    pub instance: String,
    pub windows: Vec<UsageStats>,
}

/// An instance's use over one window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageStats {
    pub window: String,
    /// CPU used, percent of one core, averaged over the window's length.
    pub cpu_percent: f64,
    /// Resident memory, mean of the samples and highest sample, bytes.
    pub memory_bytes: u64,
    pub memory_max_bytes: u64,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct AddonList {
    pub addons: Vec<AddonView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddon {
    /// `postgres` or `redis`.
    pub kind: String,
    /// `standard` for postgres (the default); `shared` for redis (the default).
    #[serde(default)]
    #[schema(nullable = false)]
    pub plan: Option<String>,
}

/// Destroying an add-on drops its data: the app's name must be repeated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyAddon {
    #[serde(default)]
    #[schema(nullable = false)]
    pub confirm: Option<String>,
}

/// Body of `POST /v1/apps/{app}/runs`: a one-off process in the app's current release.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    /// The command line, run by `/bin/sh -c` in the release's directory: no NUL byte, and at
    /// least one character other than ASCII white space.
    #[schema(
        min_length = 1,
        max_length = 8192,
        pattern = "^[\\t\\n\\v\\f\\r ]*[^\\x00\\t\\n\\v\\f\\r ][^\\x00]*$"
    )]
    pub command: String,
    /// Run without a client: output goes to the app's logs as `run.N` (`pier run --detach`).
    #[serde(default)]
    pub detach: bool,
    /// Give the process a pseudo-terminal (the client's stdin is a terminal).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's columns and rows (tty only; 80×24 when absent).
    #[serde(default)]
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
    #[serde(default)]
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    /// The client's `TERM` (tty only).
    #[serde(default)]
    #[schema(nullable = false, max_length = 64, pattern = "^[A-Za-z0-9._+-]*$")]
    pub term: Option<String>,
}

/// A one-off process as the API shows it (without its attach secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub app: String,
    /// `run.N`: its name in `pier ps`, the logs and `pier stop`.
    pub name: String,
    pub number: u64,
    pub command: String,
    pub release: u64,
    pub detach: bool,
    pub tty: bool,
    /// Who started it.
    pub by: String,
    /// `pending` (not placed yet), `running` (on its runner), `stopping`, `ended`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub runner: Option<String>,
    pub created_ms: u64,
    /// When it is ended whatever it does.
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub exit: Option<RunExit>,
    /// Where a client attaches (WebSocket, subprotocol `pier-run.v1`): attached runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub attach_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    /// Newest first (at most the last 100).
    pub runs: Vec<RunView>,
}

/// One backup of an app's PostgreSQL database: a `pg_dump -Fc` archive in the backup store,
/// with its SHA-256. It is also the record the platform keeps (`pier:backups:<app>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Backup)]
pub struct BackupView {
    pub app: String,
    /// The backup's number within the app (1, 2, ...).
    pub id: u64,
    /// `running` (being captured), `succeeded` (stored and checksummed) or `failed` (with
    /// `reason`; never offered for restore).
    pub state: String,
    /// `manual` (kept until deleted) or `scheduled` (removed by the schedule's retention).
    pub kind: String,
    /// Who asked for it: `operator`, `owner:<app>` or `schedule`.
    pub by: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub finished_ms: Option<u64>,
    /// The archive's size in bytes (once succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub size: Option<u64>,
    /// The archive's SHA-256, hex (once succeeded): a restore checks it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub sha256: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// The last time it was restored into the app's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub restored_ms: Option<u64>,
}

/// `GET /v1/apps/{app}/backups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupList {
    /// Newest first.
    pub backups: Vec<BackupView>,
}

/// How many scheduled backups are kept: the newest of each of the last `daily` days, `weekly`
/// weeks (Monday to Sunday) and `monthly` months, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRetention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for BackupRetention {
    fn default() -> Self {
        BackupRetention {
            daily: 7,
            weekly: 4,
            monthly: 12,
        }
    }
}

/// An app's backup schedule: a capture every day at `at` (UTC), then retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupSchedule {
    pub app: String,
    /// `HH:MM`, UTC.
    pub at: String,
    pub retention: BackupRetention,
    /// When it was set: a day's capture is due only if its time is after this.
    pub since_ms: u64,
    pub by: String,
}

/// Body of `PUT /v1/apps/{app}/backup-schedule`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackupSchedule {
    /// `HH:MM`, UTC.
    pub at: String,
    /// Days kept (7 by default).
    #[serde(default)]
    #[schema(nullable = false)]
    pub daily: Option<u32>,
    /// Weeks kept (4 by default).
    #[serde(default)]
    #[schema(nullable = false)]
    pub weekly: Option<u32>,
    /// Months kept (12 by default).
    #[serde(default)]
    #[schema(nullable = false)]
    pub monthly: Option<u32>,
}

/// Body of `POST /v1/apps/{app}/backups/{backup}/restore`: a restore replaces the database's
/// contents, so the app's name must be repeated.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    #[serde(default)]
    #[schema(nullable = false)]
    pub confirm: Option<String>,
}

/// One billed quantity of an app over a month: `GET /v1/apps/{app}/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageItem {
    /// `instance:<ptype>:<size>`, `cpu`, `memory`, `requests`, `bytes_in`, `bytes_out` or
    /// `addon:<kind>:<plan>`.
    pub item: String,
    /// The quantity in `unit`.
    pub quantity: f64,
    /// `hours`, `seconds`, `GB-hours`, `requests`, `GB`.
    pub unit: String,
    /// The price of one `price_unit` from the operator's price sheet (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub price: Option<f64>,
    /// What `price` is for: `instance hour`, `CPU second`, `GB-hour`, `million requests`,
    /// `GB`, `add-on hour`.
    pub price_unit: String,
    /// quantity × price, in the price sheet's currency (absent without a price sheet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cost: Option<f64>,
}

/// One app's month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppUsageView {
    pub app: String,
    pub items: Vec<UsageItem>,
    /// The sum of the items' costs (absent without a price sheet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cost: Option<f64>,
}

/// Usage that may be missing: a reporter's reports with numbers missing between two that
/// arrived, a reporter that came back after stopping without a final report, or one that
/// stopped reporting without a final report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageGap {
    /// The runner's or balancer's id (`addons` for the API's add-on reports).
    pub reporter: String,
    /// `runner`, `balancer` or `addons`.
    pub kind: String,
    /// Start of the time no report covers (ms since the epoch).
    pub from_ms: u64,
    /// Its end; absent when the reporter has not reported since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub to_ms: Option<u64>,
    /// The first and last missing sequence numbers (absent when none is missing: the
    /// reporter restarted, or stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seq_from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seq_to: Option<u64>,
    /// The gap in words, as `pier usage` prints it.
    pub text: String,
}

/// `GET /v1/apps/{app}/usage` and `GET /v1/usage`: a month's usage (UTC), and what may be
/// missing from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// `YYYY-MM`.
    pub month: String,
    /// The month's first and last millisecond + 1 (UTC).
    pub from_ms: u64,
    pub to_ms: u64,
    /// Apps with usage, by name.
    pub apps: Vec<AppUsageView>,
    /// Gaps of every reporter in the month (any of them may have measured these apps).
    pub gaps: Vec<UsageGap>,
    /// The price sheet's currency (absent without a price sheet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub currency: Option<String>,
    /// The apps' costs summed (absent without a price sheet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cost: Option<f64>,
}

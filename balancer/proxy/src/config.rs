//! The balancer's configuration file (TOML).
//!
//! A visible pipeline: text → [`ConfigFile`] (unknown keys refused) → [`ConfigFile::validate`] →
//! [`Config`], whose fields are typed (`SocketAddr`, `Duration`, byte counts). Every problem is
//! reported with the file and key it is about, like `nginx -t`. Every key is documented in
//! docs/configuration.md, and every file under config/ is parsed by a test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pier_routes::file::toml_reason;
use pier_routes::units::{parse_duration, SizeValue};
use serde::Deserialize;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// Every problem found in a config, printed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<ListenFile>,
    pub admin: Option<AdminFile>,
    pub routes: Option<RoutesFileRef>,
    pub runtime: Option<RuntimeFile>,
    pub timeouts: Option<TimeoutsFile>,
    pub upstream: Option<UpstreamFile>,
    pub limits: Option<LimitsFile>,
    pub headers: Option<HeadersFile>,
    pub spin: Option<SpinFile>,
    pub log: Option<LogFile>,
    pub tls: Option<TlsFile>,
    pub upstream_tls: Option<UpstreamTlsFile>,
    pub http2: Option<Http2File>,
    pub telemetry: Option<TelemetryFile>,
}

/// `[telemetry]`: router lines and per-app stats written to the registry's Redis.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    pub router_lines: Option<bool>,
    pub stats: Option<bool>,
    pub queue: Option<usize>,
    pub stats_interval: Option<String>,
    pub id: Option<String>,
    /// Usage reports for billing (requests, bytes in and out per app).
    pub usage: Option<bool>,
    pub usage_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    #[serde(default)]
    pub http: Vec<ListenerEntry>,
    #[serde(default)]
    pub https: Vec<ListenerEntry>,
    /// Cleartext HTTP/2 with prior knowledge on the `http` listeners.
    pub h2c: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub handshake_timeout: Option<String>,
    pub unknown_sni: Option<String>,
    pub https_port: Option<u16>,
    pub watch: Option<bool>,
    pub watch_interval: Option<String>,
    /// `"1.2"` or `"1.3"` (a bare TOML number is taken too).
    pub min_version: Option<VersionValue>,
}

/// A TLS version as written: `"1.3"`, or `1.3` without quotes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VersionValue {
    Text(String),
    Number(f64),
}

/// `[upstream_tls]`: how pier checks `https://` backends and what it shows them.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM certificates trusted besides the public roots (a private CA).
    pub ca_file: Option<String>,
    /// A client certificate chain (PEM) for backends that ask for one (mutual TLS).
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http2File {
    pub enabled: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub max_header_list_size: Option<SizeValue>,
    pub initial_window_size: Option<SizeValue>,
    pub connection_window_size: Option<SizeValue>,
    pub max_frame_size: Option<SizeValue>,
    pub control_frame_rate: Option<u32>,
    pub max_header_frames: Option<u32>,
    pub websocket: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ListenerEntry {
    Address(String),
    Full(ListenerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTable {
    pub address: String,
    #[serde(default)]
    pub trusted: bool,
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFileRef {
    pub file: Option<String>,
    pub watch: Option<bool>,
    pub watch_interval: Option<String>,
    pub redis: Option<String>,
    pub prefix: Option<String>,
    pub resync_interval: Option<String>,
    pub max_drop: Option<f64>,
    pub allow_mass_drop: Option<bool>,
    pub snapshot_file: Option<String>,
    #[serde(default)]
    pub app_domains: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpinFile {
    pub timeout: Option<String>,
    pub max_held: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    pub workers: Option<usize>,
    pub mode: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub client_header: Option<String>,
    pub client_keepalive: Option<String>,
    pub client_body: Option<String>,
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub upstream_idle: Option<String>,
    pub tunnel_idle: Option<String>,
    pub shutdown: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub retries: Option<u32>,
    pub eject_after: Option<u32>,
    pub eject_for: Option<String>,
    pub pool_max_idle: Option<usize>,
    pub pool_idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_request_line: Option<SizeValue>,
    pub max_header_bytes: Option<SizeValue>,
    pub max_headers: Option<usize>,
    pub max_body: Option<SizeValue>,
    pub app_max_in_flight: Option<u32>,
    pub app_adaptive: Option<bool>,
    pub app_queue: Option<u32>,
    pub app_queue_timeout: Option<String>,
    pub client_rate: Option<u32>,
    pub client_burst: Option<u32>,
    pub client_max_connections: Option<u32>,
    pub overload_lag: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    pub via: Option<String>,
    pub request_id: Option<bool>,
    pub request_start: Option<bool>,
    pub server_timing: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access: Option<bool>,
}

/// A listening address and whether its clients' `X-Forwarded-*` are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub trusted: bool,
    /// An `https` listener: TLS first, then HTTP/1.1 or h2 by ALPN.
    pub tls: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) giving the client's
    /// address ([`crate::proxy_protocol`]).
    pub proxy_protocol: bool,
}

/// What the TLS listeners present when a client names a host that has no certificate of its
/// own (or names none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    /// The default certificate (`[tls] cert`), like nginx's default server.
    Default,
    /// Refuse the handshake (rustls sends a fatal `access_denied` alert) when the name has
    /// neither a certificate nor a route, or there is no SNI.
    Reject,
}

/// The oldest TLS version the listeners accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3: Mozilla's "intermediate" profile.
    Tls12,
    /// TLS 1.3 only: Mozilla's "modern" profile (whatever the certificate's key type).
    Tls13,
}

/// The TLS listeners' settings. The default certificate is read and checked at load.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub default_cert: Arc<rustls::sign::CertifiedKey>,
    pub handshake_timeout: Duration,
    pub unknown_sni: UnknownSni,
    /// The port named in HTTP→HTTPS redirects (443 is left out of the URL).
    pub https_port: u16,
    /// Reload the default certificate when its files change, checked this often.
    pub watch: bool,
    pub watch_interval: Duration,
    pub min_version: MinTlsVersion,
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && Arc::ptr_eq(&self.default_cert, &other.default_cert)
            && self.handshake_timeout == other.handshake_timeout
            && self.unknown_sni == other.unknown_sni
            && self.https_port == other.https_port
            && self.min_version == other.min_version
    }
}

/// TLS to `https://` backends: what their certificates are checked against, and the client
/// certificate shown to those that ask. Read and checked at load.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsSettings {
    /// The `ca_file` certificates, trusted besides the public roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (mutual TLS).
    pub client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    pub cert_file: Option<PathBuf>,
}

impl PartialEq for UpstreamTlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.extra_roots == other.extra_roots
            && self.ca_file == other.ca_file
            && self.cert_file == other.cert_file
            && match (&self.client_cert, &other.client_cert) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// HTTP/2 limits (downstream connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Offer `h2` in ALPN on the TLS listeners.
    pub enabled: bool,
    /// Accept cleartext h2 with prior knowledge on the plain listeners.
    pub h2c: bool,
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub initial_window_size: u32,
    pub connection_window_size: u32,
    pub max_frame_size: u32,
    /// Control frames (PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA/HEADERS without
    /// END_STREAM) a client may send per second before the connection gets GOAWAY.
    pub control_frame_rate: u32,
    /// HEADERS + CONTINUATION frames allowed in one header block.
    pub max_header_frames: u32,
    /// Offer WebSocket over HTTP/2 (RFC 8441 extended CONNECT).
    pub websocket: bool,
}

/// How worker threads are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeMode {
    /// One single-threaded runtime per worker, each with its own `SO_REUSEPORT` listener and
    /// upstream pool (nginx/sozu style: no cross-core wake-ups).
    PerCore,
    /// One work-stealing runtime with `workers` threads sharing listeners and pools.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub client_header: Duration,
    pub client_keepalive: Duration,
    pub client_body: Duration,
    pub connect: Duration,
    pub first_byte: Duration,
    pub upstream_idle: Duration,
    /// A WebSocket (or other upgraded) tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub retries: u32,
    pub eject_after: u32,
    pub eject_for: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// 0 = no limit.
    pub max_body: u64,
    /// Requests proxied to one app at once (0 = no limit; per app: `max_in_flight`).
    pub app_max_in_flight: u32,
    /// Whether apps' limits follow their backends' latency unless an app says otherwise
    /// (`adaptive_limit`), under their `max_in_flight`.
    pub app_adaptive: bool,
    /// Requests that may wait for one app's slot; more are refused at once.
    pub app_queue: u32,
    /// How long a request waits for a slot before `503 app-overloaded`.
    pub app_queue_timeout: Duration,
    /// Requests per second per client address (0 = no limit), and the bucket's size.
    pub client_rate: u32,
    pub client_burst: u32,
    /// Connections one client address may hold open at once (0 = no limit).
    pub client_max_connections: u32,
    /// A worker whose timers run this late is saturated and sheds the requests of apps over
    /// an equal share (zero: never).
    pub overload_lag: Duration,
}

/// Default of `[limits] overload_lag`: a worker this late on its timers makes every request
/// wait as long.
pub const DEFAULT_OVERLOAD_LAG: Duration = Duration::from_millis(50);

/// Default of `[limits] app_max_in_flight`: far above what one healthy app has in flight on
/// one balancer, low enough that one stalled app cannot take the process's sockets.
pub const DEFAULT_APP_MAX_IN_FLIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSettings {
    /// The pseudonym in `Via` (`1.1 <via>`); empty disables Via.
    pub via: String,
    pub request_id: bool,
    pub request_start: bool,
    /// Send pier's timings of each proxied request to the client in `Server-Timing`.
    pub server_timing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub access: bool,
}

/// Where routes come from when they come from the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySettings {
    pub url: String,
    pub prefix: String,
    /// A full resync this often, whatever the feed says.
    pub resync_interval: Duration,
    /// A resync that would remove more than this share of all domains is held.
    pub max_drop: f64,
    pub allow_mass_drop: bool,
    /// Where the last full snapshot is kept, to serve from at start-up before Redis answers.
    pub snapshot_file: Option<PathBuf>,
    pub app_domains: Vec<Box<str>>,
}

/// What the balancer writes about apps' requests (with a registry only).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// One line per request to the app's log stream.
    pub router_lines: bool,
    /// Per-app request counts and latency histograms for `pier stats`.
    pub stats: bool,
    /// Requests waiting for the writer, at most; more are dropped (counted).
    pub queue: usize,
    pub stats_interval: Duration,
    /// This balancer's name in router lines, stats and usage reports (default: host name and
    /// process id).
    pub id: String,
    /// Per-app requests and bytes in and out, reported every `usage_interval` to the usage
    /// stream (`pier usage`).
    pub usage: bool,
    pub usage_interval: Duration,
}

/// Holding requests of apps that have no live backend yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinSettings {
    pub timeout: Duration,
    pub max_held: usize,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    /// The routes file, resolved relative to the config file.
    pub routes_file: Option<PathBuf>,
    pub routes_watch: bool,
    pub routes_watch_interval: Duration,
    /// Set when routes come from the Redis registry instead of a file.
    pub registry: Option<RegistrySettings>,
    /// Set with a registry unless both router lines and stats are turned off.
    pub telemetry: Option<TelemetrySettings>,
    pub spin: SpinSettings,
    pub workers: usize,
    pub mode: RuntimeMode,
    pub max_connections: usize,
    pub timeouts: Timeouts,
    pub upstream: UpstreamSettings,
    pub limits: Limits,
    pub headers: HeaderSettings,
    pub log: LogSettings,
    /// Set when there are `https` listeners.
    pub tls: Option<TlsSettings>,
    /// For `https://` backends (the defaults when the table is absent).
    pub upstream_tls: UpstreamTlsSettings,
    pub http2: Http2Settings,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: "(file)".into(),
                reason: e.to_string(),
            }])
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let parsed: ConfigFile = toml::from_str(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: "(syntax)".into(),
                reason: toml_reason(&e),
            }])
        })?;
        parsed.validate(path)
    }
}

struct Checker<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(key, "must be above zero");
                    default
                }
                Err(r) => {
                    self.err(key, r);
                    default
                }
            },
        }
    }

    fn size(&mut self, key: &str, value: &Option<SizeValue>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) => v.bytes().unwrap_or_else(|r| {
                self.err(key, r);
                default
            }),
        }
    }

    fn addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    format!("{value:?} is not IP:port (e.g. \"127.0.0.1:8080\", \"[::]:80\")"),
                );
                None
            }
        }
    }
}

impl ConfigFile {
    pub fn validate(&self, path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let mut c = Checker {
            file: &file,
            errors: Vec::new(),
        };
        let base = path.parent().unwrap_or(Path::new("."));

        let mut listeners = Vec::new();
        let listen = self.listen.as_ref();
        let http = listen.map(|l| &l.http[..]).unwrap_or(&[]);
        let https = listen.map(|l| &l.https[..]).unwrap_or(&[]);
        if http.is_empty() && https.is_empty() {
            c.err("listen.http", "at least one address is needed");
        }
        for (kind, entries, tls) in [("http", http, false), ("https", https, true)] {
            for (i, entry) in entries.iter().enumerate() {
                let (address, trusted, proxy_protocol) = match entry {
                    ListenerEntry::Address(a) => (a.as_str(), false, false),
                    ListenerEntry::Full(t) => (t.address.as_str(), t.trusted, t.proxy_protocol),
                };
                let key = format!("listen.{kind}[{i}]");
                if let Some(addr) = c.addr(&key, address) {
                    if listeners.iter().any(|l: &Listener| l.addr == addr) {
                        c.err(&key, format!("{addr} is listed twice"));
                    }
                    listeners.push(Listener {
                        addr,
                        trusted,
                        tls,
                        proxy_protocol,
                    });
                }
            }
        }
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| a.listen.as_deref())
            .and_then(|a| c.addr("admin.listen", a));
        if let (Some(a), true) = (admin, listeners.iter().any(|l| Some(l.addr) == admin)) {
            c.err("admin.listen", format!("{a} is also a proxy listener"));
        }

        let routes = self.routes.as_ref();
        let routes_file = routes.and_then(|r| r.file.as_deref()).map(|f| base.join(f));
        let redis = routes.and_then(|r| r.redis.clone());
        match (&routes_file, &redis) {
            (None, None) => c.err("routes", "set routes.file or routes.redis"),
            (Some(_), Some(_)) => c.err("routes", "set routes.file or routes.redis, not both"),
            _ => {}
        }
        let registry = match (redis, routes) {
            (Some(url), Some(r)) => {
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    c.err("routes.redis", format!("{url:?} is not a redis:// URL"));
                }
                let max_drop = r.max_drop.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&max_drop) {
                    c.err("routes.max_drop", "must be between 0 and 1");
                }
                let mut app_domains = Vec::new();
                for (i, d) in r.app_domains.iter().enumerate() {
                    match pier_routes::host::normalise_name(d) {
                        Ok(n) => app_domains.push(n),
                        Err(e) => c.err(&format!("routes.app_domains[{i}]"), e.to_string()),
                    }
                }
                Some(RegistrySettings {
                    url,
                    prefix: r.prefix.clone().unwrap_or_else(|| "pier:".into()),
                    resync_interval: c.duration(
                        "routes.resync_interval",
                        &r.resync_interval,
                        Duration::from_secs(300),
                    ),
                    max_drop,
                    allow_mass_drop: r.allow_mass_drop.unwrap_or(false),
                    snapshot_file: match r.snapshot_file.as_deref() {
                        Some("") => None,
                        Some(f) => Some(base.join(f)),
                        None => Some(base.join("pier-routes.snapshot.json")),
                    },
                    app_domains,
                })
            }
            _ => None,
        };
        if registry.is_none() && routes.is_some_and(|r| !r.app_domains.is_empty()) {
            c.err(
                "routes.app_domains",
                "only for routes.redis (a routes file has its own app_domains)",
            );
        }
        let telemetry = self.telemetry_settings(&mut c, registry.is_some());
        let sp = self.spin.as_ref();
        let spin = SpinSettings {
            timeout: c.duration(
                "spin.timeout",
                &sp.and_then(|s| s.timeout.clone()),
                Duration::from_secs(30),
            ),
            max_held: sp.and_then(|s| s.max_held).unwrap_or(1000),
        };
        let routes_watch = routes.and_then(|r| r.watch).unwrap_or(true);
        let routes_watch_interval = c.duration(
            "routes.watch_interval",
            &routes.and_then(|r| r.watch_interval.clone()),
            Duration::from_secs(1),
        );

        let rt = self.runtime.as_ref();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match rt.and_then(|r| r.workers) {
            None | Some(0) => cpus,
            Some(n) if n > 1024 => {
                c.err("runtime.workers", "at most 1024");
                cpus
            }
            Some(n) => n,
        };
        let mode = match rt.and_then(|r| r.mode.as_deref()) {
            None | Some("per-core") => RuntimeMode::PerCore,
            Some("shared") => RuntimeMode::Shared,
            Some(other) => {
                c.err(
                    "runtime.mode",
                    format!("unknown mode {other:?} (use \"per-core\" or \"shared\")"),
                );
                RuntimeMode::PerCore
            }
        };
        let max_connections = rt.and_then(|r| r.max_connections).unwrap_or(100_000);
        if max_connections == 0 {
            c.err("runtime.max_connections", "must be above zero");
        }

        let t = self.timeouts.as_ref();
        let d = |f: fn(&TimeoutsFile) -> &Option<String>| t.and_then(|t| f(t).clone());
        let timeouts = Timeouts {
            client_header: c.duration(
                "timeouts.client_header",
                &d(|t| &t.client_header),
                Duration::from_secs(10),
            ),
            client_keepalive: c.duration(
                "timeouts.client_keepalive",
                &d(|t| &t.client_keepalive),
                Duration::from_secs(60),
            ),
            client_body: c.duration(
                "timeouts.client_body",
                &d(|t| &t.client_body),
                Duration::from_secs(60),
            ),
            connect: c.duration(
                "timeouts.connect",
                &d(|t| &t.connect),
                Duration::from_secs(3),
            ),
            first_byte: c.duration(
                "timeouts.first_byte",
                &d(|t| &t.first_byte),
                Duration::from_secs(60),
            ),
            upstream_idle: c.duration(
                "timeouts.upstream_idle",
                &d(|t| &t.upstream_idle),
                Duration::from_secs(60),
            ),
            tunnel_idle: c.duration(
                "timeouts.tunnel_idle",
                &d(|t| &t.tunnel_idle),
                Duration::from_secs(300),
            ),
            shutdown: c.duration(
                "timeouts.shutdown",
                &d(|t| &t.shutdown),
                Duration::from_secs(30),
            ),
        };

        let u = self.upstream.as_ref();
        let upstream = UpstreamSettings {
            retries: u.and_then(|u| u.retries).unwrap_or(2),
            eject_after: u.and_then(|u| u.eject_after).unwrap_or(5),
            eject_for: c.duration(
                "upstream.eject_for",
                &u.and_then(|u| u.eject_for.clone()),
                Duration::from_secs(10),
            ),
            pool_max_idle: u.and_then(|u| u.pool_max_idle).unwrap_or(256),
            pool_idle_timeout: c.duration(
                "upstream.pool_idle_timeout",
                &u.and_then(|u| u.pool_idle_timeout.clone()),
                Duration::from_secs(15),
            ),
        };
        if upstream.retries > 16 {
            c.err("upstream.retries", "at most 16");
        }

        let l = self.limits.as_ref();
        let max_request_line = c.size(
            "limits.max_request_line",
            &l.and_then(|l| l.max_request_line.clone()),
            8 * 1024,
        );
        let max_header_bytes = c.size(
            "limits.max_header_bytes",
            &l.and_then(|l| l.max_header_bytes.clone()),
            32 * 1024,
        );
        if !(64..=1 << 20).contains(&max_header_bytes) {
            c.err(
                "limits.max_header_bytes",
                "must be between 64 bytes and 1MiB",
            );
        }
        if !(16..=max_header_bytes).contains(&max_request_line) {
            c.err(
                "limits.max_request_line",
                "must be between 16 bytes and limits.max_header_bytes",
            );
        }
        let max_headers = l.and_then(|l| l.max_headers).unwrap_or(100);
        if !(1..=10_000).contains(&max_headers) {
            c.err("limits.max_headers", "must be between 1 and 10000");
        }
        let limits = Limits {
            max_request_line: max_request_line as usize,
            max_header_bytes: max_header_bytes as usize,
            max_headers,
            max_body: c.size("limits.max_body", &l.and_then(|l| l.max_body.clone()), 0),
            app_max_in_flight: l
                .and_then(|l| l.app_max_in_flight)
                .unwrap_or(DEFAULT_APP_MAX_IN_FLIGHT),
            app_adaptive: l.and_then(|l| l.app_adaptive).unwrap_or(false),
            app_queue: l.and_then(|l| l.app_queue).unwrap_or(100),
            client_rate: l.and_then(|l| l.client_rate).unwrap_or(0),
            // A second's worth by default.
            client_burst: l
                .and_then(|l| l.client_burst)
                .unwrap_or_else(|| l.and_then(|l| l.client_rate).unwrap_or(0)),
            client_max_connections: l.and_then(|l| l.client_max_connections).unwrap_or(0),
            overload_lag: match l.and_then(|l| l.overload_lag.as_deref()) {
                None => DEFAULT_OVERLOAD_LAG,
                Some(v) => parse_duration(v).unwrap_or_else(|r| {
                    c.err("limits.overload_lag", r);
                    DEFAULT_OVERLOAD_LAG
                }),
            },
            app_queue_timeout: c.duration(
                "limits.app_queue_timeout",
                &l.and_then(|l| l.app_queue_timeout.clone()),
                Duration::from_secs(5),
            ),
        };
        if limits.client_burst > 0 && limits.client_rate == 0 {
            c.err("limits.client_burst", "needs limits.client_rate");
        }
        if limits.app_queue > 1_000_000 {
            c.err("limits.app_queue", "at most 1000000");
        }

        let h = self.headers.as_ref();
        let via = h
            .and_then(|h| h.via.clone())
            .unwrap_or_else(|| "pier".into());
        if !via.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b',') {
            c.err(
                "headers.via",
                "must be one token of visible characters (no spaces or commas)",
            );
        }
        let headers = HeaderSettings {
            via,
            request_id: h.and_then(|h| h.request_id).unwrap_or(true),
            request_start: h.and_then(|h| h.request_start).unwrap_or(true),
            server_timing: h.and_then(|h| h.server_timing).unwrap_or(false),
        };

        let lg = self.log.as_ref();
        let level = lg
            .and_then(|l| l.level.clone())
            .unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            c.err(
                "log.level",
                format!("unknown level {level:?} (error, warn, info, debug, trace)"),
            );
        }
        let format = match lg.and_then(|l| l.format.as_deref()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.err(
                    "log.format",
                    format!("unknown format {other:?} (use \"text\" or \"json\")"),
                );
                LogFormat::Text
            }
        };
        let log = LogSettings {
            level,
            format,
            access: lg.and_then(|l| l.access).unwrap_or(true),
        };

        let tls = self.tls_settings(&mut c, base, &listeners);
        let upstream_tls = self.upstream_tls_settings(&mut c, base);
        let h2 = self.http2.as_ref();
        let h2_size = |c: &mut Checker<'_>,
                       key: &str,
                       v: Option<&SizeValue>,
                       default: u64,
                       min: u64,
                       max: u64| {
            let n = c.size(key, &v.cloned(), default);
            if !(min..=max).contains(&n) {
                c.err(key, format!("must be between {min} and {max} bytes"));
            }
            n.clamp(min, max) as u32
        };
        let http2 = Http2Settings {
            enabled: h2.and_then(|h| h.enabled).unwrap_or(true),
            // `enabled = false` turns HTTP/2 off everywhere, h2c included.
            h2c: listen.and_then(|l| l.h2c).unwrap_or(true)
                && h2.and_then(|h| h.enabled).unwrap_or(true),
            max_concurrent_streams: h2.and_then(|h| h.max_concurrent_streams).unwrap_or(128),
            max_header_list_size: h2_size(
                &mut c,
                "http2.max_header_list_size",
                h2.and_then(|h| h.max_header_list_size.as_ref()),
                // Follows limits.max_header_bytes unless set (kept inside its own range).
                max_header_bytes.clamp(1024, 1 << 20),
                1024,
                1 << 20,
            ),
            initial_window_size: h2_size(
                &mut c,
                "http2.initial_window_size",
                h2.and_then(|h| h.initial_window_size.as_ref()),
                256 * 1024,
                1024,
                (1 << 31) - 1,
            ),
            connection_window_size: h2_size(
                &mut c,
                "http2.connection_window_size",
                h2.and_then(|h| h.connection_window_size.as_ref()),
                1 << 20,
                65_535,
                (1 << 31) - 1,
            ),
            max_frame_size: h2_size(
                &mut c,
                "http2.max_frame_size",
                h2.and_then(|h| h.max_frame_size.as_ref()),
                16 * 1024,
                16 * 1024,
                (1 << 24) - 1,
            ),
            control_frame_rate: h2.and_then(|h| h.control_frame_rate).unwrap_or(1000),
            max_header_frames: h2.and_then(|h| h.max_header_frames).unwrap_or(32),
            websocket: h2.and_then(|h| h.websocket).unwrap_or(true),
        };
        if http2.max_concurrent_streams == 0 {
            c.err("http2.max_concurrent_streams", "must be above zero");
        }
        if http2.control_frame_rate == 0 {
            c.err("http2.control_frame_rate", "must be above zero");
        }
        if http2.max_header_frames == 0 {
            c.err("http2.max_header_frames", "must be above zero");
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            listeners,
            admin,
            routes_file,
            routes_watch,
            routes_watch_interval,
            registry,
            telemetry,
            spin,
            workers,
            mode,
            max_connections,
            timeouts,
            upstream,
            limits,
            headers,
            log,
            tls,
            upstream_tls,
            http2,
        })
    }

    /// `[telemetry]`: on by default with a registry, refused without one.
    fn telemetry_settings(
        &self,
        c: &mut Checker<'_>,
        has_registry: bool,
    ) -> Option<TelemetrySettings> {
        let t = self.telemetry.as_ref();
        if !has_registry {
            if t.is_some() {
                c.err(
                    "telemetry",
                    "needs routes.redis (router lines and stats go to the registry's Redis)",
                );
            }
            return None;
        }
        let queue = t.and_then(|t| t.queue).unwrap_or(16_384);
        if queue == 0 {
            c.err("telemetry.queue", "must be above zero");
        }
        let id = match t.and_then(|t| t.id.clone()) {
            Some(id) if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) => {
                c.err("telemetry.id", "must be printable ASCII without spaces");
                id
            }
            Some(id) => id,
            None => default_balancer_id(),
        };
        let settings = TelemetrySettings {
            router_lines: t.and_then(|t| t.router_lines).unwrap_or(true),
            stats: t.and_then(|t| t.stats).unwrap_or(true),
            queue,
            stats_interval: c.duration(
                "telemetry.stats_interval",
                &t.and_then(|t| t.stats_interval.clone()),
                Duration::from_secs(5),
            ),
            id,
            usage: t.and_then(|t| t.usage).unwrap_or(true),
            usage_interval: c.duration(
                "telemetry.usage_interval",
                &t.and_then(|t| t.usage_interval.clone()),
                Duration::from_millis(pier_registry::usage::DEFAULT_INTERVAL_MS),
            ),
        };
        (settings.router_lines || settings.stats || settings.usage).then_some(settings)
    }

    /// `[tls]`: required with `https` listeners, refused without them. The default certificate
    /// and key are read and checked here, so `--check` catches a bad pair.
    fn tls_settings(
        &self,
        c: &mut Checker<'_>,
        base: &Path,
        listeners: &[Listener],
    ) -> Option<TlsSettings> {
        let https = listeners.iter().find(|l| l.tls);
        let Some(t) = self.tls.as_ref() else {
            if https.is_some() {
                c.err("tls", "listen.https needs [tls] cert and key");
            }
            return None;
        };
        let Some(first) = https else {
            c.err("tls", "[tls] is set but there is no listen.https address");
            return None;
        };
        let handshake_timeout = c.duration(
            "tls.handshake_timeout",
            &t.handshake_timeout,
            Duration::from_secs(10),
        );
        let watch_interval = c.duration(
            "tls.watch_interval",
            &t.watch_interval,
            Duration::from_secs(5),
        );
        let min_version = match &t.min_version {
            None => MinTlsVersion::Tls12,
            Some(v) => {
                let text = match v {
                    VersionValue::Text(t) => t.clone(),
                    VersionValue::Number(n) => n.to_string(),
                };
                match text.as_str() {
                    "1.2" => MinTlsVersion::Tls12,
                    "1.3" => MinTlsVersion::Tls13,
                    _ => {
                        c.err(
                            "tls.min_version",
                            format!(
                                "unknown version {text:?} (use \"1.2\" or \"1.3\"; TLS 1.0 and 1.1 are never offered)"
                            ),
                        );
                        MinTlsVersion::Tls12
                    }
                }
            }
        };
        let unknown_sni = match t.unknown_sni.as_deref() {
            None | Some("default") => UnknownSni::Default,
            Some("reject") => UnknownSni::Reject,
            Some(other) => {
                c.err(
                    "tls.unknown_sni",
                    format!("unknown value {other:?} (use \"default\" or \"reject\")"),
                );
                UnknownSni::Default
            }
        };
        let (Some(cert), Some(key)) = (t.cert.as_deref(), t.key.as_deref()) else {
            if t.cert.is_none() {
                c.err(
                    "tls.cert",
                    "the default certificate chain (PEM file) is required",
                );
            }
            if t.key.is_none() {
                c.err(
                    "tls.key",
                    "the default certificate's private key (PEM file) is required",
                );
            }
            return None;
        };
        let cert_file = base.join(cert);
        let key_file = base.join(key);
        let read = |c: &mut Checker<'_>, k: &str, p: &Path| match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                c.err(k, format!("cannot read {}: {e}", p.display()));
                None
            }
        };
        let cert_pem = read(c, "tls.cert", &cert_file);
        let key_pem = read(c, "tls.key", &key_file);
        let (cert_pem, key_pem) = (cert_pem?, key_pem?);
        let default_cert = match certified_key(&cert_pem, &key_pem) {
            Ok(k) => k,
            Err(e) => {
                c.err("tls.cert", e);
                return None;
            }
        };
        Some(TlsSettings {
            cert_file,
            key_file,
            default_cert,
            handshake_timeout,
            unknown_sni,
            https_port: t.https_port.unwrap_or(first.addr.port()),
            watch: t.watch.unwrap_or(true),
            watch_interval,
            min_version,
        })
    }

    /// `[upstream_tls]`: the extra roots and the client certificate are read and checked here,
    /// so `--check` catches a file that does not load.
    fn upstream_tls_settings(&self, c: &mut Checker<'_>, base: &Path) -> UpstreamTlsSettings {
        let mut out = UpstreamTlsSettings::default();
        let Some(t) = self.upstream_tls.as_ref() else {
            return out;
        };
        let read = |c: &mut Checker<'_>, k: &str, p: &Path| match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                c.err(k, format!("cannot read {}: {e}", p.display()));
                None
            }
        };
        if let Some(ca) = t.ca_file.as_deref() {
            let path = base.join(ca);
            if let Some(pem) = read(c, "upstream_tls.ca_file", &path) {
                match trust_anchors(&pem) {
                    Ok(roots) => out.extra_roots = roots,
                    Err(e) => c.err("upstream_tls.ca_file", format!("{}: {e}", path.display())),
                }
            }
            out.ca_file = Some(path);
        }
        match (t.cert.as_deref(), t.key.as_deref()) {
            (None, None) => {}
            (Some(_), None) => c.err(
                "upstream_tls.key",
                "the client certificate's private key (PEM file) is needed with upstream_tls.cert",
            ),
            (None, Some(_)) => c.err(
                "upstream_tls.cert",
                "the client certificate (PEM file) is needed with upstream_tls.key",
            ),
            (Some(cert), Some(key)) => {
                let cert_file = base.join(cert);
                let cert_pem = read(c, "upstream_tls.cert", &cert_file);
                let key_pem = read(c, "upstream_tls.key", &base.join(key));
                if let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) {
                    match certified_key(&cert_pem, &key_pem) {
                        Ok(k) => out.client_cert = Some(k),
                        Err(e) => c.err("upstream_tls.cert", e),
                    }
                }
                out.cert_file = Some(cert_file);
            }
        }
        out
    }
}

/// The certificates of a PEM file, each checked as a trust anchor.
fn trust_anchors(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|e| format!("certificate {} cannot be a trust anchor: {e}", i + 1))?;
    }
    Ok(certs)
}

/// `HOST:PID`: unique among the balancers of one host, readable in router lines.
fn default_balancer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "balancer".into());
    format!("{host}:{}", std::process::id())
}

/// Parses a PEM certificate chain and private key into a key rustls can serve, checking that
/// the key belongs to the certificate.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, String> {
    // An expired default certificate still loads (clients decide); the registry API is
    // where expiry is refused.
    pier_routes::cert::load_pair(cert_pem, key_pem)
        .map(|p| p.key)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/etc/pier/balancer.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(
            "[listen]\nhttp = [\"127.0.0.1:8080\", { address = \"127.0.0.1:8081\", trusted = true }]\n\
             [admin]\nlisten = \"127.0.0.1:9901\"\n[routes]\nfile = \"routes.toml\"\n",
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert!(!c.listeners[0].trusted);
        assert!(c.listeners[1].trusted);
        assert_eq!(c.routes_file.unwrap(), Path::new("/etc/pier/routes.toml"));
        assert_eq!(c.timeouts.client_header, Duration::from_secs(10));
        assert_eq!(c.limits.max_body, 0);
        // Isolation is on by default.
        assert_eq!(c.limits.app_max_in_flight, DEFAULT_APP_MAX_IN_FLIGHT);
        assert_eq!(c.limits.app_queue, 100);
        assert_eq!(c.limits.app_queue_timeout, Duration::from_secs(5));
        assert_eq!(c.mode, RuntimeMode::PerCore);
    }

    #[test]
    fn every_bad_key_is_reported_with_file_and_key() {
        let errs = parse(
            "[listen]\nhttp = [\"nope\"]\n[timeouts]\nconnect = \"3 parsecs\"\n\
             [runtime]\nmode = \"fast\"\n[limits]\nmax_body = \"1ZB\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "listen.http[0]",
                "routes",
                "runtime.mode",
                "timeouts.connect",
                "limits.max_body"
            ]
        );
        assert!(errs
            .to_string()
            .starts_with("/etc/pier/balancer.toml: listen.http[0]: "));
    }

    #[test]
    fn telemetry_is_on_with_a_registry_and_refused_without() {
        let redis =
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[routes]\nredis = \"redis://127.0.0.1:6379\"\n";
        let t = parse(redis).unwrap().telemetry.unwrap();
        assert!(t.router_lines && t.stats && t.usage);
        assert_eq!(t.usage_interval, Duration::from_secs(60));
        assert_eq!(t.queue, 16_384);
        assert!(t.id.contains(':'), "{}", t.id);
        let off =
            format!("{redis}[telemetry]\nrouter_lines = false\nstats = false\nusage = false\n");
        assert_eq!(parse(&off).unwrap().telemetry, None);
        let bad =
            format!("{redis}[telemetry]\nqueue = 0\nid = \"lb 1\"\nstats_interval = \"0s\"\n");
        let keys: Vec<String> = parse(&bad)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "telemetry.queue",
                "telemetry.id",
                "telemetry.stats_interval"
            ]
        );
        let errs = parse(
            "[listen]\nhttp = [\"127.0.0.1:8080\"]\n[routes]\nfile = \"r.toml\"\n[telemetry]\nstats = true\n",
        )
        .unwrap_err();
        assert_eq!(errs.0[0].key, "telemetry", "{errs}");
    }

    #[test]
    fn tls_min_version_defaults_to_12_and_refuses_other_values() {
        let dir = tempfile::tempdir().unwrap();
        let pair = pier_testkit::certs::make_cert(dir.path(), "a", &["a.test"]);
        let (cert, key) = (pair.cert_path, pair.key_path);
        let config = |extra: &str| {
            format!(
                "[listen]\nhttps = [\"127.0.0.1:8443\"]\n[routes]\nfile = \"r.toml\"\n\
                 [tls]\ncert = {cert:?}\nkey = {key:?}\n{extra}"
            )
        };
        let min = |extra: &str| parse(&config(extra)).map(|c| c.tls.unwrap().min_version);
        assert_eq!(min(""), Ok(MinTlsVersion::Tls12));
        assert_eq!(min("min_version = \"1.2\"\n"), Ok(MinTlsVersion::Tls12));
        assert_eq!(min("min_version = \"1.3\"\n"), Ok(MinTlsVersion::Tls13));
        assert_eq!(min("min_version = 1.3\n"), Ok(MinTlsVersion::Tls13));
        let errs = min("min_version = \"1.0\"\n").unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].key, "tls.min_version");
        assert_eq!(errs.0[0].file, "/etc/pier/balancer.toml");
        assert!(
            errs.0[0].reason.contains("unknown version \"1.0\""),
            "{errs}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errs = parse("[listen]\nhttp = []\nhttp3 = []\n").unwrap_err();
        assert!(errs.0[0].reason.contains("unknown field `http3`"), "{errs}");
    }
}

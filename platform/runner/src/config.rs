//! The runner's configuration (from `pier runner`'s flags).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Limits put on every instance, where the machine offers them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory per instance, MiB (cgroup).
    pub memory_mib: Option<u64>,
    /// CPU per instance, in cores (cgroup CFS quota), e.g. 0.5.
    pub cpus: Option<f64>,
    /// Processes per instance (cgroup pids).
    pub pids: Option<u64>,
    /// Open files per process (rlimit).
    pub nofile: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: Some(512),
            cpus: None,
            pids: Some(256),
            nofile: 4096,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub id: String,
    /// The address instances listen on and are registered with.
    pub address: IpAddr,
    pub capacity: u32,
    /// Where slugs are unpacked and instances get their home directories.
    pub workdir: PathBuf,
    pub redis_url: String,
    pub prefix: String,
    /// The slug store (a directory shared with the API).
    pub slug_store: String,
    /// Between two heartbeats (and assignment reads).
    pub tick: Duration,
    /// How long a registered backend stays routable without a refresh.
    pub backend_ttl: Duration,
    /// Longest an instance may take to pass its first health check.
    pub boot_timeout: Duration,
    /// Between deregistering an instance and SIGTERM (requests in flight finish).
    pub drain: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// On stop, how long instances keep serving while the coordinator starts their replacements
    /// on other runners (0: stop at once).
    pub handover: Duration,
    /// Run each app's instances under its own Unix user (needs root).
    pub isolate: bool,
    pub limits: Limits,
    /// Where the API attaches clients to one-off processes (`pier run`); `None`: a free port
    /// on `address`.
    pub exec_listen: Option<std::net::SocketAddr>,
    /// Between two usage reports (billing); reports end on multiples of it.
    pub usage_interval: Duration,
}

impl RunnerConfig {
    /// Defaults for everything but identity and places.
    pub fn new(
        id: &str,
        address: IpAddr,
        redis_url: &str,
        slug_store: &str,
        workdir: PathBuf,
    ) -> Self {
        RunnerConfig {
            id: id.to_string(),
            address,
            capacity: 50,
            workdir,
            redis_url: redis_url.to_string(),
            prefix: "pier:".into(),
            slug_store: slug_store.to_string(),
            tick: Duration::from_millis(500),
            backend_ttl: Duration::from_secs(10),
            boot_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(2),
            grace: Duration::from_secs(10),
            handover: Duration::from_secs(30),
            isolate: true,
            limits: Limits::default(),
            exec_listen: None,
            usage_interval: Duration::from_millis(pier_registry::usage::DEFAULT_INTERVAL_MS),
        }
    }
}

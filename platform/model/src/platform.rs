//! The platform's records: releases, formation, runners, instance assignments and the states
//! runners report. Each is stored as JSON in Redis (by `pier-store`) and is also what the API
//! answers with, so there is one description of each shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A slug: the built, immutable result of one deploy, named by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlugRef {
    /// SHA-256 of the slug archive (lower-case hex): its name in the slug store and its check.
    pub digest: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

/// Where a release stands in its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    /// Made; its instances are being started (or nothing is to run yet).
    Pending,
    /// Every instance the formation asks for runs this release and is healthy.
    Running,
    /// Its instances never became healthy: the release before it kept serving.
    Failed,
}

/// A numbered release of an app: a slug (absent until the first deploy) and config vars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub app: String,
    /// 1, 2, 3, ... per app.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub slug: Option<SlugRef>,
    /// The Procfile of the slug: process type → command.
    #[serde(default)]
    pub processes: BTreeMap<String, String>,
    /// Config vars (secrets among them: never logged, and shown only to the app's owner).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// What made it ("Deploy 3f2a9c1e", "Set FOO", "Rollback to v2").
    pub description: String,
    pub created_ms: u64,
    pub status: ReleaseStatus,
    /// Why a release failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

/// Instances wanted per process type, e.g. `{"web": 2, "worker": 1}`.
pub type Formation = BTreeMap<String, u32>;

/// Most instances of one process type.
pub const MAX_SCALE: u32 = 100;

/// The formation in force for a release's processes: the counts set, and for types never set
/// one `web` and no other (as Heroku starts them). Types the Procfile lacks run nothing.
pub fn effective_formation(processes: &BTreeMap<String, String>, set: &Formation) -> Formation {
    processes
        .keys()
        .map(|t| {
            let n = set
                .get(t)
                .copied()
                .unwrap_or(if t == "web" { 1 } else { 0 });
            (t.clone(), n)
        })
        .collect()
}

/// A runner machine as it registers itself. Unknown fields are allowed: runners of a newer
/// version may say more than this one knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunnerRecord {
    pub id: String,
    /// The IP its instances listen on (what the balancers connect to).
    pub address: String,
    /// Most instances it runs at once.
    pub capacity: u32,
    pub started_ms: u64,
    /// Its last heartbeat; the coordinator calls it dead when this gets too old.
    pub heartbeat_ms: u64,
    /// The limits it enforces on instances, in words (for operators).
    #[serde(default)]
    pub limits: String,
    /// `IP:port` where the API attaches clients to one-off processes (`pier run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub exec: Option<String>,
    /// It is stopping on purpose and hands its instances over: they are placed elsewhere, and
    /// keep serving (routed) until their replacements are up.
    #[serde(default)]
    pub leaving: bool,
    /// Log lines its instances wrote that it dropped (its shipping queue was full or Redis
    /// was unreachable) since it started.
    #[serde(default)]
    pub log_lines_dropped: u64,
}

/// One instance the coordinator wants a runner to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Unique id: the backend id in the registry and the key of its reports.
    pub id: String,
    pub app: String,
    /// Process type (`web`, `worker`, ...).
    pub ptype: String,
    /// 1-based slot within the process type: `web.1`.
    pub index: u32,
    pub release: u64,
    /// Restart generation: a spec of an older generation is replaced (rolling restart).
    #[serde(default)]
    pub generation: u64,
    /// Set for a one-off process (`pier run`): what to run instead of a Procfile type. Its
    /// `ptype` is `run` and its `index` the run's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub run: Option<RunSpec>,
}

/// The process type name of one-off processes (`run.1`, `run.2`, ...); refused in a Procfile.
pub const RUN_PTYPE: &str = "run";

/// A one-off process of an app (`pier run`), as the API asked for it. Written once by the API;
/// the coordinator places it (never twice), its runner runs it and writes how it ended.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub app: String,
    /// 1, 2, 3, ... per app: the process is `run.N`.
    pub number: u64,
    /// The shell command line (`/bin/sh -c`), as `pier run` made it from its arguments.
    pub command: String,
    /// The release whose files, config vars and user it runs with.
    pub release: u64,
    /// A client attaches (its terminal or pipes); otherwise detached, output to the app's logs.
    pub attach: bool,
    /// A pseudo-terminal (the client's stdin is a terminal), else plain pipes.
    pub tty: bool,
    /// The terminal's size at start (tty only).
    #[serde(default)]
    pub cols: u16,
    #[serde(default)]
    pub rows: u16,
    /// The client's `TERM` (tty only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub term: String,
    /// Who started it: the token's owner (or `operator`).
    pub by: String,
    pub created_ms: u64,
    /// It is ended (SIGTERM, then SIGKILL) at this time, whatever it does.
    pub deadline_ms: u64,
    /// What the API presents to the runner to attach (attached runs only). Never shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("app", &self.app)
            .field("number", &self.number)
            .field("attach", &self.attach)
            .field("tty", &self.tty)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}

/// Where the coordinator placed a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlacement {
    pub runner: String,
    /// The instance id its runner runs it under.
    pub instance: String,
    pub at_ms: u64,
}

/// How a run ended, written once by whoever saw it end (its runner, or the coordinator when
/// the run never started or its runner died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunExit {
    pub ended_ms: u64,
    /// Its exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub signal: Option<i32>,
    /// In words: `exit status 0`, `killed by signal 9`, `stopped by pier stop`, `runner lost`.
    pub reason: String,
}

impl RunExit {
    /// The status a shell would give: the exit code, 128 + the signal, else 1.
    pub fn shell_status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    }
}

/// Everything known of one run: the spec and the facts each writer added.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub spec: RunSpec,
    pub placed: Option<RunPlacement>,
    /// When the API attached a client (attached runs attach once).
    pub attached_ms: Option<u64>,
    /// When the owner asked it to stop (`pier stop APP run.N`).
    pub stop_ms: Option<u64>,
    pub exit: Option<RunExit>,
}

impl InstanceSpec {
    /// `web.1`, `run.3`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.ptype, self.index)
    }
}

/// The life of an instance as its runner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Fetching and unpacking its slug.
    Preparing,
    /// Started; waiting for its health check.
    Starting,
    /// Healthy (and routed, for `web`).
    Up,
    /// Exited or failed its health check; it is tried again at `next_try_ms`.
    Crashed,
    /// Could not be placed here (slug missing or corrupt, disk full): the coordinator moves it.
    Failed,
    /// Deregistered, draining, then stopped.
    Stopping,
}

/// What a runner reports about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    pub id: String,
    pub app: String,
    pub ptype: String,
    pub index: u32,
    pub release: u64,
    #[serde(default)]
    pub generation: u64,
    pub runner: String,
    pub state: InstanceState,
    /// `IP:port` it listens on (web), once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub address: Option<String>,
    /// When the current process started.
    #[serde(default)]
    pub started_ms: u64,
    /// Times it was started again after a crash.
    #[serde(default)]
    pub restarts: u32,
    /// The last exit, in words ("exit status 3", "signal 9", "health check timed out").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_exit: Option<String>,
    /// When a crashed instance is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next_try_ms: Option<u64>,
    /// CPU seconds (user + system) of its processes.
    #[serde(default)]
    pub cpu_s: f64,
    /// Resident memory of its processes, KiB.
    #[serde(default)]
    pub rss_kib: u64,
    pub updated_ms: u64,
}

/// One line of an app's log: an instance's output or a balancer's router line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Its id in the app's log stream (ordered; `tail` resumes after it).
    #[serde(default)]
    pub id: String,
    /// When it was written, ms since the epoch.
    pub at_ms: u64,
    /// `app` (an instance's stdout or stderr) or `router` (a balancer).
    pub source: String,
    /// The instance (`web.1`) or the balancer that wrote it.
    pub process: String,
    /// The text: valid UTF-8 (other bytes replaced), at most [`MAX_LOG_LINE`] bytes.
    pub line: String,
}

/// Longest log line kept, bytes; a longer one is cut there and marked.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Where an add-on stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddonState {
    /// Being made: a create repeated now finishes it with the same credentials.
    Provisioning,
    /// Made, and its config vars set on the app.
    Ready,
}

/// An app's add-on as the platform keeps it (with its password, for idempotent retries). Never
/// logged; the API shows it (as [`crate::api::AddonView`]) to the app's owner and the operator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonRecord {
    pub app: String,
    /// `postgres` or `redis`.
    pub kind: String,
    pub plan: String,
    pub state: AddonState,
    pub password: String,
    /// What it made on the server: the database, or the Redis user.
    #[serde(default)]
    pub resource: String,
    /// The config vars it sets on the app (`DATABASE_URL`; `REDIS_URL`, `REDIS_PREFIX`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub created_ms: u64,
    /// The runner a dedicated add-on's process runs on (empty for add-ons on shared servers).
    #[serde(default)]
    pub runner: String,
}

/// A process an add-on runs on one runner (a dedicated `redis-server`), pinned to that runner
/// with its data, supervised there like an instance. Never logged (it holds the password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub app: String,
    /// `redis`.
    pub kind: String,
    /// The port it listens on at the runner's address.
    pub port: u16,
    pub password: String,
    /// Its memory limit (Redis `maxmemory`), MiB.
    pub memory_mb: u64,
}

impl ServiceSpec {
    /// `app/kind`: its field in the runner's services hash.
    pub fn key(&self) -> String {
        format!("{}/{}", self.app, self.kind)
    }
}

impl std::fmt::Debug for ServiceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSpec")
            .field("app", &self.app)
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("memory_mb", &self.memory_mb)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AddonRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of debug output.
        f.debug_struct("AddonRecord")
            .field("app", &self.app)
            .field("kind", &self.kind)
            .field("plan", &self.plan)
            .field("state", &self.state)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// Checks a config var name: `[A-Z_][A-Z0-9_]*`, at most 128 bytes, not one the platform sets.
pub fn check_config_key(key: &str) -> Result<(), String> {
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_');
    if !first_ok
        || key.len() > 128
        || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "config key {key:?} must match [A-Z_][A-Z0-9_]* (at most 128 bytes)"
        ));
    }
    if key == "PORT" || key.starts_with("PIER_") {
        return Err(format!(
            "config key {key:?} is set by the platform (PORT and PIER_*)"
        ));
    }
    Ok(())
}

/// Most characters in a config value.
pub const MAX_CONFIG_VALUE_CHARS: usize = 32 * 1024;

/// Checks a config value: at most [`MAX_CONFIG_VALUE_CHARS`] characters (as the API's document
/// states it, JSON Schema counting characters), no NUL (it goes into a process environment).
pub fn check_config_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_CONFIG_VALUE_CHARS && value.chars().count() > MAX_CONFIG_VALUE_CHARS {
        return Err(format!(
            "config value of {key} is over {MAX_CONFIG_VALUE_CHARS} characters"
        ));
    }
    if value.contains('\0') {
        return Err(format!("config value of {key} contains a NUL byte"));
    }
    Ok(())
}

/// Checks a process type name: `[a-z][a-z0-9_-]*`, at most 30 bytes.
pub fn check_process_type(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= 30
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "process type {name:?} must match [a-z][a-z0-9_-]* (at most 30 bytes)"
        ))
    }
}

/// Parses a Procfile: `type: command` lines; blank lines and `#` comments are skipped.
pub fn parse_procfile(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            return Err(format!(
                "Procfile line {}: expected `type: command`, got {line:?}",
                n + 1
            ));
        };
        let (name, command) = (name.trim(), command.trim());
        check_process_type(name).map_err(|e| format!("Procfile line {}: {e}", n + 1))?;
        if name == RUN_PTYPE {
            return Err(format!(
                "Procfile line {}: `{RUN_PTYPE}` is reserved for one-off processes (pier run)",
                n + 1
            ));
        }
        if command.is_empty() {
            return Err(format!("Procfile line {}: {name} has no command", n + 1));
        }
        if out.insert(name.to_string(), command.to_string()).is_some() {
            return Err(format!(
                "Procfile line {}: process type {name} appears twice",
                n + 1
            ));
        }
    }
    if out.is_empty() {
        return Err("Procfile declares no process type".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn procfiles() {
        let p = parse_procfile(
            "# app\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\nworker:python w.py\n",
        )
        .unwrap();
        assert_eq!(p["web"], "gunicorn app:app --bind 0.0.0.0:$PORT");
        assert_eq!(p["worker"], "python w.py");
        assert!(parse_procfile("").unwrap_err().contains("no process type"));
        assert!(parse_procfile("web python x")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_procfile("Web: x").is_err());
        assert!(parse_procfile("web:").unwrap_err().contains("no command"));
        assert!(parse_procfile("run: x").unwrap_err().contains("reserved"));
        assert!(parse_procfile("web: a\nweb: b")
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn config_keys() {
        assert!(check_config_key("DATABASE_URL").is_ok());
        assert!(check_config_key("_X1").is_ok());
        for bad in ["", "1A", "lower", "A-B", "PORT", "PIER_RELEASE", "É"] {
            assert!(check_config_key(bad).is_err(), "{bad}");
        }
        assert!(check_config_value("K", "a\0b").is_err());
    }
}

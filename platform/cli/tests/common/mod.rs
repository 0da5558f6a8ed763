//! Test harness of the `pier` binary: `pier api` as a process with its own `redis-server`, and
//! the client verbs run as processes against it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use pier_testkit::certs::cert_pair;
pub use pier_testkit::{free_port, DnsServer, Output, RedisServer};

pub const OPERATOR: &str = "op-secret-token-for-tests";

/// `pier api` as a separate process on a free port, with its own redis-server; killed when
/// dropped.
pub struct ApiProcess {
    child: Child,
    pub port: u16,
    pub redis: RedisServer,
    /// The nameserver its domain proofs are looked up at (`--dns-resolver`).
    pub dns: DnsServer,
    log: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl ApiProcess {
    pub fn start() -> ApiProcess {
        Self::start_with(&[])
    }

    /// `pier api` with extra arguments.
    pub fn start_with(extra: &[&str]) -> ApiProcess {
        let redis = RedisServer::start();
        let dns = DnsServer::start(&["test", "com", "org"]);
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", &redis.url()])
            .args(["--dns-resolver", &dns.addr.to_string()])
            // One machine: owners' test backends live on loopback.
            .args(["--backend-allow", "127.0.0.0/8"])
            .args(extra)
            .env("PIER_OPERATOR_TOKEN", OPERATOR)
            .env_remove("PIER_TOKEN")
            .env_remove("PIER_API_URL")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut api = ApiProcess {
            child,
            port,
            redis,
            dns,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = api.child.try_wait() {
                panic!("pier api exited with {status}: {}", api.log_text());
            }
            if healthz_ok(port) {
                return api;
            }
            assert!(
                Instant::now() < deadline,
                "pier api did not start: {}",
                api.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `pier ARGS` against this API with `token` in `PIER_TOKEN`.
    pub fn pier(&self, token: Option<&str>, args: &[&str]) -> Output {
        Output::of(self.pier_command(token, args))
    }

    /// The command [`ApiProcess::pier`] runs, to change before running it.
    pub fn pier_command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
        cmd.args(args).env("PIER_API_URL", self.url());
        match token {
            Some(t) => cmd.env("PIER_TOKEN", t),
            None => cmd.env_remove("PIER_TOKEN"),
        };
        cmd
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

// ------------------------------------------------------------------ the whole platform

/// A `pier` service process (runner, coordinator), its output in a log file; killed when
/// dropped.
pub struct Service {
    pub child: Child,
    pub log: std::path::PathBuf,
    /// The runner's work directory (runners only).
    pub workdir: Option<std::path::PathBuf>,
}

impl Service {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to the service and, for a runner, to every process running in its work
    /// directory (its instances): a machine dying at once.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(w) = &self.workdir {
            for pid in processes_under(w) {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A graceful stop first (a runner stops its instances), then a hard one.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_hard();
    }
}

/// Processes whose working directory is under `dir`.
pub fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(dir) {
                out.push(pid);
            }
        }
    }
    out
}

/// The API, coordinators, runners on 127.0.0.x and a balancer, as separate processes on one
/// private redis-server.
pub struct Platform {
    pub api: ApiProcess,
    pub balancer: pier_testkit::balancer::RegistryBalancer,
    pub runners: Vec<Service>,
    pub coordinators: Vec<Service>,
    pub dir: tempfile::TempDir,
    /// `--boot-timeout` of runners started from now on, seconds.
    pub boot_timeout: String,
    /// `--handover` of runners started from now on, seconds (0: a stopped runner does not wait
    /// for replacements, which keeps the tests' teardown short).
    pub handover: String,
    /// More arguments of runners started from now on.
    pub runner_extra: Vec<String>,
}

/// The base domain apps are served under in these tests: `{app}.apps.test`.
pub const APPS_DOMAIN: &str = "apps.test";

impl Platform {
    /// Starts the API, one coordinator and a runner on each of `runner_ips`.
    pub async fn start(runner_ips: &[&str]) -> Platform {
        Self::start_with(runner_ips, &[], "", &[]).await
    }

    /// [`Platform::start`] with more arguments for the API and the runners, and more tables
    /// for the balancer's config.
    pub async fn start_with(
        runner_ips: &[&str],
        api_extra: &[&str],
        balancer_tables: &str,
        runner_extra: &[&str],
    ) -> Platform {
        let dir = tempfile::tempdir().unwrap();
        // Per-app users must be able to walk down to their slug and home directories.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let slugs = dir.path().join("slugs");
        let mut extra = vec![
            "--slug-store".to_string(),
            slugs.display().to_string(),
            "--apps-url".to_string(),
            format!("http://{{app}}.{APPS_DOMAIN}/"),
        ];
        // A wheel cache made by .ci/test (pip download): builds stay on loopback.
        let wheels =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wheelhouse");
        if wheels.is_dir() {
            extra.push("--pip-arg=--no-index".into());
            extra.push(format!("--pip-arg=--find-links={}", wheels.display()));
        }
        extra.extend(api_extra.iter().map(|a| a.to_string()));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let api = ApiProcess::start_with(&extra);
        let balancer = pier_testkit::balancer::RegistryBalancer::start_with(
            &api.redis.url(),
            &format!("app_domains = [\"{APPS_DOMAIN}\"]"),
            balancer_tables,
        )
        .await;
        let mut p = Platform {
            api,
            balancer,
            runners: Vec::new(),
            coordinators: Vec::new(),
            dir,
            boot_timeout: "15".into(),
            handover: "0".into(),
            runner_extra: runner_extra.iter().map(|a| a.to_string()).collect(),
        };
        p.start_coordinator("c1");
        for ip in runner_ips {
            p.start_runner(ip);
        }
        p
    }

    fn service(&self, name: &str, args: &[String]) -> Service {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Service {
            child,
            log,
            workdir: None,
        }
    }

    pub fn start_coordinator(&mut self, id: &str) {
        let args: Vec<String> = [
            "coordinator",
            "--redis",
            &self.api.redis.url(),
            "--id",
            id,
            "--dead-after",
            "2",
            "--lease-ttl",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = self.service(&format!("coordinator-{id}"), &args);
        self.coordinators.push(s);
    }

    pub fn start_runner(&mut self, ip: &str) {
        let workdir = self.dir.path().join(format!("runner-{ip}"));
        let args: Vec<String> = [
            "runner",
            "--redis",
            &self.api.redis.url(),
            "--id",
            &format!("r-{ip}"),
            "--address",
            ip,
            "--workdir",
            &workdir.display().to_string(),
            "--slug-store",
            &self.dir.path().join("slugs").display().to_string(),
            "--boot-timeout",
            &self.boot_timeout,
            "--handover",
            &self.handover,
            "--drain",
            "1",
            "--grace",
            "3",
            "--backend-ttl",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.runner_extra.iter().cloned())
        .collect();
        let mut s = self.service(&format!("runner-{ip}"), &args);
        s.workdir = Some(workdir);
        self.runners.push(s);
    }

    /// `pier ARGS` as the operator.
    pub fn pier(&self, args: &[&str]) -> Output {
        self.api.pier(Some(OPERATOR), args)
    }

    /// A new owner token of `app` (made by the operator).
    pub fn owner_token(&self, app: &str) -> String {
        self.pier(&["tokens", "create", "--app", app])
            .ok()
            .last_line()
            .to_string()
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- api\n{}", self.api.log_text());
        for (i, c) in self.coordinators.iter().enumerate() {
            s.push_str(&format!("\n--- coordinator {i}\n{}", c.log_text()));
        }
        for (i, r) in self.runners.iter().enumerate() {
            s.push_str(&format!("\n--- runner {i}\n{}", r.log_text()));
        }
        s.push_str(&format!("\n--- balancer\n{}", self.balancer.log()));
        s
    }

    /// Creates app `name` and deploys `platform/examples/<example>` to it, asserting success.
    pub fn create_and_deploy(&self, name: &str, example: &str) -> Output {
        self.pier(&["apps", "create", name]).ok();
        self.deploy(name, example)
    }

    pub fn deploy(&self, name: &str, example: &str) -> Output {
        self.deploy_dir(name, &example_dir(example))
    }

    /// Deploys the app in `dir` to `name`, waiting for it to run, asserting success.
    pub fn deploy_dir(&self, name: &str, dir: &std::path::Path) -> Output {
        let out = self.pier(&["deploy", name, &dir.display().to_string(), "--wait", "60"]);
        assert_eq!(out.code, 0, "deploy failed: {out:?}\n{}", self.logs());
        out
    }

    /// The app's host on the balancer.
    pub fn host(name: &str) -> String {
        format!("{name}.{APPS_DOMAIN}")
    }
}

/// A directory holding `files` (name, text): an app to deploy.
pub fn app_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

/// `platform/examples/<name>`.
pub fn example_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Counts of a load run.
#[derive(Debug, Default, Clone)]
pub struct LoadCount {
    pub ok: u64,
    pub failed: u64,
    /// First and last failure, as offsets from the start.
    pub first_failure: Option<Duration>,
    pub last_failure: Option<Duration>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

/// Sends GETs for `host` to `addr` back to back on `conns` connections until `stop` is set,
/// then returns what came back. Each request is on a fresh connection.
pub async fn load(
    addr: std::net::SocketAddr,
    host: String,
    conns: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoadCount {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let host = host.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = LoadCount::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = pier_testkit::http_get(addr, &host, "/").await;
                let status = r.as_ref().map(|(s, _)| *s).unwrap_or(0);
                *c.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    c.ok += 1;
                } else {
                    c.failed += 1;
                    let at = start.elapsed();
                    c.first_failure.get_or_insert(at);
                    c.last_failure = Some(at);
                }
            }
            c
        }));
    }
    let mut total = LoadCount::default();
    for t in tasks {
        let c = t.await.unwrap();
        total.ok += c.ok;
        total.failed += c.failed;
        for (k, v) in c.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        total.first_failure = match (total.first_failure, c.first_failure) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.last_failure = match (total.last_failure, c.last_failure) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    total
}

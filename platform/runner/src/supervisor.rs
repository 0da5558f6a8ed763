//! One instance's life on this runner: prepare, start, health check, route, watch, restart
//! with backoff, and stop (deregister, drain, SIGTERM, grace, SIGKILL).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pier_model::platform::{InstanceSpec, InstanceState, InstanceStatus, Release};
use pier_registry::model::BackendRecord;
use pier_registry::Registry;
use pier_store::{now_ms, Store};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::{watch, RwLock};

use crate::config::RunnerConfig;
use crate::process::{self, Cgroups, Group, Launch};
use crate::slugs::SlugCache;

/// Lines of output kept per instance (the last ones, for crash reports).
const KEPT_LINES: usize = 50;
/// Longest line of output kept; the rest of a longer line is dropped (and marked).
const MAX_LINE: usize = 16 * 1024;
/// An instance up this long has its crash count reset.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Longest wait between two tries of a crash-looping instance.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// What every supervisor of this runner shares.
pub struct Ctx {
    pub cfg: RunnerConfig,
    pub store: Store,
    pub registry: RegistryHandle,
    pub slugs: SlugCache,
    pub cgroups: Cgroups,
    /// Whether instances run under per-app users (configured, and the runner is root).
    pub isolate: bool,
    /// CPU and memory of every instance, read together.
    pub usage: process::UsageTable,
    /// Instances' time, CPU and memory for usage reports (billing).
    pub ledger: Arc<crate::usage::UsageLedger>,
    /// Instances' output on its way to their apps' log streams.
    pub logs: crate::logs::LogShipper,
    /// One-off processes waiting for their client (`pier run`).
    pub attach: Arc<crate::exec::Attachments>,
}

/// The registry connection, made again after a failure (a multiplexed connection does not
/// come back by itself once Redis has gone away).
pub struct RegistryHandle {
    url: String,
    prefix: String,
    conn: RwLock<Option<Registry>>,
}

impl RegistryHandle {
    pub fn new(url: &str, prefix: &str) -> Self {
        RegistryHandle {
            url: url.to_string(),
            prefix: prefix.to_string(),
            conn: RwLock::new(None),
        }
    }

    pub async fn get(&self) -> Result<Registry, String> {
        if let Some(r) = self.conn.read().await.as_ref() {
            return Ok(r.clone());
        }
        let fresh = Registry::connect_with_prefix(&self.url, &self.prefix)
            .await
            .map_err(|e| e.to_string())?;
        *self.conn.write().await = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the connection after an error, so the next call connects again.
    pub async fn failed(&self) {
        *self.conn.write().await = None;
    }
}

/// Waits `d`, or less if asked to stop; true when asked to stop.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The delay before the `n`-th restart in a row: three quick ones, then doubling up to a cap.
pub fn backoff(n: u32) -> Duration {
    if n <= 3 {
        Duration::from_secs(1)
    } else {
        let exp = (n - 3).min(10);
        Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
    }
}

struct Instance {
    ctx: Arc<Ctx>,
    spec: InstanceSpec,
    status: InstanceStatus,
    report: watch::Sender<InstanceStatus>,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl Instance {
    fn set(&mut self, state: InstanceState) {
        self.status.state = state;
        self.publish();
    }

    fn publish(&mut self) {
        self.status.updated_ms = now_ms();
        let _ = self.report.send(self.status.clone());
    }

    fn last_line(&self) -> Option<String> {
        self.output.lock().ok().and_then(|o| o.back().cloned())
    }
}

/// Runs `spec` until `stop` turns true, reporting its state on `report`.
pub async fn supervise(
    ctx: Arc<Ctx>,
    spec: InstanceSpec,
    mut stop: watch::Receiver<bool>,
    report: watch::Sender<InstanceStatus>,
) {
    let status = report.borrow().clone();
    let mut inst = Instance {
        ctx,
        spec,
        status,
        report,
        output: Arc::new(Mutex::new(VecDeque::new())),
    };
    let prepared = loop {
        match prepare(&inst.ctx, &inst.spec).await {
            Ok(p) => break p,
            Err(Prep::Retry(why)) => {
                tracing::warn!(instance = %inst.spec.id, reason = %why, "cannot prepare yet");
                if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                    return;
                }
            }
            Err(Prep::Fail(why)) => {
                tracing::warn!(instance = %inst.spec.id, reason = %why, "placement failed");
                inst.status.last_exit = Some(why);
                inst.set(InstanceState::Failed);
                // The coordinator moves it elsewhere; wait to be told to stop.
                while !sleep_or_stop(Duration::from_secs(3600), &mut stop).await {}
                return;
            }
        }
    };
    let group = match inst.ctx.cgroups.create(&inst.spec.id, &inst.ctx.cfg.limits) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(instance = %inst.spec.id, error = %e, "cgroup not made: running without its limits");
            None
        }
    };
    run_loop(&mut inst, &prepared, group.as_ref(), &mut stop).await;
    if let Some(g) = &group {
        g.remove();
    }
}

/// What an instance needs to start, found once.
pub(crate) struct Prepared {
    pub release: Release,
    pub command: String,
    pub slug_dir: PathBuf,
    pub home: PathBuf,
    pub uid: Option<u32>,
}

pub(crate) enum Prep {
    /// Redis unreachable: try again.
    Retry(String),
    /// This runner cannot run it.
    Fail(String),
}

/// Finds the release, unpacks its slug and makes the instance's home. A one-off process runs
/// its own command; an instance, its type's in the Procfile.
pub(crate) async fn prepare(ctx: &Ctx, spec: &InstanceSpec) -> Result<Prepared, Prep> {
    let release = ctx
        .store
        .release(&spec.app, spec.release)
        .await
        .map_err(|e| Prep::Retry(e.to_string()))?
        .ok_or_else(|| Prep::Fail(format!("release v{} not found", spec.release)))?;
    let slug = release
        .slug
        .clone()
        .ok_or_else(|| Prep::Fail(format!("release v{} has no slug", spec.release)))?;
    let procfile = release.processes.get(&spec.ptype).cloned();
    let command = spec
        .run
        .as_ref()
        .map(|r| r.command.clone())
        .or(procfile)
        .ok_or_else(|| {
            Prep::Fail(format!(
                "the Procfile of v{} has no {}",
                spec.release, spec.ptype
            ))
        })?;
    let uid = if ctx.isolate {
        Some(
            ctx.store
                .app_uid(&spec.app)
                .await
                .map_err(|e| Prep::Retry(e.to_string()))?,
        )
    } else {
        None
    };
    let slug_dir = ctx
        .slugs
        .unpacked(&spec.app, &slug, uid)
        .await
        .map_err(Prep::Fail)?;
    let home = ctx.cfg.workdir.join("instances").join(&spec.id);
    std::fs::create_dir_all(&home)
        .map_err(|e| Prep::Fail(format!("cannot make {}: {e}", home.display())))?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&home, Some(uid), Some(uid))
            .map_err(|e| Prep::Fail(format!("chown {}: {e}", home.display())))?;
    }
    crate::slugs::set_mode(&home, 0o700).map_err(|e| Prep::Fail(e.to_string()))?;
    Ok(Prepared {
        release,
        command,
        slug_dir,
        home,
        uid,
    })
}

/// A port free on this runner's address now.
pub(crate) fn pick_port(ip: std::net::IpAddr) -> Result<u16, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on {ip}: {e}"))
}

enum Ended {
    /// Asked to stop: done.
    Stopped,
    /// The process ended or never became healthy.
    Crashed(String),
}

async fn run_loop(
    inst: &mut Instance,
    p: &Prepared,
    group: Option<&Group>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut in_a_row = 0u32;
    loop {
        let started = Instant::now();
        match run_once(inst, p, group, stop).await {
            Ended::Stopped => return,
            Ended::Crashed(why) => {
                if started.elapsed() >= STABLE_AFTER {
                    in_a_row = 0;
                }
                in_a_row += 1;
                let wait = backoff(in_a_row);
                let last = inst.last_line().unwrap_or_default();
                tracing::info!(instance = %inst.spec.id, app = %inst.spec.app, reason = %why, last_output = %last, retry_in = ?wait, "instance crashed");
                inst.status.restarts += 1;
                inst.status.last_exit = Some(why);
                inst.status.next_try_ms =
                    Some(now_ms() + u64::try_from(wait.as_millis()).unwrap_or(0));
                inst.set(InstanceState::Crashed);
                if sleep_or_stop(wait, stop).await {
                    inst.set(InstanceState::Stopping);
                    return;
                }
                inst.status.next_try_ms = None;
            }
        }
    }
}

async fn run_once(
    inst: &mut Instance,
    p: &Prepared,
    group: Option<&Group>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ctx = inst.ctx.clone();
    let cfg = &ctx.cfg;
    let web = inst.spec.ptype == "web";
    let port = match pick_port(cfg.address) {
        Ok(p) => p,
        Err(e) => return Ended::Crashed(e),
    };
    let addr = SocketAddr::new(cfg.address, port);
    let env = instance_env(cfg, &inst.spec, p, port);
    let mut child = match process::start(Launch {
        command: &p.command,
        cwd: &p.slug_dir,
        env,
        uid: p.uid,
        limits: &cfg.limits,
        group,
        io: process::Io::Null,
    })
    .await
    {
        Ok(c) => c,
        Err(e) => return Ended::Crashed(e),
    };
    let pid = child.id().unwrap_or(0);
    // Billed from the start of the process to its end (this function returns once it ended).
    let _metering = ctx.ledger.start(
        &inst.spec.app,
        &inst.spec.ptype,
        &crate::usage::size_label(&cfg.limits),
        pid,
    );
    capture_output(&mut child, &inst.output, &inst.spec, &ctx);
    inst.status.address = web.then(|| addr.to_string());
    inst.status.started_ms = now_ms();
    inst.set(InstanceState::Starting);
    tracing::info!(instance = %inst.spec.id, app = %inst.spec.app, name = %inst.spec.name(), release = inst.spec.release, %addr, pid, "instance started");

    // Health: within the boot timeout, the app must accept connections on PORT or, when its
    // release sets HEALTHCHECK_PATH, answer a GET of that path with a 2xx or 3xx.
    let mut front: Option<crate::front::Front> = None;
    if web {
        let deadline = Instant::now() + cfg.boot_timeout;
        let path = p.release.config.get(HEALTHCHECK_PATH).cloned();
        let mut last: String;
        loop {
            match health_check(addr, &inst.spec.app, path.as_deref()).await {
                Ok(()) => break,
                Err(why) => last = why,
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Ended::Crashed(format!(
                    "exited before it was healthy ({})",
                    describe_exit(status)
                ));
            }
            if Instant::now() >= deadline {
                terminate(&mut child, pid, Duration::from_secs(1)).await;
                return Ended::Crashed(format!(
                    "health check on PORT {port} failed for {:?}: {last}",
                    cfg.boot_timeout
                ));
            }
            if sleep_or_stop(Duration::from_millis(100), stop).await {
                terminate(&mut child, pid, cfg.grace).await;
                inst.set(InstanceState::Stopping);
                return Ended::Stopped;
            }
        }
        // Static files (pier.toml): balancers are sent to the runner's front, which serves
        // them and passes the rest to the app. Dropped, it closes, when this function returns.
        match crate::front::Front::for_release(&p.slug_dir, cfg.address, addr, ctx.isolate).await {
            Ok(f) => front = f,
            Err(crate::front::FrontError::Manifest(why)) => {
                tracing::warn!(instance = %inst.spec.id, reason = %why, "static files not served");
                let line = format!("pier: static files not served: {why}");
                ctx.logs.push(&inst.spec.app, &inst.spec.name(), line);
            }
            Err(e) => {
                terminate(&mut child, pid, cfg.grace).await;
                return Ended::Crashed(e.to_string());
            }
        }
        if let Some(f) = &front {
            inst.status.address = Some(f.addr().to_string());
        }
        register(inst, &front.as_ref().map_or(addr, |f| f.addr())).await;
    }
    inst.set(InstanceState::Up);

    let refresh_every = (cfg.backend_ttl / 3).max(Duration::from_millis(200));
    let mut last_refresh = Instant::now();
    let mut last_usage = Instant::now() - Duration::from_secs(60);
    let mut meter = crate::usage::UsageMeter::default();
    let usage_field = format!("{}@{}", inst.spec.name(), cfg.id);
    loop {
        tokio::select! {
            status = child.wait() => {
                if web {
                    deregister(inst).await;
                }
                let why = match status {
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                return Ended::Crashed(why);
            }
            _ = stop.changed() => {
                inst.set(InstanceState::Stopping);
                if web {
                    // Out of the table first, then time for requests in flight, then SIGTERM.
                    deregister(inst).await;
                    tokio::time::sleep(cfg.drain).await;
                }
                terminate(&mut child, pid, cfg.grace).await;
                tracing::info!(instance = %inst.spec.id, app = %inst.spec.app, "instance stopped");
                return Ended::Stopped;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if web && last_refresh.elapsed() >= refresh_every {
            last_refresh = Instant::now();
            refresh(inst, &front.as_ref().map_or(addr, |f| f.addr())).await;
        }
        if last_usage.elapsed() >= Duration::from_secs(5) {
            last_usage = Instant::now();
            let c = ctx.clone();
            let (cpu, rss) = tokio::task::spawn_blocking(move || c.usage.of(pid))
                .await
                .unwrap_or((0.0, 0));
            inst.status.cpu_s = (cpu * 100.0).round() / 100.0;
            inst.status.rss_kib = rss;
            inst.publish();
            let windows = meter.sample(pier_store::now_ms() / 1000, cpu, rss * 1024);
            if let Err(e) = ctx
                .store
                .write_usage(&inst.spec.app, &usage_field, &windows)
                .await
            {
                tracing::debug!(error = %e, app = %inst.spec.app, "usage stats not written");
            }
        }
    }
}

/// The environment of an instance's (or a one-off's) process: the build's, the config vars,
/// then the platform's own.
pub(crate) fn instance_env(
    cfg: &RunnerConfig,
    spec: &InstanceSpec,
    p: &Prepared,
    port: u16,
) -> Vec<(String, String)> {
    let mut env = pier_slug::build::runtime_env(&p.slug_dir);
    env.extend(p.release.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("PORT".into(), port.to_string()));
    env.push(("HOME".into(), p.home.display().to_string()));
    env.push(("TMPDIR".into(), p.home.display().to_string()));
    env.push(("PIER_APP".into(), spec.app.clone()));
    env.push(("PIER_RELEASE".into(), format!("v{}", spec.release)));
    env.push(("PIER_INSTANCE".into(), spec.name()));
    env.push(("PIER_HOST".into(), cfg.address.to_string()));
    env
}

/// The config var naming the path a web instance's health check GETs (absent: TCP connect).
pub const HEALTHCHECK_PATH: &str = "HEALTHCHECK_PATH";

/// One health check: a TCP connect, or with `path` a GET of it answered 2xx or 3xx, within
/// 2 s. The reason when it fails.
async fn health_check(addr: SocketAddr, app: &str, path: Option<&str>) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|_| "nothing accepted connections".to_string())?;
        let Some(path) = path else {
            return Ok(());
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {app}\r\nUser-Agent: pier-health\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            match s.read(&mut head[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let line = String::from_utf8_lossy(&head[..n]);
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("GET {path}: no HTTP answer"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within 2 s{}",
            path.map(|p| format!(" to GET {p}")).unwrap_or_default()
        )),
    }
}

pub(crate) fn describe_exit(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// SIGTERM to the process group, then SIGKILL after `grace`.
pub(crate) async fn terminate(child: &mut Child, pid: u32, grace: Duration) {
    process::signal_group(pid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        process::signal_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever the leader left behind in its group goes too.
    process::signal_group(pid, Signal::SIGKILL);
}

fn ttl_deadline(ctx: &Ctx) -> u64 {
    now_ms() + u64::try_from(ctx.cfg.backend_ttl.as_millis()).unwrap_or(10_000)
}

/// Registers the instance as a backend (retried while Redis is unreachable: it runs anyway,
/// and the next refresh registers it).
async fn register(inst: &Instance, addr: &SocketAddr) {
    let rec = BackendRecord {
        address: addr.to_string(),
        expires_at_ms: ttl_deadline(&inst.ctx),
        server_name: None,
        weight: None,
    };
    for attempt in 0..3 {
        match inst.ctx.registry.get().await {
            Ok(r) => match r.put_backend(&inst.spec.app, &inst.spec.id, &rec).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(instance = %inst.spec.id, error = %e, attempt, "cannot register the backend");
                    inst.ctx.registry.failed().await;
                }
            },
            Err(e) => tracing::warn!(error = %e, "registry unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Extends the backend's deadline, registering it again when it is missing (Redis lost it).
async fn refresh(inst: &Instance, addr: &SocketAddr) {
    let reg = match inst.ctx.registry.get().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "registry unreachable: backend deadline not extended");
            return;
        }
    };
    match reg
        .refresh_backend(&inst.spec.app, &inst.spec.id, ttl_deadline(&inst.ctx))
        .await
    {
        Ok(Some(_)) => {}
        // Gone from the registry: registered again if it is still this runner's to run (Redis
        // lost it), not if the coordinator took it away (the runner stops it next).
        Ok(None) => {
            let still_mine = inst
                .ctx
                .store
                .assignments(&inst.ctx.cfg.id)
                .await
                .is_ok_and(|specs| specs.iter().any(|s| s.id == inst.spec.id));
            if still_mine {
                register(inst, addr).await;
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "backend refresh failed");
            inst.ctx.registry.failed().await;
        }
    }
}

async fn deregister(inst: &Instance) {
    for _ in 0..3 {
        match inst.ctx.registry.get().await {
            Ok(r) => match r.delete_backend(&inst.spec.app, &inst.spec.id).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(instance = %inst.spec.id, error = %e, "cannot deregister the backend");
                    inst.ctx.registry.failed().await;
                }
            },
            Err(e) => tracing::warn!(error = %e, "registry unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Its deadline lapses by itself: the balancers stop using it within the backend TTL.
}

/// Hands each line `r` gives to `on_line` (without its end; a line longer than [`MAX_LINE`]
/// cut there and marked), the last one too when the stream ends without a newline.
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(r: R, mut on_line: impl FnMut(String)) {
    let mut r = BufReader::new(r);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
        let mut text = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        if *cut {
            text.push_str(" [line cut at 16 KiB]");
        }
        on_line(text);
        line.clear();
        *cut = false;
    };
    loop {
        let (used, ended) = match r.fill_buf().await {
            Ok(buf) if !buf.is_empty() => {
                let end = buf.iter().position(|b| *b == b'\n');
                let used = end.map_or(buf.len(), |i| i + 1);
                let piece = &buf[..end.unwrap_or(buf.len())];
                let room = MAX_LINE.saturating_sub(line.len());
                cut |= piece.len() > room;
                line.extend_from_slice(&piece[..piece.len().min(room)]);
                (used, end.is_some())
            }
            _ => break,
        };
        r.consume(used);
        if ended {
            emit(&mut line, &mut cut);
        }
    }
    if !line.is_empty() || cut {
        emit(&mut line, &mut cut);
    }
}

/// Reads the process's stdout and stderr line by line (each line at most [`MAX_LINE`]) into the
/// instance's kept lines. Reading never waits on anyone: the app is never blocked by its output.
pub(crate) fn capture_output(
    child: &mut Child,
    kept: &Arc<Mutex<VecDeque<String>>>,
    spec: &InstanceSpec,
    ctx: &Arc<Ctx>,
) {
    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
        r: R,
        kept: Arc<Mutex<VecDeque<String>>>,
        app: String,
        name: String,
        ctx: Arc<Ctx>,
    ) {
        tokio::spawn(async move {
            read_lines(r, |text| {
                tracing::debug!(target: "pier::app", app = %app, instance = %name, "{text}");
                ctx.logs.push(&app, &name, text.clone());
                if let Ok(mut k) = kept.lock() {
                    if k.len() == KEPT_LINES {
                        k.pop_front();
                    }
                    k.push_back(text);
                }
            })
            .await;
        });
    }
    let name = spec.name();
    if let Some(out) = child.stdout.take() {
        pump(
            out,
            kept.clone(),
            spec.app.clone(),
            name.clone(),
            ctx.clone(),
        );
    }
    if let Some(err) = child.stderr.take() {
        pump(err, kept.clone(), spec.app.clone(), name, ctx.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_lines_are_bounded_and_the_last_one_kept() {
        let long = "x".repeat(MAX_LINE + 5000);
        let input = format!("first\r\n{long}\nlast without newline");
        let mut got = Vec::new();
        read_lines(input.as_bytes(), |l| got.push(l)).await;
        assert_eq!(
            got.len(),
            3,
            "{:?}",
            got.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(got[0], "first");
        assert_eq!(
            got[1],
            format!("{} [line cut at 16 KiB]", "x".repeat(MAX_LINE))
        );
        assert_eq!(got[2], "last without newline");
    }

    #[test]
    fn backoff_is_quick_then_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(4));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}

//! Add-on processes pinned to this runner (a dedicated `redis-server` per app that has one):
//! started from the runner's services hash, supervised like instances (the app's own user and
//! cgroup, output shipped to the app's log as `redis`, restarted with backoff when they exit),
//! stopped when the hash no longer holds them. Their data lives in
//! `<workdir>/services/<app>-<kind>`: kept when the runner stops, deleted when the add-on is
//! destroyed.
//!
//! The password is in a config file only the app's user can read, never on a command line
//! (which every user of the machine can read in /proc).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_model::platform::ServiceSpec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Limits;
use crate::process::{self, Launch};
use crate::supervisor::{backoff, terminate, Ctx};

/// How a supervised service is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// The runner is stopping: the data stays for its next start.
    Keep,
    /// The add-on is gone: its data goes too.
    Purge,
}

struct Running {
    spec: ServiceSpec,
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

/// The services this runner runs.
#[derive(Default)]
pub struct Services {
    running: HashMap<String, Running>,
}

impl Services {
    /// Starts what `wanted` has and this runner does not run, stops (and purges) the rest. A
    /// changed spec (say a new password) is stopped and started again.
    pub fn reconcile(&mut self, ctx: &Arc<Ctx>, wanted: Vec<ServiceSpec>) {
        let wanted: HashMap<String, ServiceSpec> =
            wanted.into_iter().map(|s| (s.key(), s)).collect();
        self.running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|w| *w == r.spec) && !r.task.is_finished();
            if !keep {
                let purge = !wanted.contains_key(key);
                let _ = r.stop.send(if purge { Stop::Purge } else { Stop::Keep });
            }
            keep
        });
        for (key, spec) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (stop, rx) = watch::channel(Stop::Run);
            let task = tokio::spawn(supervise(ctx.clone(), spec.clone(), rx));
            self.running.insert(key, Running { spec, stop, task });
        }
    }

    /// Stops every service, keeping its data, and waits for them.
    pub async fn stop_all(&mut self) {
        for r in self.running.values() {
            let _ = r.stop.send(Stop::Keep);
        }
        for (_, r) in self.running.drain() {
            let _ = r.task.await;
        }
    }
}

/// Resolves once the service is told to stop.
async fn stopped(stop: &mut watch::Receiver<Stop>) {
    let _ = stop.wait_for(|s| *s != Stop::Run).await;
}

fn data_dir(ctx: &Ctx, spec: &ServiceSpec) -> PathBuf {
    ctx.cfg
        .workdir
        .join("services")
        .join(format!("{}-{}", spec.app, spec.kind))
}

/// Runs the service until told to stop, restarting it with backoff when it exits.
async fn supervise(ctx: Arc<Ctx>, spec: ServiceSpec, mut stop: watch::Receiver<Stop>) {
    let dir = data_dir(&ctx, &spec);
    let mut in_a_row = 0u32;
    loop {
        let started = Instant::now();
        let why = match run_once(&ctx, &spec, &dir, &mut stop).await {
            Ok(()) => break,
            Err(why) => why,
        };
        if started.elapsed() >= Duration::from_secs(60) {
            in_a_row = 0;
        }
        in_a_row += 1;
        let wait = backoff(in_a_row);
        tracing::warn!(app = %spec.app, kind = %spec.kind, reason = %why, retry_in = ?wait, "add-on process ended");
        ctx.logs.push(
            &spec.app,
            &spec.kind,
            format!("pier: {why}; restarting in {wait:?}"),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    if *stop.borrow() == Stop::Purge {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(app = %spec.app, kind = %spec.kind, "add-on data deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(app = %spec.app, dir = %dir.display(), error = %e, "add-on data not deleted")
            }
        }
    }
}

/// One run: Ok when told to stop, Err with the reason when the process ended or did not start.
async fn run_once(
    ctx: &Arc<Ctx>,
    spec: &ServiceSpec,
    dir: &std::path::Path,
    stop: &mut watch::Receiver<Stop>,
) -> Result<(), String> {
    if !spec.password.bytes().all(|b| b.is_ascii_alphanumeric()) || spec.password.is_empty() {
        // Only the API writes these (hex passwords); anything else is not put in a config file.
        stopped(stop).await;
        return Err("refused: the password is not alphanumeric".into());
    }
    if spec.kind != "redis" {
        // Only Redis is offered; a record of another kind waits here, told apart in the log.
        stopped(stop).await;
        return Ok(());
    }
    let uid = if ctx.isolate {
        Some(
            ctx.store
                .app_uid(&spec.app)
                .await
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = dir.join("redis.conf");
    std::fs::write(&conf, redis_conf(spec, ctx, dir))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    crate::slugs::set_mode(&conf, 0o600).map_err(|e| e.to_string())?;
    crate::slugs::set_mode(dir, 0o700).map_err(|e| e.to_string())?;
    if let Some(uid) = uid {
        for p in [dir, conf.as_path()] {
            std::os::unix::fs::chown(p, Some(uid), Some(uid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
    }
    // The cgroup holds the process; Redis's own maxmemory keeps it well inside.
    let limits = Limits {
        memory_mib: Some(spec.memory_mb * 2),
        ..ctx.cfg.limits.clone()
    };
    let group_id = format!("svc-{}-{}", spec.app, spec.kind);
    let group = ctx.cgroups.create(&group_id, &limits)?;
    let command = format!("exec redis-server {}", conf.display());
    let env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    )];
    let mut child = process::start(Launch {
        command: &command,
        cwd: dir,
        env,
        uid,
        limits: &limits,
        group: group.as_ref(),
        io: process::Io::Null,
    })
    .await?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(app = %spec.app, kind = %spec.kind, port = spec.port, pid, "add-on process started");
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let ctx = ctx.clone();
        let (app, kind) = (spec.app.clone(), spec.kind.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                ctx.logs.push(&app, &kind, line);
            }
        });
    }
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        _ = stopped(stop) => None,
    };
    let result = match exited {
        Some(status) => Err(match status {
            Ok(s) => format!("redis-server exited ({s})"),
            Err(e) => format!("cannot wait for redis-server: {e}"),
        }),
        None => {
            terminate(&mut child, pid, Duration::from_secs(5)).await;
            tracing::info!(app = %spec.app, kind = %spec.kind, "add-on process stopped");
            Ok(())
        }
    };
    if let Some(g) = group {
        g.remove();
    }
    result
}

/// The process's configuration: listens on the runner's address only, with the password,
/// its memory limit (writes refused beyond it, never keys evicted) and an append-only file.
fn redis_conf(spec: &ServiceSpec, ctx: &Ctx, dir: &std::path::Path) -> String {
    format!(
        "port {port}\nbind {addr}\nprotected-mode yes\nrequirepass \"{pw}\"\ndir \"{dir}\"\n\
         appendonly yes\nsave \"\"\nmaxmemory {mb}mb\nmaxmemory-policy noeviction\n\
         daemonize no\nlogfile \"\"\n",
        port = spec.port,
        addr = ctx.cfg.address,
        pw = spec.password,
        dir = dir.display(),
        mb = spec.memory_mb,
    )
}

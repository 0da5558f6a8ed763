//! The runner's main loop: heartbeat, assignments in, supervisors started and stopped,
//! instance reports out.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_model::platform::{InstanceSpec, InstanceState, InstanceStatus, RunnerRecord};
use pier_slug::SlugStore;
use pier_store::{now_ms, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RunnerConfig;
use crate::process::Cgroups;
use crate::slugs::SlugCache;
use crate::supervisor::{self, Ctx, RegistryHandle};

/// Reports are written again at least this often even when nothing changed (usage moves).
const REPORT_EVERY: Duration = Duration::from_secs(5);

struct Running {
    spec: InstanceSpec,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    status: watch::Receiver<InstanceStatus>,
    reported: Option<(InstanceStatus, Instant)>,
}

/// Runs until `shutdown` completes, then stops every instance (draining web ones) and leaves.
pub async fn run(cfg: RunnerConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    tokio::pin!(shutdown);
    let Some(store) = Store::connect_until(&cfg.redis_url, &cfg.prefix, shutdown.as_mut()).await
    else {
        return Ok(());
    };
    std::fs::create_dir_all(&cfg.workdir)
        .map_err(|e| format!("workdir {}: {e}", cfg.workdir.display()))?;
    let instances_dir = cfg.workdir.join("instances");
    std::fs::create_dir_all(&instances_dir)
        .map_err(|e| format!("{}: {e}", instances_dir.display()))?;
    crate::slugs::set_mode(&cfg.workdir, 0o711).map_err(|e| e.to_string())?;
    crate::slugs::set_mode(&instances_dir, 0o711).map_err(|e| e.to_string())?;
    let services_dir = cfg.workdir.join("services");
    std::fs::create_dir_all(&services_dir)
        .map_err(|e| format!("{}: {e}", services_dir.display()))?;
    crate::slugs::set_mode(&services_dir, 0o711).map_err(|e| e.to_string())?;
    let slug_store = SlugStore::open(&cfg.slug_store).map_err(|e| e.to_string())?;
    let root = is_root();
    let isolate = cfg.isolate && root;
    if cfg.isolate && !root {
        tracing::warn!("not root: instances run as the runner's own user, not per-app users");
    }
    if isolate {
        reachable_by_others(&ctx_workdir(&cfg))?;
    }
    let cgroups = Cgroups::detect();
    let limits = cgroups.describe(&cfg.limits, isolate);
    tracing::info!(id = %cfg.id, address = %cfg.address, capacity = cfg.capacity, limits = %limits, "runner started; limits in force");
    let logs = crate::logs::LogShipper::start(store.clone());
    let exec_addr = cfg
        .exec_listen
        .unwrap_or_else(|| std::net::SocketAddr::new(cfg.address, 0));
    let exec_listener = crate::exec::bind(exec_addr)
        .await
        .map_err(|e| format!("attach listener on {exec_addr}: {e}"))?;
    let exec_addr = exec_listener
        .local_addr()
        .map_err(|e| format!("attach listener: {e}"))?;
    let attach = Arc::new(crate::exec::Attachments::default());
    let exec_task = tokio::spawn(crate::exec::serve(exec_listener, attach.clone()));
    let ctx = Arc::new(Ctx {
        attach,
        logs,
        slugs: SlugCache::new(&cfg.workdir, slug_store).map_err(|e| e.to_string())?,
        registry: RegistryHandle::new(&cfg.redis_url, &cfg.prefix),
        store,
        cgroups,
        isolate,
        usage: Default::default(),
        ledger: Default::default(),
        cfg,
    });
    let (usage_stop, usage_stopped) = watch::channel(false);
    let reporter = tokio::spawn(report_usage(ctx.clone(), usage_stopped));
    let started_ms = now_ms();
    let mut running: HashMap<String, Running> = HashMap::new();
    // One-off processes that ended here and are still assigned: never started again.
    let mut done_runs: HashSet<String> = HashSet::new();
    let mut services = crate::services::Services::default();
    let mut redis_ok = true;
    loop {
        let record = RunnerRecord {
            id: ctx.cfg.id.clone(),
            address: ctx.cfg.address.to_string(),
            capacity: ctx.cfg.capacity,
            started_ms,
            heartbeat_ms: now_ms(),
            limits: limits.clone(),
            leaving: false,
            log_lines_dropped: ctx.logs.dropped(),
            exec: Some(exec_addr.to_string()),
        };
        let beat = ctx.store.put_runner(&record).await;
        match ctx.store.assignments(&ctx.cfg.id).await {
            Ok(specs) if beat.is_ok() => {
                if !redis_ok {
                    tracing::info!("Redis is back: reconciling");
                    redis_ok = true;
                }
                reconcile(&ctx, &mut running, &mut done_runs, specs);
                if let Ok(wanted) = ctx.store.services(&ctx.cfg.id).await {
                    services.reconcile(&ctx, wanted);
                }
            }
            Ok(_) | Err(_) => {
                if redis_ok {
                    let e = beat
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "assignments unreadable".into());
                    tracing::warn!(error = %e, "Redis unreachable: keeping every instance as it is");
                    redis_ok = false;
                }
            }
        }
        report(&ctx, &mut running, &mut done_runs).await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(ctx.cfg.tick) => {}
        }
    }
    // Leaving on purpose: say so first, so the coordinator places the instances elsewhere while
    // these keep serving; stop each once its replacement is up (or the handover time is over).
    let gone = RunnerRecord {
        id: ctx.cfg.id.clone(),
        address: ctx.cfg.address.to_string(),
        capacity: ctx.cfg.capacity,
        started_ms,
        heartbeat_ms: 0,
        limits,
        leaving: true,
        log_lines_dropped: ctx.logs.dropped(),
        exec: None,
    };
    if let Err(e) = ctx.store.put_runner(&gone).await {
        tracing::warn!(error = %e, "cannot mark the runner as leaving");
    }
    if !running.is_empty() && !ctx.cfg.handover.is_zero() {
        tracing::info!(instances = running.len(), within = ?ctx.cfg.handover, "runner stopping: handing its instances over");
        hand_over(&ctx, &running).await;
    }
    tracing::info!(
        instances = running.len(),
        "runner stopping: draining its instances"
    );
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (id, r) in running.drain() {
        let _ = r.task.await;
        let _ = ctx.store.remove_report(&r.spec.app, &id).await;
    }
    services.stop_all().await;
    exec_task.abort();
    // Every instance has stopped: the final usage report covers them up to their end.
    let _ = usage_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), reporter)
        .await
        .is_err()
    {
        tracing::warn!("final usage report not written within 5 s");
    }
    Ok(())
}

/// Every `usage_interval` (on its multiples), a usage report of this runner's instances; at
/// `stop`, a final one. Reports Redis did not take wait in an outbox, with their sequence
/// numbers, and are written first next time.
async fn report_usage(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    use pier_registry::usage::{next_boundary, Outbox, ReporterKind, UsageReport};
    let interval = u64::try_from(ctx.cfg.usage_interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut outbox = Outbox::default();
    let mut from = now_ms();
    let mut last = false;
    while !last {
        let to = next_boundary(now_ms(), interval);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(to.saturating_sub(now_ms()))) => {}
            _ = stop.changed() => last = true,
        }
        let to = if last { now_ms().max(from) } else { to };
        let pids = ctx.ledger.pids();
        let c = ctx.clone();
        let usage = tokio::task::spawn_blocking(move || {
            pids.into_iter()
                .map(|p| (p, c.usage.of(p)))
                .collect::<HashMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        let mut r = UsageReport::new(&ctx.cfg.id, ReporterKind::Runner, from, to);
        r.last = last;
        ctx.ledger.cut(to, &usage, &mut r);
        outbox.push(r);
        from = to;
        if let Err(e) = ctx.store.write_usage_reports(&mut outbox).await {
            tracing::debug!(error = %e, waiting = outbox.len(), "usage reports not written yet");
        }
    }
    if outbox.dropped() > 0 {
        tracing::warn!(
            dropped = outbox.dropped(),
            "usage reports dropped while Redis was unreachable"
        );
    }
}

/// Whether this process runs as root (per-app users and cgroups need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ctx_workdir(cfg: &RunnerConfig) -> std::path::PathBuf {
    std::fs::canonicalize(&cfg.workdir).unwrap_or_else(|_| cfg.workdir.clone())
}

/// Per-app users must be able to walk down to the work directory: every directory above it
/// must be searchable by others.
pub fn reachable_by_others(workdir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in workdir.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "apps' users cannot reach the workdir {}: {} is not searchable by others \
                 (chmod o+x it, choose another --workdir, or run with --no-isolation)",
                workdir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Waits until every instance here has a replacement up on another runner (same app, process
/// type and slot), or the handover time is over.
async fn hand_over(ctx: &Ctx, running: &HashMap<String, Running>) {
    let deadline = Instant::now() + ctx.cfg.handover;
    loop {
        let mut waiting = 0;
        for r in running.values() {
            let replaced = ctx.store.reports(&r.spec.app).await.is_ok_and(|reports| {
                reports.iter().any(|o| {
                    o.runner != ctx.cfg.id
                        && o.ptype == r.spec.ptype
                        && o.index == r.spec.index
                        && o.state == InstanceState::Up
                })
            });
            if !replaced {
                waiting += 1;
            }
        }
        if waiting == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                waiting,
                "handover time over: stopping instances without a replacement up"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Starts supervisors for new assignments and stops those no longer assigned.
fn reconcile(
    ctx: &Arc<Ctx>,
    running: &mut HashMap<String, Running>,
    done_runs: &mut HashSet<String>,
    specs: Vec<InstanceSpec>,
) {
    let wanted: HashMap<String, InstanceSpec> =
        specs.into_iter().map(|s| (s.id.clone(), s)).collect();
    done_runs.retain(|id| wanted.contains_key(id));
    for (id, r) in running.iter() {
        if !wanted.contains_key(id) && !*r.stop.borrow() {
            tracing::info!(instance = %id, app = %r.spec.app, "unassigned: stopping");
            let _ = r.stop.send(true);
        }
    }
    for (id, spec) in wanted {
        if running.contains_key(&id) || done_runs.contains(&id) {
            continue;
        }
        let status = InstanceStatus {
            id: id.clone(),
            app: spec.app.clone(),
            ptype: spec.ptype.clone(),
            index: spec.index,
            release: spec.release,
            generation: spec.generation,
            runner: ctx.cfg.id.clone(),
            state: InstanceState::Preparing,
            address: None,
            started_ms: 0,
            restarts: 0,
            last_exit: None,
            next_try_ms: None,
            cpu_s: 0.0,
            rss_kib: 0,
            updated_ms: now_ms(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (report_tx, report_rx) = watch::channel(status);
        let task = if spec.run.is_some() {
            tokio::spawn(crate::runs::supervise_run(
                ctx.clone(),
                spec.clone(),
                stop_rx,
                report_tx,
            ))
        } else {
            tokio::spawn(supervisor::supervise(
                ctx.clone(),
                spec.clone(),
                stop_rx,
                report_tx,
            ))
        };
        running.insert(
            id,
            Running {
                spec,
                task,
                stop: stop_tx,
                status: report_rx,
                reported: None,
            },
        );
    }
}

/// Writes changed (or stale) reports; forgets supervisors that finished.
async fn report(
    ctx: &Ctx,
    running: &mut HashMap<String, Running>,
    done_runs: &mut HashSet<String>,
) {
    let mut done = Vec::new();
    for (id, r) in running.iter_mut() {
        if r.task.is_finished() {
            done.push(id.clone());
            continue;
        }
        let now = r.status.borrow().clone();
        let due = match &r.reported {
            Some((last, at)) => *last != now || at.elapsed() >= REPORT_EVERY,
            None => true,
        };
        if due && ctx.store.report(&now).await.is_ok() {
            r.reported = Some((now, Instant::now()));
        }
    }
    for id in done {
        if let Some(r) = running.remove(&id) {
            if r.spec.run.is_some() {
                done_runs.insert(id.clone());
            }
            if ctx.store.remove_report(&r.spec.app, &id).await.is_err() {
                // Stale reports of unassigned instances are also cleared by the coordinator.
                tracing::debug!(instance = %id, "report not removed (Redis unreachable)");
            }
        }
    }
}

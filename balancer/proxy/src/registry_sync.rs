//! Following the Redis registry: a full load, then the change feed applied one change at a
//! time, with a full resync after a gap, a reconnect or a timer.
//!
//! The request path never waits on any of this: it reads whatever table is installed. When
//! Redis is down, hung or unreachable the last table keeps serving; the task reconnects with
//! backoff and resyncs when Redis answers again. A resync that would drop more than
//! `max_drop` of all domains (or of all certificates) at once (Redis came back empty, say) is
//! held and alarmed instead of applied, unless `allow_mass_drop` is set. After each applied full resync the snapshot is
//! written to a local file, from which a restarted balancer serves before Redis answers.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_registry::apply::{
    apply_change, table_from_snapshot, write_table_snapshot_with_certs, TableLoader,
};
use pier_registry::model::ChangeKind;
use pier_registry::{Registry, RegistryError, Snapshot};
use pier_routes::RouteTable;

use crate::config::RegistrySettings;
use crate::shared::Shared;
use crate::util::now_ms;

/// How long one feed read waits for a change before checking timers.
const FEED_BLOCK: Duration = Duration::from_millis(1000);
/// Most changes applied in one table swap.
const FEED_BATCH: usize = 2000;

/// Loads the local snapshot file, if there is one, into a table.
pub fn load_snapshot_file(s: &RegistrySettings) -> Option<RouteTable> {
    let path = s.snapshot_file.as_deref()?;
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice::<Snapshot>(&text) {
        Ok(snap) => {
            let (table, problems) = table_from_snapshot(&snap, &s.app_domains, None);
            for p in problems {
                tracing::warn!(problem = %p, "bad entry in snapshot file skipped");
            }
            tracing::info!(
                file = %path.display(),
                version = table.version(),
                domains = table.len(),
                "serving the local snapshot until the registry answers"
            );
            Some(table)
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "snapshot file unreadable; ignored");
            None
        }
    }
}

fn write_snapshot_file(path: &Path, table: &RouteTable, feed_id: &str) {
    let tmp = path.with_extension("tmp");
    // The snapshot holds the registry's private keys: only the balancer's user may read it.
    let result = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| {
                // `mode` applies only to a new file: a leftover one keeps its own otherwise.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                Ok(f)
            })
    }
    .and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write_table_snapshot_with_certs(table, feed_id, &mut w)?;
        std::io::Write::flush(&mut w)
    })
    .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the registry snapshot file");
    }
}

/// Follows the registry forever (until the process exits).
pub async fn run(shared: Arc<Shared>, settings: RegistrySettings) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match Registry::connect_with_prefix(&settings.url, &settings.prefix).await {
            Ok(reg) => {
                shared.metrics.registry_connected.set(1);
                backoff = Duration::from_millis(100);
                if let Err(e) = follow(&shared, &reg, &settings).await {
                    tracing::warn!(error = %e, "registry sync interrupted; serving the last table");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the registry; serving the last table")
            }
        }
        shared.metrics.registry_connected.set(0);
        // Jitter keeps a fleet of balancers from reconnecting in lockstep.
        let jitter = Duration::from_millis(crate::util::random_u64() % 100);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Resync {
    /// Installed; tail the feed from this position.
    Applied(String),
    /// Refused by the mass-drop guard; try again later.
    Held,
}

async fn follow(
    shared: &Shared,
    reg: &Registry,
    s: &RegistrySettings,
) -> Result<(), RegistryError> {
    let mut reason = "connect";
    'resync: loop {
        let mut feed_id = match full_resync(shared, reg, s, reason).await? {
            Resync::Applied(id) => id,
            Resync::Held => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                reason = "retry-held";
                continue 'resync;
            }
        };
        let resynced_at = Instant::now();
        loop {
            if resynced_at.elapsed() >= s.resync_interval {
                reason = "timer";
                continue 'resync;
            }
            let changes = reg.changes(&feed_id, FEED_BLOCK, FEED_BATCH).await?;
            shared
                .registry_contact_ms
                .store(now_ms(), Ordering::Relaxed);
            if changes.is_empty() {
                continue;
            }
            let current = shared.routes.load_full();
            let mut table = (*current).clone();
            let mut applied = 0u64;
            for c in &changes {
                let expected = table.version() + 1;
                if c.version < expected {
                    // Already in the table (seen by the snapshot scan).
                    feed_id.clone_from(&c.id);
                    continue;
                }
                if c.version > expected {
                    tracing::warn!(
                        expected,
                        got = c.version,
                        "gap in the registry change log; resyncing"
                    );
                    if applied > 0 {
                        shared.swap_routes(table);
                    }
                    reason = "gap";
                    continue 'resync;
                }
                if let Err(problem) = apply_change(&mut table, c) {
                    shared.metrics.registry_bad_entries.inc();
                    tracing::warn!(%problem, version = c.version, "bad registry entry skipped");
                }
                feed_id.clone_from(&c.id);
                applied += 1;
            }
            if applied > 0 {
                shared.swap_routes(table);
                shared.metrics.registry_changes.inc_by(applied);
                if let Some(last) = changes.last() {
                    // Stream ids start with the append time in milliseconds.
                    let appended: u64 = last
                        .id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or(0);
                    let lag = now_ms().saturating_sub(appended);
                    shared.metrics.registry_lag.set(lag as f64 / 1000.0);
                }
            }
        }
    }
}

/// Loads one hash: a task fetches pages (on another thread of the control runtime) while this
/// one parses the previous page into the table.
async fn load_phase(
    reg: &Registry,
    kind: ChangeKind,
    mut consume: impl FnMut(Vec<(String, String)>),
) -> Result<(), RegistryError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = reg.clone();
    let fetch = tokio::spawn(async move { reader.scan_into(kind, tx).await });
    while let Some(page) = rx.recv().await {
        consume(page);
    }
    match fetch.await {
        Ok(result) => result,
        Err(e) => Err(RegistryError::BadData(format!(
            "registry scan task failed: {e}"
        ))),
    }
}

async fn full_resync(
    shared: &Shared,
    reg: &Registry,
    s: &RegistrySettings,
    reason: &'static str,
) -> Result<Resync, RegistryError> {
    let started = Instant::now();
    let head = reg.snapshot_head().await?;
    let current = shared.routes.load_full();
    // Entries are parsed into the new table batch by batch as they arrive, so a large
    // registry is never in memory both as text and as a table.
    let mut loader = TableLoader::new(&s.app_domains, head.apps, head.domains, Some(&current));
    load_phase(reg, ChangeKind::App, |b| loader.apps(b)).await?;
    let apps_ms = started.elapsed().as_millis() as u64;
    load_phase(reg, ChangeKind::Backend, |b| loader.backends(b)).await?;
    let backends_ms = started.elapsed().as_millis() as u64;
    load_phase(reg, ChangeKind::Domain, |b| loader.domains(b)).await?;
    load_phase(reg, ChangeKind::Cert, |b| loader.certs(b)).await?;
    load_phase(reg, ChangeKind::Challenge, |b| loader.challenges(b)).await?;
    tracing::debug!(apps_ms, backends_ms, "registry load phases");
    shared
        .registry_contact_ms
        .store(now_ms(), Ordering::Relaxed);
    let (table, skipped, problems) = loader.finish(head.version);
    shared.metrics.registry_bad_entries.inc_by(skipped as u64);
    for p in &problems {
        tracing::warn!(problem = %p, "bad registry entry skipped");
    }
    if skipped > problems.len() {
        tracing::warn!(
            more = skipped - problems.len(),
            "more bad registry entries skipped"
        );
    }
    let before = current.len();
    let after = table.len();
    // Certificates are guarded like domains: losing most of them at once would turn a whole
    // fleet of custom domains to the default certificate.
    let certs_before = current.cert_count();
    let certs_after = table.cert_count();
    let too_many = |before: usize, after: usize| {
        before > 0 && before.saturating_sub(after) as f64 > s.max_drop * before as f64
    };
    if !s.allow_mass_drop && (too_many(before, after) || too_many(certs_before, certs_after)) {
        shared.metrics.registry_resyncs_held.inc();
        shared.metrics.registry_held.set(1);
        tracing::error!(
            reason,
            domains_now = before,
            domains_in_registry = after,
            certificates_now = certs_before,
            certificates_in_registry = certs_after,
            max_drop = s.max_drop,
            "registry resync held: it would drop too many routes or certificates at once; the \
             current table keeps serving (set routes.allow_mass_drop to accept)"
        );
        return Ok(Resync::Held);
    }
    shared.metrics.registry_held.set(0);
    shared
        .metrics
        .registry_resyncs
        .with_label_values(&[reason])
        .inc();
    tracing::info!(
        reason,
        version = table.version(),
        domains = after,
        apps = table.app_count(),
        skipped,
        took_ms = started.elapsed().as_millis() as u64,
        "registry resync applied"
    );
    drop(current);
    shared.swap_routes(table);
    if let Some(path) = s.snapshot_file.clone() {
        // Writing a large table takes a while: do it off the sync task, from the installed
        // table itself (no copy).
        let installed = shared.routes.load_full();
        let feed_id = head.feed_id.clone();
        tokio::task::spawn_blocking(move || write_snapshot_file(&path, &installed, &feed_id));
    }
    Ok(Resync::Applied(head.feed_id))
}

/// How often a balancer writes its report ([`pier_registry::BalancerStatus`]).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Writes this balancer's report to the registry every [`REPORT_EVERY`], on its own connection
/// (a registry that does not answer delays only the report, which then ages where operators
/// read it).
pub async fn report(shared: Arc<Shared>, settings: RegistrySettings, id: String) {
    let started_ms = now_ms();
    let mut reg: Option<Registry> = None;
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if reg.is_none() {
            reg = Registry::connect_with_prefix(&settings.url, &settings.prefix)
                .await
                .ok();
        }
        let Some(r) = reg.as_ref() else { continue };
        let table = shared.routes.load();
        let m = &shared.metrics;
        let status = pier_registry::BalancerStatus {
            id: id.clone(),
            at_ms: now_ms(),
            started_ms,
            software: env!("CARGO_PKG_VERSION").to_string(),
            table_version: table.version(),
            domains: table.len() as u64,
            certificates: table.cert_count() as u64,
            connected: m.registry_connected.get() == 1,
            contact_ms: shared.registry_contact_ms.load(Ordering::Relaxed),
            lag_ms: (m.registry_lag.get() * 1000.0).round() as u64,
            held: m.registry_held.get() == 1,
            bad_entries: m.registry_bad_entries.get(),
        };
        drop(table);
        if let Err(e) = r.report_balancer(&status).await {
            tracing::debug!(error = %e, "balancer report not written");
            reg = None;
        }
    }
}

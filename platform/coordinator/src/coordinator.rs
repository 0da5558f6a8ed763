//! The coordinator's loop: take or renew the lease, read the world, plan, write with the
//! fencing token.

use std::future::Future;
use std::time::Duration;

use pier_registry::Registry;
use pier_store::{now_ms, Lease, Store, StoreError};

use crate::plan::{plan, Rules};
use crate::world::World;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This coordinator's name in the lease (unique per process).
    pub id: String,
    pub redis_url: String,
    pub prefix: String,
    /// Between two reconciliations.
    pub tick: Duration,
    /// How long the lease lasts without renewal: a dead leader is replaced within it.
    pub lease_ttl: Duration,
    /// A runner silent this long is dead.
    pub dead_after: Duration,
    /// Crashes of a new release's instance before its rollout fails.
    pub max_crashes: u32,
}

impl CoordinatorConfig {
    pub fn new(id: &str, redis_url: &str) -> Self {
        CoordinatorConfig {
            id: id.to_string(),
            redis_url: redis_url.to_string(),
            prefix: "pier:".into(),
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(3),
            dead_after: Duration::from_secs(3),
            max_crashes: 3,
        }
    }
}

/// Runs until `shutdown` completes; then gives the lease up.
pub async fn run(cfg: CoordinatorConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    tokio::pin!(shutdown);
    let Some(store) = Store::connect_until(&cfg.redis_url, &cfg.prefix, shutdown.as_mut()).await
    else {
        return Ok(());
    };
    let lease = Lease::new(store.clone(), &cfg.id, cfg.lease_ttl);
    let mut registry: Option<Registry> = None;
    let mut leading: Option<u64> = None;
    let mut last_unplaced = Vec::new();
    // Since when this coordinator has led and read the state without error.
    let mut watching_since: Option<std::time::Instant> = None;
    // (app, runner) → until when new instances of the app avoid that runner.
    let mut avoid: std::collections::BTreeMap<(String, String), std::time::Instant> =
        Default::default();
    tracing::info!(id = %cfg.id, "coordinator started");
    loop {
        match lease.acquire_or_renew().await {
            Ok(Some(token)) => {
                if leading != Some(token) {
                    tracing::info!(id = %cfg.id, token, "leading");
                    leading = Some(token);
                }
                let since = *watching_since.get_or_insert_with(std::time::Instant::now);
                let judge_dead = since.elapsed() >= cfg.dead_after;
                avoid.retain(|_, until| *until > std::time::Instant::now());
                let state = TickState {
                    judge_dead,
                    avoid: &mut avoid,
                    last_unplaced: &mut last_unplaced,
                };
                match tick(&cfg, &store, &mut registry, token, state).await {
                    Ok(()) => {}
                    Err(StoreError::Fenced(t)) => {
                        tracing::warn!(id = %cfg.id, token = t, "deposed: another coordinator leads; write refused");
                        leading = None;
                        watching_since = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile failed; trying again");
                        watching_since = None;
                    }
                }
            }
            Ok(None) => {
                watching_since = None;
                if leading.take().is_some() {
                    tracing::info!(id = %cfg.id, "lost the lease: standing by");
                }
            }
            Err(e) => {
                watching_since = None;
                tracing::warn!(error = %e, "lease check failed (Redis unreachable?)");
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(cfg.tick) => {}
        }
    }
    if leading.is_some() {
        let _ = lease.release().await;
    }
    tracing::info!(id = %cfg.id, "coordinator stopped");
    Ok(())
}

async fn tick(
    cfg: &CoordinatorConfig,
    store: &Store,
    registry: &mut Option<Registry>,
    token: u64,
    st: TickState<'_>,
) -> Result<(), StoreError> {
    let TickState {
        judge_dead,
        avoid,
        last_unplaced,
    } = st;
    let mut world = World::read(store).await?;
    world.avoid = avoid.keys().cloned().collect();
    let rules = Rules {
        dead_after_ms: u64::try_from(cfg.dead_after.as_millis()).unwrap_or(3000),
        max_crashes: cfg.max_crashes,
        judge_dead,
    };
    let p = plan(&world, now_ms(), rules, &mut |app, ptype, index| {
        format!("{app}-{ptype}-{index}-{}", short_random())
    });
    if p.unplaced != *last_unplaced {
        if !p.unplaced.is_empty() {
            tracing::warn!(slots = ?p.unplaced, "no live runner has room for these instances");
        }
        *last_unplaced = p.unplaced.clone();
    }
    store.fenced(token, &p.ops).await?;
    for pair in &p.failed_on {
        avoid.insert(pair.clone(), std::time::Instant::now() + AVOID_FOR);
    }
    for e in &p.events {
        tracing::info!(event = %e, "reconciled");
    }
    // Backends of dead runners leave the table now rather than when their deadline lapses.
    for (app, id) in &p.dead_backends {
        if registry.is_none() {
            *registry = Registry::connect_with_prefix(&cfg.redis_url, &cfg.prefix)
                .await
                .ok();
        }
        if let Some(r) = registry.as_ref() {
            if let Err(e) = r.delete_backend(app, id).await {
                tracing::warn!(app, id, error = %e, "cannot remove a dead runner's backend");
                *registry = None;
            }
        }
    }
    Ok(())
}

/// How long new instances of an app avoid a runner where one could not start.
const AVOID_FOR: Duration = Duration::from_secs(60);

/// What a tick reads and updates of the coordinator's own memory.
struct TickState<'a> {
    judge_dead: bool,
    avoid: &'a mut std::collections::BTreeMap<(String, String), std::time::Instant>,
    last_unplaced: &'a mut Vec<String>,
}

/// Eight hex digits from the clock and a counter: unique enough for instance ids, which are
/// also prefixed with the app, type and slot.
fn short_random() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    format!("{:08x}", (mixed >> 32) as u32)
}

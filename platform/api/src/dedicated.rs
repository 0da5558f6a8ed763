//! Dedicated Redis add-ons: a `redis-server` of the app's own, with its own password, run by one
//! runner and supervised there like an instance (restarted with backoff when it exits). It is
//! pinned to that runner, where its data lives: it is not moved when the runner dies (its data
//! would not move with it); it comes back with the runner.

use std::collections::BTreeMap;

use pier_model::platform::{RunnerRecord, ServiceSpec};
use pier_store::Store;

use crate::api::now_ms;
use crate::error::ApiError;
use crate::platform::RUNNER_DEAD_AFTER_MS;

/// A dedicated Redis's memory limit (`maxmemory`, with `noeviction`: writes beyond it fail
/// rather than lose keys), MiB.
pub const MEMORY_MB: u64 = 64;

/// What a made dedicated Redis is: (resource description, config vars, runner id).
pub type Made = (String, BTreeMap<String, String>, String);

/// Places the app's dedicated Redis on the live runner running the fewest, or finds the one a
/// create that timed out placed already.
pub async fn create(store: &Store, app: &str, password: &str) -> Result<Made, ApiError> {
    let runners = store.runners().await?;
    let mut load = Vec::with_capacity(runners.len());
    for r in &runners {
        let services = store.services(&r.id).await?;
        if let Some(s) = services.iter().find(|s| s.app == app && s.kind == "redis") {
            return Ok(described(r, s));
        }
        load.push((r, services.len()));
    }
    let now = now_ms();
    let (runner, _) = load
        .into_iter()
        .filter(|(r, _)| !r.leaving && now.saturating_sub(r.heartbeat_ms) < RUNNER_DEAD_AFTER_MS)
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)))
        .ok_or_else(|| {
            ApiError::NoCapacity(
                "no live runner to run a dedicated Redis on: try again when one is up".into(),
            )
        })?;
    let spec = ServiceSpec {
        app: app.to_string(),
        kind: "redis".into(),
        port: store.next_service_port(&runner.id).await?,
        password: password.to_string(),
        memory_mb: MEMORY_MB,
    };
    store.put_service(&runner.id, &spec).await?;
    Ok(described(runner, &spec))
}

fn described(r: &RunnerRecord, s: &ServiceSpec) -> Made {
    let url = format!("redis://:{}@{}:{}/0", s.password, r.address, s.port);
    (
        format!(
            "redis-server on runner {} ({}:{}), {} MiB",
            r.id, r.address, s.port, s.memory_mb
        ),
        BTreeMap::from([("REDIS_URL".to_string(), url)]),
        r.id.clone(),
    )
}

/// Takes the app's dedicated Redis off its runner, which stops it and deletes its data.
pub async fn destroy(store: &Store, app: &str, runner: &str) -> Result<(), ApiError> {
    store
        .delete_service(runner, &format!("{app}/redis"))
        .await
        .map_err(ApiError::from)
}

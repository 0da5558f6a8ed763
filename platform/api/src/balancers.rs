//! `GET /v1/balancers` (operator): each balancer's last report
//! ([`pier_registry::BalancerStatus`]) with its age and how many registry versions its table is
//! behind. Reports older than [`FORGET_AFTER_MS`] belong to balancers that are gone: they are
//! dropped from the registry when read.

use http::StatusCode;
use pier_model::api::{BalancerList, BalancerView};

use crate::api::{json, now_ms, ApiState, Reply};
use crate::auth::Caller;

/// A balancer writes its report every 5 s; one older than this counts as not live.
pub const LIVE_WITHIN_MS: u64 = 15_000;
/// A report older than this is forgotten (the balancer is gone).
pub const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;

pub async fn list(state: &ApiState, caller: &Caller) -> Reply {
    caller.require_operator("list balancers")?;
    let reg = state.registry();
    let registry_version = reg.version().await?;
    let (reports, bad) = reg.balancers().await?;
    let now = now_ms();
    let mut gone = bad;
    for id in &gone {
        tracing::warn!(balancer = %id, "unreadable balancer report dropped");
    }
    let mut balancers = Vec::with_capacity(reports.len());
    for status in reports {
        let age = now.saturating_sub(status.at_ms);
        if age > FORGET_AFTER_MS {
            gone.push(status.id);
            continue;
        }
        balancers.push(BalancerView {
            report_age_ms: age,
            live: age < LIVE_WITHIN_MS,
            versions_behind: registry_version.saturating_sub(status.table_version),
            status,
        });
    }
    if let Err(e) = reg.forget_balancers(&gone).await {
        tracing::warn!(error = %e, "old balancer reports not dropped");
    }
    json(
        StatusCode::OK,
        &BalancerList {
            registry_version,
            balancers,
        },
    )
}

//! What each balancer reports about itself: the route table it serves and how far behind the
//! registry it is. A balancer overwrites its own field of the `balancers` hash every few seconds
//! (id → [`BalancerStatus`] JSON); operators read the hash (`GET /v1/balancers`, `pier
//! balancers`, the dashboard) to see which balancers are alive and current. The report is
//! written by the balancer's control task, never on its request path, and a balancer that cannot
//! reach Redis simply stops reporting: its last report ages, which is what an operator needs to
//! see.

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::client::{timed, Registry, RegistryError};

/// One balancer's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BalancerStatus {
    /// The balancer's id (`telemetry.id`; default host name and process id).
    pub id: String,
    /// When this report was made, ms since the epoch.
    pub at_ms: u64,
    /// When the balancer process started, ms since the epoch.
    pub started_ms: u64,
    /// The pier version it runs.
    pub software: String,
    /// The registry version its route table holds.
    pub table_version: u64,
    /// Hostname patterns in its table.
    pub domains: u64,
    /// Certificates in its table.
    pub certificates: u64,
    /// Connected to the registry when the report was made.
    pub connected: bool,
    /// Last answer from the registry (a feed read or a resync), ms since the epoch; 0: never.
    pub contact_ms: u64,
    /// Time from a change's append to its being served, for the last change applied, ms.
    pub lag_ms: u64,
    /// A full resync is being held back by the mass-drop guard.
    pub held: bool,
    /// Registry entries skipped as bad since it started.
    pub bad_entries: u64,
}

impl Registry {
    /// Writes `status` as its balancer's current report.
    pub async fn report_balancer(&self, status: &BalancerStatus) -> Result<(), RegistryError> {
        let json =
            serde_json::to_string(status).map_err(|e| RegistryError::BadData(e.to_string()))?;
        let mut c = self.conn.clone();
        timed(c.hset::<_, _, _, ()>(&self.keys.balancers, &status.id, json)).await
    }

    /// Every report, sorted by id. Reports that cannot be read are skipped and named in the
    /// second member.
    pub async fn balancers(&self) -> Result<(Vec<BalancerStatus>, Vec<String>), RegistryError> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = timed(c.hgetall(&self.keys.balancers)).await?;
        let mut out = Vec::with_capacity(all.len());
        let mut bad = Vec::new();
        for (id, v) in all {
            match serde_json::from_str::<BalancerStatus>(&v) {
                Ok(s) => out.push(s),
                Err(_) => bad.push(id),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((out, bad))
    }

    /// Forgets the reports of `ids` (balancers gone for good).
    pub async fn forget_balancers(&self, ids: &[String]) -> Result<(), RegistryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        timed(c.hdel::<_, _, ()>(&self.keys.balancers, ids)).await
    }
}

//! What the coordinator reads each tick.

use std::collections::BTreeMap;

use pier_model::platform::{
    Formation, InstanceSpec, InstanceStatus, Release, RunState, RunnerRecord,
};
use pier_store::{Store, StoreError};

/// An app that has a current release.
#[derive(Debug, Clone)]
pub struct AppWorld {
    pub current: Release,
    pub formation: Formation,
}

/// The platform state at one moment.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub runners: Vec<RunnerRecord>,
    /// Runner id → what it is asked to run.
    pub assignments: BTreeMap<String, Vec<InstanceSpec>>,
    pub apps: BTreeMap<String, AppWorld>,
    /// Restart generations: `app` and `app/web.1`.
    pub generations: BTreeMap<String, u64>,
    /// Instance id → what its runner reports.
    pub reports: BTreeMap<String, InstanceStatus>,
    /// One-off processes that have not ended.
    pub runs: Vec<RunState>,
    /// `(app, runner)` pairs where an instance of the app could not start lately (slug
    /// unreadable, disk full): placed elsewhere while another runner has room. The
    /// coordinator's own memory, not read from Redis.
    pub avoid: std::collections::BTreeSet<(String, String)>,
}

impl World {
    /// Reads everything the plan needs.
    pub async fn read(store: &Store) -> Result<World, StoreError> {
        let runners = store.runners().await?;
        let mut assignments = BTreeMap::new();
        for r in &runners {
            assignments.insert(r.id.clone(), store.assignments(&r.id).await?);
        }
        let formations = store.all_formations().await?;
        let mut apps = BTreeMap::new();
        let mut reports = BTreeMap::new();
        let mut with_instances: Vec<String> = assignments
            .values()
            .flatten()
            .map(|s| s.app.clone())
            .collect();
        for (app, version) in store.all_current().await? {
            if let Some(current) = store.release(&app, version).await? {
                apps.insert(
                    app.clone(),
                    AppWorld {
                        current,
                        formation: formations.get(&app).cloned().unwrap_or_default(),
                    },
                );
            }
            with_instances.push(app);
        }
        with_instances.sort();
        with_instances.dedup();
        for app in with_instances {
            for st in store.reports(&app).await? {
                reports.insert(st.id.clone(), st);
            }
        }
        Ok(World {
            runners,
            assignments,
            apps,
            generations: store.restart_generations().await?,
            reports,
            runs: store.active_runs().await?,
            avoid: Default::default(),
        })
    }
}

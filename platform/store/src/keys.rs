//! Key names of the platform state, under the registry's prefix (default `pier:`). See
//! docs/platform.md for the whole schema.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct PlatformKeys {
    /// Hash: app → its current (desired) release number.
    pub current: String,
    /// Hash: app → its formation (JSON `{"web": 2}`).
    pub formation: String,
    /// Hash: `app` or `app/web.1` → restart generation.
    pub restarts: String,
    /// Hash: runner id → [`pier_model::platform::RunnerRecord`] JSON.
    pub runners: String,
    /// Hash: app → Unix uid its instances run as.
    pub uids: String,
    /// Counter of allocated uids.
    pub uid_seq: String,
    /// The coordinator's lease: the holder's id, with an expiry.
    pub lease: String,
    /// The fencing token: incremented each time a coordinator takes the lease.
    pub fence: String,
    /// Set: apps with at least one log drain.
    pub drained_apps: String,
    /// Set: `app/N` of every run (`pier run`) that has not ended, for the coordinator.
    pub runs_active: String,
    /// The forwarding drainer's lease: the holder's id, with an expiry.
    pub drainer_lease: String,
    /// The drainers' fencing token: incremented each time a drainer takes the lease.
    pub drainer_fence: String,
    /// The usage collector's lease (one API collects at a time) and its fencing token.
    pub usage_lease: String,
    pub usage_fence: String,
    prefix: String,
}

impl PlatformKeys {
    pub fn new(prefix: &str) -> Self {
        PlatformKeys {
            current: format!("{prefix}current"),
            formation: format!("{prefix}formation"),
            restarts: format!("{prefix}restarts"),
            runners: format!("{prefix}runners"),
            uids: format!("{prefix}uids"),
            uid_seq: format!("{prefix}uid_seq"),
            lease: format!("{prefix}coordinator:lease"),
            fence: format!("{prefix}coordinator:fence"),
            drained_apps: format!("{prefix}drained_apps"),
            runs_active: format!("{prefix}runs_active"),
            drainer_lease: format!("{prefix}drainer:lease"),
            drainer_fence: format!("{prefix}drainer:fence"),
            usage_lease: format!("{prefix}usage_collector:lease"),
            usage_fence: format!("{prefix}usage_collector:fence"),
            prefix: prefix.to_string(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: release number → [`pier_model::platform::Release`] JSON.
    pub fn releases(&self, app: &str) -> String {
        format!("{}releases:{app}", self.prefix)
    }

    /// Counter: the app's last release number.
    pub fn release_seq(&self, app: &str) -> String {
        format!("{}release_seq:{app}", self.prefix)
    }

    /// Hash: `app/kind` → [`pier_model::platform::ServiceSpec`] JSON: the add-on processes
    /// (dedicated Redis) the runner runs.
    pub fn services(&self, runner: &str) -> String {
        format!("{}services:{runner}", self.prefix)
    }

    /// Counter: ports handed to the runner's add-on processes so far.
    pub fn service_ports(&self, runner: &str) -> String {
        format!("{}service_port:{runner}", self.prefix)
    }

    /// Hash: instance id → [`pier_model::platform::InstanceSpec`] JSON the runner must run.
    pub fn assignments(&self, runner: &str) -> String {
        format!("{}assign:{runner}", self.prefix)
    }

    /// Stream: the app's log lines (`t`, `src`, `ps`, `line`), capped in length.
    pub fn logs(&self, app: &str) -> String {
        pier_registry::telemetry::logs_key(&self.prefix, app)
    }

    /// Hash: add-on kind → [`pier_model::platform::AddonRecord`] JSON (credentials included).
    pub fn addons(&self, app: &str) -> String {
        format!("{}addons:{app}", self.prefix)
    }

    /// Hash: instance id → [`pier_model::platform::InstanceStatus`] JSON, reported by runners.
    pub fn instances(&self, app: &str) -> String {
        format!("{}instances:{app}", self.prefix)
    }

    /// Hash of one run (`spec`, `placed`, `attached`, `stop`, `exit`): see [`crate::runs`].
    pub fn run(&self, app: &str, number: u64) -> String {
        format!("{}run:{app}:{number}", self.prefix)
    }

    /// What every run key of `app` starts with (the Lua script appends the number).
    pub fn run_prefix(&self, app: &str) -> String {
        format!("{}run:{app}:", self.prefix)
    }

    /// Set: `app/N` of the app's runs that have not ended.
    pub fn runs_active(&self, app: &str) -> String {
        format!("{}runs_active:{app}", self.prefix)
    }

    /// Sorted set: the app's run numbers by creation time (the last 100 are kept).
    pub fn runs(&self, app: &str) -> String {
        format!("{}runs:{app}", self.prefix)
    }

    /// Counter: the app's last run number.
    pub fn run_seq(&self, app: &str) -> String {
        format!("{}run_seq:{app}", self.prefix)
    }

    /// Hash: drain id → [`pier_model::drain::DrainRecord`] JSON.
    pub fn drains(&self, app: &str) -> String {
        format!("{}drains:{app}", self.prefix)
    }

    /// String: the id of the last log stream entry drain `id` of `app` delivered.
    pub fn drain_cursor(&self, app: &str, id: &str) -> String {
        format!("{}{id}", self.drain_cursor_prefix(app))
    }

    /// What every cursor key of `app`'s drains starts with.
    pub fn drain_cursor_prefix(&self, app: &str) -> String {
        format!("{}drain_cursor:{app}:", self.prefix)
    }

    /// Hash: backup id → [`pier_model::api::BackupView`] JSON: the app's PostgreSQL backups.
    pub fn backups(&self, app: &str) -> String {
        format!("{}backups:{app}", self.prefix)
    }

    /// Counter: the app's last backup id.
    pub fn backup_seq(&self, app: &str) -> String {
        format!("{}backup_seq:{app}", self.prefix)
    }

    /// String with an expiry: who captures or restores the app's database now (one at a time).
    pub fn backup_lock(&self, app: &str) -> String {
        format!("{}backup_lock:{app}", self.prefix)
    }

    /// Hash: app → [`pier_model::api::BackupSchedule`] JSON.
    pub fn backup_schedules(&self) -> String {
        format!("{}backup_schedules", self.prefix)
    }

    /// String with an expiry: the API that took the app's scheduled capture of `day`
    /// (`YYYY-MM-DD`), so several APIs capture it once.
    pub fn backup_day(&self, app: &str, day: &str) -> String {
        format!("{}backup_day:{app}:{day}", self.prefix)
    }
}

//! PostgreSQL backups' records, the per-app lock that lets one capture or restore run at a
//! time, schedules, and the per-day claim that makes a scheduled capture happen once however
//! many APIs run. The archives themselves are in the API's backup store, not here.

use std::collections::BTreeMap;

use pier_model::api::{BackupSchedule, BackupView};
use redis::{AsyncCommands, Script};

use crate::store::{parse_all, timed, to_json, Store, StoreError};

impl Store {
    /// A new backup id of `app` (1, 2, ...).
    pub async fn next_backup_id(&self, app: &str) -> Result<u64, StoreError> {
        timed(self.c().incr(self.keys.backup_seq(app), 1u64)).await
    }

    /// Stores (or replaces) a backup's record.
    pub async fn put_backup(&self, b: &BackupView) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(self.keys.backups(&b.app), b.id, to_json(b)?),
        )
        .await
    }

    pub async fn backup(&self, app: &str, id: u64) -> Result<Option<BackupView>, StoreError> {
        let raw: Option<String> = timed(self.c().hget(self.keys.backups(app), id)).await?;
        raw.map(|r| {
            serde_json::from_str(&r)
                .map_err(|e| StoreError::BadData(format!("backup {id} of {app}: {e}")))
        })
        .transpose()
    }

    /// The app's backups, newest first.
    pub async fn backups(&self, app: &str) -> Result<Vec<BackupView>, StoreError> {
        let raw: BTreeMap<String, String> = timed(self.c().hgetall(self.keys.backups(app))).await?;
        let mut all: Vec<BackupView> = parse_all("backup", raw);
        all.sort_by_key(|b| std::cmp::Reverse(b.id));
        Ok(all)
    }

    pub async fn delete_backup(&self, app: &str, id: u64) -> Result<(), StoreError> {
        timed(self.c().hdel::<_, _, ()>(self.keys.backups(app), id)).await
    }

    /// Takes the app's backup lock for `holder` (`capture 3`, `restore 2`) for `ttl_ms`;
    /// `Err(holder now)` when someone else holds it.
    pub async fn lock_backups(
        &self,
        app: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<Result<(), String>, StoreError> {
        let key = self.keys.backup_lock(app);
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl_ms));
        let took: Option<String> = timed(self.c().set_options(&key, holder, opts)).await?;
        if took.is_some() {
            return Ok(Ok(()));
        }
        let now: Option<String> = timed(self.c().get(&key)).await?;
        Ok(Err(now.unwrap_or_default()))
    }

    /// Extends the lock while `holder` still holds it; false when it lapsed or was taken.
    pub async fn renew_backup_lock(
        &self,
        app: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        );
        let n: i64 = timed(
            script
                .key(self.keys.backup_lock(app))
                .arg(holder)
                .arg(ttl_ms)
                .invoke_async(&mut self.c()),
        )
        .await?;
        Ok(n == 1)
    }

    /// Gives the lock up if `holder` still holds it.
    pub async fn unlock_backups(&self, app: &str, holder: &str) -> Result<(), StoreError> {
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        timed(
            script
                .key(self.keys.backup_lock(app))
                .arg(holder)
                .invoke_async::<i64>(&mut self.c()),
        )
        .await?;
        Ok(())
    }

    /// Who holds the app's backup lock, if anyone.
    pub async fn backup_lock_holder(&self, app: &str) -> Result<Option<String>, StoreError> {
        timed(self.c().get(self.keys.backup_lock(app))).await
    }

    pub async fn put_backup_schedule(&self, s: &BackupSchedule) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(self.keys.backup_schedules(), &s.app, to_json(s)?),
        )
        .await
    }

    pub async fn backup_schedule(&self, app: &str) -> Result<Option<BackupSchedule>, StoreError> {
        let raw: Option<String> = timed(self.c().hget(self.keys.backup_schedules(), app)).await?;
        raw.map(|r| {
            serde_json::from_str(&r)
                .map_err(|e| StoreError::BadData(format!("backup schedule of {app}: {e}")))
        })
        .transpose()
    }

    /// Every app's schedule.
    pub async fn backup_schedules(&self) -> Result<Vec<BackupSchedule>, StoreError> {
        let raw: BTreeMap<String, String> =
            timed(self.c().hgetall(self.keys.backup_schedules())).await?;
        Ok(parse_all("backup schedule", raw))
    }

    /// Removes the app's schedule; false when it had none.
    pub async fn delete_backup_schedule(&self, app: &str) -> Result<bool, StoreError> {
        let n: u64 = timed(self.c().hdel(self.keys.backup_schedules(), app)).await?;
        Ok(n > 0)
    }

    /// Claims the app's scheduled capture of `day` for `holder` (`SET NX PX`): true for the
    /// one API that gets it.
    pub async fn claim_backup_day(
        &self,
        app: &str,
        day: &str,
        holder: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let opts = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl_ms));
        let took: Option<String> = timed(self.c().set_options(
            self.keys.backup_day(app, day),
            holder,
            opts,
        ))
        .await?;
        Ok(took.is_some())
    }

    /// Gives a day's claim back (its capture could not start: the next pass tries again).
    pub async fn release_backup_day(&self, app: &str, day: &str) -> Result<(), StoreError> {
        timed(self.c().del::<_, ()>(self.keys.backup_day(app, day))).await
    }
}

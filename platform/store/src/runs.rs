//! One-off processes (`pier run`). Each run is a hash, `run:<app>:<N>`, with one field per
//! writer so that no writer overwrites another's fact:
//!
//! | field | written by | what |
//! | --- | --- | --- |
//! | `spec` | the API, once | [`RunSpec`] JSON |
//! | `placed` | the coordinator (fenced), once | [`RunPlacement`] JSON |
//! | `attached` | the API, once (`HSETNX`) | ms when a client attached |
//! | `stop` | the API (`HSETNX`) | ms when the owner asked it to stop |
//! | `started` | its runner, once (`HSETNX`) | the runner's id: a run never starts twice |
//! | `exit` | its runner, or the coordinator (`HSETNX`: the first word stands) | [`RunExit`] JSON |
//!
//! A run that has not ended is a member `app/N` of `runs_active` (all apps, for the
//! coordinator) and of `runs_active:<app>` (its count is the app's limit). Every run is in
//! `runs:<app>` (the last [`KEPT_RUNS`]) and its hash expires [`KEEP_ENDED_MS`] after it ends.

use std::collections::HashMap;

use pier_model::platform::{RunExit, RunPlacement, RunSpec, RunState};
use redis::Script;

use crate::store::{timed, to_json, Store, StoreError};

/// Runs listed per app.
pub const KEPT_RUNS: isize = 100;
/// How long an ended run's record is kept (the audit of who ran what).
pub const KEEP_ENDED_MS: u64 = 30 * 24 * 3600 * 1000;

/// Why a run was not created.
#[derive(Debug)]
pub enum CreateRun {
    Created(RunSpec),
    /// The app already has this many runs that have not ended.
    AtLimit(usize),
}

impl Store {
    /// Records a new run of `spec.app` (its `number` is allocated here) unless the app has
    /// `max_active` runs that have not ended.
    pub async fn create_run(
        &self,
        spec: &RunSpec,
        max_active: usize,
    ) -> Result<CreateRun, StoreError> {
        // The number is allocated in the script: the spec's JSON is split around it.
        const MARK: &str = "\"number\":18446744073709551615";
        let json = to_json(&RunSpec {
            number: u64::MAX,
            ..spec.clone()
        })?;
        let (head, tail) = json
            .split_once(MARK)
            .ok_or_else(|| StoreError::BadData("run spec without its number".into()))?;
        let script = Script::new(
            r#"
-- Runs that ended count no more, even before the coordinator has cleared them away.
local active = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = string.match(m, '(%d+)$')
  local k = n and (ARGV[4] .. n)
  if k and redis.call('EXISTS', k) == 1 and redis.call('HEXISTS', k, 'exit') == 0 then
    active = active + 1
  end
end
if active >= tonumber(ARGV[1]) then return {0, active} end
local n = redis.call('INCR', KEYS[2])
local key = ARGV[4] .. n
redis.call('HSET', key, 'spec', ARGV[2] .. '"number":' .. n .. ARGV[3])
redis.call('PEXPIRE', key, ARGV[5])
redis.call('SADD', KEYS[1], ARGV[6] .. '/' .. n)
redis.call('SADD', KEYS[3], ARGV[6] .. '/' .. n)
redis.call('ZADD', KEYS[4], ARGV[7], n)
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[8]) + 1))
return {1, n}
"#,
        );
        let k = &self.keys;
        // Kept until well after its deadline even if nothing ever marks it ended.
        let ttl = spec
            .deadline_ms
            .saturating_sub(spec.created_ms)
            .saturating_add(KEEP_ENDED_MS)
            .min(i64::MAX as u64 / 2);
        let (ok, n): (i64, u64) = timed(
            script
                .key(k.runs_active(&spec.app))
                .key(k.run_seq(&spec.app))
                .key(&k.runs_active)
                .key(k.runs(&spec.app))
                .arg(max_active)
                .arg(head)
                .arg(tail)
                .arg(k.run_prefix(&spec.app))
                .arg(ttl)
                .arg(&spec.app)
                .arg(spec.created_ms)
                .arg(KEPT_RUNS)
                .invoke_async(&mut self.conn.clone()),
        )
        .await?;
        if ok == 0 {
            return Ok(CreateRun::AtLimit(usize::try_from(n).unwrap_or(usize::MAX)));
        }
        Ok(CreateRun::Created(RunSpec {
            number: n,
            ..spec.clone()
        }))
    }

    /// One run, when it is known.
    pub async fn run(&self, app: &str, number: u64) -> Result<Option<RunState>, StoreError> {
        let raw: HashMap<String, String> = timed(
            redis::cmd("HGETALL")
                .arg(self.keys.run(app, number))
                .query_async(&mut self.conn.clone()),
        )
        .await?;
        parse_run(&format!("{app}/{number}"), raw)
    }

    /// The app's runs, newest first (at most [`KEPT_RUNS`]).
    pub async fn runs(&self, app: &str) -> Result<Vec<RunState>, StoreError> {
        let numbers: Vec<u64> = timed(
            redis::cmd("ZREVRANGE")
                .arg(self.keys.runs(app))
                .arg(0)
                .arg(KEPT_RUNS - 1)
                .query_async(&mut self.conn.clone()),
        )
        .await?;
        let keys: Vec<(String, String)> = numbers
            .iter()
            .map(|n| (format!("{app}/{n}"), self.keys.run(app, *n)))
            .collect();
        self.read_runs(keys).await
    }

    /// Every run of every app that has not ended (what the coordinator places and watches).
    pub async fn active_runs(&self) -> Result<Vec<RunState>, StoreError> {
        let members: Vec<String> = timed(
            redis::cmd("SMEMBERS")
                .arg(&self.keys.runs_active)
                .query_async(&mut self.conn.clone()),
        )
        .await?;
        let keys = members
            .iter()
            .filter_map(|m| {
                let (app, n) = m.rsplit_once('/')?;
                Some((m.clone(), self.keys.run(app, n.parse().ok()?)))
            })
            .collect();
        self.read_runs(keys).await
    }

    async fn read_runs(&self, keys: Vec<(String, String)>) -> Result<Vec<RunState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (_, k) in &keys {
            pipe.cmd("HGETALL").arg(k);
        }
        let all: Vec<HashMap<String, String>> =
            timed(pipe.query_async(&mut self.conn.clone())).await?;
        let mut out = Vec::new();
        for ((name, _), raw) in keys.iter().zip(all) {
            match parse_run(name, raw) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                // One broken record must not hide the others.
                Err(e) => tracing::warn!(error = %e, "run record skipped"),
            }
        }
        Ok(out)
    }

    /// Marks the run attached; false when a client attached before (a run attaches once).
    pub async fn attach_run(
        &self,
        app: &str,
        number: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        timed(
            redis::cmd("HSETNX")
                .arg(self.keys.run(app, number))
                .arg("attached")
                .arg(now_ms)
                .query_async(&mut self.conn.clone()),
        )
        .await
    }

    /// Asks the run to stop (the coordinator takes it from its runner, which ends it).
    pub async fn stop_run(&self, app: &str, number: u64, now_ms: u64) -> Result<(), StoreError> {
        timed(
            redis::cmd("HSETNX")
                .arg(self.keys.run(app, number))
                .arg("stop")
                .arg(now_ms)
                .query_async::<i64>(&mut self.conn.clone()),
        )
        .await
        .map(|_| ())
    }

    /// Records how the run ended (the first word stands) and keeps the record for
    /// [`KEEP_ENDED_MS`].
    pub async fn end_run(&self, app: &str, number: u64, exit: &RunExit) -> Result<(), StoreError> {
        let key = self.keys.run(app, number);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSETNX")
            .arg(&key)
            .arg("exit")
            .arg(to_json(exit)?)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(KEEP_ENDED_MS)
            .ignore();
        timed(pipe.query_async::<()>(&mut self.conn.clone())).await
    }
}

fn parse_run(name: &str, mut raw: HashMap<String, String>) -> Result<Option<RunState>, StoreError> {
    let Some(spec) = raw.remove("spec") else {
        return Ok(None);
    };
    let bad =
        |what: &str, e: serde_json::Error| StoreError::BadData(format!("run {name} {what}: {e}"));
    let spec: RunSpec = serde_json::from_str(&spec).map_err(|e| bad("spec", e))?;
    let placed = raw
        .remove("placed")
        .map(|p| serde_json::from_str::<RunPlacement>(&p))
        .transpose()
        .map_err(|e| bad("placed", e))?;
    let exit = raw
        .remove("exit")
        .map(|p| serde_json::from_str::<RunExit>(&p))
        .transpose()
        .map_err(|e| bad("exit", e))?;
    let ms = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
    Ok(Some(RunState {
        spec,
        placed,
        attached_ms: ms(raw.remove("attached")),
        stop_ms: ms(raw.remove("stop")),
        exit,
    }))
}

impl Store {
    /// Marks the run started by `runner`. False when it was started before (its runner
    /// restarted while it ran): a run runs at most once.
    pub async fn start_run(
        &self,
        app: &str,
        number: u64,
        runner: &str,
    ) -> Result<bool, StoreError> {
        timed(
            redis::cmd("HSETNX")
                .arg(self.keys.run(app, number))
                .arg("started")
                .arg(runner)
                .query_async(&mut self.conn.clone()),
        )
        .await
    }
}

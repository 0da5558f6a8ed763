//! The coordinator's lease, and the writes only the lease holder may make.
//!
//! One coordinator leads at a time: it holds a key with an expiry and renews it well before it
//! lapses. Taking the lease increments the fencing token, and every write of the leader carries
//! the token it got, checked in the same script that writes: a leader that was paused past its
//! lease (and replaced) has its late writes refused instead of overwriting its successor's.

use std::time::Duration;

use pier_model::platform::{InstanceSpec, Release, RunExit, RunPlacement};
use redis::Script;

use crate::store::{timed, to_json, Store, StoreError};

/// A write the coordinator makes, only while it leads.
#[derive(Debug, Clone)]
pub enum FencedOp {
    /// Asks `runner` to run `spec`.
    Assign { runner: String, spec: InstanceSpec },
    /// Takes instance `id` from `runner` (it stops it, draining first).
    Unassign { runner: String, id: String },
    /// Stores a release again (its status changed).
    PutRelease(Release),
    /// Makes `version` the app's current release (a failed rollout goes back).
    SetCurrent { app: String, version: u64 },
    /// Forgets a dead runner and its assignments.
    ForgetRunner(String),
    /// Forgets an instance's report (its runner is gone).
    RemoveReport { app: String, id: String },
    /// Places a one-off process: assigns `spec` (its `run` set) to `runner` and records where.
    PlaceRun {
        runner: String,
        spec: InstanceSpec,
        at_ms: u64,
    },
    /// A run is over: records `exit` unless its runner did first, and takes it off the active
    /// lists (its assignment is removed with [`FencedOp::Unassign`]).
    FinishRun {
        app: String,
        number: u64,
        exit: RunExit,
    },
}

/// A coordinator's hold on the lease (or another service's on its own lease).
pub struct Lease {
    store: Store,
    holder: String,
    ttl: Duration,
    /// The lease key and the fencing token's key.
    key: String,
    fence: String,
}

impl Lease {
    /// `holder` names this coordinator (unique per process); `ttl` is how long the lease lasts
    /// without renewal.
    pub fn new(store: Store, holder: &str, ttl: Duration) -> Self {
        let (key, fence) = (store.keys.lease.clone(), store.keys.fence.clone());
        Self::on_keys(store, holder, ttl, &key, &fence)
    }

    /// A lease on other keys, for another service of which one instance leads at a time (the
    /// drainer): `key` holds the leader's id, `fence` its fencing token.
    pub fn on_keys(store: Store, holder: &str, ttl: Duration, key: &str, fence: &str) -> Self {
        Lease {
            store,
            holder: holder.to_string(),
            ttl,
            key: key.to_string(),
            fence: fence.to_string(),
        }
    }

    /// Takes the lease if it is free or renews it if this coordinator holds it. Returns the
    /// fencing token while leading, `None` while another coordinator does.
    pub async fn acquire_or_renew(&self) -> Result<Option<u64>, StoreError> {
        let script = Script::new(
            r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"#,
        );
        let token: u64 = timed(
            script
                .key(&self.key)
                .key(&self.fence)
                .arg(&self.holder)
                .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
                .invoke_async(&mut self.store.conn.clone()),
        )
        .await?;
        Ok((token > 0).then_some(token))
    }

    /// Gives the lease up (on shutdown), so another coordinator need not wait for it to lapse.
    pub async fn release(&self) -> Result<(), StoreError> {
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
        );
        timed(
            script
                .key(&self.key)
                .arg(&self.holder)
                .invoke_async::<i64>(&mut self.store.conn.clone()),
        )
        .await
        .map(|_| ())
    }
}

impl Store {
    /// Applies `ops` atomically if `token` is still the current fencing token; otherwise
    /// changes nothing and answers [`StoreError::Fenced`].
    pub async fn fenced(&self, token: u64, ops: &[FencedOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let script = Script::new(
            r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
local i = 2
while i <= #ARGV do
  local cmd, key, field, value = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  if cmd == 'hset' then redis.call('HSET', key, field, value)
  elseif cmd == 'hdel' then redis.call('HDEL', key, field)
  elseif cmd == 'del' then redis.call('DEL', key)
  elseif cmd == 'hsetnx' then redis.call('HSETNX', key, field, value)
  elseif cmd == 'srem' then redis.call('SREM', key, field)
  elseif cmd == 'pexpire' then redis.call('PEXPIRE', key, field) end
  i = i + 4
end
return 1
"#,
        );
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys.fence).arg(token);
        let k = &self.keys;
        for op in ops {
            let (cmd, key, field, value) = match op {
                FencedOp::Assign { runner, spec } => (
                    "hset",
                    k.assignments(runner),
                    spec.id.clone(),
                    to_json(spec)?,
                ),
                FencedOp::Unassign { runner, id } => {
                    ("hdel", k.assignments(runner), id.clone(), String::new())
                }
                FencedOp::PutRelease(rel) => (
                    "hset",
                    k.releases(&rel.app),
                    rel.version.to_string(),
                    to_json(rel)?,
                ),
                FencedOp::SetCurrent { app, version } => {
                    ("hset", k.current.clone(), app.clone(), version.to_string())
                }
                FencedOp::ForgetRunner(id) => {
                    inv.arg("del").arg(k.assignments(id)).arg("").arg("");
                    ("hdel", k.runners.clone(), id.clone(), String::new())
                }
                FencedOp::RemoveReport { app, id } => {
                    ("hdel", k.instances(app), id.clone(), String::new())
                }
                FencedOp::PlaceRun {
                    runner,
                    spec,
                    at_ms,
                } => {
                    let run = spec
                        .run
                        .as_ref()
                        .ok_or_else(|| StoreError::BadData(format!("{} is not a run", spec.id)))?;
                    let placed = RunPlacement {
                        runner: runner.clone(),
                        instance: spec.id.clone(),
                        at_ms: *at_ms,
                    };
                    inv.arg("hsetnx")
                        .arg(k.run(&run.app, run.number))
                        .arg("placed")
                        .arg(to_json(&placed)?);
                    (
                        "hset",
                        k.assignments(runner),
                        spec.id.clone(),
                        to_json(spec)?,
                    )
                }
                FencedOp::FinishRun { app, number, exit } => {
                    let member = format!("{app}/{number}");
                    let key = k.run(app, *number);
                    inv.arg("hsetnx").arg(&key).arg("exit").arg(to_json(exit)?);
                    inv.arg("pexpire")
                        .arg(&key)
                        .arg(crate::runs::KEEP_ENDED_MS)
                        .arg("");
                    inv.arg("srem").arg(k.runs_active(app)).arg(&member).arg("");
                    ("srem", k.runs_active.clone(), member, String::new())
                }
            };
            inv.arg(cmd).arg(key).arg(field).arg(value);
        }
        let done: i64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced(token))
        }
    }
}

//! [`Store`]: the typed client of the platform state.

use std::collections::BTreeMap;
use std::time::Duration;

use pier_model::platform::{
    AddonRecord, Formation, InstanceSpec, InstanceStatus, LogLine, Release, RunnerRecord,
};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::keys::PlatformKeys;

/// What went wrong talking to the platform state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad data in the platform state: {0}")]
    BadData(String),
    /// Another write made a release at the same time, every time this one tried.
    #[error("release of {0:?} kept conflicting with concurrent writes")]
    Contended(String),
    /// A write of a coordinator that is no longer the leader.
    #[error("refused: fencing token {0} is not the current leader's")]
    Fenced(u64),
}

/// Longest a single command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// First uid handed to apps (far above the system's and people's own).
pub const FIRST_APP_UID: u32 = 200_000;

/// A connection to the platform state (reconnects by itself after Redis comes back).
#[derive(Clone)]
pub struct Store {
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: PlatformKeys,
    url: String,
}

/// Lines kept per app log stream (approximately: Redis trims whole nodes).
pub use pier_registry::telemetry::LOG_STREAM_LEN;

pub(crate) async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Timeout(COMMAND_TIMEOUT)),
    }
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::BadData(e.to_string()))
}

fn from_json<T: DeserializeOwned>(what: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::BadData(format!("{what}: {e}")))
}

/// Parses every value of a hash, skipping (and returning the reasons of) the bad ones: one
/// broken record must not hide the others.
pub(crate) fn parse_all<T: DeserializeOwned>(what: &str, raw: BTreeMap<String, String>) -> Vec<T> {
    raw.into_iter()
        .filter_map(|(k, v)| match from_json(&format!("{what} {k}"), &v) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("pier-store: skipped {e}");
                None
            }
        })
        .collect()
}

impl Store {
    /// Connects to `url` with key prefix `prefix` (the registry's, default `pier:`).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let conn = timed(ConnectionManager::new(client)).await?;
        Ok(Store {
            conn,
            keys: PlatformKeys::new(prefix),
            url: url.to_string(),
        })
    }

    /// Connects, trying again every second while Redis does not answer, until `stop`
    /// completes (then `None`). For services that start before Redis does.
    pub async fn connect_until<F: std::future::Future<Output = ()>>(
        url: &str,
        prefix: &str,
        mut stop: std::pin::Pin<&mut F>,
    ) -> Option<Self> {
        loop {
            match Self::connect(url, prefix).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::warn!(redis = %url, error = %e, "cannot reach Redis yet");
                    tokio::select! {
                        _ = stop.as_mut() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    pub fn keys(&self) -> &PlatformKeys {
        &self.keys
    }

    pub(crate) fn c(&self) -> ConnectionManager {
        self.conn.clone()
    }

    // ------------------------------------------------------------ releases

    /// The app's releases, newest first.
    pub async fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        let raw: BTreeMap<String, String> =
            timed(self.c().hgetall(self.keys.releases(app))).await?;
        let mut out: Vec<Release> = parse_all("release", raw);
        out.sort_by_key(|r| std::cmp::Reverse(r.version));
        Ok(out)
    }

    pub async fn release(&self, app: &str, version: u64) -> Result<Option<Release>, StoreError> {
        let raw: Option<String> = timed(self.c().hget(self.keys.releases(app), version)).await?;
        raw.map(|r| from_json(&format!("release {app} v{version}"), &r))
            .transpose()
    }

    /// The app's newest release.
    pub async fn latest_release(&self, app: &str) -> Result<Option<Release>, StoreError> {
        let seq: Option<u64> = timed(self.c().get(self.keys.release_seq(app))).await?;
        match seq {
            Some(v) => self.release(app, v).await,
            None => Ok(None),
        }
    }

    /// Makes the app's next release with `make`, from its current release (the one that runs;
    /// its newest one when none is current; `None` for the first), and makes it current unless
    /// `make_current` is false. A failed release that the coordinator went back from is not
    /// built on. Atomic: if another release was made or the current one changed in between,
    /// `make` runs again on what is there now.
    pub async fn create_release(
        &self,
        app: &str,
        make_current: bool,
        make: impl Fn(Option<&Release>) -> Result<Release, StoreError>,
    ) -> Result<Release, StoreError> {
        let script = Script::new(
            r#"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq ~= tonumber(ARGV[1]) then return 0 end
if (redis.call('HGET', KEYS[3], ARGV[5]) or '') ~= ARGV[6] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[2]) end
return 1
"#,
        );
        for _ in 0..10 {
            let seq: Option<u64> = timed(self.c().get(self.keys.release_seq(app))).await?;
            let seq = seq.unwrap_or(0);
            let current = self.current(app).await?;
            let base = match current.or((seq > 0).then_some(seq)) {
                Some(v) => self.release(app, v).await?,
                None => None,
            };
            let mut rel = make(base.as_ref())?;
            rel.version = seq + 1;
            rel.app = app.to_string();
            let json = to_json(&rel)?;
            let mut inv = script.prepare_invoke();
            inv.key(self.keys.release_seq(app))
                .key(self.keys.releases(app))
                .key(&self.keys.current);
            inv.arg(seq)
                .arg(rel.version)
                .arg(json)
                .arg(if make_current { "1" } else { "0" })
                .arg(app)
                .arg(current.map(|v| v.to_string()).unwrap_or_default());
            let done: i64 = timed(inv.invoke_async(&mut self.c())).await?;
            if done == 1 {
                return Ok(rel);
            }
        }
        Err(StoreError::Contended(app.to_string()))
    }

    /// The app's current release number (what should run).
    pub async fn current(&self, app: &str) -> Result<Option<u64>, StoreError> {
        timed(self.c().hget(&self.keys.current, app)).await
    }

    /// Every app with a current release, and that release.
    pub async fn all_current(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        timed(self.c().hgetall(&self.keys.current)).await
    }

    /// Makes `version` the app's current release (rollback).
    pub async fn set_current(&self, app: &str, version: u64) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(&self.keys.current, app, version),
        )
        .await
    }

    // ------------------------------------------------------------ formation, restarts

    /// The app's formation as set (absent types: `web` 1, others 0).
    pub async fn formation(&self, app: &str) -> Result<Formation, StoreError> {
        let raw: Option<String> = timed(self.c().hget(&self.keys.formation, app)).await?;
        Ok(match raw {
            Some(r) => from_json(&format!("formation of {app}"), &r)?,
            None => Formation::new(),
        })
    }

    pub async fn all_formations(&self) -> Result<BTreeMap<String, Formation>, StoreError> {
        let raw: BTreeMap<String, String> = timed(self.c().hgetall(&self.keys.formation)).await?;
        let mut out = BTreeMap::new();
        for (app, v) in raw {
            match from_json(&format!("formation of {app}"), &v) {
                Ok(f) => {
                    out.insert(app, f);
                }
                Err(e) => eprintln!("pier-store: skipped {e}"),
            }
        }
        Ok(out)
    }

    /// Sets the counts of the given process types, keeping the others (atomic).
    pub async fn scale(&self, app: &str, changes: &Formation) -> Result<Formation, StoreError> {
        let script = Script::new(
            r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local f = {}
if cur then f = cjson.decode(cur) end
local changes = cjson.decode(ARGV[2])
for k, v in pairs(changes) do f[k] = v end
local out = cjson.encode(f)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
"#,
        );
        let raw: String = timed(
            script
                .key(&self.keys.formation)
                .arg(app)
                .arg(to_json(changes)?)
                .invoke_async(&mut self.c()),
        )
        .await?;
        // cjson writes whole numbers as integers below 2^53.
        let f: BTreeMap<String, f64> = from_json("formation", &raw)?;
        Ok(f.into_iter().map(|(k, v)| (k, v as u32)).collect())
    }

    /// Asks for a rolling restart of every instance of the app (`slot` None) or of one
    /// (`web.1`); returns the new generation.
    pub async fn request_restart(&self, app: &str, slot: Option<&str>) -> Result<u64, StoreError> {
        let field = match slot {
            Some(s) => format!("{app}/{s}"),
            None => app.to_string(),
        };
        timed(self.c().hincr(&self.keys.restarts, field, 1u64)).await
    }

    /// Every restart generation (`app` and `app/slot` → generation).
    pub async fn restart_generations(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        timed(self.c().hgetall(&self.keys.restarts)).await
    }

    /// Forgets everything the platform keeps for an app (when the app is deleted), its log
    /// drains included. Its instances stop at the coordinator's next pass.
    pub async fn delete_app(&self, app: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(&self.keys.current, app)
            .hdel(&self.keys.formation, app)
            .hdel(&self.keys.restarts, app)
            .del(self.keys.releases(app))
            .del(self.keys.release_seq(app));
        timed(pipe.query_async::<()>(&mut self.c())).await?;
        self.delete_drains(app).await
    }

    // ------------------------------------------------------------ runners

    /// Registers a runner or refreshes its heartbeat.
    pub async fn put_runner(&self, rec: &RunnerRecord) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(&self.keys.runners, &rec.id, to_json(rec)?),
        )
        .await
    }

    pub async fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let raw: BTreeMap<String, String> = timed(self.c().hgetall(&self.keys.runners)).await?;
        Ok(parse_all("runner", raw))
    }

    pub async fn runner(&self, id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        let raw: Option<String> = timed(self.c().hget(&self.keys.runners, id)).await?;
        raw.map(|r| from_json(&format!("runner {id}"), &r))
            .transpose()
    }

    /// The instances the coordinator assigned to `runner`.
    pub async fn assignments(&self, runner: &str) -> Result<Vec<InstanceSpec>, StoreError> {
        let raw: BTreeMap<String, String> =
            timed(self.c().hgetall(self.keys.assignments(runner))).await?;
        Ok(parse_all("assignment", raw))
    }

    // ------------------------------------------------------------ instance reports

    pub async fn report(&self, st: &InstanceStatus) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(self.keys.instances(&st.app), &st.id, to_json(st)?),
        )
        .await
    }

    pub async fn remove_report(&self, app: &str, id: &str) -> Result<(), StoreError> {
        timed(self.c().hdel::<_, _, ()>(self.keys.instances(app), id)).await
    }

    /// What runners report about the app's instances.
    pub async fn reports(&self, app: &str) -> Result<Vec<InstanceStatus>, StoreError> {
        let raw: BTreeMap<String, String> =
            timed(self.c().hgetall(self.keys.instances(app))).await?;
        Ok(parse_all("instance", raw))
    }

    // ------------------------------------------------------------ logs

    /// Appends lines to their apps' streams in one pipeline, each stream capped at
    /// [`LOG_STREAM_LEN`].
    pub async fn append_logs(&self, lines: &[(String, LogLine)]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (app, l) in lines {
            pipe.cmd("XADD")
                .arg(self.keys.logs(app))
                .arg("MAXLEN")
                .arg("~")
                .arg(LOG_STREAM_LEN)
                .arg("*")
                .arg("t")
                .arg(l.at_ms)
                .arg("src")
                .arg(&l.source)
                .arg("ps")
                .arg(&l.process)
                .arg("line")
                .arg(&l.line)
                .ignore();
        }
        timed(pipe.query_async::<()>(&mut self.c())).await
    }

    /// The app's last `n` lines, oldest first.
    pub async fn recent_logs(&self, app: &str, n: usize) -> Result<Vec<LogLine>, StoreError> {
        let v: redis::Value = timed(
            redis::cmd("XREVRANGE")
                .arg(self.keys.logs(app))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(n.max(1))
                .query_async(&mut self.c()),
        )
        .await?;
        let mut lines = log_entries(&v);
        lines.reverse();
        Ok(lines)
    }

    /// A connection of its own for [`Store::logs_after`]: a blocking read must not hold up the
    /// shared connection's other commands.
    pub async fn log_reader(&self) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let client = redis::Client::open(self.url.as_str())?;
        timed(client.get_multiplexed_async_connection()).await
    }

    /// Lines written after `after` (a stream id; `$` for only new ones), waiting up to `block`
    /// for the first.
    pub async fn logs_after(
        &self,
        reader: &mut redis::aio::MultiplexedConnection,
        app: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<LogLine>, StoreError> {
        let v: redis::Value = tokio::time::timeout(
            block + COMMAND_TIMEOUT,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(5000))
                .arg("STREAMS")
                .arg(self.keys.logs(app))
                .arg(after)
                .query_async(reader),
        )
        .await
        .map_err(|_| StoreError::Timeout(block + COMMAND_TIMEOUT))??;
        // [[key, [entries]]] or nil.
        let entries = match &v {
            redis::Value::Array(streams) => streams
                .first()
                .and_then(|s| match s {
                    redis::Value::Array(kv) => kv.get(1),
                    _ => None,
                })
                .map(log_entries)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(entries)
    }

    // ------------------------------------------------------------ add-ons

    /// The app's add-ons.
    pub async fn addons(&self, app: &str) -> Result<Vec<AddonRecord>, StoreError> {
        let raw: BTreeMap<String, String> = timed(self.c().hgetall(self.keys.addons(app))).await?;
        Ok(parse_all("add-on", raw))
    }

    pub async fn addon(&self, app: &str, kind: &str) -> Result<Option<AddonRecord>, StoreError> {
        let raw: Option<String> = timed(self.c().hget(self.keys.addons(app), kind)).await?;
        raw.map(|r| from_json(&format!("add-on {kind} of {app}"), &r))
            .transpose()
    }

    /// Stores `rec` unless the app has an add-on of that kind already; returns the one stored
    /// (`rec`, or the one there before) and whether it is `rec`.
    pub async fn claim_addon(&self, rec: &AddonRecord) -> Result<(AddonRecord, bool), StoreError> {
        let made: bool = timed(self.c().hset_nx(
            self.keys.addons(&rec.app),
            &rec.kind,
            to_json(rec)?,
        ))
        .await?;
        if made {
            return Ok((rec.clone(), true));
        }
        let there = self.addon(&rec.app, &rec.kind).await?.ok_or_else(|| {
            StoreError::BadData(format!("add-on {} of {} vanished", rec.kind, rec.app))
        })?;
        Ok((there, false))
    }

    pub async fn put_addon(&self, rec: &AddonRecord) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(self.keys.addons(&rec.app), &rec.kind, to_json(rec)?),
        )
        .await
    }

    pub async fn delete_addon(&self, app: &str, kind: &str) -> Result<(), StoreError> {
        timed(self.c().hdel::<_, _, ()>(self.keys.addons(app), kind)).await
    }

    // ------------------------------------------------------------ uids

    /// The Unix uid the app's instances run as on every runner (allocated once).
    pub async fn app_uid(&self, app: &str) -> Result<u32, StoreError> {
        if let Some(uid) = timed(self.c().hget::<_, _, Option<u32>>(&self.keys.uids, app)).await? {
            return Ok(uid);
        }
        let script = Script::new(
            r#"
local have = redis.call('HGET', KEYS[1], ARGV[1])
if have then return tonumber(have) end
local n = redis.call('INCR', KEYS[2])
local uid = tonumber(ARGV[2]) + n
redis.call('HSET', KEYS[1], ARGV[1], uid)
return uid
"#,
        );
        timed(
            script
                .key(&self.keys.uids)
                .key(&self.keys.uid_seq)
                .arg(app)
                .arg(FIRST_APP_UID)
                .invoke_async(&mut self.c()),
        )
        .await
    }
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) as log lines; malformed ones skipped.
pub(crate) fn log_entries(v: &redis::Value) -> Vec<LogLine> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let redis::Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let redis::Value::Array(pair) = e else {
                return None;
            };
            let id = text(pair.first()?)?;
            let redis::Value::Array(fields) = pair.get(1)? else {
                return None;
            };
            let mut line = LogLine {
                id,
                at_ms: 0,
                source: String::new(),
                process: String::new(),
                line: String::new(),
            };
            for kv in fields.chunks(2) {
                let (Some(k), Some(val)) = (kv.first().and_then(text), kv.get(1).and_then(text))
                else {
                    continue;
                };
                match k.as_str() {
                    "t" => line.at_ms = val.parse().unwrap_or(0),
                    "src" => line.source = val,
                    "ps" => line.process = val,
                    "line" => line.line = val,
                    _ => {}
                }
            }
            Some(line)
        })
        .collect()
}

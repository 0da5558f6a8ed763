//! Log drains in Redis: each app's drains (`drains:<app>`, id → record), the set of apps that
//! have any (`drained_apps`), and each drain's cursor (`drain_cursor:<app>:<id>`, the id of the
//! last stream entry it delivered). The API makes and removes drains; the drainer reads the
//! log streams from the cursors and writes its progress with its fencing token, so a drainer
//! that lost its lease cannot move a cursor back.

use std::collections::BTreeMap;
use std::time::Duration;

use pier_model::drain::DrainRecord;
use pier_model::platform::LogLine;
use redis::{AsyncCommands, Script};

use crate::store::{log_entries, timed, to_json, Store, StoreError};

/// What [`Store::create_drain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainCreated {
    /// The drain was made (starting after the newest line of the app's stream).
    Made(DrainRecord),
    /// The app already drains to that URL: that drain.
    Existing(DrainRecord),
    /// The app has this many drains already, the most allowed.
    Full(usize),
}

/// Where an app's log stream stands, and the lines after a cursor.
#[derive(Debug, Clone, Default)]
pub struct StreamBatch {
    /// Entries ever added to the stream (Redis's `entries-added`).
    pub added: u64,
    /// Entries in it now.
    pub length: u64,
    /// The newest id ever given out (`0-0` for no stream).
    pub last_id: String,
    /// Lines after the cursor, oldest first.
    pub lines: Vec<LogLine>,
}

impl StreamBatch {
    /// Entries the stream's cap removed so far.
    pub fn removed(&self) -> u64 {
        self.added.saturating_sub(self.length)
    }
}

/// The stream's position (`entries-added`, length, newest id) and up to `ARGV[2]` entries
/// after `ARGV[1]` (exclusive), read at one instant.
const BATCH_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, '0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length, last = 0, 0, '0-0'
for i = 1, #info, 2 do
  local k, v = info[i], info[i + 1]
  if k == 'entries-added' then added = v
  elseif k == 'length' then length = v
  elseif k == 'last-generated-id' then last = v end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {added, length, last, entries}
"#;

impl Store {
    /// The app's drains, oldest first.
    pub async fn drains(&self, app: &str) -> Result<Vec<DrainRecord>, StoreError> {
        let raw: BTreeMap<String, String> = timed(self.c().hgetall(self.keys.drains(app))).await?;
        let mut out: Vec<DrainRecord> = crate::store::parse_all("drain", raw);
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// Apps with at least one drain.
    pub async fn drained_apps(&self) -> Result<Vec<String>, StoreError> {
        let mut apps: Vec<String> = timed(self.c().smembers(&self.keys.drained_apps)).await?;
        apps.sort();
        Ok(apps)
    }

    /// Adds drain `rec` to its app unless the app drains to the same URL already (then that
    /// drain) or has `max` drains. A new drain starts after the newest line of the app's
    /// stream: its cursor is that line's id, and its offset the number of lines written so far.
    pub async fn create_drain(
        &self,
        mut rec: DrainRecord,
        max: usize,
    ) -> Result<DrainCreated, StoreError> {
        let now = self.stream_batch(&rec.app, "0-0", 0).await?;
        rec.offset = now.added;
        let script = Script::new(
            r#"
local vals = redis.call('HVALS', KEYS[1])
for _, v in ipairs(vals) do
  local ok, d = pcall(cjson.decode, v)
  if ok and type(d) == 'table' and d['url'] == ARGV[3] then return {'exists', v} end
end
if #vals >= tonumber(ARGV[4]) then return {'full', tostring(#vals)} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[6])
return {'made', ARGV[2]}
"#,
        );
        let (what, value): (String, String) = timed(
            script
                .key(self.keys.drains(&rec.app))
                .key(&self.keys.drained_apps)
                .key(self.keys.drain_cursor(&rec.app, &rec.id))
                .arg(&rec.id)
                .arg(to_json(&rec)?)
                .arg(&rec.url)
                .arg(max)
                .arg(&rec.app)
                .arg(&now.last_id)
                .invoke_async(&mut self.c()),
        )
        .await?;
        let parse = |v: &str| {
            serde_json::from_str::<DrainRecord>(v)
                .map_err(|e| StoreError::BadData(format!("drain of {}: {e}", rec.app)))
        };
        match what.as_str() {
            "made" => Ok(DrainCreated::Made(rec)),
            "exists" => Ok(DrainCreated::Existing(parse(&value)?)),
            _ => Ok(DrainCreated::Full(value.parse().unwrap_or(max))),
        }
    }

    /// Removes drain `id` of `app` and its cursor; `false` when there was none.
    pub async fn delete_drain(&self, app: &str, id: &str) -> Result<bool, StoreError> {
        let script = Script::new(
            r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
"#,
        );
        let done: i64 = timed(
            script
                .key(self.keys.drains(app))
                .key(&self.keys.drained_apps)
                .key(self.keys.drain_cursor(app, id))
                .arg(id)
                .arg(app)
                .invoke_async(&mut self.c()),
        )
        .await?;
        Ok(done == 1)
    }

    /// Removes every drain of `app` with their cursors (the app is deleted).
    pub async fn delete_drains(&self, app: &str) -> Result<(), StoreError> {
        let script = Script::new(
            r#"
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do redis.call('DEL', ARGV[1] .. id) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"#,
        );
        timed(
            script
                .key(self.keys.drains(app))
                .key(&self.keys.drained_apps)
                .arg(self.keys.drain_cursor_prefix(app))
                .arg(app)
                .invoke_async::<i64>(&mut self.c()),
        )
        .await
        .map(|_| ())
    }

    /// The id of the last line drain `id` of `app` delivered.
    pub async fn drain_cursor(&self, app: &str, id: &str) -> Result<Option<String>, StoreError> {
        timed(self.c().get(self.keys.drain_cursor(app, id))).await
    }

    /// The app's stream position and up to `count` lines after `after` (a stream id,
    /// exclusive), read at one instant.
    pub async fn stream_batch(
        &self,
        app: &str,
        after: &str,
        count: usize,
    ) -> Result<StreamBatch, StoreError> {
        let v: redis::Value = timed(
            Script::new(BATCH_SCRIPT)
                .key(self.keys.logs(app))
                .arg(after)
                .arg(count)
                .invoke_async(&mut self.c()),
        )
        .await?;
        let redis::Value::Array(parts) = v else {
            return Err(StoreError::BadData(format!("log stream of {app}: {v:?}")));
        };
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => "0-0".to_string(),
        };
        Ok(StreamBatch {
            added: int(parts.first()),
            length: int(parts.get(1)),
            last_id: text(parts.get(2)),
            lines: parts.get(3).map(log_entries).unwrap_or_default(),
        })
    }

    /// Writes a drain's progress: its record (delivery status), and its cursor when given,
    /// together, if `token` is still the drainers' fencing token. `Ok(false)`: the drain is
    /// gone (removed meanwhile). [`StoreError::Fenced`]: another drainer leads.
    pub async fn drain_progress(
        &self,
        token: u64,
        rec: &DrainRecord,
        cursor: Option<&str>,
    ) -> Result<bool, StoreError> {
        let script = Script::new(
            r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
"#,
        );
        let done: i64 = timed(
            script
                .key(&self.keys.drainer_fence)
                .key(self.keys.drains(&rec.app))
                .key(self.keys.drain_cursor(&rec.app, &rec.id))
                .arg(token)
                .arg(&rec.id)
                .arg(cursor.unwrap_or(""))
                .arg(to_json(rec)?)
                .invoke_async(&mut self.c()),
        )
        .await?;
        match done {
            -1 => Err(StoreError::Fenced(token)),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Waits up to `block` for a line after the given id in any of the apps' streams
    /// (`(app, id)`), on `reader` (a connection of its own: [`Store::log_reader`]); returns the
    /// apps that have one, each with the newest id of its stream.
    pub async fn wait_for_logs(
        &self,
        reader: &mut redis::aio::MultiplexedConnection,
        after: &[(String, String)],
        block: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if after.is_empty() {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(1000))
            .arg("STREAMS");
        for (app, _) in after {
            cmd.arg(self.keys.logs(app));
        }
        for (_, id) in after {
            cmd.arg(id);
        }
        let v: redis::Value =
            tokio::time::timeout(block + Duration::from_secs(5), cmd.query_async(reader))
                .await
                .map_err(|_| StoreError::Timeout(block + Duration::from_secs(5)))??;
        // [[key, entries], ...] or nil.
        let redis::Value::Array(streams) = v else {
            return Ok(Vec::new());
        };
        let by_key: BTreeMap<String, &str> = after
            .iter()
            .map(|(app, _)| (self.keys.logs(app), app.as_str()))
            .collect();
        let mut woken = Vec::new();
        for s in &streams {
            let redis::Value::Array(kv) = s else { continue };
            let key = match kv.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => continue,
            };
            if let Some(app) = by_key.get(&key) {
                woken.push((*app).to_string());
            }
        }
        let mut out = Vec::with_capacity(woken.len());
        for app in woken {
            // Past everything written so far: one wake-up per burst, not one per line.
            let newest = self.stream_batch(&app, "0-0", 0).await?.last_id;
            out.push((app, newest));
        }
        Ok(out)
    }
}

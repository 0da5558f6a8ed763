//! Pending custom-domain claims.
//!
//! A claim is an app's request for a name, waiting for its proof (a DNS TXT record holding the
//! claim's token). Claims live apart from the domains the balancers route
//! (`claims:<domain>`, app → [`ClaimRecord`], indexed per app in `app:<app>:claims`): a claim
//! routes nothing and reserves nothing, so several apps may claim one name and squatting a
//! name blocks no one. [`Registry::grant_domain`] is the one write that turns a claim into the
//! app's verified domain; it drops every other app's claim on the name in the same step, so the
//! first to prove a name gets it and two proofs racing cannot both win.

use redis::AsyncCommands;

use crate::client::{no_such_app, script, timed, to_json, Registry, RegistryError, CHANGE_LOG_LEN};
use crate::model::{ClaimRecord, DomainRecord};

/// What adding a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAdded {
    /// A new claim was stored.
    Added,
    /// The app already claims the name: its claim, unchanged.
    Existing(ClaimRecord),
    /// The name is already the app's verified domain: nothing to claim.
    AlreadyVerified,
}

/// What granting a domain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The registry version after the write; `None` when the name was already the app's.
    pub version: Option<u64>,
    /// The other apps whose claims on the name were dropped.
    pub dropped: Vec<String>,
}

impl Registry {
    /// Claims `domain` (a normalised pattern) for `app`, unless another app has it verified
    /// ([`RegistryError::DomainTaken`]) or `app` already holds `max` pending claims
    /// ([`RegistryError::TooManyClaims`]). Claims made before `lapsed_before_ms` no longer
    /// count and are removed first (0: claims never lapse).
    pub async fn put_claim(
        &self,
        domain: &str,
        app: &str,
        rec: &ClaimRecord,
        max: u64,
        lapsed_before_ms: u64,
    ) -> Result<ClaimAdded, RegistryError> {
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return {err = 'noapp'} end
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec.verified == true then
    if rec.app == ARGV[3] then return {'verified'} end
    return {err = 'taken:' .. tostring(rec.app)}
  end
end
local mine = redis.call('HGET', KEYS[5], ARGV[3])
if mine then return {'existing', mine} end
local held = 0
for _, d in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  local c = redis.call('HGET', ARGV[7] .. 'claims:' .. d, ARGV[3])
  local ok, r = false, nil
  if c then ok, r = pcall(cjson.decode, c) end
  if not c then
    redis.call('SREM', KEYS[6], d)
  elseif ok and type(r) == 'table' and tonumber(r.claimed_ms or 0) < tonumber(ARGV[6]) then
    redis.call('HDEL', ARGV[7] .. 'claims:' .. d, ARGV[3])
    redis.call('SREM', KEYS[6], d)
  else
    held = held + 1
  end
end
if held >= tonumber(ARGV[5]) then return {err = 'toomany:' .. held} end
redis.call('HSET', KEYS[5], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[6], ARGV[2])
return {'added'}
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.apps)
            .key(self.keys.claims(domain))
            .key(self.keys.app_claims(app));
        inv.arg(CHANGE_LOG_LEN)
            .arg(domain)
            .arg(app)
            .arg(to_json(rec)?)
            .arg(max)
            .arg(lapsed_before_ms)
            .arg(self.keys.prefix());
        let reply: Vec<String> = self.run_script(inv, domain, app).await?;
        match reply.first().map(String::as_str) {
            Some("added") => Ok(ClaimAdded::Added),
            Some("verified") => Ok(ClaimAdded::AlreadyVerified),
            Some("existing") => {
                let raw = reply.get(1).map(String::as_str).unwrap_or("");
                Ok(ClaimAdded::Existing(parse_claim(domain, raw)?))
            }
            other => Err(RegistryError::BadData(format!(
                "unexpected claim script reply {other:?}"
            ))),
        }
    }

    /// Renews `app`'s existing claim on `domain` (a new time, the token kept so a published
    /// record stays good). Returns whether there was a claim to renew.
    pub async fn renew_claim(
        &self,
        domain: &str,
        app: &str,
        rec: &ClaimRecord,
    ) -> Result<bool, RegistryError> {
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(self.keys.claims(domain));
        inv.arg(app).arg(to_json(rec)?);
        let n: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(n == 1)
    }

    /// `app`'s pending claim on `domain`, if it has one.
    pub async fn claim(
        &self,
        domain: &str,
        app: &str,
    ) -> Result<Option<ClaimRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = timed(c.hget(self.keys.claims(domain), app)).await?;
        raw.map(|r| parse_claim(domain, &r)).transpose()
    }

    /// `app`'s pending claims, sorted by domain.
    pub async fn app_claims(&self, app: &str) -> Result<Vec<(String, ClaimRecord)>, RegistryError> {
        let mut c = self.conn.clone();
        let mut names: Vec<String> = timed(c.smembers(self.keys.app_claims(app))).await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for d in names {
            if let Some(rec) = self.claim(&d, app).await? {
                out.push((d, rec));
            }
        }
        Ok(out)
    }

    /// Withdraws `app`'s claim on `domain`. Returns whether there was one.
    pub async fn delete_claim(&self, domain: &str, app: &str) -> Result<bool, RegistryError> {
        let s = script(
            r#"
redis.call('SREM', KEYS[2], ARGV[2])
return redis.call('HDEL', KEYS[1], ARGV[1])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(self.keys.claims(domain))
            .key(self.keys.app_claims(app));
        inv.arg(app).arg(domain);
        let n: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(n == 1)
    }

    /// Makes `domain` `app`'s verified domain and drops every claim on it. With `token`, `app`
    /// must still hold a claim with that token (the one whose proof was checked): a claim
    /// withdrawn or dropped meanwhile gives [`RegistryError::NoClaim`]. Without, it is the
    /// operator's grant. Another app's verified domain is never taken
    /// ([`RegistryError::DomainTaken`]).
    pub async fn grant_domain(
        &self,
        domain: &str,
        app: &str,
        token: Option<&str>,
    ) -> Result<Granted, RegistryError> {
        let rec = to_json(&DomainRecord::verified(app))?;
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return {err = 'noapp'} end
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec.verified == true then
    if rec.app == ARGV[3] then return {0} end
    return {err = 'taken:' .. tostring(rec.app)}
  end
  if ok and type(rec) == 'table' and type(rec.app) == 'string' then
    redis.call('SREM', ARGV[6] .. 'app:' .. rec.app .. ':domains', ARGV[2])
  end
end
if ARGV[5] ~= '' then
  local c = redis.call('HGET', KEYS[5], ARGV[3])
  local ok, r = false, nil
  if c then ok, r = pcall(cjson.decode, c) end
  if not (ok and type(r) == 'table' and r.token == ARGV[5]) then return {err = 'noclaim'} end
end
local out = {0}
for _, other in ipairs(redis.call('HKEYS', KEYS[5])) do
  redis.call('SREM', ARGV[6] .. 'app:' .. other .. ':claims', ARGV[2])
  if other ~= ARGV[3] then table.insert(out, other) end
end
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('SADD', KEYS[6], ARGV[2])
out[1] = emit('domain', ARGV[2], ARGV[4])
return out
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.apps)
            .key(self.keys.claims(domain))
            .key(self.keys.app_domains(app));
        inv.arg(CHANGE_LOG_LEN)
            .arg(domain)
            .arg(app)
            .arg(rec)
            .arg(token.unwrap_or(""))
            .arg(self.keys.prefix());
        let reply: Vec<redis::Value> = self.run_script(inv, domain, app).await?;
        let mut it = reply.into_iter();
        let version = match it.next() {
            Some(redis::Value::Int(0)) => None,
            Some(redis::Value::Int(v)) => u64::try_from(v).ok(),
            other => {
                return Err(RegistryError::BadData(format!(
                    "unexpected grant script reply {other:?}"
                )))
            }
        };
        let dropped = it
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect();
        Ok(Granted { version, dropped })
    }

    /// Moves pending records left in `domains` by versions before claims existed into claims
    /// (same token and time, so a published record still proves them). Returns how many moved.
    pub async fn migrate_pending_domains(&self) -> Result<usize, RegistryError> {
        let s = script(
            r#"
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' or rec.verified == true or type(rec.app) ~= 'string'
   or type(rec.token) ~= 'string' then return 0 end
local claim = cjson.encode({token = rec.token, claimed_ms = tonumber(rec.claimed_ms or 0)})
redis.call('HSETNX', ARGV[3] .. 'claims:' .. ARGV[2], rec.app, claim)
redis.call('SADD', ARGV[3] .. 'app:' .. rec.app .. ':claims', ARGV[2])
redis.call('SREM', ARGV[3] .. 'app:' .. rec.app .. ':domains', ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
emit('domain', ARGV[2], '')
return 1
"#,
        );
        let mut moved = 0;
        for (domain, raw) in self.scan_hash(&self.keys.domains).await? {
            let pending = serde_json::from_str::<DomainRecord>(&raw)
                .map(|r| !r.verified)
                .unwrap_or(false);
            if !pending {
                continue;
            }
            let mut inv = s.prepare_invoke();
            inv.key(&self.keys.version)
                .key(&self.keys.changes)
                .key(&self.keys.domains);
            inv.arg(CHANGE_LOG_LEN).arg(&domain).arg(self.keys.prefix());
            let n: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
            moved += usize::try_from(n).unwrap_or(0);
        }
        Ok(moved)
    }
}

impl Registry {
    /// Runs a domain write script for `app` on `domain`, its `{err = ...}` answers typed.
    pub(crate) async fn run_script<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
        domain: &str,
        app: &str,
    ) -> Result<T, RegistryError> {
        match no_such_app(timed(inv.invoke_async(&mut self.conn.clone())).await, app) {
            Err(RegistryError::Redis(e)) => Err(script_error(e, domain, app)),
            other => other,
        }
    }
}

fn parse_claim(domain: &str, raw: &str) -> Result<ClaimRecord, RegistryError> {
    serde_json::from_str(raw).map_err(|e| RegistryError::BadData(format!("claim on {domain}: {e}")))
}

/// The typed error of a claim or grant script's `{err = ...}`.
fn script_error(e: redis::RedisError, domain: &str, app: &str) -> RegistryError {
    let msg = e.to_string();
    if let Some(rest) = msg.split("taken:").nth(1) {
        let owner = rest.split_whitespace().next().unwrap_or("").to_string();
        return RegistryError::DomainTaken {
            domain: domain.into(),
            owner,
        };
    }
    if let Some(rest) = msg.split("toomany:").nth(1) {
        let held = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return RegistryError::TooManyClaims {
            app: app.into(),
            held,
        };
    }
    if msg.contains("noclaim") {
        return RegistryError::NoClaim {
            domain: domain.into(),
            app: app.into(),
        };
    }
    RegistryError::Redis(e)
}

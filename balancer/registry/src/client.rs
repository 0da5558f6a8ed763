//! [`Registry`]: the typed client. Writes are Lua scripts, so data, version bump and change-log
//! entry happen together or not at all; reads are a full snapshot and the change feed.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script, Value};

use crate::model::{
    AppRecord, BackendRecord, CertRecord, Change, ChangeKind, DomainRecord, Snapshot, TokenRecord,
};
use crate::schema::{backend_field, Keys};

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no app named {0:?}")]
    NoSuchApp(String),
    #[error("domain {domain} belongs to app {owner:?}")]
    DomainTaken { domain: String, owner: String },
    #[error("bad data in the registry: {0}")]
    BadData(String),
    /// A certificate for a domain the app does not have (no such domain, or another app's).
    #[error("app {app:?} has no domain {domain}")]
    NotAppDomain { domain: String, app: String },
    /// A certificate for a domain whose ownership is not verified yet.
    #[error("domain {0} is not verified yet")]
    DomainNotVerified(String),
    /// An app at its limit of pending domain claims.
    #[error("app {app:?} holds {held} pending domain claims, the most it may")]
    TooManyClaims { app: String, held: u64 },
    /// A verification of a claim that is no longer there (removed, or dropped when another
    /// app proved the name first).
    #[error("app {app:?} has no pending claim on {domain}")]
    NoClaim { domain: String, app: String },
}

/// Where a full load starts: the version and feed position (read together) and the sizes of
/// the hashes (to size the table up front).
#[derive(Debug, Clone)]
pub struct SnapshotHead {
    pub version: u64,
    pub feed_id: String,
    pub apps: usize,
    pub domains: usize,
    pub backends: usize,
    pub certs: usize,
}

/// Longest a single registry command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Change-log entries kept (approximately): a balancer further behind than this resyncs.
pub const CHANGE_LOG_LEN: u64 = 100_000;

/// Emits one change: bumps the version and appends to the log. Shared by every script.
const EMIT: &str = r#"
local function emit(kind, key, value)
  local v = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'v', v, 'op', kind, 'key', key, 'value', value)
  return v
end
"#;

pub(crate) fn script(body: &str) -> Script {
    Script::new(&format!("{EMIT}{body}"))
}

/// A connection to one registry (a Redis database and a key prefix).
#[derive(Clone)]
pub struct Registry {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) keys: Keys,
}

impl Registry {
    /// Connects to `url` (`redis://host:port/db`) with the default prefix `pier:`.
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        Self::connect_with_prefix(url, "pier:").await
    }

    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url)?;
        let conn = timed(client.get_multiplexed_async_connection()).await?;
        Ok(Registry {
            conn,
            keys: Keys::new(prefix),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The hash holding records of `kind`.
    fn hash_of(&self, kind: ChangeKind) -> &str {
        match kind {
            ChangeKind::App => &self.keys.apps,
            ChangeKind::Domain => &self.keys.domains,
            ChangeKind::Backend => &self.keys.backends,
            ChangeKind::Cert => &self.keys.certs,
            ChangeKind::Challenge => &self.keys.acme_challenges,
        }
    }

    // ---------------------------------------------------------------- writes

    /// Creates or replaces an app's settings.
    pub async fn put_app(&self, name: &str, app: &AppRecord) -> Result<u64, RegistryError> {
        let json = to_json(app)?;
        let s = script(
            "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) return emit('app', ARGV[2], ARGV[3])",
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.apps);
        inv.arg(CHANGE_LOG_LEN).arg(name).arg(json);
        timed(inv.invoke_async(&mut self.conn.clone())).await
    }

    /// Deletes an app with all its domains (and their certificates), pending claims and backends (each removal
    /// is its own change, the app's last). Returns the version after, or `None` if there was no such app.
    pub async fn delete_app(&self, name: &str) -> Result<Option<u64>, RegistryError> {
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then return 0 end
for _, d in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  if redis.call('HDEL', KEYS[8], d) == 1 then emit('cert', d, '') end
  redis.call('HDEL', ARGV[3] .. 'acme:certs', d)
  redis.call('HDEL', ARGV[3] .. 'acme:status', d)
  redis.call('HDEL', KEYS[4], d)
  emit('domain', d, '')
end
for _, b in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  redis.call('HDEL', KEYS[5], b)
  emit('backend', b, '')
end
for _, d in ipairs(redis.call('SMEMBERS', KEYS[9])) do
  redis.call('HDEL', ARGV[3] .. 'claims:' .. d, ARGV[2])
end
redis.call('DEL', KEYS[6], KEYS[7], KEYS[9])
redis.call('HDEL', KEYS[3], ARGV[2])
return emit('app', ARGV[2], '')
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.apps)
            .key(&self.keys.domains)
            .key(&self.keys.backends)
            .key(self.keys.app_domains(name))
            .key(self.keys.app_backends(name))
            .key(&self.keys.certs)
            .key(self.keys.app_claims(name));
        inv.arg(CHANGE_LOG_LEN).arg(name).arg(self.keys.prefix());
        let v: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok((v != 0).then_some(v))
    }

    /// Gives `domain` (a normalised pattern) to `app`. A domain belongs to one app: if another
    /// app holds it, nothing changes and [`RegistryError::DomainTaken`] says who. A record that
    /// is not verified deletes the domain's certificate, if any. Owners' names go through
    /// claims and [`Registry::grant_domain`] instead (see [`crate::claims`]).
    pub async fn put_domain(&self, domain: &str, rec: &DomainRecord) -> Result<u64, RegistryError> {
        let json = to_json(rec)?;
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return {err = 'noapp'} end
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and rec.app ~= ARGV[3] then return {err = 'taken:' .. tostring(rec.app)} end
end
if ARGV[5] == '0' then
  if redis.call('HDEL', KEYS[6], ARGV[2]) == 1 then emit('cert', ARGV[2], '') end
  redis.call('HDEL', KEYS[7], ARGV[2])
  redis.call('HDEL', KEYS[8], ARGV[2])
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('SADD', KEYS[5], ARGV[2])
return emit('domain', ARGV[2], ARGV[4])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.apps)
            .key(self.keys.app_domains(&rec.app))
            .key(&self.keys.certs)
            .key(&self.keys.acme_certs)
            .key(&self.keys.acme_status);
        inv.arg(CHANGE_LOG_LEN)
            .arg(domain)
            .arg(&rec.app)
            .arg(json)
            .arg(if rec.verified { "1" } else { "0" });
        self.run_script(inv, domain, &rec.app).await
    }

    /// Removes a domain and its certificate. Returns the version after, or `None` if it was
    /// not there.
    pub async fn delete_domain(&self, domain: &str) -> Result<Option<u64>, RegistryError> {
        let s = script(
            r#"
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
if ok and type(rec) == 'table' and type(rec.app) == 'string' then
  redis.call('SREM', ARGV[3] .. 'app:' .. rec.app .. ':domains', ARGV[2])
end
if redis.call('HDEL', KEYS[4], ARGV[2]) == 1 then emit('cert', ARGV[2], '') end
redis.call('HDEL', ARGV[3] .. 'acme:certs', ARGV[2])
redis.call('HDEL', ARGV[3] .. 'acme:status', ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return emit('domain', ARGV[2], '')
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.certs);
        inv.arg(CHANGE_LOG_LEN).arg(domain).arg(self.keys.prefix());
        let v: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok((v != 0).then_some(v))
    }

    /// Registers (or refreshes) a backend instance of `app`.
    pub async fn put_backend(
        &self,
        app: &str,
        id: &str,
        rec: &BackendRecord,
    ) -> Result<u64, RegistryError> {
        let json = to_json(rec)?;
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 0 then return {err = 'noapp'} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('SADD', KEYS[5], ARGV[2])
return emit('backend', ARGV[2], ARGV[4])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.backends)
            .key(&self.keys.apps)
            .key(self.keys.app_backends(app));
        inv.arg(CHANGE_LOG_LEN)
            .arg(backend_field(app, id))
            .arg(app)
            .arg(json);
        no_such_app(timed(inv.invoke_async(&mut self.conn.clone())).await, app)
    }

    /// Moves a registered backend's liveness deadline (a heartbeat). Returns the updated
    /// record, or `None` if the backend is not registered: a heartbeat never registers, so a
    /// late one cannot bring back an instance that was deregistered. One script, so it cannot
    /// race a deregistration.
    pub async fn refresh_backend(
        &self,
        app: &str,
        id: &str,
        expires_at_ms: u64,
    ) -> Result<Option<BackendRecord>, RegistryError> {
        // cjson keeps 14 significant digits: millisecond timestamps have 13 until year 2286.
        let s = script(
            r#"
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then return false end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' then return {err = 'baddata'} end
rec.expires_at_ms = tonumber(ARGV[3])
local json = cjson.encode(rec)
redis.call('HSET', KEYS[3], ARGV[2], json)
emit('backend', ARGV[2], json)
return json
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.backends);
        inv.arg(CHANGE_LOG_LEN)
            .arg(backend_field(app, id))
            .arg(expires_at_ms);
        let json: Option<String> = match timed(inv.invoke_async(&mut self.conn.clone())).await {
            Err(RegistryError::Redis(e)) if e.to_string().contains("baddata") => {
                return Err(RegistryError::BadData(format!(
                    "backend {app}/{id}: not JSON"
                )))
            }
            other => other?,
        };
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| RegistryError::BadData(format!("backend {app}/{id}: {e}")))
        })
        .transpose()
    }

    /// Deregisters a backend instance. Returns the version after, or `None` if it was not there.
    pub async fn delete_backend(&self, app: &str, id: &str) -> Result<Option<u64>, RegistryError> {
        let s = script(
            r#"
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return 0 end
redis.call('SREM', KEYS[4], ARGV[2])
return emit('backend', ARGV[2], '')
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.backends)
            .key(self.keys.app_backends(app));
        inv.arg(CHANGE_LOG_LEN).arg(backend_field(app, id));
        let v: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok((v != 0).then_some(v))
    }

    /// Stores the TLS certificate of `domain` (a normalised pattern), replacing any. The domain
    /// must be a verified domain of `rec.app`, checked in the same script as the write:
    /// otherwise nothing changes and the error is [`RegistryError::NotAppDomain`] or
    /// [`RegistryError::DomainNotVerified`]. The PEM is not parsed here (the API checks it
    /// with [`crate::cert::parse_pair`]; balancers skip a record that does not load).
    pub async fn put_cert(&self, domain: &str, rec: &CertRecord) -> Result<u64, RegistryError> {
        let json = to_json(rec)?;
        let s = script(
            r#"
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then return {err = 'notappdomain'} end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' or rec.app ~= ARGV[3] then return {err = 'notappdomain'} end
if rec.verified ~= true then return {err = 'unverified'} end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
return emit('cert', ARGV[2], ARGV[4])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.certs);
        inv.arg(CHANGE_LOG_LEN).arg(domain).arg(&rec.app).arg(json);
        match timed(inv.invoke_async(&mut self.conn.clone())).await {
            Err(RegistryError::Redis(e)) if e.to_string().contains("notappdomain") => {
                Err(RegistryError::NotAppDomain {
                    domain: domain.into(),
                    app: rec.app.clone(),
                })
            }
            Err(RegistryError::Redis(e)) if e.to_string().contains("unverified") => {
                Err(RegistryError::DomainNotVerified(domain.into()))
            }
            other => other,
        }
    }

    /// Deletes the certificate of `domain`; a certificate the platform issued for it (see
    /// [`Registry::put_issued_cert`]) is served again in its place. Returns the version after,
    /// or `None` if there was none.
    pub async fn delete_cert(&self, domain: &str) -> Result<Option<u64>, RegistryError> {
        let s = script(
            r#"
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then return 0 end
local issued = redis.call('HGET', KEYS[4], ARGV[2])
if issued then
  redis.call('HSET', KEYS[3], ARGV[2], issued)
  return emit('cert', ARGV[2], issued)
end
redis.call('HDEL', KEYS[3], ARGV[2])
return emit('cert', ARGV[2], '')
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.certs)
            .key(&self.keys.acme_certs);
        inv.arg(CHANGE_LOG_LEN).arg(domain);
        let v: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok((v != 0).then_some(v))
    }

    /// Writes a raw value into one of the hashes with a change entry, bypassing every check.
    /// For tests and repairs: this is how bad data gets into a registry.
    pub async fn put_raw(
        &self,
        kind: ChangeKind,
        key: &str,
        value: &str,
    ) -> Result<u64, RegistryError> {
        let hash = self.hash_of(kind);
        let op = kind_name(kind);
        let s = script(
            "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) return emit(ARGV[4], ARGV[2], ARGV[3])",
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(hash);
        inv.arg(CHANGE_LOG_LEN).arg(key).arg(value).arg(op);
        timed(inv.invoke_async(&mut self.conn.clone())).await
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a token's rights under its hash (the token itself is never stored).
    pub async fn put_token(
        &self,
        token_hash: &str,
        rec: &TokenRecord,
    ) -> Result<(), RegistryError> {
        let json = to_json(rec)?;
        let mut c = self.conn.clone();
        timed(c.hset::<_, _, _, ()>(&self.keys.tokens, token_hash, json)).await
    }

    /// Deletes every token of `app` (when the app is deleted, so a new app of the same name
    /// does not fall to the old owner). Returns how many were deleted. Scans the whole tokens
    /// hash in one script: app deletions are rare, and the scan must not race a token made
    /// meanwhile.
    pub async fn delete_app_tokens(&self, app: &str) -> Result<u64, RegistryError> {
        let s = Script::new(
            r#"
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, rec = pcall(cjson.decode, all[i + 1])
  if ok and type(rec) == 'table' and rec.app == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    n = n + 1
  end
end
return n
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.tokens).arg(app);
        timed(inv.invoke_async(&mut self.conn.clone())).await
    }

    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let v: Option<String> = timed(c.hget(&self.keys.tokens, token_hash)).await?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| RegistryError::BadData(e.to_string())))
            .transpose()
    }

    // ---------------------------------------------------------------- reads

    pub async fn version(&self) -> Result<u64, RegistryError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = timed(c.get(&self.keys.version)).await?;
        Ok(v.unwrap_or(0))
    }

    pub async fn app(&self, name: &str) -> Result<Option<AppRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let v: Option<String> = timed(c.hget(&self.keys.apps, name)).await?;
        v.map(|s| {
            serde_json::from_str(&s).map_err(|e| RegistryError::BadData(format!("app {name}: {e}")))
        })
        .transpose()
    }

    /// App names, sorted.
    pub async fn app_names(&self) -> Result<Vec<String>, RegistryError> {
        let mut c = self.conn.clone();
        let mut v: Vec<String> = timed(c.hkeys(&self.keys.apps)).await?;
        v.sort();
        Ok(v)
    }

    pub async fn domain(&self, domain: &str) -> Result<Option<DomainRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let v: Option<String> = timed(c.hget(&self.keys.domains, domain)).await?;
        v.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| RegistryError::BadData(format!("domain {domain}: {e}")))
        })
        .transpose()
    }

    /// The certificate record of `domain` (with its private key: never hand it to a client).
    pub async fn cert(&self, domain: &str) -> Result<Option<CertRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let v: Option<String> = timed(c.hget(&self.keys.certs, domain)).await?;
        v.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| RegistryError::BadData(format!("certificate of {domain}: {e}")))
        })
        .transpose()
    }

    /// An app's domains with their records, sorted.
    pub async fn app_domains(
        &self,
        app: &str,
    ) -> Result<Vec<(String, DomainRecord)>, RegistryError> {
        let mut c = self.conn.clone();
        let mut names: Vec<String> = timed(c.smembers(self.keys.app_domains(app))).await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(rec) = self.domain(&n).await? {
                out.push((n, rec));
            }
        }
        Ok(out)
    }

    /// An app's backends as (id, record), sorted by id.
    pub async fn app_backends(
        &self,
        app: &str,
    ) -> Result<Vec<(String, BackendRecord)>, RegistryError> {
        let mut c = self.conn.clone();
        let mut fields: Vec<String> = timed(c.smembers(self.keys.app_backends(app))).await?;
        fields.sort();
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let v: Option<String> = timed(c.hget(&self.keys.backends, &f)).await?;
            if let Some(v) = v {
                let rec: BackendRecord = serde_json::from_str(&v)
                    .map_err(|e| RegistryError::BadData(format!("backend {f}: {e}")))?;
                let id = f
                    .split_once('/')
                    .map_or(f.as_str(), |(_, id)| id)
                    .to_string();
                out.push((id, rec));
            }
        }
        Ok(out)
    }

    /// Everything route-affecting, consistent with the returned feed position: the version and
    /// the last change-log id are read atomically first, so changes made while the hashes are
    /// scanned are seen again in the feed (applying them twice is harmless).
    pub async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let head = self.snapshot_head().await?;
        Ok(Snapshot {
            version: head.version,
            feed_id: head.feed_id,
            apps: self.scan_hash(&self.keys.apps).await?,
            domains: self.scan_hash(&self.keys.domains).await?,
            backends: self.scan_hash(&self.keys.backends).await?,
            certs: self.scan_hash(&self.keys.certs).await?,
            challenges: self.scan_hash(&self.keys.acme_challenges).await?,
        })
    }

    /// The version, feed position and sizes a full load starts from (read atomically).
    pub async fn snapshot_head(&self) -> Result<SnapshotHead, RegistryError> {
        let mut c = self.conn.clone();
        type Head = (Option<u64>, Value, usize, usize, usize, usize);
        let (version, last, apps, domains, backends, certs): Head = timed(
            redis::pipe()
                .atomic()
                .get(&self.keys.version)
                .cmd("XREVRANGE")
                .arg(&self.keys.changes)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .hlen(&self.keys.apps)
                .hlen(&self.keys.domains)
                .hlen(&self.keys.backends)
                .hlen(&self.keys.certs)
                .query_async(&mut c),
        )
        .await?;
        Ok(SnapshotHead {
            version: version.unwrap_or(0),
            feed_id: first_stream_id(&last).unwrap_or_else(|| "0-0".to_string()),
            apps,
            domains,
            backends,
            certs,
        })
    }

    /// One page of an `HSCAN` over one of the hashes: the next cursor (0 when done) and the
    /// entries. An entry may be seen more than once while Redis rehashes.
    pub async fn scan_page(
        &self,
        kind: ChangeKind,
        cursor: u64,
    ) -> Result<(u64, Vec<(String, String)>), RegistryError> {
        let key = self.hash_of(kind);
        let mut c = self.conn.clone();
        timed(
            redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut c),
        )
        .await
    }

    /// Scans one of the hashes page by page, sending each page into `tx` while the next one is
    /// being fetched (the receiver builds the table meanwhile). Stops early if `tx` is closed.
    pub async fn scan_into(
        &self,
        kind: ChangeKind,
        tx: tokio::sync::mpsc::Sender<Vec<(String, String)>>,
    ) -> Result<(), RegistryError> {
        let mut cursor = 0;
        loop {
            let (next, page) = self.scan_page(kind, cursor).await?;
            if tx.send(page).await.is_err() || next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    pub(crate) async fn scan_hash(
        &self,
        key: &str,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let mut c = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<(String, String)>) = timed(
                redis::cmd("HSCAN")
                    .arg(key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut c),
            )
            .await?;
            out.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // HSCAN may return an element more than once; keep the last of each.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|b, a| a.0 == b.0);
        Ok(out)
    }

    /// Changes after feed position `after`, waiting up to `block` for the first one.
    pub async fn changes(
        &self,
        after: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Change>, RegistryError> {
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.keys.changes)
            .arg(after);
        let fut = cmd.query_async::<Value>(&mut c);
        let reply = match tokio::time::timeout(block + COMMAND_TIMEOUT, fut).await {
            Err(_) => return Err(RegistryError::Timeout(block + COMMAND_TIMEOUT)),
            Ok(r) => r?,
        };
        parse_xread(&reply)
    }
}

pub(crate) async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RegistryError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Err(_) => Err(RegistryError::Timeout(COMMAND_TIMEOUT)),
        Ok(r) => Ok(r?),
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, RegistryError> {
    serde_json::to_string(v).map_err(|e| RegistryError::BadData(e.to_string()))
}

/// Maps the `noapp` error the write scripts raise to [`RegistryError::NoSuchApp`].
pub(crate) fn no_such_app<T>(r: Result<T, RegistryError>, app: &str) -> Result<T, RegistryError> {
    match r {
        Err(RegistryError::Redis(e)) if e.to_string().contains("noapp") => {
            Err(RegistryError::NoSuchApp(app.into()))
        }
        other => other,
    }
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::App => "app",
        ChangeKind::Domain => "domain",
        ChangeKind::Backend => "backend",
        ChangeKind::Cert => "cert",
        ChangeKind::Challenge => "challenge",
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn first_stream_id(v: &Value) -> Option<String> {
    match v {
        Value::Array(entries) => match entries.first()? {
            Value::Array(entry) => text(entry.first()?),
            _ => None,
        },
        _ => None,
    }
}

/// Parses `XREAD` output: `[[stream, [[id, [field, value, ...]], ...]]]` (or nil).
fn parse_xread(v: &Value) -> Result<Vec<Change>, RegistryError> {
    let bad = |what: &str| RegistryError::BadData(format!("unexpected XREAD reply: {what}"));
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(s) => s,
        Value::Map(m) => {
            // RESP3 answers with a map of stream → entries.
            return m
                .first()
                .map(|(_, entries)| parse_entries(entries))
                .unwrap_or_else(|| Ok(Vec::new()));
        }
        _ => return Err(bad("not an array")),
    };
    let Some(Value::Array(stream)) = streams.first() else {
        return Ok(Vec::new());
    };
    let entries = stream.get(1).ok_or_else(|| bad("no entries"))?;
    parse_entries(entries)
}

fn parse_entries(entries: &Value) -> Result<Vec<Change>, RegistryError> {
    let bad = |what: &str| RegistryError::BadData(format!("unexpected stream entry: {what}"));
    let Value::Array(entries) = entries else {
        return Err(bad("entries not an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(parts) = e else {
            return Err(bad("entry not an array"));
        };
        let id = parts.first().and_then(text).ok_or_else(|| bad("no id"))?;
        let Some(Value::Array(fields)) = parts.get(1) else {
            return Err(bad("no fields"));
        };
        let mut version = None;
        let mut op = None;
        let mut key = None;
        let mut value = None;
        for pair in fields.chunks(2) {
            let (Some(k), Some(v)) = (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                continue;
            };
            match k.as_str() {
                "v" => version = v.parse::<u64>().ok(),
                "op" => op = Some(v),
                "key" => key = Some(v),
                "value" => value = Some(v),
                _ => {}
            }
        }
        let kind = match op.as_deref() {
            Some("app") => ChangeKind::App,
            Some("domain") => ChangeKind::Domain,
            Some("backend") => ChangeKind::Backend,
            Some("cert") => ChangeKind::Cert,
            Some("challenge") => ChangeKind::Challenge,
            other => return Err(bad(&format!("unknown op {other:?} in {id}"))),
        };
        out.push(Change {
            version: version.ok_or_else(|| bad(&format!("no version in {id}")))?,
            kind,
            key: key.ok_or_else(|| bad(&format!("no key in {id}")))?,
            value: value.filter(|v| !v.is_empty()),
            id,
        });
    }
    Ok(out)
}

//! What the platform's ACME orderer keeps in the registry (docs/registry.md, "ACME"):
//!
//! - `acme:challenges` — pending HTTP-01 challenges by token. Route-affecting: each write is a
//!   change in the feed, so every balancer answers the challenge within the propagation bound.
//! - `acme:certs` — the certificates the orderer issued, by domain. One is also written to
//!   `certs` (and so served) unless an uploaded certificate is there; removing the upload
//!   serves the issued one again ([`Registry::delete_cert`]).
//! - `acme:status` — where each name stands ([`AcmeStatus`]), for owners and for the orderer's
//!   backoff and renewal times.
//! - `acme:account` — the ACME account's credentials; `acme:lease` — which `pier api` process
//!   runs the orderer; `acme:orders:<hour>` — orders started in that hour (the cap);
//!   `acme:results` — finished orders by kind and result (a metric).

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::client::{script, timed, to_json, CHANGE_LOG_LEN};
use crate::model::{CertRecord, ChallengeRecord};
use crate::{Registry, RegistryError};

/// Where one name's issued certificate stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeStatus {
    /// `waiting for DNS`, `ordering`, `issued`, `failed` (`off` and `waiting for
    /// verification` are not stored: they follow from the API's flags and the domain).
    pub state: String,
    /// The CA's last error, word for word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failures in a row (the backoff doubles with each).
    #[serde(default)]
    pub failures: u32,
    /// Not before this time (ms since the epoch) is the name ordered again (0: any time).
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// When the served issued certificate should be renewed (ms since the epoch; 0: none).
    #[serde(default)]
    pub renew_at_ms: u64,
    /// The issued certificate's notAfter (ms since the epoch; 0: none yet).
    #[serde(default)]
    pub not_after_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// An owner or the operator asked for a renewal now (`pier certs renew`).
    #[serde(default)]
    pub renew_requested: bool,
    /// When the last renewal was asked for (ms; renewals on demand are limited per name).
    #[serde(default)]
    pub renew_requested_ms: u64,
    /// When the state last changed (ms since the epoch).
    #[serde(default)]
    pub updated_ms: u64,
    /// Since when the name has been waiting for its DNS (ms; 0: it is not waiting).
    #[serde(default)]
    pub waiting_since_ms: u64,
}

impl Registry {
    /// Publishes an HTTP-01 challenge for every balancer. Returns the version after.
    pub async fn put_challenge(
        &self,
        token: &str,
        rec: &ChallengeRecord,
    ) -> Result<u64, RegistryError> {
        let json = to_json(rec)?;
        let s = script(
            "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3]) return emit('challenge', ARGV[2], ARGV[3])",
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.acme_challenges);
        inv.arg(CHANGE_LOG_LEN).arg(token).arg(json);
        timed(inv.invoke_async(&mut self.conn.clone())).await
    }

    /// Withdraws a challenge. Returns the version after, or `None` if it was not there.
    pub async fn delete_challenge(&self, token: &str) -> Result<Option<u64>, RegistryError> {
        let s = script(
            r#"
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return 0 end
return emit('challenge', ARGV[2], '')
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.acme_challenges);
        inv.arg(CHANGE_LOG_LEN).arg(token);
        let v: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok((v != 0).then_some(v))
    }

    /// The pending challenges' tokens.
    pub async fn challenge_tokens(&self) -> Result<Vec<String>, RegistryError> {
        let mut c = self.conn.clone();
        timed(c.hkeys(&self.keys.acme_challenges)).await
    }

    /// Stores a certificate the orderer issued for `domain` (a verified domain of `rec.app`,
    /// checked in the same script), and serves it unless an uploaded certificate is there.
    /// Returns `Some(version)` when it is served now, `None` when an upload wins.
    pub async fn put_issued_cert(
        &self,
        domain: &str,
        rec: &CertRecord,
    ) -> Result<Option<u64>, RegistryError> {
        let json = to_json(rec)?;
        let s = script(
            r#"
local cur = redis.call('HGET', KEYS[3], ARGV[2])
if not cur then return {err = 'notappdomain'} end
local ok, d = pcall(cjson.decode, cur)
if not ok or type(d) ~= 'table' or d.app ~= ARGV[3] then return {err = 'notappdomain'} end
if d.verified ~= true then return {err = 'unverified'} end
redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
local served = redis.call('HGET', KEYS[4], ARGV[2])
if served then
  local ok2, c = pcall(cjson.decode, served)
  if not ok2 or type(c) ~= 'table' or c.source ~= 'acme' then return 0 end
end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
return emit('cert', ARGV[2], ARGV[4])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.version)
            .key(&self.keys.changes)
            .key(&self.keys.domains)
            .key(&self.keys.certs)
            .key(&self.keys.acme_certs);
        inv.arg(CHANGE_LOG_LEN).arg(domain).arg(&rec.app).arg(json);
        let r: Result<u64, RegistryError> = timed(inv.invoke_async(&mut self.conn.clone())).await;
        match r {
            Ok(v) => Ok((v != 0).then_some(v)),
            Err(RegistryError::Redis(e)) if e.to_string().contains("notappdomain") => {
                Err(RegistryError::NotAppDomain {
                    domain: domain.into(),
                    app: rec.app.clone(),
                })
            }
            Err(RegistryError::Redis(e)) if e.to_string().contains("unverified") => {
                Err(RegistryError::DomainNotVerified(domain.into()))
            }
            Err(e) => Err(e),
        }
    }

    /// The certificate the orderer issued for `domain`, served or not.
    pub async fn issued_cert(&self, domain: &str) -> Result<Option<CertRecord>, RegistryError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = timed(c.hget(&self.keys.acme_certs, domain)).await?;
        raw.map(|j| serde_json::from_str(&j).map_err(|e| RegistryError::BadData(e.to_string())))
            .transpose()
    }

    /// Where `domain`'s issued certificate stands, if it was ever looked at.
    pub async fn acme_status(&self, domain: &str) -> Result<Option<AcmeStatus>, RegistryError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = timed(c.hget(&self.keys.acme_status, domain)).await?;
        raw.map(|j| serde_json::from_str(&j).map_err(|e| RegistryError::BadData(e.to_string())))
            .transpose()
    }

    /// Every name's status.
    pub async fn acme_statuses(&self) -> Result<Vec<(String, AcmeStatus)>, RegistryError> {
        let raw = self.scan_hash(&self.keys.acme_status).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(d, j)| match serde_json::from_str(&j) {
                Ok(s) => Some((d, s)),
                Err(e) => {
                    tracing::warn!(domain = %d, error = %e, "unreadable ACME status skipped");
                    None
                }
            })
            .collect())
    }

    /// Records where `domain` stands, if it is still a verified domain (a name removed while
    /// it was being ordered leaves nothing behind). Returns whether it was stored.
    pub async fn put_acme_status(
        &self,
        domain: &str,
        status: &AcmeStatus,
    ) -> Result<bool, RegistryError> {
        let json = to_json(status)?;
        let s = redis::Script::new(
            r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, d = pcall(cjson.decode, cur)
if not ok or type(d) ~= 'table' or d.verified ~= true then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.domains).key(&self.keys.acme_status);
        inv.arg(domain).arg(json);
        let stored: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(stored == 1)
    }

    /// The ACME account's credentials (JSON), if one was made.
    pub async fn acme_account(&self) -> Result<Option<String>, RegistryError> {
        let mut c = self.conn.clone();
        timed(c.get(&self.keys.acme_account)).await
    }

    /// Stores the account's credentials unless some are there already; returns the ones that
    /// count (a second orderer racing the first keeps the first account).
    pub async fn put_acme_account(&self, credentials: &str) -> Result<String, RegistryError> {
        let s = redis::Script::new(
            r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return ARGV[1] end
return redis.call('GET', KEYS[1])
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.acme_account).arg(credentials);
        timed(inv.invoke_async(&mut self.conn.clone())).await
    }

    /// Takes or keeps the orderer's lease for `ttl_ms` as `holder`; returns whether `holder`
    /// holds it now.
    pub async fn acme_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, RegistryError> {
        let s = redis::Script::new(
            r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.acme_lease).arg(holder).arg(ttl_ms);
        let held: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(held == 1)
    }

    /// Gives the lease up if `holder` has it.
    pub async fn release_acme_lease(&self, holder: &str) -> Result<(), RegistryError> {
        let s = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
        );
        let mut inv = s.prepare_invoke();
        inv.key(&self.keys.acme_lease).arg(holder);
        let _: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(())
    }

    /// Counts one new order in the current hour unless `cap` were passed; returns whether it
    /// may go ahead.
    pub async fn count_acme_order(&self, now_ms: u64, cap: u64) -> Result<bool, RegistryError> {
        let key = self.keys.acme_orders(now_ms / 3_600_000);
        let s = redis::Script::new(
            r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 7200)
return 1
"#,
        );
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(cap);
        let ok: u64 = timed(inv.invoke_async(&mut self.conn.clone())).await?;
        Ok(ok == 1)
    }
}

/// Counts of finished ACME orders, platform-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeResultCount {
    /// `new` (a name's first certificate) or `renewal`.
    pub kind: String,
    /// `issued`, `failed`, or `rate-limited` (the CA asked to wait).
    pub result: String,
    pub count: u64,
}

impl Registry {
    /// Counts one finished order.
    pub async fn count_acme_result(&self, kind: &str, result: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: i64 =
            timed(conn.hincr(&self.keys.acme_results, format!("{kind}:{result}"), 1)).await?;
        Ok(())
    }

    /// The counts of finished orders (an unreadable field is skipped).
    pub async fn acme_results(&self) -> Result<Vec<AcmeResultCount>, RegistryError> {
        let raw = self.scan_hash(&self.keys.acme_results).await?;
        let mut out: Vec<AcmeResultCount> = raw
            .into_iter()
            .filter_map(|(field, n)| {
                let (kind, result) = field.split_once(':')?;
                Some(AcmeResultCount {
                    kind: kind.to_string(),
                    result: result.to_string(),
                    count: n.parse().ok()?,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.result).cmp(&(&b.kind, &b.result)));
        Ok(out)
    }
}

impl Registry {
    /// Every domain record (pattern → record), verified or not.
    pub async fn domain_records(
        &self,
    ) -> Result<Vec<(String, crate::model::DomainRecord)>, RegistryError> {
        let raw = self.scan_hash(&self.keys.domains).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(d, j)| serde_json::from_str(&j).ok().map(|r| (d, r)))
            .collect())
    }
}

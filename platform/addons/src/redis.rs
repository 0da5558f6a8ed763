//! Redis: an ACL user of the app's own on the operator's shared Redis, limited to the app's key
//! prefix.

use redis::aio::MultiplexedConnection;

use crate::AddonError;

/// The operator's shared Redis, reached with a user allowed `ACL SETUSER` (the default user).
#[derive(Debug, Clone)]
pub struct SharedRedis {
    admin_url: String,
    host: String,
    port: u16,
    db: i64,
}

/// What an app gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddon {
    pub user: String,
    /// Every key (and pub/sub channel) the app may touch starts with this: `REDIS_PREFIX`.
    pub prefix: String,
    /// `redis://USER:PASSWORD@HOST:PORT/DB`: the app's `REDIS_URL`.
    pub url: String,
}

const SERVER: &str = "Redis";

/// Commands an app's user may not run, beyond the `@dangerous` and `@admin` categories: key
/// enumeration (which would show other apps' key names) and database switches. Each exists in
/// Redis 6.2 and later (an unknown name makes `ACL SETUSER` fail).
const DENIED: &[&str] = &[
    "keys",
    "scan",
    "randomkey",
    "select",
    "swapdb",
    "flushall",
    "flushdb",
    "config",
    "debug",
    "monitor",
    "migrate",
    "move",
    "copy",
    "object",
    "wait",
    "client",
    "acl",
    "info",
];

fn refused(e: redis::RedisError) -> AddonError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
        AddonError::Unreachable {
            server: SERVER,
            reason: e.to_string(),
        }
    } else {
        AddonError::Refused {
            server: SERVER,
            reason: e.to_string(),
        }
    }
}

impl SharedRedis {
    pub fn new(admin_url: &str) -> Result<Self, AddonError> {
        let info = redis::IntoConnectionInfo::into_connection_info(admin_url)
            .map_err(|e| AddonError::BadUrl(e.to_string()))?;
        let (host, port) = match &info.addr {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            _ => return Err(AddonError::BadUrl("the Redis URL names no TCP host".into())),
        };
        Ok(SharedRedis {
            admin_url: admin_url.to_string(),
            host,
            port,
            db: info.redis.db,
        })
    }

    async fn admin(&self) -> Result<MultiplexedConnection, AddonError> {
        let client = redis::Client::open(self.admin_url.as_str())
            .map_err(|e| AddonError::BadUrl(e.to_string()))?;
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| AddonError::Unreachable {
            server: SERVER,
            reason: "no answer within 5 s".into(),
        })?
        .map_err(refused)
    }

    /// The user name and key prefix of `app`.
    pub fn names(app: &str) -> (String, String) {
        (format!("pier-{app}"), format!("{app}:"))
    }

    /// Makes (or makes again, with `password`) `app`'s user: every command on its own keys and
    /// channels, none of the dangerous or enumerating ones.
    pub async fn create(&self, app: &str, password: &str) -> Result<RedisAddon, AddonError> {
        if password.is_empty() || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AddonError::BadUrl(
                "passwords are letters and digits".into(),
            ));
        }
        let (user, prefix) = Self::names(app);
        let mut c = self.admin().await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg(format!("~{prefix}*"))
            .arg(format!("&{prefix}*"))
            .arg("+@all")
            .arg("-@dangerous")
            .arg("-@admin");
        for d in DENIED {
            cmd.arg(format!("-{d}"));
        }
        cmd.query_async::<()>(&mut c).await.map_err(refused)?;
        save_acl(&mut c).await;
        Ok(RedisAddon {
            url: format!(
                "redis://{user}:{password}@{}:{}/{}",
                self.host, self.port, self.db
            ),
            user,
            prefix,
        })
    }

    /// Removes `app`'s user and its keys. Safe to run again.
    pub async fn destroy(&self, app: &str) -> Result<(), AddonError> {
        let (user, prefix) = Self::names(app);
        let mut c = self.admin().await?;
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async::<i64>(&mut c)
            .await
            .map_err(refused)?;
        save_acl(&mut c).await;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(refused)?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<i64>(&mut c)
                    .await
                    .map_err(refused)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Writes the ACL to the server's ACL file when it has one (so users outlive a restart); a
/// server without one keeps them in memory only, which is logged.
async fn save_acl(c: &mut MultiplexedConnection) {
    if let Err(e) = redis::cmd("ACL").arg("SAVE").query_async::<()>(c).await {
        tracing::debug!(error = %e, "ACL SAVE failed (no aclfile): users live until Redis restarts");
    }
}

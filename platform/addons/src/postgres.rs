//! PostgreSQL: a role and a database of the app's own on the operator's server.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::{resource_name, AddonError};

/// The operator's PostgreSQL server, reached with an admin (superuser or CREATEROLE and
/// CREATEDB) role.
#[derive(Debug, Clone)]
pub struct Postgres {
    admin_url: String,
    /// Connections an app's role may hold at once.
    pub connection_limit: u32,
    /// Host and port apps connect to (from the admin URL).
    host: String,
    port: u16,
}

/// What an app gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresAddon {
    pub database: String,
    pub role: String,
    /// `postgres://ROLE:PASSWORD@HOST:PORT/DATABASE`: the app's `DATABASE_URL`.
    pub url: String,
}

const SERVER: &str = "PostgreSQL";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn refused(e: tokio_postgres::Error) -> AddonError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    AddonError::Refused {
        server: SERVER,
        reason,
    }
}

/// `"name"`, for identifiers made by [`resource_name`] (letters, digits and `_` only).
fn ident(name: &str) -> String {
    format!("\"{name}\"")
}

impl Postgres {
    /// `admin_url` is `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub fn new(admin_url: &str, connection_limit: u32) -> Result<Self, AddonError> {
        let cfg: tokio_postgres::Config = admin_url
            .parse()
            .map_err(|e| AddonError::BadUrl(format!("{e}")))?;
        let host = cfg
            .get_hosts()
            .iter()
            .find_map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => Some(name.clone()),
                _ => None,
            })
            .ok_or_else(|| AddonError::BadUrl("the PostgreSQL URL names no TCP host".into()))?;
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        Ok(Postgres {
            admin_url: admin_url.to_string(),
            connection_limit,
            host,
            port,
        })
    }

    async fn admin(&self) -> Result<Client, AddonError> {
        let mut cfg: tokio_postgres::Config = self
            .admin_url
            .parse()
            .map_err(|e| AddonError::BadUrl(format!("{e}")))?;
        cfg.connect_timeout(CONNECT_TIMEOUT);
        cfg.application_name("pier-addons");
        let (client, conn) = cfg
            .connect(NoTls)
            .await
            .map_err(|e| AddonError::Unreachable {
                server: SERVER,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Makes (or finishes making) `app`'s role and database with `password` (letters and
    /// digits). Safe to run again: an existing role gets the password and limit again, an
    /// existing database is kept.
    pub async fn create(&self, app: &str, password: &str) -> Result<PostgresAddon, AddonError> {
        if password.is_empty() || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AddonError::BadUrl(
                "passwords are letters and digits".into(),
            ));
        }
        let name = resource_name(app);
        let db = self.admin().await?;
        let limit = self.connection_limit;
        // The role: made, or given its password and limit again.
        db.batch_execute(&format!(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN \
                 CREATE ROLE {id} LOGIN PASSWORD '{password}' CONNECTION LIMIT {limit}; \
               ELSE \
                 ALTER ROLE {id} LOGIN PASSWORD '{password}' CONNECTION LIMIT {limit}; \
               END IF; \
             END $$;",
            id = ident(&name)
        ))
        .await
        .map_err(refused)?;
        // The database (CREATE DATABASE cannot run in a block: look first; a concurrent create
        // of the same one is the same outcome).
        let exists = db
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(refused)?
            .is_some();
        if !exists {
            if let Err(e) = db
                .batch_execute(&format!(
                    "CREATE DATABASE {id} OWNER {id}",
                    id = ident(&name)
                ))
                .await
            {
                let duplicate = e.as_db_error().is_some_and(|d| {
                    d.code() == &tokio_postgres::error::SqlState::DUPLICATE_DATABASE
                });
                if !duplicate {
                    return Err(refused(e));
                }
            }
        }
        // Only the app's role may connect to it.
        db.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {id} FROM PUBLIC; \
             GRANT CONNECT, TEMPORARY ON DATABASE {id} TO {id}; \
             ALTER DATABASE {id} CONNECTION LIMIT {limit};",
            id = ident(&name)
        ))
        .await
        .map_err(refused)?;
        Ok(PostgresAddon {
            url: format!(
                "postgres://{name}:{password}@{}:{}/{name}",
                self.host, self.port
            ),
            database: name.clone(),
            role: name,
        })
    }

    /// How to reach `app`'s database as its own role (`password` from its add-on record).
    pub fn app_connection(&self, app: &str, password: &str) -> crate::pgdump::AppConnection {
        let name = resource_name(app);
        crate::pgdump::AppConnection {
            host: self.host.clone(),
            port: self.port,
            role: name.clone(),
            password: password.to_string(),
            database: name,
        }
    }

    /// Drops `app`'s database (its connections closed first) and role. Safe to run again.
    pub async fn destroy(&self, app: &str) -> Result<(), AddonError> {
        let name = resource_name(app);
        let db = self.admin().await?;
        // Two statements, two round trips: DROP DATABASE cannot run in the implicit transaction
        // of a multi-statement query.
        let id = ident(&name);
        db.batch_execute(&format!("DROP DATABASE IF EXISTS {id} WITH (FORCE)"))
            .await
            .map_err(refused)?;
        db.batch_execute(&format!("DROP ROLE IF EXISTS {id}"))
            .await
            .map_err(refused)
    }
}

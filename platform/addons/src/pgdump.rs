//! PostgreSQL's own dump and restore tools (`pg_dump -Fc`, `pg_restore`), run by the platform
//! against one app's database with that app's role: what a backup is made and restored with.
//! This module only finds the binaries and builds their command lines; the API runs them,
//! streams the archive and checks it.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::AddonError;

/// How to reach one app's database as the app's own role.
#[derive(Clone)]
pub struct AppConnection {
    pub host: String,
    pub port: u16,
    pub role: String,
    pub password: String,
    pub database: String,
}

impl std::fmt::Debug for AppConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of debug output.
        f.debug_struct("AppConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("role", &self.role)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The directory of `pg_dump` and `pg_restore`.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin: PathBuf,
}

impl PgTools {
    /// Debian's newest PostgreSQL client (`/usr/lib/postgresql/<version>/bin`: a newer
    /// `pg_dump` reads older servers, not the other way round), else the one on `PATH`.
    pub fn find() -> Result<PgTools, AddonError> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                        Some((v, e.path().join("bin")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        versions.retain(|(_, p)| p.join("pg_dump").exists() && p.join("pg_restore").exists());
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(PgTools { bin });
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .find(|d| d.join("pg_dump").is_file() && d.join("pg_restore").is_file())
            .map(|bin| PgTools { bin })
            .ok_or_else(|| {
                AddonError::BadUrl(
                    "pg_dump and pg_restore are not installed: apt-get install postgresql-client"
                        .into(),
                )
            })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `pg_dump -Fc` of the app's database to stdout. It reads one snapshot (a repeatable-read
    /// transaction), so the app keeps reading and writing while it runs.
    pub fn dump(&self, conn: &AppConnection) -> Command {
        let mut c = self.command("pg_dump", conn);
        c.args(["--format=custom", "--no-password"]);
        c
    }

    /// `pg_restore` of `archive` into the app's database: its objects dropped first (`--clean
    /// --if-exists`), everything in one transaction (a failure leaves the database as it was),
    /// owned by the app's role.
    pub fn restore(&self, conn: &AppConnection, archive: &Path) -> Command {
        let mut c = self.command("pg_restore", conn);
        c.args([
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
        ])
        .arg(format!("--role={}", conn.role))
        .arg(format!("--dbname={}", conn.database))
        .arg(archive);
        c
    }

    /// `program` with the connection in libpq's environment variables: the password never on a
    /// command line (`ps` shows those).
    fn command(&self, program: &str, conn: &AppConnection) -> Command {
        let mut c = Command::new(self.bin.join(program));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                c.env_remove(&k);
            }
        }
        c.env("PGHOST", &conn.host)
            .env("PGPORT", conn.port.to_string())
            .env("PGUSER", &conn.role)
            .env("PGPASSWORD", &conn.password)
            .env("PGDATABASE", &conn.database)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pier-backups")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }
}

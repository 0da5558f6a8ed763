//! A private PostgreSQL server on a free loopback port: `initdb` into a temporary directory,
//! password authentication over TCP (so roles are really checked), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port;

/// The superuser's password in test servers.
pub const ADMIN_PASSWORD: &str = "pier-test-admin";

/// A real PostgreSQL server. As root, it runs as the `postgres` user (PostgreSQL refuses to run
/// as root).
pub struct PostgresServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The directory of Debian's PostgreSQL binaries (the newest installed), or `PATH`'s.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from("/usr/bin"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

/// `program` as the `postgres` user when this process is root.
fn as_db_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL test directory");
        }
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, ADMIN_PASSWORD).unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres", &pwfile.display().to_string()])
                .status();
        }
        let out = as_db_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C.UTF-8"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb is installed (.ci/test installs postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
            let mut child = as_db_user(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(dir.path())
                .args(["-c", "fsync=off", "-c", "max_connections=50"])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            if wait_ready(&bin, port, &mut child) {
                return PostgresServer {
                    port,
                    child: Some(child),
                    dir,
                };
            }
            // Its port was taken in the meantime: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "postgres did not start: {}",
            std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The superuser's URL (password authentication over TCP).
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres:{ADMIN_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Kills the server at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // runuser passes signals on; kill the server's own processes too.
            let _ = c.kill();
            let _ = c.wait();
        }
        let pid_file = self.dir.path().join("data/postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Some(pid) = text.lines().next() {
                let _ = Command::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server on `port` accepts connections; false when it exited first.
fn wait_ready(bin: &Path, port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

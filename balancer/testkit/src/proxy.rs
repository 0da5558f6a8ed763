//! A `pier-balancer` process on free loopback ports, configured by a routes file it watches
//! (the registry-fed one is [`crate::balancer::RegistryBalancer`]), and the routes files tests
//! write for it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h1::{Backend, Conn, Response};
use crate::net::free_port;
use crate::process::workspace_binary;

/// A running balancer process. Killed when dropped.
pub struct Balancer {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Balancer {
    /// Starts a balancer with `routes` as its routes file and `extra` appended to its config.
    /// A port chosen here can be taken by another test process before the balancer binds it;
    /// such a start is tried again on new ports (twice at most), any other failure is final.
    pub async fn start(routes: &str, extra: &str) -> Balancer {
        let mut tries = 0;
        loop {
            match Self::try_start(routes, extra).await {
                Ok(b) => return b,
                Err(e) if tries < 2 && e.contains("Address already in use") => tries += 1,
                Err(e) => panic!("balancer starts: {e}"),
            }
        }
    }

    pub async fn try_start(routes: &str, extra: &str) -> Result<Balancer, String> {
        Self::try_start_with(routes, extra, &[]).await
    }

    /// [`Balancer::try_start`] with more files (name, content) next to the routes file.
    pub async fn try_start_with(
        routes: &str,
        extra: &str,
        files: &[(&str, &str)],
    ) -> Result<Balancer, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let port = free_port();
        let admin = free_port();
        let has_listen = extra.contains("[listen]");
        let listen = if has_listen {
            String::new()
        } else {
            format!("[listen]\nhttp = [\"127.0.0.1:{port}\"]\n")
        };
        let has_routes = extra.contains("[routes]");
        let routes_section = if has_routes {
            String::new()
        } else {
            "[routes]\nfile = \"routes.toml\"\nwatch_interval = \"100ms\"\n".to_string()
        };
        let has_runtime = extra.contains("[runtime]");
        let runtime = if has_runtime {
            String::new()
        } else {
            "[runtime]\nworkers = 2\n".to_string()
        };
        let config = format!(
            "{listen}[admin]\nlisten = \"127.0.0.1:{admin}\"\n{routes_section}{runtime}{}\n",
            extra.replace("{port}", &port.to_string())
        );
        std::fs::write(dir.path().join("balancer.toml"), config).unwrap();
        std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
        let log = dir.path().join("balancer.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(workspace_binary("pier-balancer", "pier-balancer"))
            .arg("--config")
            .arg(dir.path().join("balancer.toml"))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut b = Balancer {
            child,
            port,
            admin,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!("balancer exited with {status}: {}", b.log_text()));
            }
            if let Ok(r) = admin_get(admin, "/healthz").await {
                if r.status == 200 && TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    // The probe's connection counts as a client's until its task ends: tests
                    // that cap connections per client start once it is gone.
                    b.wait_connections_closed(deadline).await;
                    return Ok(b);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("balancer did not start: {}", b.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (until `deadline` at most) for the balancer's open client connections to be 0.
    async fn wait_connections_closed(&self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(r) = admin_get(self.admin, "/metrics").await {
                let open = r.text().lines().find_map(|l| {
                    let n = l.strip_prefix("pier_connections_open ")?;
                    n.trim().parse::<f64>().ok()
                });
                if open == Some(0.0) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the balancer process to exit by itself, failing the test (with its log) if it
    /// is still running once `within` has passed since `since`.
    pub async fn exit_status(
        &mut self,
        since: Instant,
        within: Duration,
    ) -> std::process::ExitStatus {
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                since.elapsed() < within,
                "did not exit: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn write_routes(&self, routes: &str) {
        // Write then rename, as an editor or a deploy tool would.
        let tmp = self.dir.path().join("routes.toml.tmp");
        std::fs::write(&tmp, routes).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("routes.toml")).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(admin_get(self.admin, "/metrics").await.unwrap().body).unwrap()
    }

    /// The metrics once every one of `lines` is in them (a request is counted just after its
    /// answer is written, so a client can read the answer first), or as they are after 5 s.
    pub async fn metrics_with(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.contains(l)) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Value of one metric line (exact name with labels), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until the routes table version reaches `v`.
    pub async fn wait_version(&self, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.metric("pier_route_table_version").await as u64;
            if got >= v {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "route version stuck at {got}, want {v}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the balancer's log contains `text`.
    pub async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} not logged:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss_peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on the admin listener at `port`.
pub async fn admin_get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await?;
    let mut c = Conn::from(s);
    c.read_response(false).await
}

/// Routes for one app `app` with `domains` and `backends`.
pub fn app_routes(app: &str, domains: &[&str], backends: &[SocketAddr], extra: &str) -> String {
    let d: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let b: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[app]]\nname = \"{app}\"\ndomains = [{}]\nbackends = [{}]\n{extra}\n",
        d.join(", "),
        b.join(", ")
    )
}

/// Routes for one app `app` with `domains` and the one backend `b`.
pub fn backend_routes(app: &str, domains: &[&str], b: &Backend) -> String {
    app_routes(app, domains, &[b.addr], "")
}

/// Routes for one app `app` with `domains` and `backends` as written in a routes file (TOML
/// values: `"\"https://127.0.0.1:8443\""`, `{ address = "…", server_name = "…" }`).
pub fn written_backend_routes(app: &str, domains: &[&str], backends: &[&str]) -> String {
    let d: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[[app]]\nname = \"{app}\"\ndomains = [{}]\nbackends = [{}]\n",
        d.join(", "),
        backends.join(", ")
    )
}

/// Writes `bytes` with a flush, for tests that need std I/O.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

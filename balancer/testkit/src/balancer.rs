//! A `pier-balancer` process following a Redis registry, on free loopback ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{free_port, http_get};
use crate::process::workspace_binary;

/// A balancer on the registry at a Redis URL. Killed when dropped.
pub struct RegistryBalancer {
    child: Child,
    pub port: u16,
    pub admin: u16,
    /// The https listener's port (balancers started with [`RegistryBalancer::start_tls`]).
    pub https: Option<u16>,
    dir: tempfile::TempDir,
}

impl RegistryBalancer {
    /// Starts one with `extra` appended to its `[routes]` table (e.g. `app_domains = [...]`).
    pub async fn start(redis_url: &str, extra_routes: &str) -> RegistryBalancer {
        Self::start_with(redis_url, extra_routes, "").await
    }

    /// Starts one with `extra_routes` appended to its `[routes]` table and `extra_tables`
    /// (more tables, e.g. `[telemetry]`) at the end of its config.
    pub async fn start_with(
        redis_url: &str,
        extra_routes: &str,
        extra_tables: &str,
    ) -> RegistryBalancer {
        Self::launch(redis_url, extra_routes, extra_tables, false).await
    }

    /// [`RegistryBalancer::start`] with an https listener too (its default certificate is a
    /// self-signed one for `default.test`; the registry's certificates are served by name).
    pub async fn start_tls(redis_url: &str, extra_routes: &str) -> RegistryBalancer {
        Self::launch(redis_url, extra_routes, "", true).await
    }

    async fn launch(
        redis_url: &str,
        extra_routes: &str,
        extra_tables: &str,
        tls: bool,
    ) -> RegistryBalancer {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let https = tls.then(free_port);
        let (https_listen, tls_table) = match https {
            Some(p) => {
                let c = crate::certs::make_cert(dir.path(), "default", &["default.test"]);
                (
                    format!("https = [\"127.0.0.1:{p}\"]\n"),
                    format!("[tls]\ncert = {:?}\nkey = {:?}\n", c.cert_path, c.key_path),
                )
            }
            None => (String::new(), String::new()),
        };
        let config = format!(
            "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n{https_listen}[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [routes]\nredis = \"{redis_url}\"\nsnapshot_file = \"\"\n{extra_routes}\n\
             [runtime]\nworkers = 1\n{tls_table}{extra_tables}\n"
        );
        let path = dir.path().join("balancer.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("balancer.log")).unwrap();
        let child = Command::new(workspace_binary("pier-balancer", "pier-balancer"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut b = RegistryBalancer {
            child,
            port,
            admin,
            https,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("balancer exited with {status}: {}", b.log());
            }
            let admin_addr = ([127, 0, 0, 1], admin).into();
            if let Ok((200, _)) = http_get(admin_addr, "admin", "/healthz").await {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return b;
                }
            }
            assert!(
                Instant::now() < deadline,
                "balancer did not start: {}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("balancer.log")).unwrap_or_default()
    }

    /// SIGTERM, and waits (up to 10 s) for the balancer to drain and exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `host` until it answers 200 with a body for which `want` holds; returns how long
    /// that took.
    pub async fn wait_served(
        &self,
        host: &str,
        want: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let r = http_get(self.addr(), host, "/").await;
            if let Ok((200, b)) = &r {
                if want(b) {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < limit,
                "{host} not served within {limit:?}: last answer {r:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RegistryBalancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

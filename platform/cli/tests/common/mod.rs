//! Test harness of the `pier` binary: `pier api` as a process with its own `redis-server`, and
//! the client verbs run as processes against it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use pier_testkit::certs::cert_pair;
pub use pier_testkit::{free_port, Output, RedisServer};

pub const OPERATOR: &str = "op-secret-token-for-tests";

/// `pier api` as a separate process on a free port, with its own redis-server; killed when
/// dropped.
pub struct ApiProcess {
    child: Child,
    pub port: u16,
    pub redis: RedisServer,
    log: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl ApiProcess {
    pub fn start() -> ApiProcess {
        Self::start_with(&[])
    }

    /// `pier api` with extra arguments.
    pub fn start_with(extra: &[&str]) -> ApiProcess {
        let redis = RedisServer::start();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", &redis.url()])
            .args(extra)
            .env("PIER_OPERATOR_TOKEN", OPERATOR)
            .env_remove("PIER_TOKEN")
            .env_remove("PIER_API_URL")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut api = ApiProcess {
            child,
            port,
            redis,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = api.child.try_wait() {
                panic!("pier api exited with {status}: {}", api.log_text());
            }
            if healthz_ok(port) {
                return api;
            }
            assert!(
                Instant::now() < deadline,
                "pier api did not start: {}",
                api.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `pier ARGS` against this API with `token` in `PIER_TOKEN`.
    pub fn pier(&self, token: Option<&str>, args: &[&str]) -> Output {
        Output::of(self.pier_command(token, args))
    }

    /// The command [`ApiProcess::pier`] runs, to change before running it.
    pub fn pier_command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pier"));
        cmd.args(args).env("PIER_API_URL", self.url());
        match token {
            Some(t) => cmd.env("PIER_TOKEN", t),
            None => cmd.env_remove("PIER_TOKEN"),
        };
        cmd
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

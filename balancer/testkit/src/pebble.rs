//! Let's Encrypt's test CA, `pebble` (Debian package `pebble`), on loopback ports: a real ACME
//! server for the platform's certificate tests. Its HTTPS uses a certificate made here (the
//! ACME client is given it as an extra root), its HTTP-01 validations go to `http_port` of the
//! addresses `dns` (a test DNS server) gives for the names, and its random sleeps and nonce
//! rejections are off so tests are quick and deterministic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port;

/// A running pebble. Killed when dropped.
pub struct Pebble {
    child: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the certificate pebble's HTTPS presents (give it to the client as a root).
    pub ca_file: PathBuf,
    /// Pebble's management interface (its roots: `/roots/0`).
    pub management: SocketAddr,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Whether the `pebble` binary is installed (`.ci/run` installs it).
    pub fn installed() -> bool {
        Command::new("pebble")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// The ports pebble will listen on, chosen before it starts (so that its directory URL
    /// can be given to the platform first): `(acme, management)`.
    pub fn ports() -> (u16, u16) {
        (free_port(), free_port())
    }

    /// Starts pebble on `ports` (from [`Pebble::ports`]), validating HTTP-01 at `http_port`
    /// and resolving names at `dns`.
    pub async fn start(ports: (u16, u16), http_port: u16, dns: SocketAddr) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::certs::cert_pair(&["127.0.0.1", "localhost"], 2020, 2090);
        let ca_file = dir.path().join("pebble.crt");
        let key_file = dir.path().join("pebble.key");
        std::fs::write(&ca_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let (acme, management) = ports;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": ca_file,
                "privateKey": key_file,
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("pebble runs (apt-get install pebble)");
        let mut p = Pebble {
            child,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            ca_file,
            management: ([127, 0, 0, 1], management).into(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", acme)).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("pebble exited with {status}: {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

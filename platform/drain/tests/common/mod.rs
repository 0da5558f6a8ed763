//! Test harness of the drainer: a private redis-server, drains made in the store as the API
//! makes them, lines appended as runners append them, the drainer run in-process (stopped
//! gracefully or cut off), and a parser of the RFC 5424 messages received.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pier_drain::DrainerConfig;
use pier_model::drain::{DrainRecord, DrainUrl};
use pier_model::platform::LogLine;
use pier_store::{DrainCreated, Store};
pub use pier_testkit::{free_port, wait_until, RedisServer, SyslogListener};
use tokio::task::JoinHandle;

/// Generous bounds for a shared, noisy machine: deadlines, not measurements.
pub const WITHIN: Duration = Duration::from_secs(30);

pub struct Setup {
    pub redis: RedisServer,
    pub store: Store,
}

impl Setup {
    pub async fn start() -> Setup {
        let redis = RedisServer::start();
        let store = Store::connect(&redis.url(), "pier:").await.unwrap();
        Setup { redis, store }
    }

    /// Adds a drain of `app` to `url` as the API does.
    pub async fn add_drain(&self, app: &str, url: &str) -> DrainRecord {
        let u = DrainUrl::parse(url).unwrap();
        let rec = DrainRecord {
            id: format!("d{:016x}", rand_u64()),
            app: app.into(),
            url: u.to_string(),
            kind: u.kind,
            created_at_ms: pier_store::now_ms(),
            delivered: 0,
            dropped: 0,
            last_error: None,
            last_error_at_ms: None,
            offset: 0,
        };
        match self.store.create_drain(rec, 5).await.unwrap() {
            DrainCreated::Made(r) => r,
            other => panic!("drain not made: {other:?}"),
        }
    }

    /// Appends `line N` for each N in `range` to `app`'s stream, 500 at a time.
    pub async fn append(&self, app: &str, range: std::ops::RangeInclusive<usize>) {
        let lines: Vec<String> = range.map(|n| format!("line {n}")).collect();
        self.append_texts(app, &lines).await;
    }

    pub async fn append_texts(&self, app: &str, texts: &[String]) {
        for chunk in texts.chunks(500) {
            let batch: Vec<(String, LogLine)> = chunk
                .iter()
                .map(|t| {
                    (
                        app.to_string(),
                        LogLine {
                            id: String::new(),
                            at_ms: pier_store::now_ms(),
                            source: "app".into(),
                            process: "web.1".into(),
                            line: t.clone(),
                        },
                    )
                })
                .collect();
            self.store.append_logs(&batch).await.unwrap();
        }
    }

    /// The drain's record as stored now.
    pub async fn drain(&self, app: &str, id: &str) -> DrainRecord {
        self.store
            .drains(app)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.id == id)
            .expect("the drain is there")
    }

    /// Waits until the drain's record satisfies `ok`.
    pub async fn wait_drain(
        &self,
        app: &str,
        id: &str,
        what: &str,
        ok: impl Fn(&DrainRecord) -> bool,
    ) -> DrainRecord {
        wait_until(what, WITHIN, || async {
            let d = self.drain(app, id).await;
            ok(&d).then_some(d)
        })
        .await
    }

    pub fn config(&self, id: &str) -> DrainerConfig {
        let mut cfg = DrainerConfig::new(id, &self.redis.url());
        cfg.allow = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        cfg.lease_ttl = Duration::from_secs(2);
        cfg.rescan = Duration::from_millis(500);
        cfg.tick = Duration::from_millis(200);
        cfg.max_backoff = Duration::from_secs(2);
        cfg
    }
}

/// A drainer running in this process.
pub struct Drainer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Drainer {
    pub fn start(cfg: DrainerConfig) -> Drainer {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            pier_drain::run(cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Drainer {
            stop: Some(tx),
            handle,
        }
    }

    /// Stops it as SIGTERM does: each drain finishes its batch, the lease is given up.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WITHIN, &mut self.handle)
            .await
            .expect("the drainer stops")
            .unwrap();
    }

    /// Cuts it off at once, as a crash would (its lease lapses by itself).
    pub fn kill(self) {
        self.handle.abort();
    }
}

/// An RFC 5424 message split into its fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub pri: String,
    pub version: String,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub sd: String,
    pub msg: String,
}

/// Parses `<PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`, checking that each
/// header field is printable US-ASCII within RFC 5424's lengths.
pub fn parse(raw: &str) -> Message {
    let mut parts = raw.splitn(8, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("short message {raw:?}"))
    };
    let head = next();
    let (pri, version) = head
        .strip_prefix('<')
        .and_then(|h| h.split_once('>'))
        .unwrap_or_else(|| panic!("no PRI in {raw:?}"));
    let m = Message {
        pri: pri.into(),
        version: version.into(),
        timestamp: next().into(),
        hostname: next().into(),
        app_name: next().into(),
        procid: next().into(),
        msgid: next().into(),
        sd: next().into(),
        msg: next().into(),
    };
    for (field, max) in [
        (&m.hostname, 255),
        (&m.app_name, 48),
        (&m.procid, 128),
        (&m.msgid, 32),
    ] {
        assert!(
            !field.is_empty() && field.len() <= max && field.bytes().all(|b| b.is_ascii_graphic()),
            "bad header field {field:?} in {raw:?}"
        );
    }
    // 2026-12-04T18:00:00.123Z
    let ts = m.timestamp.as_bytes();
    assert!(
        ts.len() == 24
            && ts[4] == b'-'
            && ts[10] == b'T'
            && ts[19] == b'.'
            && ts[23] == b'Z'
            && ts
                .iter()
                .enumerate()
                .all(|(i, b)| { [4, 7, 10, 13, 16, 19, 23].contains(&i) || b.is_ascii_digit() }),
        "bad timestamp in {raw:?}"
    );
    assert!(
        !m.msg.chars().any(char::is_control),
        "a raw control character in {raw:?}"
    );
    m
}

/// The MSG of each message.
pub fn texts(frames: &[String]) -> Vec<String> {
    frames.iter().map(|f| parse(f).msg).collect()
}

/// `line N` for each N in `range`.
pub fn expected(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("line {n}")).collect()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(pier_store::now_ms());
    h.finish()
}

/// A rustls server configuration for `cert`/`key` (PEM), offering `alpn`.
pub fn tls_server(cert: &str, key: &str, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

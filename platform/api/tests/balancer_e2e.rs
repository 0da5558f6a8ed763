//! End to end: the API writes to Redis, a real `pier-balancer` process follows Redis, and a
//! domain added through the API is served by the balancer (it takes milliseconds; each run
//! prints how long).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, ApiServer, TestBackend};
use http::Method;
use serde_json::json;

/// How long a registry change may take to reach the balancer before a test fails. It takes
/// milliseconds (printed by the test); the bound is wide because CI machines are shared and a
/// timing is measured by benchmarks, not asserted by tests.
const PROPAGATION: Duration = Duration::from_secs(5);

struct Balancer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Balancer {
    async fn start(redis_url: &str) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = format!(
            "[listen]\nhttp = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [routes]\nredis = \"{redis_url}\"\nsnapshot_file = \"\"\n[runtime]\nworkers = 1\n"
        );
        let path = dir.path().join("balancer.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("balancer.log")).unwrap();
        let child = Command::new(pier_testkit::workspace_binary(
            "pier-balancer",
            "pier-balancer",
        ))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
        let mut b = Balancer { child, port, dir };
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("balancer.log")).unwrap_or_default()
    }

    /// Polls `host` until it answers 200 with `body`; returns how long that took.
    async fn wait_served(&self, host: &str, body: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let r = http_get(([127, 0, 0, 1], self.port).into(), host, "/").await;
            if let Ok((200, b)) = &r {
                if b == body {
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

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn domain_added_through_the_api_is_served_by_the_balancer_within_a_second() {
    let api = ApiServer::start().await;
    let balancer = Balancer::start(&api.redis.url()).await;
    let backend = TestBackend::start("blog").await;
    let op = api.operator();
    op.expect(Method::POST, "/v1/apps", Some(json!({"name": "blog"})), 201)
        .await;
    op.expect(
        Method::POST,
        "/v1/apps/blog/backends",
        Some(json!({"address": backend.addr.to_string(), "id": "web", "ttl_s": 60})),
        201,
    )
    .await;
    let b = ([127, 0, 0, 1], balancer.port).into();
    assert_eq!(http_get(b, "www.blog.test", "/").await.unwrap().0, 404);

    op.expect(
        Method::POST,
        "/v1/apps/blog/domains",
        Some(json!({"domain": "www.blog.test", "verified": true})),
        201,
    )
    .await;
    let took = balancer
        .wait_served("www.blog.test", "hello from blog", PROPAGATION)
        .await;
    eprintln!("domain served {took:?} after the API answered");

    // An owner's domain is not routed while pending, and is once the challenge (served by
    // the app itself, reached directly) verifies it.
    let t = op
        .expect(
            Method::POST,
            "/v1/tokens",
            Some(json!({"app": "blog"})),
            201,
        )
        .await;
    let owner = api.client(Some(t.body["token"].as_str().unwrap()));
    let r = owner
        .expect(
            Method::POST,
            "/v1/apps/blog/domains",
            Some(json!({"domain": "custom.example.test"})),
            201,
        )
        .await;
    let token = r.body["challenge"]["body"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http_get(b, "custom.example.test", "/").await.unwrap().0,
        404,
        "a pending domain must not be routed"
    );
    backend.serve_challenge("custom.example.test", &token);
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/domains/custom.example.test/verify",
            None,
            200,
        )
        .await;
    balancer
        .wait_served("custom.example.test", "hello from blog", PROPAGATION)
        .await;

    // Removing the domain through the API stops the routing.
    owner
        .expect(
            Method::DELETE,
            "/v1/apps/blog/domains/custom.example.test",
            None,
            204,
        )
        .await;
    let start = Instant::now();
    loop {
        if http_get(b, "custom.example.test", "/").await.unwrap().0 == 404 {
            break;
        }
        assert!(start.elapsed() < PROPAGATION, "still routed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! End to end: the API writes to Redis, a real `pier-balancer` process follows Redis, and a
//! domain added through the API is served by the balancer (it takes milliseconds; each run
//! prints how long).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{http_get, ApiServer, TestBackend};
use http::Method;
use pier_testkit::balancer::RegistryBalancer;
use serde_json::json;

/// How long a registry change may take to reach the balancer before a test fails. It takes
/// milliseconds (printed by the test); the bound is wide because CI machines are shared and a
/// timing is measured by benchmarks, not asserted by tests.
const PROPAGATION: Duration = Duration::from_secs(5);

#[tokio::test]
async fn domain_added_through_the_api_is_served_by_the_balancer_within_a_second() {
    let api = ApiServer::start().await;
    let balancer = RegistryBalancer::start(&api.redis.url(), "").await;
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
        .wait_served("www.blog.test", |b| b == "hello from blog", PROPAGATION)
        .await;
    eprintln!("domain served {took:?} after the API answered");

    // An owner's domain is not routed while pending, and is once its DNS proof verifies it.
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
    let token = r.body["challenge"]["value"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http_get(b, "custom.example.test", "/").await.unwrap().0,
        404,
        "a pending domain must not be routed"
    );
    api.dns
        .add_txt("_pier-challenge.custom.example.test", &token);
    owner
        .expect(
            Method::POST,
            "/v1/apps/blog/domains/custom.example.test/verify",
            None,
            200,
        )
        .await;
    balancer
        .wait_served(
            "custom.example.test",
            |b| b == "hello from blog",
            PROPAGATION,
        )
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

    // The balancer reports the table it serves (every 5 s): the operator sees it current.
    owner.expect(Method::GET, "/v1/balancers", None, 403).await;
    let start = Instant::now();
    loop {
        let r = op.expect(Method::GET, "/v1/balancers", None, 200).await;
        let current = r.body["registry_version"].as_u64().unwrap();
        let list = r.body["balancers"].as_array().unwrap().clone();
        if let [b] = list.as_slice() {
            if b["table_version"].as_u64() == Some(current) {
                assert_eq!(b["live"], true, "{b}");
                assert_eq!(b["versions_behind"], 0, "{b}");
                assert_eq!(b["connected"], true, "{b}");
                assert!(b["domains"].as_u64() >= Some(1), "{b}");
                assert!(b["report_age_ms"].as_u64().unwrap() < 15_000, "{b}");
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", r.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! Active health checks over real sockets: a backend that fails its check leaves rotation
//! within an interval or two and comes back after `rise` passes; HTTP and TCP probes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pier_testkit::h1::{get, Backend};
use pier_testkit::proxy::{admin_get, app_routes, Balancer};

/// The `health` of each backend of `app` in `/routes`, by address.
async fn health(b: &Balancer, app: &str) -> Vec<(String, String)> {
    let r = admin_get(b.admin, "/routes").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let app = v["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .unwrap()
        .clone();
    app["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["health"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
}

/// Waits until `app`'s backend at `addr` shows `want`; returns how long that took.
async fn wait_health(b: &Balancer, app: &str, addr: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        if health(b, app)
            .await
            .iter()
            .any(|(a, h)| a == addr && h == want)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{addr} never {want}: {:?}",
            health(b, app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the metrics hold `line` (the gauge is set once per round of the checker).
async fn wait_metric(b: &Balancer, line: &str) {
    let start = Instant::now();
    while !b.metrics().await.contains(line) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{line:?} never shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_leaves_rotation_and_comes_back_after_rise_passes() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let check = "health_check = { path = \"/status/204\", expect = 204, interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";
    let routes = app_routes("blog", &["blog.test"], &[one.addr, two.addr], check);
    let b = Balancer::start(&routes, "").await;
    let addr_one = one.addr.to_string();
    wait_health(&b, "blog", &addr_one, "up").await;
    // Probes reach the backends as HTTP requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(one.seen().iter().any(|s| s.path() == "/status/204"));

    // Backend one stops answering: out of rotation after two failed probes (~400 ms).
    one.stop();
    let took = wait_health(&b, "blog", &addr_one, "down").await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    let served_before = one.seen().len();
    for _ in 0..8 {
        let r = get(b.addr(), "blog.test", "/page").await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.text().starts_with("two "), "{}", r.text());
    }
    wait_metric(&b, "pier_backends_check_down 1\n").await;

    // Back on its port: in rotation again after two passes, and served.
    let again = Backend::start_on("one-again", one.addr.port()).await;
    wait_health(&b, "blog", &addr_one, "up").await;
    let mut names = std::collections::HashSet::new();
    for _ in 0..8 {
        let r = get(b.addr(), "blog.test", "/page").await;
        names.insert(r.text().split(' ').next().unwrap().to_string());
    }
    assert!(names.contains("one-again"), "{names:?}");
    assert_eq!(one.seen().len(), served_before);
    assert!(again.count() > 0);
    wait_metric(&b, "pier_backends_check_down 0\n").await;
    let m = b.metrics().await;
    assert!(
        m.contains("pier_health_checks_total{result=\"fail\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_status_fails_an_http_check_and_tcp_checks_only_connect() {
    let be = Backend::start("b").await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], pier_testkit::net::free_port()));
    let routes = format!(
        "{}{}",
        app_routes(
            "http",
            &["http.test"],
            &[be.addr],
            "health_check = { path = \"/status/503\", interval = \"100ms\", fall = 1 }"
        ),
        app_routes(
            "tcp",
            &["tcp.test"],
            &[be.addr, dead],
            "health_check = { tcp = true, interval = \"100ms\", fall = 1 }"
        ),
    );
    let b = Balancer::start(&routes, "").await;
    wait_health(&b, "http", &be.addr.to_string(), "down").await;
    wait_health(&b, "tcp", &dead.to_string(), "down").await;
    // The TCP check of a listening backend passes whatever it would answer.
    wait_health(&b, "tcp", &be.addr.to_string(), "up").await;
    // With its only backend down, an app is still served (trying beats refusing).
    assert_eq!(get(b.addr(), "http.test", "/").await.status, 200);
}

#[tokio::test]
async fn bad_health_checks_are_refused_with_the_key() {
    for (check, want) in [
        ("health_check = { interval = \"1s\" }", "give a path"),
        ("health_check = { path = \"/h\", tcp = true }", "exclusive"),
        ("health_check = { path = \"h\" }", "absolute path"),
        (
            "health_check = { path = \"/h\", interval = \"10ms\" }",
            "100 ms",
        ),
        (
            "health_check = { tcp = true, rise = 0 }",
            "between 1 and 100",
        ),
        (
            "health_check = { path = \"/h\", expect = 42 }",
            "not a status",
        ),
    ] {
        let routes = app_routes(
            "blog",
            &["blog.test"],
            &["127.0.0.1:9".parse().unwrap()],
            check,
        );
        let err = match Balancer::try_start(&routes, "").await {
            Ok(_) => panic!("{check} was accepted"),
            Err(e) => e,
        };
        assert!(
            err.contains("health_check") && err.contains(want),
            "{check}: {err}"
        );
    }
}

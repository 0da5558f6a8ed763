//! The platform end to end, every part a real process: `pier api`, `pier coordinator`,
//! `pier runner`s on 127.0.0.x and `pier-balancer` on one private redis-server, apps deployed
//! with the `pier` CLI from `platform/examples/` and reached through the balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{load, Platform};

/// Bounds for things that take milliseconds to a few seconds here: wide, because CI machines
/// are shared; timings are measured by benchmarks, not asserted by tests.
const SERVED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdlib_app_deployed_with_the_cli_is_served_through_the_balancer() {
    let p = Platform::start(&["127.0.0.2"]).await;
    let start = Instant::now();
    let out = p.create_and_deploy("hello", "hello-stdlib");
    assert!(
        out.stdout.contains("-----> Procfile declares: web"),
        "{out:?}"
    );
    assert!(out.stdout.contains("v1 is running"), "{out:?}");
    let took = p
        .balancer
        .wait_served(
            &Platform::host("hello"),
            |b| b.starts_with("hello from hello v1 web.1"),
            SERVED_WITHIN,
        )
        .await;
    println!(
        "deploy to first 200 through the balancer: {:?}",
        start.elapsed()
    );
    let _ = took;
    // ps shows it up on the runner, with its address on 127.0.0.2.
    let ps = p.pier(&["ps", "hello"]).ok();
    assert!(ps.stdout.starts_with("web.1\tup"), "{ps:?}");
    assert!(ps.stdout.contains("r-127.0.0.2\t127.0.0.2:"), "{ps:?}");
    // A config change is a new release, rolled out: the new value is served.
    let out = p.pier(&["config", "set", "hello", "GREETING=bonjour"]).ok();
    assert!(out.stdout.contains("released v2"), "{out:?}");
    p.balancer
        .wait_served(
            &Platform::host("hello"),
            |b| b.starts_with("bonjour from hello v2"),
            SERVED_WITHIN,
        )
        .await;
    let rel = p.pier(&["releases", "hello"]).ok();
    assert!(
        rel.stdout.contains("*v2\t") && rel.stdout.contains("Set GREETING"),
        "{rel:?}"
    );
    // Rollback to v1: a new release (v3) with v1's config, no rebuild.
    let out = p.pier(&["rollback", "hello", "v1"]).ok();
    assert!(
        out.stdout.contains("released v3 (Rollback to v1)"),
        "{out:?}"
    );
    p.balancer
        .wait_served(
            &Platform::host("hello"),
            |b| b.starts_with("hello from hello v3"),
            SERVED_WITHIN,
        )
        .await;
    // Secrets never in ps.
    p.pier(&["config", "set", "hello", "SECRET_KEY=s3cr3t-value"])
        .ok();
    let ps = p.pier(&["ps", "hello", "--json"]).ok();
    assert!(!ps.stdout.contains("s3cr3t-value"));
    assert!(!p.logs().contains("s3cr3t-value"), "a secret reached a log");
}

//! The balancer on the Redis registry, against real `redis-server` processes: changes reach the
//! table, balancers converge, Redis outages are survived, resyncs are guarded, backends expire,
//! booting apps spin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use pier_registry::model::{ActionRecord, AppRecord, BackendRecord, ChangeKind, DomainRecord};
use pier_registry::Registry;
use pier_testkit::h1::{get, Backend};
use pier_testkit::proxy::{admin_get, Balancer};
use pier_testkit::RedisServer;

fn registry_config(redis: &RedisServer, extra: &str) -> String {
    format!(
        "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n{extra}\n",
        redis.url()
    )
}

async fn add_app(reg: &Registry, app: &str, domains: &[&str], backends: &[std::net::SocketAddr]) {
    reg.put_app(app, &AppRecord::default()).await.unwrap();
    for d in domains {
        reg.put_domain(d, &DomainRecord::verified(app))
            .await
            .unwrap();
    }
    for (i, b) in backends.iter().enumerate() {
        reg.put_backend(
            app,
            &format!("i{i}"),
            &BackendRecord {
                address: b.to_string(),
                expires_at_ms: 0,
                weight: None,
                server_name: None,
            },
        )
        .await
        .unwrap();
    }
}

/// Polls until `host` answers `status` (or panics after 10 s).
async fn wait_status(b: &Balancer, host: &str, status: u16) -> Duration {
    let t = Instant::now();
    loop {
        let r = get(b.addr(), host, "/").await;
        if r.status == status {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{host}: still {} (want {status})\n{}",
            r.status,
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_writes_reach_the_balancer_incrementally() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "blog", &["blog.test"], &[be.addr]).await;
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "blog.test", 200).await;
    assert_eq!(
        b.metric("pier_registry_resyncs_total{reason=\"connect\"}")
            .await,
        1.0
    );

    // Each further write arrives through the feed, without another resync.
    reg.put_domain("*.blog.test", &DomainRecord::verified("blog"))
        .await
        .unwrap();
    let took = wait_status(&b, "www.blog.test", 200).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A pending domain is not routed.
    reg.put_domain(
        "pending.test",
        &DomainRecord {
            app: "blog".into(),
            verified: false,
            token: Some("t".into()),
            claimed_ms: 0,
        },
    )
    .await
    .unwrap();
    reg.put_app(
        "blog",
        &AppRecord {
            action: ActionRecord::Maintenance {
                body: Some("later".into()),
                content_type: "text/plain".into(),
                retry_after: Some(5),
            },
            ..AppRecord::default()
        },
    )
    .await
    .unwrap();
    wait_status(&b, "blog.test", 503).await;
    assert_eq!(get(b.addr(), "pending.test", "/").await.status, 404);
    reg.put_app("blog", &AppRecord::default()).await.unwrap();
    wait_status(&b, "blog.test", 200).await;
    // Deleting the app removes its domains too.
    reg.delete_app("blog").await.unwrap();
    wait_status(&b, "blog.test", 404).await;
    wait_status(&b, "www.blog.test", 404).await;
    assert_eq!(
        b.metric("pier_registry_resyncs_total{reason=\"connect\"}")
            .await,
        1.0
    );
    assert!(b.metric("pier_registry_changes_applied_total").await >= 5.0);
    assert_eq!(
        b.metric("pier_route_table_version").await as u64,
        reg.version().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_converge() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    let b1 = Balancer::start("", &registry_config(&redis, "")).await;
    let b2 = Balancer::start("", &registry_config(&redis, "")).await;
    for i in 0..30 {
        add_app(
            &reg,
            &format!("app{i}"),
            &[&format!("h{i}.test")],
            &[be.addr],
        )
        .await;
    }
    for i in 0..10 {
        reg.delete_domain(&format!("h{i}.test")).await.unwrap();
    }
    let version = reg.version().await.unwrap();
    b1.wait_version(version).await;
    b2.wait_version(version).await;
    let dump = |port| async move {
        let r = admin_get(port, "/routes").await.unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        // Outstanding counts and ejection are local state, not registry data.
        for app in v["apps"].as_array_mut().unwrap() {
            for be in app["backends"].as_array_mut().unwrap() {
                be.as_object_mut().unwrap().remove("outstanding");
                be.as_object_mut().unwrap().remove("ejected");
            }
        }
        v
    };
    let (d1, d2) = (dump(b1.admin).await, dump(b2.admin).await);
    assert_eq!(d1, d2);
    assert_eq!(d1["domains"], 20);
    assert_eq!(d1["apps"].as_array().unwrap().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_survived_and_an_empty_restart_is_held() {
    let mut redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    for i in 0..10 {
        add_app(
            &reg,
            &format!("app{i}"),
            &[&format!("h{i}.test")],
            &[be.addr],
        )
        .await;
    }
    redis.save();
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "h9.test", 200).await;

    // Redis dies: every request for a known route keeps working.
    redis.kill();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        let r = get(b.addr(), &format!("h{}.test", n % 10), "/").await;
        assert_eq!(r.status, 200, "request {n} failed while Redis was down");
        n += 1;
    }
    assert!(b.metric("pier_registry_connected").await == 0.0);

    // Redis comes back empty: the resync would drop everything, so it is held.
    redis.restart(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.metric("pier_registry_resyncs_held_total").await < 1.0 {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.metric("pier_registry_resync_held").await, 1.0);
    assert_eq!(get(b.addr(), "h3.test", "/").await.status, 200);
    assert!(b.log_text().contains("registry resync held"));

    // Redis comes back with its data plus one more app: the resync is applied.
    redis.restart(true);
    let reg = Registry::connect(&redis.url()).await.unwrap();
    add_app(&reg, "late", &["late.test"], &[be.addr]).await;
    wait_status(&b, "late.test", 200).await;
    assert_eq!(b.metric("pier_registry_resync_held").await, 0.0);
    assert_eq!(get(b.addr(), "h3.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_change_log_triggers_a_resync() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "a", &["a.test"], &[be.addr]).await;
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "a.test", 200).await;
    // Data written behind the log's back, then an entry that skips versions: the balancer
    // cannot trust its incremental state and must reload everything.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("pier:domains")
        .arg("hidden.test")
        .arg("{\"app\":\"a\",\"verified\":true}")
        .query_async(&mut c)
        .await
        .unwrap();
    let v: u64 = redis::cmd("INCRBY")
        .arg("pier:version")
        .arg(5)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("pier:changes")
        .arg("*")
        .arg("v")
        .arg(v)
        .arg("op")
        .arg("domain")
        .arg("key")
        .arg("other.test")
        .arg("value")
        .arg("")
        .query_async(&mut c)
        .await
        .unwrap();
    wait_status(&b, "hidden.test", 200).await;
    assert_eq!(
        b.metric("pier_registry_resyncs_total{reason=\"gap\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_backends_are_skipped_without_any_event() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    reg.put_app("a", &AppRecord::default()).await.unwrap();
    reg.put_domain("a.test", &DomainRecord::verified("a"))
        .await
        .unwrap();
    let deadline = pier_now_ms() + 1500;
    reg.put_backend(
        "a",
        "i1",
        &BackendRecord {
            address: be.addr.to_string(),
            expires_at_ms: deadline,
            server_name: None,
            weight: None,
        },
    )
    .await
    .unwrap();
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "a.test", 200).await;
    let version = b.metric("pier_route_table_version").await;
    // No heartbeat: once the deadline passes the balancer stops using the backend by itself.
    while pier_now_ms() < deadline + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get(b.addr(), "a.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-pier-error"), Some("no-backend"));
    assert_eq!(
        b.metric("pier_route_table_version").await,
        version,
        "no registry event expected"
    );
    // A heartbeat (a new deadline) brings it back.
    reg.put_backend(
        "a",
        "i1",
        &BackendRecord {
            address: be.addr.to_string(),
            expires_at_ms: pier_now_ms() + 60_000,
            server_name: None,
            weight: None,
        },
    )
    .await
    .unwrap();
    wait_status(&b, "a.test", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_holds_requests_until_a_backend_registers() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    reg.put_app(
        "boot",
        &AppRecord {
            spin: true,
            ..AppRecord::default()
        },
    )
    .await
    .unwrap();
    reg.put_domain("boot.test", &DomainRecord::verified("boot"))
        .await
        .unwrap();
    let b = Balancer::start("", &registry_config(&redis, "[spin]\ntimeout = \"5s\"\n")).await;
    wait_status(&b, "boot.test", 503).await;
    // The first attempt above may itself have been held and timed out; now hold three more.
    let addr = b.addr();
    let held: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get(addr, "boot.test", &format!("/{i}")).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.metric("pier_spin_held_requests").await, 3.0);
    reg.put_backend(
        "boot",
        "i1",
        &BackendRecord {
            address: be.addr.to_string(),
            expires_at_ms: 0,
            weight: None,
            server_name: None,
        },
    )
    .await
    .unwrap();
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
    }
    assert_eq!(b.metric("pier_spin_released_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_gives_up_after_its_timeout() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    reg.put_app(
        "boot",
        &AppRecord {
            spin: true,
            ..AppRecord::default()
        },
    )
    .await
    .unwrap();
    reg.put_domain("boot.test", &DomainRecord::verified("boot"))
        .await
        .unwrap();
    let b = Balancer::start(
        "",
        &registry_config(&redis, "[spin]\ntimeout = \"400ms\"\n"),
    )
    .await;
    let t = Instant::now();
    wait_status(&b, "boot.test", 503).await;
    let one = Instant::now();
    let r = get(b.addr(), "boot.test", "/").await;
    assert_eq!(r.status, 503);
    let waited = one.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "answered after {waited:?}, before the spin timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(b.metric("pier_spin_timeouts_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registry_data_is_skipped_not_fatal() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "good", &["good.test"], &[be.addr]).await;
    reg.put_raw(ChangeKind::App, "broken", "{not json")
        .await
        .unwrap();
    reg.put_raw(ChangeKind::Backend, "good/bad", "{\"address\":\"no-port\"}")
        .await
        .unwrap();
    reg.put_raw(
        ChangeKind::Domain,
        "orphan.test",
        "{\"app\":\"nobody\",\"verified\":true}",
    )
    .await
    .unwrap();
    // Loaded at start (snapshot) ...
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "good.test", 200).await;
    assert!(b.metric("pier_registry_bad_entries_total").await >= 3.0);
    // ... and arriving through the feed.
    let before = b.metric("pier_registry_bad_entries_total").await;
    reg.put_raw(ChangeKind::Backend, "good/worse", "[]")
        .await
        .unwrap();
    add_app(&reg, "after", &["after.test"], &[be.addr]).await;
    wait_status(&b, "after.test", 200).await;
    assert!(b.metric("pier_registry_bad_entries_total").await > before);
    assert_eq!(get(b.addr(), "good.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_balancer_serves_its_snapshot_before_redis_answers() {
    let mut redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "a", &["a.test"], &[be.addr]).await;
    let snap_dir = tempfile::tempdir().unwrap();
    let snap = snap_dir.path().join("snap.json");
    let cfg = format!(
        "[routes]\nredis = \"{}\"\nsnapshot_file = \"{}\"\n",
        redis.url(),
        snap.display()
    );
    let b = Balancer::start("", &cfg).await;
    wait_status(&b, "a.test", 200).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !snap.exists() {
        assert!(Instant::now() < deadline, "snapshot file not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
    redis.kill();
    let b = Balancer::start("", &cfg).await;
    assert_eq!(get(b.addr(), "a.test", "/").await.status, 200);
    assert_eq!(b.metric("pier_registry_connected").await, 0.0);
}

fn pier_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_do_not_expire_while_the_registry_is_unreachable() {
    // Runners cannot renew deadlines while Redis is down: the last-known table keeps serving
    // whole, and deadlines count again once Redis answers.
    let mut redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    reg.put_app("a", &AppRecord::default()).await.unwrap();
    reg.put_domain("a.test", &DomainRecord::verified("a"))
        .await
        .unwrap();
    // Longer than the balancer's slack (3 s after the last answer), as runners' TTLs are.
    let ttl_ms = 4_500;
    reg.put_backend(
        "a",
        "i0",
        &BackendRecord {
            address: be.addr.to_string(),
            expires_at_ms: pier_now_ms() + ttl_ms,
            server_name: None,
            weight: None,
        },
    )
    .await
    .unwrap();
    let b = Balancer::start("", &registry_config(&redis, "")).await;
    wait_status(&b, "a.test", 200).await;
    redis.kill();
    // Well past the deadline.
    tokio::time::sleep(Duration::from_millis(ttl_ms + 2_000)).await;
    assert_eq!(b.metric("pier_registry_connected").await, 0.0);
    assert_eq!(
        get(b.addr(), "a.test", "/").await.status,
        200,
        "{}",
        b.log_text()
    );
    // Redis back with its data (the deadline long past): the backend is expired again.
    redis.restart(false);
    let reg = Registry::connect(&redis.url()).await.unwrap();
    add_app(&reg, "other", &["other.test"], &[be.addr]).await;
    reg.put_app("a", &AppRecord::default()).await.unwrap();
    reg.put_domain("a.test", &DomainRecord::verified("a"))
        .await
        .unwrap();
    reg.put_backend(
        "a",
        "i0",
        &BackendRecord {
            address: be.addr.to_string(),
            expires_at_ms: pier_now_ms() - 1,
            server_name: None,
            weight: None,
        },
    )
    .await
    .unwrap();
    wait_status(&b, "a.test", 503).await;
}

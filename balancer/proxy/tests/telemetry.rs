//! Router lines and per-app stats, against a real `redis-server`: every request of an app
//! leaves one line in its log stream and one count in its stats buckets, and a Redis outage
//! drops lines (counted) without slowing a request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pier_registry::model::{AppRecord, BackendRecord, DomainRecord};
use pier_registry::telemetry::RouterWindow;
use pier_registry::Registry;
use pier_testkit::h1::{get, Backend};
use pier_testkit::proxy::Balancer;
use pier_testkit::{free_port, RedisServer};

const TELEMETRY: &str = "[telemetry]\nstats_interval = \"200ms\"\nid = \"lb-1\"\n";

async fn add_app(reg: &Registry, app: &str, host: &str, backend: std::net::SocketAddr) {
    reg.put_app(app, &AppRecord::default()).await.unwrap();
    reg.put_domain(host, &DomainRecord::verified(app))
        .await
        .unwrap();
    reg.put_backend(
        app,
        "web.1",
        &BackendRecord {
            address: backend.to_string(),
            expires_at_ms: 0,
            weight: None,
            server_name: None,
        },
    )
    .await
    .unwrap();
}

async fn connect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The app's router lines: (balancer id, line).
async fn router_lines(
    c: &mut redis::aio::MultiplexedConnection,
    app: &str,
) -> Vec<(String, String)> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("pier:logs:{app}"))
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    entries
        .into_iter()
        .filter(|(_, f)| f.get("src").map(String::as_str) == Some("router"))
        .map(|(_, f)| (f["ps"].clone(), f["line"].clone()))
        .collect()
}

/// The app's stats of one tier (`s10`, `m`, `h`), merged over buckets and balancers.
async fn stats(c: &mut redis::aio::MultiplexedConnection, app: &str, tier: &str) -> RouterWindow {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("pier:stats:router:{app}:{tier}:*"))
        .query_async(c)
        .await
        .unwrap();
    let mut total = RouterWindow::default();
    for k in keys {
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(&k).query_async(c).await.unwrap();
        assert!(fields.contains_key("lb-1"), "{k}: {fields:?}");
        let ttl: i64 = redis::cmd("TTL").arg(&k).query_async(c).await.unwrap();
        assert!(ttl > 0, "{k} never expires");
        for v in fields.values() {
            total.merge(&RouterWindow::decode(v).unwrap());
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_a_router_line_and_a_count() {
    let redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "shop", "shop.test", be.addr).await;
    // An app whose only instance refuses connections: pier answers 502 itself.
    add_app(
        &reg,
        "broken",
        "broken.test",
        ([127, 0, 0, 1], free_port()).into(),
    )
    .await;
    let routes = format!(
        "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n{TELEMETRY}",
        redis.url()
    );
    let b = Balancer::start("", &routes).await;

    let mut served = 0;
    let t = Instant::now();
    while get(b.addr(), "shop.test", "/").await.status != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            get(b.addr(), "shop.test", "/item?q=%22x%22").await.status,
            200
        );
        served += 1;
    }
    for _ in 0..3 {
        assert_eq!(get(b.addr(), "broken.test", "/").await.status, 502);
    }

    let mut c = connect(&redis).await;
    let t = Instant::now();
    let lines = loop {
        let lines = router_lines(&mut c, "shop").await;
        let item = lines.iter().filter(|(_, l)| l.contains("/item")).count();
        if item == served {
            break lines;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{item} of {served} lines: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (ps, line) = lines.last().unwrap();
    assert_eq!(ps, "lb-1");
    for part in [
        "at=info method=GET path=\"/item?q=%22x%22\" host=shop.test request_id=",
        " fwd=\"127.0.0.1\" instance=web.1 connect=",
        " status=200 bytes=",
        " protocol=http/1.1",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(!line.chars().any(char::is_control), "{line:?}");

    let broken = router_lines(&mut c, "broken").await;
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert!(
        broken[0]
            .1
            .starts_with("at=error error=upstream-connect-failed method=GET path=\"/\""),
        "{broken:?}"
    );
    assert!(broken[0].1.contains(" status=502 "), "{broken:?}");

    // Stats: every request counted once in each tier, written within a few intervals.
    let t = Instant::now();
    loop {
        let all: Vec<RouterWindow> = [
            stats(&mut c, "shop", "s10").await,
            stats(&mut c, "shop", "m").await,
            stats(&mut c, "shop", "h").await,
        ]
        .into();
        let want = lines.len() as u64;
        if all
            .iter()
            .all(|w| w.requests == want && w.latency.count() == want)
        {
            assert!(all.iter().all(|w| w.errors_5xx == 0));
            let p50 = all[2].latency.quantile(0.5).unwrap();
            assert!(p50 > 0 && p50 < 1_000_000, "p50 {p50} µs");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stats {:?} vs {want} lines",
            all.iter().map(|w| w.requests).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    while stats(&mut c, "broken", "m").await.errors_5xx != 3 {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.metric("pier_router_lines_total").await >= 24.0);
    assert_eq!(b.metric("pier_telemetry_dropped_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_drops_lines_counted_and_never_holds_a_request() {
    let mut redis = RedisServer::start();
    let reg = Registry::connect(&redis.url()).await.unwrap();
    let be = Backend::start("be").await;
    add_app(&reg, "shop", "shop.test", be.addr).await;
    redis.save();
    let routes = format!(
        "[routes]\nredis = \"{}\"\nsnapshot_file = \"\"\n{TELEMETRY}",
        redis.url()
    );
    let b = Balancer::start("", &routes).await;
    let t = Instant::now();
    while get(b.addr(), "shop.test", "/").await.status != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    redis.kill();
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(get(b.addr(), "shop.test", "/").await.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    // Far below the 2 s a Redis command may take: nothing on the request path waits for it.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest request {slowest:?}"
    );
    let t = Instant::now();
    while b.metric("pier_telemetry_dropped_total").await < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{}",
            b.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis is back: lines flow again, and the stats counted meanwhile are written.
    redis.restart(true);
    let mut c = connect(&redis).await;
    let t = Instant::now();
    loop {
        assert_eq!(get(b.addr(), "shop.test", "/after").await.status, 200);
        let lines = router_lines(&mut c, "shop").await;
        let after = lines.iter().any(|(_, l)| l.contains("path=\"/after\""));
        let counted = stats(&mut c, "shop", "h").await.requests;
        if after && counted >= 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{counted} counted\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Usage for billing end to end: the platform's processes (API with a real PostgreSQL as its
//! platform database, a coordinator, a runner, a balancer, one private Redis) reporting every
//! second instead of every minute. A known load is billed within 2 %, a report written twice
//! counts once, a lost report and a killed runner show as gaps, a balancer stopped on purpose
//! does not, and owners see only their own app's usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use pier_testkit::PostgresServer;
use serde_json::Value;

const INTERVAL_MS: &str = "1000";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The app's usage this month, as the API answers it.
fn usage(p: &Platform, app: &str) -> Value {
    let out = p.pier(&["usage", app, "--json"]).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

/// The raw quantity of `item` (in its billing unit) in a usage answer.
fn quantity(u: &Value, item_prefix: &str) -> f64 {
    u["apps"][0]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["item"].as_str().unwrap().starts_with(item_prefix))
                .map(|i| i["quantity"].as_f64().unwrap())
                .sum()
        })
        .unwrap_or(0.0)
}

/// Polls the app's usage until `done` holds (up to `limit`); the last answer.
fn usage_until(p: &Platform, app: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let u = usage(p, app);
        if done(&u) {
            return u;
        }
        assert!(
            start.elapsed() < limit,
            "usage of {app} not as expected within {limit:?}: {u:#}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn xadd_report(redis: &mut redis::Connection, report: &str) {
    let _: String = redis::cmd("XADD")
        .arg("pier:usage_reports")
        .arg("*")
        .arg("report")
        .arg(report)
        .query(redis)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_load_is_billed_and_lost_reports_show_as_gaps() {
    let pg = PostgresServer::start();
    let prices = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prices.toml");
    let prices = prices.display().to_string();
    let mut p = Platform::start_with(
        &["127.0.0.2"],
        &[
            "--platform-db",
            &pg.admin_url(),
            "--prices",
            &prices,
            "--usage-interval-ms",
            INTERVAL_MS,
        ],
        "[telemetry]\nid = \"lb-1\"\nusage_interval = \"1s\"\n",
        &["--usage-interval-ms", INTERVAL_MS],
    )
    .await;
    p.create_and_deploy("meter", "hello-stdlib");
    let host = Platform::host("meter");

    // The load: every request through the balancer counts, the ones that wait for the app
    // to be routed too.
    let mut requests = 0u64;
    let mut bytes_out = 0u64;
    let n = 300;
    let mut served = 0;
    let start = Instant::now();
    while served < n {
        let r = pier_testkit::http_get(p.balancer.addr(), &host, "/").await;
        requests += 1;
        if let Ok((status, body)) = r {
            bytes_out += body.len() as u64;
            if status == 200 {
                served += 1;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "meter not served"
        );
    }
    let ps: Value = serde_json::from_str(&p.pier(&["ps", "meter", "--json"]).ok().stdout).unwrap();
    let started_ms = ps["instances"][0]["started_ms"].as_u64().unwrap();
    // The instance runs a known time, then is scaled away.
    let run_for = Duration::from_secs(20);
    let left = run_for.saturating_sub(Duration::from_millis(now_ms() - started_ms));
    tokio::time::sleep(left).await;
    let scaled_ms = now_ms();
    p.pier(&["scale", "meter", "web=0"]).ok();
    let gone_ms = loop {
        let ps: Value =
            serde_json::from_str(&p.pier(&["ps", "meter", "--json"]).ok().stdout).unwrap();
        if ps["instances"].as_array().unwrap().is_empty() {
            break now_ms();
        }
        assert!(now_ms() - scaled_ms < 20_000, "web.1 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The process ran from started_ms until it exited: after the scale, before ps lost it.
    let low = (scaled_ms - started_ms) as f64 / 1000.0;
    let high = (gone_ms - started_ms) as f64 / 1000.0;
    let u = usage_until(&p, "meter", Duration::from_secs(20), |u| {
        quantity(u, "requests") >= requests as f64 && quantity(u, "instance:web:") * 3600.0 >= low
    });
    // Once the report of the interval the instance ended in is in, nothing more is added.
    let mut u = u;
    let settled = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(2500));
        let again = usage(&p, "meter");
        if again["apps"] == u["apps"] {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(15),
            "usage kept growing after the load: {again:#}"
        );
        u = again;
    }
    let instance_s = quantity(&u, "instance:web:") * 3600.0;
    let got_requests = quantity(&u, "requests");
    let got_out = quantity(&u, "bytes_out") * 1e9;
    println!(
        "instance {instance_s:.2} s (ran {low:.2}–{high:.2} s), requests {got_requests} of {requests}, \
         bytes out {got_out} of {bytes_out}, cpu {:.3} s, memory {:.6} GB-h",
        quantity(&u, "cpu"),
        quantity(&u, "memory")
    );
    assert!(
        instance_s >= low * 0.98 && instance_s <= high * 1.02,
        "instance seconds {instance_s} outside {low}..{high}"
    );
    assert!(
        (got_requests - requests as f64).abs() <= requests as f64 * 0.02,
        "requests {got_requests} vs {requests}"
    );
    assert!(
        (got_out - bytes_out as f64).abs() <= bytes_out as f64 * 0.02,
        "bytes out {got_out} vs {bytes_out}"
    );
    // Python's RSS is some MB: memory × time is that over the instance's life.
    let gb_s = quantity(&u, "memory") * 3600.0;
    assert!(
        gb_s > 0.001 * low && gb_s < 0.6 * high,
        "memory {gb_s} GB-s"
    );
    assert!(quantity(&u, "cpu") > 0.0, "{u:#}");
    // Priced from config/prices.toml: instance_hour = 0.01, requests_million = 0.40.
    assert_eq!(u["currency"], "USD");
    let item = |prefix: &str| {
        u["apps"][0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["item"].as_str().unwrap().starts_with(prefix))
            .unwrap()
            .clone()
    };
    let inst = item("instance:web:");
    assert!(
        (inst["cost"].as_f64().unwrap() - inst["quantity"].as_f64().unwrap() * 0.01).abs() < 1e-12
    );
    let req = item("requests");
    assert!((req["cost"].as_f64().unwrap() - got_requests / 1e6 * 0.40).abs() < 1e-12);
    assert_eq!(u["gaps"], serde_json::json!([]), "{u:#}");

    // The text and --all (operator); an owner sees their own app only.
    let text = p.pier(&["usage", "meter"]).ok().stdout;
    assert!(
        text.contains("=== meter") && text.contains("instance:web:512MiB"),
        "{text}"
    );
    assert!(text.contains("USD"), "{text}");
    let all = p.pier(&["usage", "--all", "--json"]).ok().stdout;
    assert!(all.contains("\"meter\""), "{all}");
    p.pier(&["apps", "create", "other"]).ok();
    let other = p.owner_token("other");
    let meters = p.owner_token("meter");
    let refused = p.api.pier(Some(&other), &["usage", "meter"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("403") || refused.stderr.contains("may not"),
        "{refused:?}"
    );
    assert_ne!(p.api.pier(Some(&meters), &["usage", "--all"]).code, 0);
    p.api.pier(Some(&meters), &["usage", "meter"]).ok();
    let bad = p.pier(&["usage", "meter", "--month", "2026-13"]);
    assert!(bad.stderr.contains("YYYY-MM"), "{bad:?}");

    // A report written twice (a reporter that lost Redis's answer) counts once; a report
    // whose predecessor never arrived leaves a gap with the missing number.
    let mut redis = redis::Client::open(p.api.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let at = now_ms() - 5000;
    let report = |seq: u64, from: u64| {
        format!(
            r#"{{"v":1,"reporter":"r-test","kind":"runner","seq":{seq},"from_ms":{from},"to_ms":{},"apps":{{"meter":{{"requests":1000}}}}}}"#,
            from + 1000
        )
    };
    xadd_report(&mut redis, &report(1, at));
    xadd_report(&mut redis, &report(1, at));
    xadd_report(&mut redis, &report(3, at + 2000));
    let before = got_requests;
    let u = usage_until(&p, "meter", Duration::from_secs(10), |u| {
        quantity(u, "requests") >= before + 2000.0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let u = {
        let again = usage(&p, "meter");
        assert_eq!(quantity(&again, "requests"), quantity(&u, "requests"));
        again
    };
    assert_eq!(
        quantity(&u, "requests"),
        before + 2000.0,
        "the resent report counted twice"
    );
    let gaps = u["gaps"].as_array().unwrap();
    let lost = gaps
        .iter()
        .find(|g| g["reporter"] == "r-test" && g["seq_from"] == 2)
        .unwrap_or_else(|| panic!("no gap for r-test's seq 2: {u:#}"));
    assert_eq!(lost["seq_to"], 2);
    assert!(
        lost["text"].as_str().unwrap().contains("(seq 2 missing)"),
        "{lost}"
    );

    // A runner killed at once sends no final report: once it is overdue, a gap.
    p.runners[0].kill_hard();
    let killed_ms = now_ms();
    let u = usage_until(&p, "meter", Duration::from_secs(15), |u| {
        u["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["reporter"] == "r-127.0.0.2")
    });
    let dead = u["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reporter"] == "r-127.0.0.2")
        .unwrap()
        .clone();
    let text = dead["text"].as_str().unwrap();
    assert!(
        text.starts_with("r-127.0.0.2 stopped reporting at ")
            && text.ends_with("without a final report"),
        "{text}"
    );
    let from = dead["from_ms"].as_u64().unwrap();
    assert!(
        from <= killed_ms && killed_ms - from < 2000,
        "gap from {from}, killed {killed_ms}"
    );
    let shown = p.pier(&["usage", "meter"]).ok().stdout;
    assert!(
        shown.contains("gaps (usage may be missing):") && shown.contains(text),
        "{shown}"
    );

    // Started again under the same id: its numbers go on, and the time it was away is a gap.
    p.start_runner("127.0.0.2");
    let u = usage_until(&p, "meter", Duration::from_secs(20), |u| {
        u["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["reporter"] == "r-127.0.0.2" && g["to_ms"].is_u64())
    });
    let back = u["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["reporter"] == "r-127.0.0.2")
        .unwrap()
        .clone();
    assert!(
        back["text"].as_str().unwrap().contains("came back at"),
        "{back}"
    );
    assert!(back["seq_from"].is_null(), "numbers went on: {back}");

    // A balancer stopped on purpose ends with a final report: no gap, however long it is gone.
    p.balancer.stop();
    std::thread::sleep(Duration::from_millis(5000));
    let u = usage(&p, "meter");
    assert!(
        !u["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["reporter"] == "lb-1"),
        "{u:#}\n{}",
        p.balancer.log()
    );
}

#[test]
fn without_a_platform_database_usage_answers_409() {
    let api = ApiProcess::start();
    let out = api.pier(Some(OPERATOR), &["usage", "--all"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--platform-db"), "{out:?}");
}

#[test]
fn a_bad_price_sheet_is_refused_at_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("prices.toml");
    std::fs::write(&sheet, "[prices]\ninstance_hour = -0.01\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pier"))
        .args([
            "api",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            "redis://127.0.0.1:1/0",
        ])
        .arg("--prices")
        .arg(&sheet)
        .env("PIER_OPERATOR_TOKEN", OPERATOR)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}: prices.instance_hour: must be a finite number of at least 0",
            sheet.display()
        )),
        "{err}"
    );
}

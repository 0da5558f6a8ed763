#![allow(clippy::unwrap_used)]
//! The binary end to end: summary, JSON/CSV/HTML files, thresholds and exit codes.

mod common;

use std::process::Command;

use common::{scratch, start, Behaviour};

fn pier_load() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pier-load"))
}

#[test]
fn writes_reports_and_applies_thresholds() {
    let server = start(Behaviour::default());
    let dir = scratch("cli");
    let (json, csv, html) = (dir.join("r.json"), dir.join("r.csv"), dir.join("r.html"));
    let out = pier_load()
        .args([
            "-t1",
            "-c2",
            "-d1500ms",
            "--latency",
            "--host-pattern",
            "app{1..3}.test",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--html")
        .arg(&html)
        .args(["--fail-if", "errors>1%", "--fail-if", "p99>10s"])
        .arg(server.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Requests/sec:"), "{stdout}");
    assert!(stdout.contains("99.999%"), "{stdout}");
    // Not a terminal: no progress line on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], "pier-load/v1");
    assert!(v["requests"]["responses"].as_u64().unwrap() > 10);
    assert_eq!(v["config"]["model"], "closed");
    assert_eq!(v["per_host"].as_array().unwrap().len(), 3);
    assert_eq!(v["per_host_summary"]["hosts"], 3);
    assert_eq!(v["per_host_summary"]["never_answered"], 0);
    assert!(v["latency_us"]["corrected"]["percentiles"]["99.999"]
        .as_u64()
        .is_some());

    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), pier_load::report::csv::HEADER);
    assert_eq!(lines.count(), 2, "{csv}");

    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("<svg") && html.contains("Latency by percentile"));
    assert!(!html.contains("<script"), "the page must need no scripts");
}

#[test]
fn crossed_threshold_exits_3() {
    let server = start(Behaviour::default());
    let out = pier_load()
        .args([
            "-t1",
            "-c1",
            "-d300ms",
            "--fail-if",
            "p50>1us",
            "--fail-if",
            "rps<1",
        ])
        .arg(server.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("threshold crossed: p50>1us"), "{stdout}");
    assert!(!stdout.contains("rps<1"), "{stdout}");
}

#[test]
fn errors_threshold_sees_failures_and_bad_usage_exits_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = pier_load()
        .args(["-t1", "-c1", "-d300ms", "--fail-if", "errors>0.1%"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let out = pier_load()
        .args(["--fail-if", "p99>", "http://h/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pier_load().arg("ftp://nope/").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

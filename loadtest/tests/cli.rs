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
    let (port, _held) = pier_testkit::net::refusing_port();
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

/// Two generators started together by `--start-at`, their `--json` reports merged: counts add
/// up, the merged percentiles are exactly those of the two runs' histograms added together,
/// the series lines up second by second, and the merged report is itself mergeable.
#[test]
fn reports_of_generators_started_together_merge_exactly() {
    use pier_load::report::{hdr, load};
    let server = start(Behaviour::default());
    let dir = scratch("merge");
    let start_at = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
    let unix = start_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let run = |name: &str, hosts: &str| {
        let json = dir.join(name);
        let child = pier_load()
            .args(["-t1", "-c2", "-d2s", "--host-pattern", hosts])
            .args(["--start-at", &unix.to_string()])
            .arg("--json")
            .arg(&json)
            .arg(server.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child, json)
    };
    let (a, a_json) = run("a.json", "a{1..2}.test");
    let (b, b_json) = run("b.json", "b{1..3}.test");
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("starting at"), "{err}");
    }
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (va, vb) = (read(&a_json), read(&b_json));
    let merged_json = dir.join("m.json");
    let out = pier_load()
        .arg("merge")
        .arg(&a_json)
        .arg(&b_json)
        .args(["--latency", "--fail-if", "errors>1%"])
        .arg("--json")
        .arg(&merged_json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("merged from 2 reports"), "{stdout}");
    assert!(stdout.contains("4 connections"), "{stdout}");
    let m = read(&merged_json);
    let responses = |v: &serde_json::Value| v["requests"]["responses"].as_u64().unwrap();
    assert_eq!(responses(&m), responses(&va) + responses(&vb));
    assert!(responses(&va) > 10 && responses(&vb) > 10);
    // The merged percentiles are read from the sum of both histograms.
    let hist = |v: &serde_json::Value| -> hdrhistogram::Histogram<u64> {
        hdr::decode(v["histograms"]["corrected"].as_str().unwrap()).unwrap()
    };
    let mut both = hist(&va);
    both.add(hist(&vb)).unwrap();
    assert_eq!(hist(&m), both);
    for (key, q) in [("50", 0.5), ("99", 0.99), ("99.9", 0.999)] {
        assert_eq!(
            m["latency_us"]["corrected"]["percentiles"][key]
                .as_u64()
                .unwrap(),
            both.value_at_quantile(q),
            "p{key}"
        );
    }
    // Five hosts, by name; the series second by second.
    assert_eq!(m["per_host"].as_array().unwrap().len(), 5);
    let series = |v: &serde_json::Value| v["series"].as_array().unwrap().clone();
    let first_second = |v: &serde_json::Value| series(v)[0]["responses"].as_u64().unwrap();
    assert_eq!(first_second(&m), first_second(&va) + first_second(&vb));
    // Merging the merged report with nothing else changes nothing.
    let again = load::from_value(&m).unwrap();
    assert_eq!(again.responses(), responses(&m));
    // A report from before `merge` existed is refused, naming why.
    let mut old = va.clone();
    old.as_object_mut().unwrap().remove("histograms");
    let old_json = dir.join("old.json");
    std::fs::write(&old_json, old.to_string()).unwrap();
    let out = pier_load()
        .arg("merge")
        .arg(&a_json)
        .arg(&old_json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("old.json") && err.contains("histograms"),
        "{err}"
    );
    // A start time that has passed is refused: the generators would not start together.
    let out = pier_load()
        .args(["-d1s", "--start-at", "2020-01-01T00:00:00Z"])
        .arg(server.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has passed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--tui` on a terminal (a pseudo-terminal from the test kit): the alternate screen, the live
/// numbers, the hosts table, the terminal given back, then the usual summary; without a
/// terminal it is ignored, saying so.
#[test]
fn the_live_view_draws_on_a_terminal_and_gives_it_back() {
    let server = start(Behaviour::default());
    let mut cmd = pier_load();
    cmd.args([
        "-t1",
        "-c2",
        "-d3s",
        "--tui",
        "--host-pattern",
        "app{1..3}.test",
    ])
    .arg(server.url());
    let mut t = pier_testkit::pty::PtyProcess::spawn(&cmd, 120, 40);
    let status = t.wait(std::time::Duration::from_secs(30));
    let out = t.output();
    assert!(status.success(), "{out}");
    let enter = out
        .find("\x1b[?1049h")
        .expect("the alternate screen is entered");
    let leave = out
        .rfind("\x1b[?1049l")
        .expect("the alternate screen is left");
    let view = &out[enter..leave];
    for want in [
        "req/s over time",
        "p99 over time",
        "errors as they happen",
        "2xx ",
        "app1.test",
        "app3.test",
        "3s / 3s",
    ] {
        assert!(view.contains(want), "{want:?} not in the view:\n{view}");
    }
    // The summary is printed on the normal screen, after the view.
    assert!(out[leave..].contains("Requests/sec:"), "{out}");
    assert!(
        out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l"),
        "the cursor is shown again"
    );

    let out = pier_load()
        .args(["-t1", "-c1", "-d500ms", "--tui"])
        .arg(server.url())
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tui ignored"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Requests/sec:"));
}

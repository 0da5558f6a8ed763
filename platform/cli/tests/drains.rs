//! `pier drains` and `pier drainer` end to end: `pier api` and `pier drainer` as processes on a
//! private redis-server, a syslog receiver started by the test, the verbs run as an owner runs
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ApiProcess, Service, OPERATOR};
use pier_model::platform::LogLine;
use pier_testkit::SyslogListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_adds_a_drain_and_the_drainer_delivers_to_it() {
    let api = ApiProcess::start_with(&["--drain-allow", "127.0.0.0/8"]);
    let op = Some(OPERATOR);
    api.pier(op, &["apps", "create", "blog"]).ok();
    let token = api
        .pier(op, &["tokens", "create", "--app", "blog"])
        .ok()
        .last_line()
        .to_string();
    let owner = Some(token.as_str());
    let rx = SyslogListener::start().await;
    let url = format!("syslog://127.0.0.1:{}", rx.port);

    let out = api.pier(owner, &["drains", "blog"]).ok();
    assert_eq!(out.stdout.trim(), "blog has no drains");
    let out = api.pier(owner, &["drains", "add", "blog", &url]).ok();
    assert!(out.stdout.contains(&format!("to {url} added")), "{out:?}");
    let id = out.last_line().to_string();
    let out = api.pier(owner, &["drains", "add", "blog", &url]).ok();
    assert!(out.stdout.contains("already there"), "{out:?}");
    assert_eq!(out.last_line(), id);
    // Refused with the reason, exit 1.
    let out = api.pier(owner, &["drains", "add", "blog", "syslog://10.0.0.1:514"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("10.0.0.1 is private") && out.stderr.contains("422"),
        "{out:?}"
    );
    let out = api.pier(owner, &["drains", "add", "blog", "gopher://x:1"]);
    assert!(out.stderr.contains("unknown drain scheme"), "{out:?}");

    // The drainer, as a process of its own.
    let log = api.dir.path().join("drainer.log");
    let child = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["drainer", "--redis", &api.redis.url(), "--id", "t"])
        .args(["--drain-allow", "127.0.0.0/8"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let drainer = Service {
        child,
        log,
        workdir: None,
    };
    let store = pier_store::Store::connect(&api.redis.url(), "pier:")
        .await
        .unwrap();
    let lines: Vec<(String, LogLine)> = (1..=3)
        .map(|n| {
            (
                "blog".to_string(),
                LogLine {
                    id: String::new(),
                    at_ms: pier_store::now_ms(),
                    source: "app".into(),
                    process: "web.1".into(),
                    line: format!("hello {n}"),
                },
            )
        })
        .collect();
    store.append_logs(&lines).await.unwrap();
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    for (n, raw) in got.iter().enumerate() {
        assert!(
            raw.starts_with("<14>1 ")
                && raw.ends_with(&format!(" blog app web.1 - - hello {}", n + 1)),
            "{raw}"
        );
    }
    let listed = pier_testkit::wait_until("delivered=3", Duration::from_secs(30), || async {
        let out = api.pier(owner, &["drains", "blog"]).ok();
        out.stdout.contains("delivered=3").then_some(out)
    })
    .await;
    assert_eq!(
        listed.stdout.trim(),
        format!("{id}\t{url}\tdelivered=3\tdropped=0\t-"),
        "{}",
        drainer.log_text()
    );
    let out = api.pier(owner, &["drains", "blog", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["drains"][0]["delivered"], 3);

    let out = api.pier(owner, &["drains", "remove", "blog", &id]).ok();
    assert!(out.stdout.contains("removed"), "{out:?}");
    let out = api.pier(owner, &["drains", "remove", "blog", &id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("has no drain"), "{out:?}");
}

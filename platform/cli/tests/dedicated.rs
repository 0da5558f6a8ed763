//! A dedicated Redis add-on: a `redis-server` of the app's own on a runner, with its password,
//! restarted with its data when it dies, deleted with its data when destroyed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config_url(p: &Platform, app: &str) -> Option<String> {
    let out = p.pier(&["config", app, "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["config"]["REDIS_URL"].as_str().map(str::to_string)
}

/// Runs `cmd` on the Redis at `url` until it answers (or 20 s pass).
async fn until_answers(url: &str, cmd: &redis::Cmd) -> redis::Value {
    let start = Instant::now();
    loop {
        let r = async {
            let mut c = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            cmd.query_async::<redis::Value>(&mut c).await
        }
        .await;
        match r {
            Ok(v) => return v,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(20), "{url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_redis_runs_on_a_runner_with_its_password_and_keeps_its_data() {
    let p = Platform::start(&["127.0.0.2"]).await;
    p.pier(&["apps", "create", "cache"]).ok();
    let out = p
        .pier(&["addons", "create", "cache", "redis", "--plan", "dedicated"])
        .ok();
    assert!(out.stdout.contains("redis"), "{out:?}");
    // A repeated create makes no second one.
    p.pier(&["addons", "create", "cache", "redis", "--plan", "dedicated"])
        .ok();
    let url = config_url(&p, "cache").expect("REDIS_URL set");
    assert!(
        url.starts_with("redis://:") && url.contains("@127.0.0.2:"),
        "{url}"
    );

    let set = redis::cmd("SET").arg("k").arg("kept").clone();
    assert_eq!(
        until_answers(&url, &set).await,
        redis::Value::Okay,
        "{}",
        p.logs()
    );
    // Without the password, nothing.
    let no_pw = format!("redis://{}", url.rsplit_once('@').unwrap().1);
    let mut c = redis::Client::open(no_pw.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let denied: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("k").query_async(&mut c).await;
    assert!(denied.unwrap_err().to_string().contains("NOAUTH"));

    // It runs as the app's user (not root), with its password nowhere on its command line.
    let pid = redis_pid_under(&p).expect("a redis-server under the runner's workdir");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let password = url
        .trim_start_matches("redis://:")
        .split('@')
        .next()
        .unwrap();
    assert!(!cmdline.contains(password), "{cmdline}");
    if nix_is_root() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(!uid.split_whitespace().nth(1).unwrap().eq("0"), "{uid}");
    }

    // Killed: the runner starts it again, with its data.
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let get = redis::cmd("GET").arg("k").clone();
    let start = Instant::now();
    loop {
        if redis_pid_under(&p).is_some_and(|n| n != pid) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        until_answers(&url, &get).await,
        redis::Value::BulkString(b"kept".to_vec()),
        "{}",
        p.logs()
    );
    let logs = p.pier(&["logs", "cache", "--ps", "redis"]).ok().stdout;
    assert!(logs.contains("app[redis]:"), "{logs}");

    // Destroyed: the process stops, its data goes, the config var goes.
    p.pier(&["addons", "destroy", "cache", "redis", "--confirm", "cache"])
        .ok();
    let start = Instant::now();
    while redis_pid_under(&p).is_some() || data_dirs(&p) > 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(config_url(&p, "cache"), None);
}

fn runner_workdir(p: &Platform) -> std::path::PathBuf {
    p.runners[0].workdir.clone().unwrap()
}

fn redis_pid_under(p: &Platform) -> Option<u32> {
    processes_under(&runner_workdir(p)).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "redis-server")
    })
}

fn data_dirs(p: &Platform) -> usize {
    std::fs::read_dir(runner_workdir(p).join("services"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

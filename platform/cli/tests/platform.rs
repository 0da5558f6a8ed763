//! The platform end to end, every part a real process: `pier api`, `pier coordinator`,
//! `pier runner`s on 127.0.0.x and `pier-balancer` on one private redis-server, apps deployed
//! with the `pier` CLI from `platform/examples/` and reached through the balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{app_dir, load, Platform};

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
    assert!(
        out.stdout.contains("http://hello.apps.test/"),
        "the app's URL: {out:?}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_app_is_built_from_its_requirements_and_served() {
    let p = Platform::start(&["127.0.0.2"]).await;
    let start = Instant::now();
    let out = p.create_and_deploy("wsgi", "hello-gunicorn");
    assert!(
        out.stdout.contains("installing requirements.txt"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .to_lowercase()
            .contains("successfully installed gunicorn"),
        "{out:?}"
    );
    p.balancer
        .wait_served(
            &Platform::host("wsgi"),
            |b| b.starts_with("hello from gunicorn: wsgi v1 web.1"),
            SERVED_WITHIN,
        )
        .await;
    println!("gunicorn deploy to first 200: {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_runners_instances_move_and_traffic_comes_back() {
    let p = Platform::start(&["127.0.0.2", "127.0.0.3"]).await;
    p.create_and_deploy("hello", "hello-stdlib");
    p.pier(&["scale", "hello", "web=2"]).ok();
    // One instance on each runner.
    let spread = common_wait(&p, "two instances up on two runners", |ps| {
        ps.lines().filter(|l| l.contains("\tup ")).count() == 2
            && ps.contains("r-127.0.0.2")
            && ps.contains("r-127.0.0.3")
    })
    .await;
    let _ = spread;
    let stop = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(load(
        p.balancer.addr(),
        Platform::host("hello"),
        4,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The machine 127.0.0.3 dies: its runner and instances are SIGKILLed.
    let mut p = p;
    let killed_at = Instant::now();
    p.runners[1].kill_hard();
    // Its instance is placed on the live runner; both slots up again there.
    common_wait(&p, "both instances up on the live runner", |ps| {
        ps.lines()
            .filter(|l| l.contains("\tup ") && l.contains("r-127.0.0.2"))
            .count()
            == 2
    })
    .await;
    let moved = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let count = load_task.await.unwrap();
    println!("runner killed to both slots up elsewhere: {moved:?}; load: {count:?}");
    assert!(count.ok > 0, "{count:?}");
    // Traffic was served again within 10 s (with an instance left, the balancer retries the
    // other backend on refused connections, so failures are few or none).
    if let (Some(first), Some(last)) = (count.first_failure, count.last_failure) {
        assert!(last - first < Duration::from_secs(10), "{count:?}");
    }
    let runners = p.pier(&["runners"]).ok();
    assert!(
        !runners.stdout.contains("r-127.0.0.3"),
        "dead runner forgotten: {runners:?}"
    );
}

/// Polls `pier ps hello` until `ok` holds for its output.
async fn common_wait(p: &Platform, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let ps = p.pier(&["ps", "hello"]);
        if ps.code == 0 && ok(&ps.stdout) {
            return ps.stdout;
        }
        assert!(
            start.elapsed() < SERVED_WITHIN,
            "timed out waiting for {what}: {ps:?}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_restart_and_scale_down_under_load_fail_no_request() {
    let p = Platform::start(&["127.0.0.2", "127.0.0.3"]).await;
    p.create_and_deploy("hello", "hello-stdlib");
    p.pier(&["scale", "hello", "web=3"]).ok();
    common_wait(&p, "three up", |ps| {
        ps.lines().filter(|l| l.contains("\tup ")).count() == 3
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(load(
        p.balancer.addr(),
        Platform::host("hello"),
        4,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new release rolls out: new instances up before the old ones drain.
    p.pier(&["config", "set", "hello", "GREETING=hi"]).ok();
    p.balancer
        .wait_served(
            &Platform::host("hello"),
            |b| b.starts_with("hi from hello v2"),
            SERVED_WITHIN,
        )
        .await;
    common_wait(&p, "three up on v2 only", |ps| {
        ps.lines()
            .filter(|l| l.contains("\tup ") && l.contains("\tv2\t"))
            .count()
            == 3
            && ps.lines().count() == 3
    })
    .await;
    // A rolling restart, then a scale down.
    p.pier(&["restart", "hello"]).ok();
    tokio::time::sleep(Duration::from_secs(1)).await;
    common_wait(&p, "three up after the restart", |ps| {
        ps.lines().filter(|l| l.contains("\tup ")).count() == 3 && ps.lines().count() == 3
    })
    .await;
    p.pier(&["scale", "hello", "web=1"]).ok();
    common_wait(&p, "one left", |ps| {
        ps.lines().count() == 1 && ps.contains("\tup ")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the drained ones stop
    stop.store(true, Ordering::Relaxed);
    let count = load_task.await.unwrap();
    println!("deploy + restart + scale-down under load: {count:?}");
    assert!(count.ok > 100, "{count:?}");
    assert_eq!(count.failed, 0, "failed requests: {count:?}\n{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_app_backs_off_and_a_release_that_never_gets_healthy_is_not_routed() {
    let p = Platform::start(&["127.0.0.2"]).await;
    p.create_and_deploy("hello", "hello-stdlib");
    // v2 exits at once: the deploy fails with the reason, v1 keeps serving.
    let bad = app_dir(&[(
        "Procfile",
        "web: python3 -c \"print('boom'); raise SystemExit(3)\"\n",
    )]);
    let out = p.pier(&[
        "deploy",
        "hello",
        &bad.path().display().to_string(),
        "--wait",
        "60",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("v2 failed") && out.stderr.contains("exit status 3"),
        "{out:?}"
    );
    let rel = p.pier(&["releases", "hello"]).ok();
    assert!(rel.stdout.contains("*v1\t"), "back to v1: {rel:?}");
    assert!(rel.stdout.contains("v2\tfailed"), "{rel:?}");
    let (status, body) = pier_testkit::http_get(p.balancer.addr(), &Platform::host("hello"), "/")
        .await
        .unwrap();
    assert_eq!(
        (status, body.starts_with("hello from hello v1")),
        (200, true)
    );
    // A config change now builds on v1 (what runs), not on the failed v2.
    let out = p.pier(&["config", "set", "hello", "GREETING=still"]).ok();
    assert!(out.stdout.contains("released v3"), "{out:?}");
    p.balancer
        .wait_served(
            &Platform::host("hello"),
            |b| b.starts_with("still from hello v3"),
            SERVED_WITHIN,
        )
        .await;

    // A first deploy that crashes has nothing to go back to: it backs off, visible in ps.
    p.pier(&["apps", "create", "crashy"]).ok();
    let out = p
        .pier(&[
            "deploy",
            "crashy",
            &bad.path().display().to_string(),
            "--wait",
            "0",
        ])
        .ok();
    assert!(out.stdout.contains("released v1"), "{out:?}");
    let start = Instant::now();
    let mut seen_text = false;
    loop {
        let ps = p.pier(&["ps", "crashy"]).ok();
        seen_text |= ps.stdout.contains("exit status 3), next try in");
        let v: serde_json::Value =
            serde_json::from_str(&p.pier(&["ps", "crashy", "--json"]).ok().stdout).unwrap();
        let i = &v["instances"][0];
        let restarts = i["restarts"].as_u64().unwrap_or(0);
        let wait = i["next_try_ms"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(i["updated_ms"].as_u64().unwrap_or(0));
        // Three quick tries, then doubling waits: the fifth waits about 4 s.
        if restarts >= 5 && i["state"] == "crashed" && wait >= 3000 {
            assert!(seen_text, "ps never showed the crash and its next try");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no backoff seen: {v}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_takes_over_when_the_leader_dies() {
    let mut p = Platform::start(&["127.0.0.2"]).await;
    p.start_coordinator("c2");
    p.create_and_deploy("hello", "hello-stdlib");
    let (leader, standby) = if p.coordinators[0].log_text().contains("leading") {
        (0, 1)
    } else {
        (1, 0)
    };
    assert!(!p.coordinators[standby].log_text().contains("leading"));
    p.coordinators[leader].kill_hard();
    // The standby leads within the lease's time, and places what a scale asks for.
    p.pier(&["scale", "hello", "web=2"]).ok();
    common_wait(&p, "two up under the new leader", |ps| {
        ps.lines().filter(|l| l.contains("\tup ")).count() == 2
    })
    .await;
    assert!(
        p.coordinators[standby].log_text().contains("leading"),
        "{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_by_the_api() {
    let p = Platform::start(&[]).await;
    p.pier(&["apps", "create", "hello"]).ok();
    let client = pier_model::ApiClient::new(&p.api.url(), Some(common::OPERATOR.into())).unwrap();
    // A tar whose entry climbs out with `..`, made by hand as an attacker would.
    let mut h = tar::Header::new_gnu();
    let name = b"../../escaped.txt";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    b.append(&h, &b"bad"[..]).unwrap();
    let archive = b.into_inner().unwrap().finish().unwrap();
    let mut lines = Vec::new();
    let r = client
        .stream_lines(
            http::Method::POST,
            "/v1/apps/hello/deploys",
            "application/gzip",
            archive.into(),
            Duration::from_secs(30),
            &mut |l| lines.push(l.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.contains("\"error\"") && last.contains("climbs out"),
        "{lines:?}"
    );
    let rel = p.pier(&["releases", "hello"]).ok();
    assert!(rel.stdout.trim().is_empty(), "no release made: {rel:?}");
    // Too large: 413 before anything is built.
    let big = vec![0u8; 300 << 20];
    let r = client
        .stream_lines(
            http::Method::POST,
            "/v1/apps/hello/deploys",
            "application/gzip",
            big.into(),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .await;
    match r {
        Ok(r) => assert_eq!(r.status, 413, "{r:?}"),
        // The server may close before the whole upload is sent.
        Err(e) => assert!(e.to_string().contains("HTTP error"), "{e}"),
    }
}

const SPY_APP: &str = r#"
import os, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def attempt(f):
    try:
        f()
        return "allowed"
    except PermissionError:
        return "denied"
    except Exception as e:
        return "error " + type(e).__name__

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        path, pid = os.environ.get("TARGET_FILE", ""), int(os.environ.get("TARGET_PID", "0"))
        body = ("read=%s signal=%s uid=%d" % (
            attempt(lambda: open(path).read()),
            attempt(lambda: os.kill(pid, signal.SIGTERM)),
            os.getuid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer((os.environ["PIER_HOST"], int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_read_another_apps_files_or_signal_its_processes() {
    if !nix_is_root() {
        // Per-app users need root; CI runs as root, so this runs there.
        println!("not root: per-app users are off, nothing to check");
        return;
    }
    let p = Platform::start(&["127.0.0.2"]).await;
    p.create_and_deploy("victim", "hello-stdlib");
    p.balancer
        .wait_served(
            &Platform::host("victim"),
            |b| b.starts_with("hello from victim"),
            SERVED_WITHIN,
        )
        .await;
    let workdir = p.runners[0].workdir.clone().unwrap();
    let slug = std::fs::read_dir(workdir.join("slugs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("victim-")
        })
        .unwrap();
    let victim_pid = common::processes_under(&slug)[0];
    let spy = app_dir(&[("Procfile", "web: python3 spy.py\n"), ("spy.py", SPY_APP)]);
    p.pier(&["apps", "create", "spy"]).ok();
    p.pier(&[
        "config",
        "set",
        "spy",
        &format!("TARGET_FILE={}", slug.join("app.py").display()),
        &format!("TARGET_PID={victim_pid}"),
    ])
    .ok();
    p.deploy_dir("spy", spy.path());
    let (_, body) = pier_testkit::http_get(p.balancer.addr(), &Platform::host("spy"), "/")
        .await
        .unwrap();
    assert!(body.starts_with("read=denied signal=denied uid="), "{body}");
    let spy_uid: u32 = body.rsplit('=').next().unwrap().parse().unwrap();
    let victim_uid = uid_of(victim_pid);
    assert!(
        spy_uid >= 200_000 && victim_uid >= 200_000 && spy_uid != victim_uid,
        "{spy_uid} {victim_uid}"
    );
    // The victim still serves.
    let (status, _) = pier_testkit::http_get(p.balancer.addr(), &Platform::host("victim"), "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The runner said which limits are in force.
    let log = p.runners[0].log_text();
    let line = log
        .lines()
        .find(|l| l.contains("limits in force"))
        .unwrap_or_default();
    println!("{line}");
    assert!(line.contains("per-app Unix users"), "{log}");
    if std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        assert!(
            line.contains("cgroup v1") && line.contains("memory 512 MiB"),
            "{line}"
        );
        // The victim's processes are in their memory group, limited.
        let cg = std::fs::read_to_string(format!("/proc/{victim_pid}/cgroup")).unwrap();
        assert!(
            cg.lines()
                .any(|l| l.contains(":memory:") && l.contains("/pier/victim-web-1-")),
            "{cg}"
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn uid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

const PICKY_APP: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if self.path == "/ready" else 200
        body = ("picky %s" % os.environ.get("PIER_RELEASE")).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer((os.environ["PIER_HOST"], int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_health_check_that_fails_keeps_the_release_out_of_the_table() {
    let mut p = Platform::start(&[]).await;
    p.boot_timeout = "2".into();
    p.start_runner("127.0.0.2");
    let app = app_dir(&[("Procfile", "web: python3 app.py\n"), ("app.py", PICKY_APP)]);
    p.pier(&["apps", "create", "picky"]).ok();
    p.deploy_dir("picky", app.path());
    // v2 asks for GET /ready, which answers 500: never healthy, never routed, v1 serves.
    let out = p
        .pier(&["config", "set", "picky", "HEALTHCHECK_PATH=/ready"])
        .ok();
    assert!(out.stdout.contains("released v2"), "{out:?}");
    let start = Instant::now();
    loop {
        let rel = p.pier(&["releases", "picky"]).ok();
        if rel.stdout.contains("v2\tfailed") {
            assert!(rel.stdout.contains("GET /ready answered 500"), "{rel:?}");
            assert!(rel.stdout.contains("*v1\t"), "{rel:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{rel:?}\n{}",
            p.logs()
        );
        let (status, body) =
            pier_testkit::http_get(p.balancer.addr(), &Platform::host("picky"), "/")
                .await
                .unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "picky v1"),
            "only v1 is ever routed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A path that answers 200 is healthy.
    p.pier(&["config", "set", "picky", "HEALTHCHECK_PATH=/"])
        .ok();
    p.balancer
        .wait_served(&Platform::host("picky"), |b| b == "picky v3", SERVED_WITHIN)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_output_reaches_pier_logs_and_its_tail() {
    let p = Platform::start(&["127.0.0.2"]).await;
    p.create_and_deploy("hello", "hello-stdlib");
    p.pier(&["scale", "hello", "web=2"]).ok();
    common_wait(&p, "two up", |ps| {
        ps.lines().filter(|l| l.contains("\tup ")).count() == 2
    })
    .await;
    // Both instances' start lines are in the log, each marked with its instance.
    let start = Instant::now();
    loop {
        let out = p.pier(&["logs", "hello"]).ok();
        let web1 = out
            .stdout
            .lines()
            .any(|l| l.contains(" app[web.1]: listening on"));
        let web2 = out
            .stdout
            .lines()
            .any(|l| l.contains(" app[web.2]: listening on"));
        if web1 && web2 {
            break;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "{out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let only = p.pier(&["logs", "hello", "--ps", "web.2"]).ok();
    assert!(
        only.stdout.lines().all(|l| l.contains("app[web.2]")),
        "{only:?}"
    );
    // A tail sees a request's line soon after it is written.
    let mut tail = p
        .api
        .pier_command(
            Some(common::OPERATOR),
            &["logs", "hello", "--tail", "-n", "1"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let (status, _) =
        pier_testkit::http_get(p.balancer.addr(), &Platform::host("hello"), "/tail-probe")
            .await
            .unwrap();
    assert_eq!(status, 200);
    let seen = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the tail printed the request's line");
        if line.contains("GET /tail-probe") {
            break sent.elapsed();
        }
    };
    println!("request line seen by the tail {seen:?} after the request");
    let _ = tail.kill();
    let _ = tail.wait();

    // The balancer's router line for the same request, naming the instance that served it.
    let start = Instant::now();
    loop {
        let out = p.pier(&["logs", "hello", "--source", "router"]).ok();
        let probe = out
            .stdout
            .lines()
            .find(|l| l.contains("path=\"/tail-probe\""));
        if let Some(l) = probe {
            assert!(l.contains(" router["), "{l}");
            assert!(
                l.contains(" status=200 ") && l.contains(" instance=hello-web-"),
                "{l}"
            );
            break;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "{out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stats: the requests counted by the balancer, both instances' use reported by the runner.
    let start = Instant::now();
    loop {
        let out = p.pier(&["stats", "hello", "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let day = &v["requests"][2];
        let instances: Vec<&str> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["instance"].as_str())
            .collect();
        let both = instances.iter().any(|i| i.starts_with("web.1@"))
            && instances.iter().any(|i| i.starts_with("web.2@"));
        let series = v["series"].as_array().unwrap();
        let in_series: u64 = series.iter().filter_map(|p| p["requests"].as_u64()).sum();
        if day["requests"].as_u64() >= Some(1) && both && in_series >= 1 {
            assert_eq!(day["window"], "1d");
            // The live chart's buckets: 10 s apart, oldest first, the last one still filling.
            assert!(series.len() >= 12, "{v}");
            for w in series.windows(2) {
                assert_eq!(
                    w[1]["start_s"].as_u64().unwrap() - w[0]["start_s"].as_u64().unwrap(),
                    10,
                    "{v}"
                );
            }
            let last = series.last().unwrap()["seconds"].as_u64().unwrap();
            assert!((1..=10).contains(&last), "{v}");
            assert!(series.iter().any(|p| p["p99_ms"].as_f64().is_some()), "{v}");
            assert!(day["p50_ms"].as_f64().is_some(), "{v}");
            assert!(
                v["instances"][0]["windows"][0]["memory_bytes"].as_u64() > Some(1 << 20),
                "{v}"
            );
            break;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "{v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The balancer reports the table it serves: live and current.
    let start = Instant::now();
    loop {
        let out = p.pier(&["balancers"]).ok().stdout;
        if out
            .lines()
            .any(|l| l.contains("\tlive\t") && l.contains("(current)"))
        {
            assert!(out.starts_with("registry at v"), "{out}");
            break;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "{out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let table = p.pier(&["stats", "hello"]).ok().stdout;
    assert!(
        table.contains("=== hello requests") && table.contains("\n1d "),
        "{table}"
    );
    assert!(table.contains("web.1@"), "{table}");
}

const FLOOD_APP: &str = r#"
import os, socket, sys, threading, time
s = socket.socket(); s.bind((os.environ["PIER_HOST"], int(os.environ["PORT"]))); s.listen()
def flood():
    time.sleep(0.5)
    line = "x" * 99 + "\n"
    for _ in range(200_000):
        sys.stdout.write(line)
    sys.stdout.flush()
    print("after the flood", flush=True)
threading.Thread(target=flood, daemon=True).start()
while True:
    c, _ = s.accept(); c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_is_dropped_and_counted_not_waited_for() {
    let p = Platform::start(&["127.0.0.2"]).await;
    let app = app_dir(&[
        ("Procfile", "web: python3 flood.py\n"),
        ("flood.py", FLOOD_APP),
    ]);
    p.pier(&["apps", "create", "flood"]).ok();
    p.deploy_dir("flood", app.path());
    // The runner's count of dropped lines moves, and the app is not held up: it stays up.
    let start = Instant::now();
    loop {
        let r = p.pier(&["runners", "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let dropped = v["runners"][0]["log_lines_dropped"].as_u64().unwrap_or(0);
        if dropped > 0 {
            println!("log lines dropped under a flood of 200,000: {dropped}");
            break;
        }
        assert!(start.elapsed() < SERVED_WITHIN, "no drop counted: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ps = p.pier(&["ps", "flood"]).ok();
    assert!(ps.stdout.contains("\tup "), "{ps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_stopped_on_purpose_hands_its_instances_over_without_a_failed_request() {
    let mut p = Platform::start(&[]).await;
    p.handover = "30".into();
    p.start_runner("127.0.0.2");
    p.start_runner("127.0.0.3");
    p.create_and_deploy("hello", "hello-stdlib");
    let ps = common_wait(&p, "web.1 up", |ps| ps.contains("\tup ")).await;
    let leaving = if ps.contains("r-127.0.0.2") { 0 } else { 1 };
    let stop = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(load(
        p.balancer.addr(),
        Platform::host("hello"),
        4,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: the runner says it is leaving, waits for web.1 to be up elsewhere, then drains.
    let pid = p.runners[leaving].child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let start = Instant::now();
    while p.runners[leaving].child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", p.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = if leaving == 0 {
        "r-127.0.0.3"
    } else {
        "r-127.0.0.2"
    };
    common_wait(&p, "web.1 up on the other runner", |ps| {
        ps.lines().count() == 1 && ps.contains("\tup ") && ps.contains(other)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let count = load_task.await.unwrap();
    println!(
        "runner stopped on purpose, {:?} to hand over; load: {count:?}",
        start.elapsed()
    );
    assert!(count.ok > 50, "{count:?}");
    assert_eq!(count.failed, 0, "{count:?}\n{}", p.logs());
    assert!(p.runners[leaving]
        .log_text()
        .contains("handing its instances over"));
}

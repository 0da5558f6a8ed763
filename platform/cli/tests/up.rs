//! `pier up` as a newcomer runs it: the whole platform from one command, the demo app served at
//! the printed URL, the CLI finding the platform by itself, and Ctrl-C stopping everything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pier_up_runs_the_platform_and_serves_the_demo() {
    // pier up runs the balancer binary next to its own.
    pier_testkit::workspace_binary("pier-balancer", "pier-balancer");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (http, api, admin) = (free_port(), free_port(), free_port());
    let mut up = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["up", "--http", &format!("127.0.0.1:{http}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .current_dir(dir.path())
        .env_remove("PIER_TOKEN")
        .env_remove("PIER_API_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("pier up printed nothing for 60 s");
        seen.push(line.clone());
        if let Some(u) = line.strip_prefix("The demo app answers at ") {
            break u.to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{seen:#?}");
    };
    assert_eq!(url, format!("http://hello.localhost:{http}/"));
    let (status, body) = pier_testkit::http_get(
        ([127, 0, 0, 1], http).into(),
        &format!("hello.localhost:{http}"),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from hello v1 web.1"), "{body}");
    // The CLI, run in that directory, finds the API and the operator token by itself.
    let out = pier_testkit::Output::of({
        let mut c = Command::new(env!("CARGO_BIN_EXE_pier"));
        c.args(["ps", "hello"])
            .current_dir(dir.path())
            .env_remove("PIER_TOKEN")
            .env_remove("PIER_API_URL");
        c
    })
    .ok();
    assert!(out.stdout.starts_with("web.1\tup"), "{out:?}");
    let token = std::fs::metadata(dir.path().join(".pier/operator-token")).unwrap();
    assert_eq!(
        token.permissions().mode() & 0o077,
        0,
        "the token file is private"
    );
    // Ctrl-C: everything stops, the demo's instance too.
    let workdir = dir.path().join(".pier");
    assert!(!common::processes_under(&workdir).is_empty());
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = up.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "pier up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        common::processes_under(&workdir).is_empty(),
        "an instance outlived pier up"
    );
    assert!(
        pier_testkit::http_get(([127, 0, 0, 1], http).into(), "x", "/")
            .await
            .is_err(),
        "balancer still up"
    );
}

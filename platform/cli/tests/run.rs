//! `pier run` end to end: the API, a coordinator, a runner and the CLI as processes on one
//! private redis-server, `hello-stdlib` deployed. One-off commands with plain pipes (stdin,
//! stdout, stderr, exit status, large streams), on a pseudo-terminal (size and resize, Ctrl-C,
//! Ctrl-D, echo, the client's terminal restored), detached (`pier ps`, `pier logs --ps`,
//! `pier stop`), a client that vanishes (nothing left running), limits and other owners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Platform, OPERATOR};
use pier_testkit::pty::PtyProcess;
use pier_testkit::Output;

/// How long a run may take to be placed, started and attached on this busy machine.
const RUN_WITHIN: Duration = Duration::from_secs(60);

/// `pier ARGS` as `token`, with `input` on stdin.
fn pier_with_input(p: &Platform, token: &str, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = p.api.pier_command(Some(token), args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Processes on this machine whose command line contains `needle`.
fn processes_running(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                found.push((pid, line));
            }
        }
    }
    found
}

/// Waits until `check` holds, or panics with `what` and the platform's logs.
fn eventually(p: &Platform, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < end,
            "{what} not within {within:?}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `run.N` a detached `pier run` announced.
fn run_name(out: &Output) -> String {
    out.stdout
        .split_whitespace()
        .find(|w| w.starts_with("run."))
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.'))
        .unwrap_or_else(|| panic!("no run.N in {out:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_commands_with_pipes_detached_and_limited() {
    let p = Platform::start(&["127.0.0.2"]).await;
    p.create_and_deploy("tool", "hello-stdlib").ok();
    p.pier(&["config", "set", "tool", "GREETING=from-config"])
        .ok();
    let owner = p.owner_token("tool");

    // Piped: stdin reaches the command, its stdout comes back alone, status 0.
    let out = pier_with_input(
        &p,
        &owner,
        &["run", "tool", "--", "python3"],
        b"print(6*7)\n",
    );
    assert_eq!(out.code, 0, "{out:?}\n{}", p.logs());
    assert_eq!(out.stdout, "42\n", "{out:?}");
    assert!(out.stderr.contains("run.1"), "{out:?}");

    // The app's config vars, its release's files and working directory, and stderr apart.
    let out = pier_with_input(
        &p,
        &owner,
        &[
            "run",
            "tool",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; ls Procfile; echo to-stderr >&2",
        ],
        b"",
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "from-config\nProcfile\n", "{out:?}");
    assert!(out.stderr.contains("to-stderr"), "{out:?}");

    // The exit status is the CLI's; one argument is a shell command line.
    let out = pier_with_input(&p, &owner, &["run", "tool", "--", "exit 3"], b"");
    assert_eq!(out.code, 3, "{out:?}");
    let out = pier_with_input(
        &p,
        &owner,
        &["run", "tool", "--", "sh", "-c", "kill -TERM $$"],
        b"",
    );
    assert_eq!(out.code, 128 + 15, "killed by SIGTERM: {out:?}");

    // Streams larger than every queue on the way, both ways, end to end.
    let big = vec![b'x'; 8 << 20];
    let out = pier_with_input(&p, &owner, &["run", "tool", "--", "wc", "-c"], &big);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), (8 << 20).to_string(), "{out:?}");
    let out = pier_with_input(
        &p,
        &owner,
        &["run", "tool", "--", "head -c 6000000 /dev/zero"],
        b"",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), 6_000_000);

    // A client that goes away takes its command and the command's children with it.
    let marker = "sleep 3001";
    // The sleeps' own command lines say 3001; the client's says $((3000+1)).
    let mut cmd = p.api.pier_command(
        Some(&owner),
        &[
            "run",
            "tool",
            "--",
            "sh",
            "-c",
            "echo started; sleep $((3000+1)) & sleep $((3000+1))",
        ],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut client = cmd.spawn().unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    eventually(&p, "both sleeps running", RUN_WITHIN, || {
        processes_running(marker).len() >= 2
    });
    client.kill().unwrap();
    client.wait().unwrap();
    eventually(
        &p,
        "the vanished client's processes ended",
        RUN_WITHIN,
        || processes_running(marker).is_empty(),
    );

    // Detached: listed by `pier ps`, its output in the app's logs, ended by `pier stop`.
    let out = p.api.pier(
        Some(&owner),
        &[
            "run",
            "--detach",
            "tool",
            "--",
            "echo detached-hello; exec sleep $((3000+2))",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let name = run_name(&out);
    eventually(&p, "the detached run in pier ps", RUN_WITHIN, || {
        let ps = p.api.pier(Some(&owner), &["ps", "tool"]);
        ps.stdout
            .lines()
            .any(|l| l.contains(&name) && l.contains("up"))
    });
    eventually(
        &p,
        "the detached run's output in the logs",
        RUN_WITHIN,
        || {
            let logs = p.api.pier(Some(&owner), &["logs", "tool", "--ps", &name]);
            logs.stdout.contains("detached-hello") && logs.stdout.contains("Starting process")
        },
    );
    let runs = p.api.pier(Some(&owner), &["runs", "tool"]).ok();
    assert!(
        runs.stdout.contains(&name) && runs.stdout.contains("detached"),
        "{runs:?}"
    );
    assert!(runs.stdout.contains("exec sleep $((3000+2))"), "{runs:?}");
    let out = p.api.pier(Some(&owner), &["stop", "tool", &name]);
    assert_eq!(out.code, 0, "{out:?}");
    eventually(&p, "the stopped run gone", RUN_WITHIN, || {
        processes_running("sleep 3002").is_empty()
    });
    eventually(&p, "the stopped run ended in pier runs", RUN_WITHIN, || {
        let runs = p.api.pier(Some(&owner), &["runs", "tool"]);
        runs.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) && l.contains("stopped"))
    });

    // Another app's owner is refused, and so is someone without a token.
    p.pier(&["apps", "create", "other"]).ok();
    let stranger = p.owner_token("other");
    let out = p.api.pier(Some(&stranger), &["run", "tool", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("403") || out.stderr.contains("not allowed"),
        "{out:?}"
    );
    let out = p.api.pier(None, &["run", "tool", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");

    // At most five at once per app: the sixth is refused with the reason, nothing placed.
    let mut names = Vec::new();
    for i in 0..5 {
        let out = p.api.pier(
            Some(&owner),
            &["run", "-d", "tool", "--", &format!("sleep 310{i}")],
        );
        assert_eq!(
            out.code,
            0,
            "{out:?}\n{:?}\n{}",
            p.pier(&["runs", "tool"]),
            p.logs()
        );
        names.push(run_name(&out));
    }
    let out = p
        .api
        .pier(Some(&owner), &["run", "-d", "tool", "--", "sleep 3199"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("5"), "the limit is named: {out:?}");
    for n in &names {
        p.api.pier(Some(&owner), &["stop", "tool", n]).ok();
    }
    eventually(&p, "every limited run ended", RUN_WITHIN, || {
        processes_running("sleep 310").is_empty()
    });
    eventually(
        &p,
        "every limited run recorded as ended",
        RUN_WITHIN,
        || {
            let runs = p.api.pier(Some(&owner), &["runs", "tool"]);
            !runs.stdout.lines().any(|l| {
                l.contains(" running ") || l.contains(" pending ") || l.contains(" stopping ")
            })
        },
    );
    // Room again once they ended.
    let out = pier_with_input(&p, &owner, &["run", "tool", "--", "echo again"], b"");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "again\n");
    // Every run is recorded with who started it and its command line.
    let runs = p.pier(&["runs", "tool"]).ok();
    assert!(runs.stdout.contains("echo again"), "{runs:?}");
    assert!(runs.stdout.contains("by "), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_commands_on_a_terminal() {
    let p = Platform::start(&["127.0.0.2"]).await;
    p.create_and_deploy("term", "hello-stdlib").ok();
    let pier = |args: &[&str]| p.api.pier_command(Some(OPERATOR), args);

    // The terminal's size reaches the process; the client's terminal is restored after.
    let mut t = PtyProcess::spawn(&pier(&["run", "term", "--", "stty size; tty"]), 100, 30);
    let status = t.wait(RUN_WITHIN);
    let out = t.output();
    assert!(status.success(), "{out}\n{}", p.logs());
    assert!(out.contains("30 100"), "{out}");
    assert!(
        out.contains("/dev/pts/"),
        "the command has a terminal: {out}"
    );
    assert!(t.is_cooked(), "raw mode left on: {out}");

    // Size changes follow the window; Ctrl-C reaches the process as SIGINT.
    let script = "import os, signal, time\n\
        signal.signal(signal.SIGWINCH, lambda *a: print('size', *os.get_terminal_size(), flush=True))\n\
        print('ready', flush=True)\n\
        time.sleep(120)\n";
    let mut t = PtyProcess::spawn(
        &pier(&["run", "term", "--", "python3", "-c", script]),
        80,
        24,
    );
    // (The command line is shown too: its own output ends in a line end.)
    t.wait_for("ready\r\n", RUN_WITHIN);
    t.resize(132, 43);
    t.wait_for("size 132 43", Duration::from_secs(20));
    t.type_bytes(b"\x03");
    let status = t.wait(Duration::from_secs(30));
    let out = t.output();
    assert!(out.contains("KeyboardInterrupt"), "{out}");
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(t.is_cooked(), "raw mode left on: {out}");

    // An interactive interpreter: what is typed is echoed, lines are read, Ctrl-D ends it.
    let mut t = PtyProcess::spawn(&pier(&["run", "term", "--", "python3", "-q"]), 80, 24);
    t.wait_for(">>> ", RUN_WITHIN);
    t.type_bytes(b"print(6*7)\r");
    let out = t.wait_for("42", Duration::from_secs(20));
    assert!(out.contains("print(6*7)"), "typed text is echoed: {out}");
    t.wait_for("42\r\n>>> ", Duration::from_secs(20));
    t.type_bytes(b"\x04");
    let status = t.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", t.output());

    // A shell: `stty size` follows the window, Ctrl-C stops a `sleep` and not the shell, and
    // the shell's exit status is the client's.
    let mut t = PtyProcess::spawn(&pier(&["run", "term", "--", "sh"]), 100, 30);
    t.wait_for("up, run.", RUN_WITHIN);
    t.type_bytes(b"echo mark-$((40+1)); stty size\r");
    t.wait_for("mark-41\r\n30 100\r\n", Duration::from_secs(20));
    t.resize(132, 43);
    // (The resize travels to the runner as a message of its own: ask until it has arrived.)
    let end = Instant::now() + Duration::from_secs(20);
    let mut asked = 0;
    while !t.output().contains("43 132\r\n") {
        assert!(Instant::now() < end, "resize not seen: {}", t.output());
        asked += 1;
        t.type_bytes(format!("echo ask-$(({asked}+1000)); stty size\r").as_bytes());
        t.wait_for(
            &format!("ask-{}\r\n", asked + 1000),
            Duration::from_secs(20),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t.type_bytes(b"sleep 300; echo after-$((1+1))\r");
    std::thread::sleep(Duration::from_millis(500));
    t.type_bytes(b"\x03");
    t.type_bytes(b"echo alive-$((2+2))\r");
    t.wait_for("alive-4\r\n", Duration::from_secs(20));
    assert!(!t.output().contains("after-2"), "{}", t.output());
    t.type_bytes(b"exit 7\r");
    let status = t.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(7), "{}", t.output());
    assert!(t.is_cooked());

    // Without a terminal on the client's side, plain pipes even from a terminal (-T).
    let mut t = PtyProcess::spawn(&pier(&["run", "-T", "term", "--", "tty"]), 80, 24);
    let status = t.wait(RUN_WITHIN);
    assert!(t.output().contains("not a tty"), "{}", t.output());
    assert_eq!(status.code(), Some(1));

    // Killing the client's terminal session ends the command (hangup).
    let mut t = PtyProcess::spawn(
        &pier(&["run", "term", "--", "echo ready; exec sleep $((3000+3))"]),
        80,
        24,
    );
    // (The command line is shown too: its own output ends in a line end.)
    t.wait_for("ready\r\n", RUN_WITHIN);
    assert_eq!(processes_running("sleep 3003").len(), 1);
    let pid = t.id();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    t.wait(Duration::from_secs(20));
    eventually(&p, "the hung-up run's process ended", RUN_WITHIN, || {
        processes_running("sleep 3003").is_empty()
    });
}

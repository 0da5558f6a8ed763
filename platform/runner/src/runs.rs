//! One one-off process (`pier run`) on this runner: prepared like an instance (same release
//! files, config vars, Unix user and limits), then started once, never restarted, never
//! routed. Attached, it waits for its client (see [`crate::exec`]) and relays the client's
//! terminal or pipes; detached, its output goes to the app's logs as `run.N`. It ends when its
//! command exits, when its client goes away (hang-up, then SIGKILL to all it left), when it is
//! stopped (`pier stop`), or at its deadline; how it ended is written to its record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use pier_model::platform::{InstanceSpec, InstanceState, InstanceStatus, RunExit, RunSpec};
use pier_model::runproto::{self, Status};
use pier_store::now_ms;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::exec::Ws;
use crate::process::{self, Group, Io, Launch};
use crate::pty::Master;
use crate::supervisor::{self, Ctx, Prep, Prepared};

/// An attached run whose client has not come within this ends.
const ATTACH_WAIT: Duration = Duration::from_secs(60);
/// After a hang-up (the client went away), the process gets this long before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
/// Output still coming after the process exited (its children's) is read for this long.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Runs the one-off `spec` until it ends or `stop` turns true, then records how it ended.
pub async fn supervise_run(
    ctx: Arc<Ctx>,
    spec: InstanceSpec,
    mut stop: watch::Receiver<bool>,
    report: watch::Sender<InstanceStatus>,
) {
    let Some(run) = spec.run.clone() else {
        return;
    };
    let mut status = report.borrow().clone();
    let mut set = |state: InstanceState, started: bool| {
        status.state = state;
        if started {
            status.started_ms = now_ms();
        }
        status.updated_ms = now_ms();
        let _ = report.send(status.clone());
    };
    let exit = run_it(&ctx, &spec, &run, &mut stop, &mut set).await;
    set(InstanceState::Stopping, false);
    tracing::info!(app = %run.app, run = run.number, reason = %exit.reason, "one-off process ended");
    ctx.logs.push(
        &run.app,
        &spec.name(),
        format!("Process ended: {}", exit.reason),
    );
    for _ in 0..20 {
        match ctx.store.end_run(&run.app, run.number, &exit).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(app = %run.app, run = run.number, error = %e, "cannot record how the run ended")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ended(reason: impl Into<String>) -> RunExit {
    RunExit {
        ended_ms: now_ms(),
        code: None,
        signal: None,
        reason: reason.into(),
    }
}

fn exited(status: std::io::Result<std::process::ExitStatus>, why: Option<&str>) -> RunExit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => {
            let words = supervisor::describe_exit(s);
            RunExit {
                ended_ms: now_ms(),
                code: s.code(),
                signal: s.signal(),
                reason: match why {
                    Some(w) => format!("{w} ({words})"),
                    None => words,
                },
            }
        }
        Err(e) => ended(format!("cannot wait for it: {e}")),
    }
}

async fn run_it(
    ctx: &Arc<Ctx>,
    spec: &InstanceSpec,
    run: &RunSpec,
    stop: &mut watch::Receiver<bool>,
    set: &mut impl FnMut(InstanceState, bool),
) -> RunExit {
    // Expected before anything else, so a client that comes early finds it.
    let mut expected = run.attach.then(|| ctx.attach.expect(&spec.id, &run.secret));
    loop {
        match ctx.store.start_run(&run.app, run.number, &ctx.cfg.id).await {
            Ok(true) => break,
            Ok(false) => return ended("its runner restarted while it ran"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the run started yet");
                if supervisor::sleep_or_stop(Duration::from_secs(1), stop).await {
                    return ended("stopped before it started");
                }
            }
        }
    }
    let prepared = loop {
        match supervisor::prepare(ctx, spec).await {
            Ok(p) => break p,
            Err(Prep::Retry(why)) => {
                tracing::warn!(instance = %spec.id, reason = %why, "cannot prepare yet");
                if supervisor::sleep_or_stop(Duration::from_secs(1), stop).await {
                    return ended("stopped before it started");
                }
            }
            Err(Prep::Fail(why)) => return ended(format!("cannot start: {why}")),
        }
    };
    set(InstanceState::Starting, false);
    let ws = match expected.as_mut() {
        None => None,
        Some(exp) => {
            tokio::select! {
                c = &mut exp.conn => match c {
                    Ok(ws) => Some(ws),
                    Err(_) => return ended("no client attached"),
                },
                _ = tokio::time::sleep(ATTACH_WAIT) => {
                    return ended(format!("no client attached within {}s", ATTACH_WAIT.as_secs()));
                }
                _ = stop.changed() => return ended("stopped before it started"),
            }
        }
    };
    drop(expected);
    let group = match ctx.cgroups.create(&spec.id, &ctx.cfg.limits) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(instance = %spec.id, error = %e, "cgroup not made: running without its limits");
            None
        }
    };
    let exit = start_and_watch(ctx, spec, run, &prepared, group.as_ref(), ws, stop, set).await;
    if let Some(g) = &group {
        // Nothing it started outlives it, whatever session or group it moved to.
        g.kill_all();
        tokio::time::sleep(Duration::from_millis(100)).await;
        g.remove();
    }
    exit
}

#[allow(clippy::too_many_arguments)]
async fn start_and_watch(
    ctx: &Arc<Ctx>,
    spec: &InstanceSpec,
    run: &RunSpec,
    p: &Prepared,
    group: Option<&Group>,
    mut ws: Option<Ws>,
    stop: &mut watch::Receiver<bool>,
    set: &mut impl FnMut(InstanceState, bool),
) -> RunExit {
    let cfg = &ctx.cfg;
    let port = match supervisor::pick_port(cfg.address) {
        Ok(p) => p,
        Err(e) => return refuse(ws, ended(format!("cannot start: {e}"))).await,
    };
    let mut env = supervisor::instance_env(cfg, spec, p, port);
    let (io, master) = if run.tty {
        match crate::pty::open(run.cols, run.rows, p.uid) {
            Ok((m, slave)) => (Io::Tty(slave), Some(Arc::new(m))),
            Err(e) => {
                return refuse(ws, ended(format!("cannot open a terminal: {e}"))).await;
            }
        }
    } else if ws.is_some() {
        (Io::Pipes, None)
    } else {
        (Io::Null, None)
    };
    if run.tty {
        let term = if run.term.is_empty() {
            "xterm"
        } else {
            &run.term
        };
        env.push(("TERM".into(), term.to_string()));
    }
    let started = process::start(Launch {
        command: &p.command,
        cwd: &p.slug_dir,
        env,
        uid: p.uid,
        limits: &cfg.limits,
        group,
        io,
    })
    .await;
    let mut child = match started {
        Ok(c) => c,
        Err(e) => return refuse(ws, ended(format!("cannot start: {e}"))).await,
    };
    let pid = child.id().unwrap_or(0);
    // One-off processes are billed like instances, as process type `run`.
    let _metering = ctx
        .ledger
        .start(&run.app, "run", &crate::usage::size_label(&cfg.limits), pid);
    if let Some(m) = &master {
        // Released: the wrapper turns echo on and runs the command.
        if let Err(e) = m.write_all(b"go\n").await {
            supervisor::terminate(&mut child, pid, HANGUP_GRACE).await;
            return refuse(ws, ended(format!("cannot start: {e}"))).await;
        }
    }
    set(InstanceState::Up, true);
    if let Some(ws) = ws.as_mut() {
        let up = Status::State {
            state: "up".into(),
            runner: Some(cfg.id.clone()),
        };
        let _ = ws.send(Message::Binary(runproto::status(&up))).await;
    }
    ctx.logs.push(
        &run.app,
        &spec.name(),
        format!(
            "Starting process with command `{}` by {}",
            run.command, run.by
        ),
    );
    tracing::info!(app = %run.app, run = run.number, pid, tty = run.tty, attached = ws.is_some(), "one-off process started");
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(run.deadline_ms.saturating_sub(now_ms()));
    match ws {
        None => {
            let kept = Arc::new(Mutex::new(VecDeque::new()));
            supervisor::capture_output(&mut child, &kept, spec, ctx);
            tokio::select! {
                s = child.wait() => exited(s, None),
                _ = stop.changed() => {
                    supervisor::terminate(&mut child, pid, cfg.grace).await;
                    exited(child.wait().await, Some("stopped"))
                }
                _ = tokio::time::sleep_until(deadline) => {
                    supervisor::terminate(&mut child, pid, cfg.grace).await;
                    exited(child.wait().await, Some("its lifetime ended"))
                }
            }
        }
        Some(ws) => {
            let relay = Relay::start(ws, &mut child, master);
            relay.watch(&mut child, pid, stop, deadline, ctx, run).await
        }
    }
}

/// Tells a waiting client why its run could not start, and passes the exit on.
async fn refuse(ws: Option<Ws>, exit: RunExit) -> RunExit {
    if let Some(mut ws) = ws {
        let _ = ws
            .send(Message::Binary(runproto::status(&Status::Error(
                exit.reason.clone(),
            ))))
            .await;
        let _ = ws.close(None).await;
    }
    exit
}

/// The two directions between a client and its process.
struct Relay {
    /// Messages to the client, in order (a bounded queue: output waits while the client is slow).
    out: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<()>,
    /// Output readers (the terminal's master, or stdout and stderr).
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Ends when the client goes away (its stream ended or broke).
    input: tokio::task::JoinHandle<()>,
}

impl Relay {
    fn start(ws: Ws, child: &mut Child, master: Option<Arc<Master>>) -> Relay {
        let (mut sink, stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(Message::Binary(m)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let mut readers = Vec::new();
        match &master {
            Some(m) => {
                let (m, out) = (m.clone(), out.clone());
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match m.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out
                                    .send(runproto::frame(runproto::STDOUT, &buf[..n]))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            None => {
                if let Some(o) = child.stdout.take() {
                    readers.push(pump(o, runproto::STDOUT, out.clone()));
                }
                if let Some(e) = child.stderr.take() {
                    readers.push(pump(e, runproto::STDERR, out.clone()));
                }
            }
        }
        let stdin = child.stdin.take();
        let input = tokio::spawn(input(stream, stdin, master));
        Relay {
            out,
            writer,
            readers,
            input,
        }
    }

    /// Waits for the end: the process exits, the client goes away, a stop, or the deadline.
    async fn watch(
        mut self,
        child: &mut Child,
        pid: u32,
        stop: &mut watch::Receiver<bool>,
        deadline: tokio::time::Instant,
        ctx: &Ctx,
        run: &RunSpec,
    ) -> RunExit {
        let grace = ctx.cfg.grace;
        let exit = tokio::select! {
            s = child.wait() => exited(s, None),
            _ = &mut self.input => {
                // A hang-up, as a terminal that closes gives it; then whatever is left goes.
                process::signal_group(pid, Signal::SIGHUP);
                supervisor::terminate(child, pid, HANGUP_GRACE).await;
                exited(child.wait().await, Some("client went away"))
            }
            _ = stop.changed() => {
                supervisor::terminate(child, pid, grace).await;
                exited(child.wait().await, Some("stopped"))
            }
            _ = tokio::time::sleep_until(deadline) => {
                supervisor::terminate(child, pid, grace).await;
                exited(child.wait().await, Some("its lifetime ended"))
            }
        };
        // What its children still write comes through, for a moment; then they go.
        let readers = futures_util::future::join_all(self.readers.iter_mut());
        if tokio::time::timeout(OUTPUT_AFTER_EXIT, readers)
            .await
            .is_err()
        {
            process::signal_group(pid, Signal::SIGKILL);
            for r in &self.readers {
                r.abort();
            }
        }
        self.input.abort();
        // Recorded before the client hears of it, so what the client does next (`pier runs`,
        // another run at the limit) sees it ended. (The caller records it again if this failed.)
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.store.end_run(&run.app, run.number, &exit),
        )
        .await;
        let _ = self
            .out
            .send(runproto::status(&Status::Exit(exit.clone())))
            .await;
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        self.writer.abort();
        exit
    }
}

/// Reads `r` into messages on `channel`.
fn pump<R: AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    channel: u8,
    out: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(runproto::frame(channel, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// The client's messages to the process, until the client goes away. Each is written before
/// the next is read: a process that does not read holds its client back.
async fn input(
    mut stream: futures_util::stream::SplitStream<Ws>,
    mut stdin: Option<ChildStdin>,
    master: Option<Arc<Master>>,
) {
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            runproto::STDIN => {
                let written = match (&master, stdin.as_mut()) {
                    (Some(m), _) => m.write_all(payload).await,
                    (None, Some(s)) => s.write_all(payload).await,
                    (None, None) => Ok(()),
                };
                if written.is_err() {
                    // It closed its input; the client may still be reading its output.
                    stdin = None;
                }
            }
            runproto::RESIZE => {
                if let (Some(m), Some((cols, rows))) = (&master, runproto::parse_resize(payload)) {
                    let _ = m.resize(cols, rows);
                }
            }
            runproto::EOF => stdin = None,
            _ => {}
        }
    }
}

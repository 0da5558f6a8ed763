//! Starting an instance's process: its user, its limits (cgroups v1 or v2, rlimits), its
//! environment; signalling its process group; reading its CPU time and memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::config::Limits;

/// Which cgroup hierarchy this machine has, found once at start.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// cgroup v1: one directory per controller under which the runner makes its groups (the
    /// runner's own group, so limits nest inside whatever limits the runner).
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// cgroup v2: the runner's own group's directory.
    V2 {
        base: PathBuf,
    },
    None,
}

impl Cgroups {
    /// Finds the hierarchy and the runner's place in it. Nothing is usable unless root.
    pub fn detect() -> Cgroups {
        if !nix::unistd::geteuid().is_root() {
            return Cgroups::None;
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .trim_start_matches('/');
            return Cgroups::V2 {
                base: root.join(path).join("pier"),
            };
        }
        let place = |controller: &str| -> Option<PathBuf> {
            let dir = root.join(controller);
            if !dir.join("cgroup.procs").exists() {
                return None;
            }
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names
                    .split(',')
                    .any(|n| n == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })?;
            Some(dir.join(path).join("pier"))
        };
        let v1 = Cgroups::V1 {
            memory: place("memory"),
            cpu: place("cpu"),
            pids: place("pids"),
        };
        match &v1 {
            Cgroups::V1 {
                memory: None,
                cpu: None,
                pids: None,
            } => Cgroups::None,
            _ => v1,
        }
    }

    /// The limits in force, in words, for the runner's start-up log line.
    pub fn describe(&self, limits: &Limits, isolate: bool) -> String {
        let mut parts = Vec::new();
        parts.push(if isolate {
            "per-app Unix users".to_string()
        } else {
            "instances run as the runner's user".to_string()
        });
        parts.push(format!("open files {}", limits.nofile));
        let (mem, cpu, pids, kind) = match self {
            Cgroups::V1 { memory, cpu, pids } => {
                (memory.is_some(), cpu.is_some(), pids.is_some(), "cgroup v1")
            }
            Cgroups::V2 { .. } => (true, true, true, "cgroup v2"),
            Cgroups::None => (
                false,
                false,
                false,
                "no cgroups (not root, or none mounted)",
            ),
        };
        parts.push(kind.to_string());
        if let (true, Some(m)) = (mem, limits.memory_mib) {
            parts.push(format!("memory {m} MiB"));
        }
        if let (true, Some(c)) = (cpu, limits.cpus) {
            parts.push(format!("cpu {c} cores"));
        }
        if let (true, Some(p)) = (pids, limits.pids) {
            parts.push(format!("pids {p}"));
        }
        parts.join(", ")
    }

    /// Makes the group of instance `id` with `limits`; `None` when there are no cgroups.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Option<Group>, String> {
        let write = |dir: &Path, file: &str, value: String| -> Result<(), String> {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("{}/{file} = {value}: {e}", dir.display()))
        };
        let mut dirs = Vec::new();
        match self {
            Cgroups::None => return Ok(None),
            Cgroups::V1 { memory, cpu, pids } => {
                if let (Some(base), Some(mib)) = (memory, limits.memory_mib) {
                    let d = make_dir(base, id)?;
                    write(&d, "memory.limit_in_bytes", (mib << 20).to_string())?;
                    dirs.push(d);
                }
                if let (Some(base), Some(cores)) = (cpu, limits.cpus) {
                    let d = make_dir(base, id)?;
                    write(&d, "cpu.cfs_period_us", "100000".into())?;
                    write(
                        &d,
                        "cpu.cfs_quota_us",
                        ((cores * 100_000.0) as u64).max(1000).to_string(),
                    )?;
                    dirs.push(d);
                }
                if let (Some(base), Some(n)) = (pids, limits.pids) {
                    let d = make_dir(base, id)?;
                    write(&d, "pids.max", n.to_string())?;
                    dirs.push(d);
                }
            }
            Cgroups::V2 { base } => {
                std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
                // Controllers must be handed down to the runner's subtree first.
                if let Some(parent) = base.parent() {
                    let _ =
                        std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
                }
                let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu +pids");
                let d = make_dir(base, id)?;
                if let Some(mib) = limits.memory_mib {
                    write(&d, "memory.max", (mib << 20).to_string())?;
                }
                if let Some(cores) = limits.cpus {
                    write(
                        &d,
                        "cpu.max",
                        format!("{} 100000", ((cores * 100_000.0) as u64).max(1000)),
                    )?;
                }
                if let Some(n) = limits.pids {
                    write(&d, "pids.max", n.to_string())?;
                }
                dirs.push(d);
            }
        }
        Ok(Some(Group { dirs }))
    }
}

fn make_dir(base: &Path, id: &str) -> Result<PathBuf, String> {
    let d = base.join(id);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// One instance's cgroup (a directory per controller on v1, one on v2).
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
}

impl Group {
    fn add(&self, pid: u32) -> Result<(), String> {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())
                .map_err(|e| format!("{}/cgroup.procs: {e}", d.display()))?;
        }
        Ok(())
    }

    /// Kills every process still in the group (SIGKILL), whatever its process group or
    /// session: what a one-off left behind when its client went away.
    pub fn kill_all(&self) {
        for d in &self.dirs {
            let Ok(pids) = std::fs::read_to_string(d.join("cgroup.procs")) else {
                continue;
            };
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Removes the group's directories (once its processes are gone).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// What to start.
pub struct Launch<'a> {
    /// The Procfile command (run by `/bin/sh -c`, so `$PORT` expands).
    pub command: &'a str,
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    /// The app's uid (and gid), when instances run under per-app users.
    pub uid: Option<u32>,
    pub limits: &'a Limits,
    pub group: Option<&'a Group>,
    pub io: Io,
}

/// What the process's stdin, stdout and stderr are.
pub enum Io {
    /// stdin `/dev/null`, stdout and stderr piped (instances, detached one-offs).
    Null,
    /// All three piped: an attached one-off without a terminal.
    Pipes,
    /// The slave side of a pseudo-terminal, which becomes the process's controlling terminal
    /// (in a session of its own). The caller releases the process by writing a line to the
    /// terminal's master once [`start`] returns.
    Tty(std::fs::File),
}

/// Starts the process in a process group of its own, stdout and stderr piped. It waits, before
/// running the command, until it has been put in its cgroup, so no child it forks escapes its
/// limits.
pub async fn start(l: Launch<'_>) -> Result<Child, String> {
    let mut ulimits = format!(
        "ulimit -n {n} 2>/dev/null || echo 'pier: could not set open files to {n}' >&2; ",
        n = l.limits.nofile
    );
    if let (Some(_), None, Some(p)) = (l.uid, l.group, l.limits.pids) {
        // Without a pids cgroup, the per-user process limit stands in (per app, as the app has
        // its own user).
        ulimits.push_str(&format!("ulimit -u {p} 2>/dev/null; "));
    }
    let (stdin_after, tty) = match &l.io {
        Io::Null => (" </dev/null", false),
        Io::Pipes => ("", false),
        // Echo is off until the process is released (so the release line is not shown).
        Io::Tty(_) => ("", true),
    };
    let echo = if tty { "stty echo 2>/dev/null; " } else { "" };
    let wrapper = format!(
        "read -r _ || exit 112; {echo}{ulimits}exec /bin/sh -c \"$PIER_COMMAND\"{stdin_after}"
    );
    let mut cmd = match &l.io {
        Io::Tty(slave) => {
            // setsid(1) makes a session of its own, the terminal its controlling terminal (-c),
            // then runs the wrapper: the process leads its own process group, as below.
            let clone = |f: &std::fs::File| {
                f.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| format!("cannot share the terminal: {e}"))
            };
            let setsid = if Path::new("/usr/bin/setsid").exists() {
                "/usr/bin/setsid"
            } else {
                "setsid"
            };
            let mut cmd = Command::new(setsid);
            cmd.args(["-c", "/bin/sh", "-c"])
                .arg(wrapper)
                .stdin(clone(slave)?)
                .stdout(clone(slave)?)
                .stderr(clone(slave)?);
            cmd
        }
        Io::Null | Io::Pipes => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(wrapper)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            cmd
        }
    };
    cmd.current_dir(l.cwd)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PIER_COMMAND", l.command)
        .kill_on_drop(true);
    if let Some(uid) = l.uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let pid = child.id().ok_or("the process exited at once")?;
    if let Some(g) = l.group {
        if let Err(e) = g.add(pid) {
            let _ = child.start_kill();
            return Err(e);
        }
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| format!("cannot release the process: {e}"))?;
        if matches!(l.io, Io::Pipes) {
            // The rest of stdin is the client's.
            child.stdin = Some(stdin);
        }
    }
    Ok(child)
}

/// Sends `sig` to every process of the group led by `pid`.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(p), sig);
    }
}

/// CPU seconds and resident KiB per process group, read from /proc at most once per
/// [`UsageTable::MAX_AGE`] for all instances together (one scan of /proc, not one per instance).
#[derive(Default)]
pub struct UsageTable {
    last: std::sync::Mutex<Option<(std::time::Instant, GroupUsage)>>,
}

/// Process group → (CPU seconds, resident KiB).
type GroupUsage = HashMap<u32, (f64, u64)>;

impl UsageTable {
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(4);

    /// The usage of the group led by `pgid` (zero when it has no process).
    pub fn of(&self, pgid: u32) -> (f64, u64) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Self::MAX_AGE);
        if !fresh {
            *last = Some((std::time::Instant::now(), usage_by_group()));
        }
        last.as_ref()
            .and_then(|(_, m)| m.get(&pgid).copied())
            .unwrap_or((0.0, 0))
    }
}

/// CPU seconds and resident KiB of every process group, read from /proc.
fn usage_by_group() -> GroupUsage {
    let mut out = GroupUsage::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    let ticks = 100.0; // USER_HZ on Linux
    let page_kib = 4;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): pgrp is field 5, utime 14, stime 15, rss 24.
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let Ok(pgid) = u32::try_from(field(5)) else {
            continue;
        };
        let entry = out.entry(pgid).or_default();
        entry.0 += (field(14) + field(15)) as f64 / ticks;
        entry.1 += field(24) * page_kib;
    }
    out
}

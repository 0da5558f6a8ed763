//! A command run on a pseudo-terminal, as a person at a terminal runs it: its own session with
//! the terminal as its controlling terminal (`setsid -c`), so it sees a TTY on stdin and
//! stdout, gets SIGWINCH when the window is resized and ^C arrives as the terminal delivers it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetwinsize, LocalModes, Winsize};

/// A process on the slave side of a pseudo-terminal; the test holds the master.
pub struct PtyProcess {
    master: File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// Copies the terminal's output into `output`; ends when no process holds the slave side.
    reader: std::thread::JoinHandle<()>,
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtyProcess {
    /// Runs `cmd` (its program, arguments, environment and directory) on a new terminal of
    /// `cols` × `rows`. Everything it writes is kept (see [`PtyProcess::output`]).
    pub fn spawn(cmd: &Command, cols: u16, rows: u16) -> PtyProcess {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        tcsetwinsize(&slave, winsize(cols, rows)).unwrap();
        let mut c = Command::new("setsid");
        c.arg("-c").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c.env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = c.spawn().unwrap();
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let kept = output.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Linux answers EIO once no process holds the slave side.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                kept.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtyProcess {
            master,
            child,
            output,
            reader,
        }
    }

    /// Types `bytes` (as keys: `\r` is Enter, `\x03` is Ctrl-C, `\x04` is Ctrl-D).
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
        self.master.flush().unwrap();
    }

    /// Resizes the window (the kernel sends SIGWINCH to the terminal's foreground group).
    pub fn resize(&self, cols: u16, rows: u16) {
        tcsetwinsize(&self.master, winsize(cols, rows)).unwrap();
    }

    /// Whether the terminal echoes and reads whole lines (as it does unless a program put it
    /// in raw mode).
    pub fn is_cooked(&self) -> bool {
        let t = tcgetattr(self.master.as_fd()).unwrap();
        t.local_modes.contains(LocalModes::ECHO) && t.local_modes.contains(LocalModes::ICANON)
    }

    /// Everything written to the terminal so far, lossily as text.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle` (panics with the output after `within`).
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < end,
                "{needle:?} not shown within {within:?}; the terminal shows:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end (kills it and panics after `within`), then for the last of
    /// what it wrote to be read from the terminal: [`PtyProcess::output`] then holds all of it.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // The reader ends at EIO, once no process holds the slave side (a process the
                // command left behind may still hold it: then stop waiting at `within`).
                while !self.reader.is_finished() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!(
                    "still running after {within:?}; the terminal shows:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (of `setsid`, which execs the command: the command's own).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PtyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

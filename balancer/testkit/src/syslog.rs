//! A syslog receiver over TCP on a loopback port: it reads octet-counted frames (RFC 6587,
//! `LEN SP MSG`) and keeps every message in arrival order. It can be stopped (its listener and
//! connections closed, as a receiver that dies) and started again on the same port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::net::free_port;

/// Messages received, in order.
pub type Frames = Arc<Mutex<Vec<String>>>;

pub struct SyslogListener {
    pub port: u16,
    frames: Frames,
    connections: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl SyslogListener {
    /// Listens on a free loopback port.
    pub async fn start() -> SyslogListener {
        Self::start_on(free_port()).await
    }

    /// Listens on `port` (not started yet when the receiver is down from the start).
    pub async fn start_on(port: u16) -> SyslogListener {
        let mut l = SyslogListener {
            port,
            frames: Arc::default(),
            connections: Arc::default(),
            task: None,
        };
        l.restart().await;
        l
    }

    /// Every message received so far.
    pub fn frames(&self) -> Vec<String> {
        self.frames.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port (after [`SyslogListener::stop`]).
    pub async fn restart(&mut self) {
        self.stop();
        // The old task's sockets close once it has been dropped.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (frames, connections) = (self.frames.clone(), self.connections.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                conns.spawn(read_frames(stream, frames.clone()));
            }
        }));
    }

    /// Waits until at least `n` messages have arrived (panics after `within`); returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        crate::wait_until(&format!("{n} syslog messages"), within, || async {
            let f = self.frames();
            (f.len() >= n).then_some(f)
        })
        .await
    }
}

impl Drop for SyslogListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads octet-counted frames from `io` into `frames` until it ends. A frame that is not
/// `LEN SP MSG` is recorded as `MALFORMED: <what came>` and ends the reading.
pub async fn read_frames(mut io: impl AsyncRead + Unpin, frames: Frames) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Every whole frame in the buffer.
        while let Some(sp) = buf.iter().position(|b| *b == b' ') {
            let len = std::str::from_utf8(&buf[..sp])
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<usize>().ok());
            let Some(len) = len else {
                let shown = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
                frames.lock().unwrap().push(format!("MALFORMED: {shown}"));
                return;
            };
            if buf.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8_lossy(&buf[sp + 1..sp + 1 + len]).into_owned();
            frames.lock().unwrap().push(msg);
            buf.drain(..sp + 1 + len);
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
